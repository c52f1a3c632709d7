"""Duet measurement: a fixed reference op timed right before and right after every block of the measured module.

The machine's speed changes while a table is built (a neighbour on the host, a frequency change), on a shared
machine by large factors over seconds to minutes: slower than one block of runs (tens of milliseconds) but faster
than a table round. Interleaved rounds and the ``min`` aggregate leave out a round that met a slow stretch, but when the
whole measurement drifts (every round of the networks slower than the table's), nothing in a single op's timings
can tell. A reference measured at the same moment can (Bulej et al., ICPE 2020, "duet benchmarking"): the block
is stored relative to the reference blocks around it, so a slowdown that hits both cancels.

:class:`DuetRunner` wraps the runner of any backend; every :meth:`~DuetRunner.time_runs` (and
:meth:`~DuetRunner.time_group`) call times a reference block, the module's block, and a second reference block,
each run preceded by the same ``before_each`` (the protocol's cache flush, so the reference meets the same cache
state as the module), and returns the module's times multiplied by ``baseline_ms / r``, where ``r`` is the median
of both reference blocks' runs and ``baseline_ms`` the reference's latency measured once when the duet starts
(:meth:`Duet.start`: the lowest block median of a short series). Values stay in milliseconds, on the scale of the
baseline's moment; a sum of ops and a whole network measured through one duet share its baseline, so their ratio
(the table's error) does not depend on it. Each reference block lasts about half the module's previous block in
wall time, its ``before_each`` included (at least ``MIN_REFERENCE_RUNS`` runs), so a duet costs about twice the
time: within the same time budget, half the module's samples.

The reference must slow down when the module does. A reference that moves memory and compute as the measured work
does tracks it best: another network of the space for a network, a mid-size MBConv (:data:`DEFAULT_REFERENCE`) for
ops, rather than a tiny op, a plain memory read or a matmul, which a slowdown of the measured work meets
differently (the candidates are compared side by side by ``benchmarks/duet_probes.py``; see docs/protocol.md).
:func:`op_reference` and :func:`network_reference` build either kind.

A scaled block is off in both directions (a disturbed reference block makes the module look fast), so the
protocol's one-sided rules, the ``min`` aggregate and the filter of blocks far above the fastest, pick the low
outliers of a duet; aggregate its rounds by their median and keep every block (``benchmarks/fidelity.py --duet``
does).

:class:`DuetBackend` wraps a backend so that every runner it prepares (ops, calibration modules, networks) is
timed in the duet; its environment names the reference, so duet numbers never share an environment hash with
plain ones. The protocol itself (:mod:`profiler_service.engine.protocol`) is unchanged: the duet is a clock.

One scale for every cache regime: the reference meets its duet's flush (warm, flush<K>, cold), so its latency, and
a baseline timed in that regime, differ between regimes; a baseline timed per regime would also carry the load of
the moment each regime was first used. :func:`start_regime_duet` therefore measures the reference in the duet's
regime and in one fixed regime (:data:`BASELINE_FLUSH_KIB`, the cold flush) in adjacent blocks: the lowest block
median of each half of the fixed-regime blocks gives two series (:meth:`DuetStart.agreed_baseline_ms`: their mean
when they agree within :data:`BASELINE_AGREEMENT_REL`), and the median ratio of adjacent blocks (regime / fixed)
converts ONE baseline of the fixed regime into the regime's (:meth:`DuetStart.scaled`). A slowdown that lasts
longer than two blocks hits both blocks of a pair, so the ratio does not depend on the load; a table of one regime
and a network of another, measured under different loads, come out on the scale of the same baseline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from nas_ops.arch import Architecture
from nas_ops.blocks import build_op
from nas_ops.network import build_network
from nas_ops.space import SearchSpace
from nas_ops.spec import parse_spec
from profiler_service.engine.backends.base import Backend, Runner
from profiler_service.engine.cache_regime import COLD_FLUSH_KIB
from profiler_service.engine.protocol import MEASURE_LOCK, ProtocolParams, cache_flusher, pinned_cores, seeded

#: The default reference op: a mid-size MBConv (about a millisecond after a 16 MiB flush on one CPU core).
DEFAULT_REFERENCE = "mbconv_r28x28_c40-40_k5_e6_s1_relu6_skip"
MIN_REFERENCE_RUNS = 2
MAX_REFERENCE_RUNS = 10_000
BASELINE_BLOCKS = 20
#: The flush (KiB) the shared baseline of every regime's duet is timed after: the cold regime's.
BASELINE_FLUSH_KIB = COLD_FLUSH_KIB
#: What names the duet's scale in a duet service's environment (so part of its environment hash): one baseline
#: per environment, timed after BASELINE_FLUSH_KIB, converted into each regime's. Rows measured on another scale
#: (per-regime baselines) have another environment hash, so they are never served with these.
BASELINE_SCHEME = "one-baseline-cold-flush"
#: How far apart (relative) the two series that set a baseline may be and still agree (the canaries' threshold).
BASELINE_AGREEMENT_REL = 0.10
#: What :meth:`Duet.start` times: the reference's eval-mode module, its input shape (N, C, H, W) and its label.
Reference = tuple[nn.Module, tuple[int, int, int, int], str]


def duet_params(params: ProtocolParams, reference: str = DEFAULT_REFERENCE) -> ProtocolParams:
    """``params`` measured in a duet with ``reference``: the rounds aggregated by their median and every block
    kept (a scaled block is off in either direction, so the one-sided ``min`` and block filter would pick the low
    outliers: module docstring). The one definition of what a duet changes in the protocol."""
    return ProtocolParams(**{**params.model_dump(), "duet_reference": reference, "aggregate": "median",
                             "disturbed_block_rel": None})


class DuetRunner(Runner):
    """A runner whose timings are scaled by the reference timed around them (module docstring)."""

    def __init__(self, target: Runner, duet: Duet) -> None:
        self.target = target
        self.duet = duet
        self._last_block_s = 0.0  # wall time of the module's previous block

    def run(self) -> None:
        self.target.run()

    def _reference_runs(self) -> int:
        half_block = self._last_block_s / 2
        return min(MAX_REFERENCE_RUNS, max(MIN_REFERENCE_RUNS, round(half_block / self.duet.run_wall_s)))

    def _relative(self, time_block: Callable[[], list[float]], before_each: Callable[[], None] | None
                  ) -> list[float]:
        runs, clock = self._reference_runs(), self.duet.clock
        reference = self.duet.reference.time_runs(runs, before_each)
        start = clock()
        times = time_block()
        self._last_block_s = clock() - start
        reference += self.duet.reference.time_runs(runs, before_each)
        scale = self.duet.baseline_ms / float(np.median(reference))
        self.duet.scales.append(scale)
        return [t * scale for t in times]

    def time_runs(self, count: int, before_each: Callable[[], None] | None = None) -> list[float]:
        return self._relative(lambda: self.target.time_runs(count, before_each), before_each)

    def time_group(self, count: int, runs_per_timing: int,
                   before_each: Callable[[], None] | None = None) -> list[float]:
        return self._relative(lambda: self.target.time_group(count, runs_per_timing, before_each), before_each)

    @property
    def timer_resolution_ms(self) -> float:
        """The module's timer's (the scale factor stays near 1, so a tick means about as much)."""
        return self.target.timer_resolution_ms

    def output(self) -> np.ndarray:
        return self.target.output()

    @property
    def input(self) -> np.ndarray:
        return self.target.input

    def close(self) -> None:
        self.target.close()


class Duet:
    """A prepared reference runner, its baseline latency (ms) and the wall time of one of its runs with its
    ``before_each`` (s, what sizes the reference blocks); :meth:`start` builds one. ``label`` names the reference
    in reports and environments."""

    def __init__(self, reference: Runner, baseline_ms: float, run_wall_s: float, label: str = DEFAULT_REFERENCE,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        if not baseline_ms > 0:
            raise ValueError(f"baseline_ms: the reference's latency must be > 0 ms, got {baseline_ms!r}")
        if not run_wall_s > 0:
            raise ValueError(f"run_wall_s: a reference run must take time, got {run_wall_s!r} s")
        self.reference = reference
        self.baseline_ms = baseline_ms
        self.run_wall_s = run_wall_s
        self.label = label
        self.clock = clock
        self.scales: list[float] = []  # baseline / reference median, one per timed block

    @classmethod
    def start(cls, backend: Backend, threads: int, reference: Reference,
              *, seed: int = 0, before_each: Callable[[], None] | None = None, blocks: int = BASELINE_BLOCKS,
              block_runs: int = 5, clock: Callable[[], float] = time.perf_counter) -> Duet:
        """Prepare ``reference`` (module, input shape, label: :func:`op_reference`, :func:`network_reference`) on
        ``backend`` and measure its baseline: the lowest median of ``blocks`` blocks of ``block_runs`` runs, each
        run after ``before_each`` (pass the flush of the protocol the duet will time with)."""
        module, input_shape, label = reference
        runner = backend.prepare(module, input_shape, "float32", threads, seed=seed)
        try:
            runner.time_runs(block_runs, before_each)  # warm-up
            start = clock()
            medians = [float(np.median(runner.time_runs(block_runs, before_each))) for _ in range(blocks)]
            run_wall_s = (clock() - start) / (blocks * block_runs)
        except BaseException:
            runner.close()
            raise
        return cls(runner, min(medians), run_wall_s, label, clock)

    def rebased(self, baseline_ms: float) -> Duet:
        """This duet's reference on the scale of ``baseline_ms`` (a baseline stored earlier for the same reference
        and context, so that numbers measured since share one scale); the new duet owns the reference runner."""
        return Duet(self.reference, baseline_ms, self.run_wall_s, self.label, self.clock)

    def wrap(self, runner: Runner) -> DuetRunner:
        """``runner`` timed in this duet."""
        return DuetRunner(runner, self)

    def describe(self) -> dict[str, Any]:
        """The reference, its baseline and the scale factors applied so far (how many blocks; their p10, median
        and p90: how far the machine moved from the baseline's moment), as plain JSON values."""
        p10 = median = p90 = None  # no block timed yet
        if self.scales:
            p10, median, p90 = (float(np.percentile(self.scales, q)) for q in (10, 50, 90))
        return {"reference": self.label, "baseline_ms": self.baseline_ms, "blocks": len(self.scales),
                "scale_p10": p10, "scale_median": median, "scale_p90": p90}

    def close(self) -> None:
        """Release the reference's session."""
        self.reference.close()


def op_reference(spec: str = DEFAULT_REFERENCE, batch: int = 1) -> Reference:
    """The reference of :meth:`Duet.start` that is the op ``spec``: its eval-mode module, input shape, label."""
    parsed = parse_spec(spec)
    with seeded(0):  # the same weights in every process: a stored baseline stays the reference's
        module = build_op(parsed).eval()
    return module, (batch, *parsed.input_shape), spec


def start_protocol_duet(backend: Backend, threads: int, params: ProtocolParams,
                        clock: Callable[[], float] = time.perf_counter) -> Duet:
    """The duet of ``params`` (its ``duet_reference`` op) on ``backend``: the baseline timed as the protocol times,
    under the measurement lock and its core pinning, after its cache flush."""
    if params.duet_reference is None:
        raise ValueError("params: no duet_reference to start a duet with")
    with MEASURE_LOCK, pinned_cores(threads, params.affinity):
        return Duet.start(backend, threads, op_reference(params.duet_reference), seed=params.seed,
                          before_each=cache_flusher(params.cache_flush_kib), clock=clock)


@dataclass(frozen=True)
class DuetStart:
    """A duet's reference prepared and measured in its regime and in the baseline's (module docstring).

    ``duet``: the reference on the scale of its own lowest block median in the duet's regime (not shared: use
    :meth:`scaled`); ``series_ms``: the reference's latency after :data:`BASELINE_FLUSH_KIB`, the lowest block
    median of the first and of the second half of the blocks; ``regime_ratio``: the median over adjacent block
    pairs of (duet's regime / baseline's regime), 1 when they are the same regime."""

    duet: Duet
    series_ms: tuple[float, float]
    regime_ratio: float

    def agreed_baseline_ms(self, agreement_rel: float = BASELINE_AGREEMENT_REL) -> float | None:
        """The mean of the two series when they agree within ``agreement_rel`` (the larger at most
        ``1 + agreement_rel`` times the smaller), else None: one disturbed series never sets a baseline."""
        low, high = sorted(self.series_ms)
        return (low + high) / 2 if high <= low * (1 + agreement_rel) else None

    def scaled(self, baseline_ms: float) -> Duet:
        """The duet on the scale of ``baseline_ms``, the reference's latency in the baseline's regime: its own
        regime's baseline is ``baseline_ms x regime_ratio``."""
        return self.duet.rebased(baseline_ms * self.regime_ratio)


def start_regime_duet(backend: Backend, threads: int, params: ProtocolParams, *, blocks: int = BASELINE_BLOCKS,
                      block_runs: int = 5, clock: Callable[[], float] = time.perf_counter) -> DuetStart:
    """Prepare ``params.duet_reference`` on ``backend`` and time it, under the measurement lock and its core
    pinning, in ``blocks`` pairs of adjacent blocks: one after the protocol's flush, one after
    :data:`BASELINE_FLUSH_KIB` (one block when both are the same). See :class:`DuetStart`."""
    if params.duet_reference is None:
        raise ValueError("params: no duet_reference to start a duet with")
    if blocks < 2:
        raise ValueError(f"blocks: two series need at least 2 blocks, got {blocks!r}")
    module, input_shape, label = op_reference(params.duet_reference)
    same = params.cache_flush_kib == BASELINE_FLUSH_KIB
    regime_flush = cache_flusher(params.cache_flush_kib)
    baseline_flush = regime_flush if same else cache_flusher(BASELINE_FLUSH_KIB)
    with MEASURE_LOCK, pinned_cores(threads, params.affinity):
        runner = backend.prepare(module, input_shape, "float32", threads, seed=params.seed)
        try:
            runner.time_runs(block_runs, regime_flush)  # warm-up
            regime_medians, baseline_medians, wall_s = [], [], 0.0
            for _ in range(blocks):
                start = clock()
                regime_medians.append(float(np.median(runner.time_runs(block_runs, regime_flush))))
                wall_s += clock() - start
                baseline_medians.append(regime_medians[-1] if same else
                                        float(np.median(runner.time_runs(block_runs, baseline_flush))))
        except BaseException:
            runner.close()
            raise
    half = blocks // 2
    ratio = 1.0 if same else float(np.median([r / b for r, b in zip(regime_medians, baseline_medians)]))
    duet = Duet(runner, min(regime_medians), wall_s / (blocks * block_runs), label, clock)
    return DuetStart(duet, (min(baseline_medians[:half]), min(baseline_medians[half:])), ratio)


def middle_architecture(space: SearchSpace) -> Architecture:
    """The network reference of a space: every cell's middle candidate (a typical network, fixed by the space)."""
    return space.architecture([len(cell.candidates) // 2 for cell in space.cells()])


def network_reference(arch: Architecture, label: str, batch: int = 1) -> Reference:
    """The reference of :meth:`Duet.start` that is the whole network of ``arch``."""
    with seeded(0):
        module = build_network(arch).eval()
    return module, (batch, arch.in_chs, *arch.input_size), label


class DuetBackend(Backend):
    """``inner`` with every prepared runner timed in ``duet`` (same name, options, dtypes and boundary kind; the
    environment adds the reference)."""

    def __init__(self, inner: Backend, duet: Duet) -> None:
        self.inner = inner
        self.duet = duet
        self.name = inner.name
        self.options = inner.options
        self.dtypes = inner.dtypes
        self.boundary_kind = inner.boundary_kind

    @property
    def available(self) -> bool:
        return self.inner.available

    def environment(self, threads: int) -> dict[str, Any]:
        return {**self.inner.environment(threads), "duet_reference": self.duet.label}

    def _prepare(self, module: nn.Module, input_shape: tuple[int, int, int, int], dtype: str, threads: int,
                 seed: int) -> Runner:
        return self.duet.wrap(self.inner.prepare(module, input_shape, dtype, threads, seed=seed))

