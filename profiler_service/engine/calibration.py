"""Boundary calibration: per-op latencies that add up to the latency of the whole network.

Timing an op alone costs more than the op costs inside a network: each call of the runtime pays a fixed overhead,
and the op's graph has a boundary that a network does not have between two ops (ONNX Runtime on CPU converts the
input from NCHW to its blocked layout and the output back, and cannot fuse a shortcut add into the last conv when
its other operand is a graph input). Summing such isolated timings over-predicted networks by ~7% on ort-cpu.

So an op is timed inside a sandwich ``B(A) -> op -> B(B)``, where ``B(S)`` is the boundary op of a tensor shape S
(A: the op's input, B: its output): one cheap per-channel scale that the runtime keeps in its internal layout and
does not fuse into its neighbours. The backend chooses its kind (``Backend.boundary_kind``): a depthwise 1x1 conv
for ONNX Runtime, a broadcast multiply for eager torch, whose depthwise 1x1 conv is slow. The op's input then
comes warm from a previous op, as in a network, and both its edges are inner edges. Every shape S also gets the
graph ``B(S) -> B(S)``, timed once and cached (``T_S``), and an empty call (identity on one element per sample)
gives the per-call overhead ``o``. The stored latency of an op is ``t(sandwich) - correction`` with

    correction = [o + (T_A - o) / 2 unless entry] + [(T_B - o) / 2 unless exit]

i.e. ``(T_A + T_B) / 2`` for an inner op. The entry op (kind ``conv``, the stem) has no boundary op before it and
keeps ``o``: it carries the one-time overhead of the network call. The exit op (kind ``head``) has none after it.
Summed over a network, every inner shape S is followed by one boundary op in its producer's sandwich and preceded
by one in its consumer's: two boundary ops plus a graph output and a graph input of shape S, which is exactly what
``T_S - o`` holds, whatever the split between the two sides (a layout conversion in costing more than out, say);
and every sandwich but the stem's pays ``o`` once more. The corrections therefore telescope to the network's cost,
and T_S must be the same value for both neighbours: it is held in a :class:`CalibrationCache`, keyed by the
measurement context (backend environment, batch, dtype, threads, protocol) and the shape. ``o`` and each ``T_S``
are the lowest median of ``CALIBRATION_REPEATS`` timings (protocol version 2; version 1 timed them once).

A cache belongs to one measurement session (a job, one CLI command, one benchmark run), never to the process: the
ops of a session share their calibration values, and what one session measured never enters another's numbers,
so a stored latency does not depend on what the process happened to measure before.
"""

from __future__ import annotations

import uuid

from collections.abc import Callable, Hashable

import torch
from torch import nn

from nas_ops.spec import OpSpec

# (batch, C, H, W) -> median latency (ms) of a module timed with the current protocol and context.
TimeMedian = Callable[[nn.Module, tuple[int, int, int, int]], float]

CALL_OVERHEAD_SHAPE = (1, 1, 1)
# A calibration value is subtracted from every op of its shape, so one disturbed timing would shift them all: it is
# the lowest median of this many timings (a disturbance only ever slows a run down). Seen on the project's
# 2-core KVM guest: one inflated T_S made a whole tiny-32 table 30% too fast.
CALIBRATION_REPEATS = 3


def is_entry(spec: OpSpec) -> bool:
    """The op that takes the network input: the ``conv`` stem. It carries the network call's overhead."""
    return spec.kind == "conv"


def is_exit(spec: OpSpec) -> bool:
    """The op that produces the network output: the ``head``."""
    return spec.kind == "head"


class ChannelScale(nn.Module):
    """``x * w`` with one weight per channel: the boundary op of eager torch (its depthwise 1x1 conv is slow)."""

    def __init__(self, chs: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, chs).reshape(chs, 1, 1), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


def depthwise_scale(chs: int) -> nn.Module:
    """A depthwise 1x1 convolution on ``chs`` channels: a per-channel scale that a layout-transforming runtime (ORT
    on CPU) keeps in its internal layout and does not fuse away (weights evenly spread in [0.5, 1.5])."""
    conv = nn.Conv2d(chs, chs, 1, groups=chs, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.linspace(0.5, 1.5, chs).reshape(chs, 1, 1, 1))
    return conv


# The boundary op of each kind a backend may ask for (Backend.boundary_kind).
BOUNDARY_OPS: dict[str, Callable[[int], nn.Module]] = {"depthwise_conv": depthwise_scale,
                                                        "channel_scale": ChannelScale}


def boundary_op(kind: str, chs: int) -> nn.Module:
    """The boundary op of ``kind`` on ``chs`` channels."""
    if kind not in BOUNDARY_OPS:
        raise ValueError(f"boundary kind: unknown {kind!r}; expected one of {', '.join(BOUNDARY_OPS)}")
    return BOUNDARY_OPS[kind](chs)


def sandwich(spec: OpSpec, op: nn.Module, kind: str) -> nn.Module:
    """``op`` between the boundary ops of its input and output shapes (none before the entry, none after the exit)."""
    layers: list[nn.Module] = []
    if not is_entry(spec):
        layers.append(boundary_op(kind, spec.in_chs))
    layers.append(op)
    if not is_exit(spec):
        layers.append(boundary_op(kind, spec.out_chs))
    return nn.Sequential(*layers).eval()


def boundary_pair(kind: str, chs: int) -> nn.Module:
    """``B(S) -> B(S)``: two boundary ops, the calibration graph of one shape."""
    return nn.Sequential(boundary_op(kind, chs), boundary_op(kind, chs)).eval()


class CalibrationCache:
    """The calibration values (``o``, ``T_S``) of one measurement session, keyed by context and what was timed.

    Each value is measured once per cache, as the lowest of :data:`CALIBRATION_REPEATS` timings, on first use.
    """

    def __init__(self) -> None:
        self._values: dict[tuple[Hashable, Hashable], float] = {}
        #: Names the session where its values live elsewhere (a measuring process keeps them under this name).
        self.session = uuid.uuid4().hex

    def value(self, context: Hashable, key: Hashable, measure: Callable[[], float]) -> float:
        """The value of ``key`` in ``context``: cached, or the lowest of :data:`CALIBRATION_REPEATS` calls of
        ``measure`` (then cached)."""
        full_key = (context, key)
        if full_key not in self._values:
            self._values[full_key] = min(measure() for _ in range(CALIBRATION_REPEATS))
        return self._values[full_key]

    def __len__(self) -> int:
        return len(self._values)


def call_overhead_ms(cache: CalibrationCache, context: Hashable, batch: int, time_median: TimeMedian) -> float:
    """``o``: median latency of an empty call (identity on one element per sample) in this context."""
    shape = (batch, *CALL_OVERHEAD_SHAPE)
    return cache.value(context, ("call", batch), lambda: time_median(nn.Identity(), shape))


def boundary_ms(cache: CalibrationCache, context: Hashable, kind: str, batch: int, shape: tuple[int, int, int],
                time_median: TimeMedian) -> float:
    """``T_S``: median latency of ``B(S) -> B(S)`` on input (batch, *shape) in this context."""
    chs, height, width = shape
    return cache.value(context, ("pair", kind, batch, shape),
                       lambda: time_median(boundary_pair(kind, chs), (batch, chs, height, width)))


def correction_ms(spec: OpSpec, kind: str, cache: CalibrationCache, context: Hashable, batch: int,
                  time_median: TimeMedian) -> float:
    """What to subtract from the sandwich's latency of ``spec`` (module docstring); measures what ``cache`` lacks.

    ``context`` identifies the backend, its environment, dtype, threads and protocol: calibration values are
    reused only within one context of one cache.
    """
    overhead = call_overhead_ms(cache, context, batch, time_median)
    correction = 0.0
    if not is_entry(spec):
        correction += overhead + (boundary_ms(cache, context, kind, batch, spec.input_shape, time_median)
                                  - overhead) / 2
    if not is_exit(spec):
        out_shape = (spec.out_chs, spec.out_height, spec.out_width)
        correction += (boundary_ms(cache, context, kind, batch, out_shape, time_median) - overhead) / 2
    return correction
