"""Duet measurement: a fixed reference op timed right before and right after every block of the measured module.

The machine's speed changes while a table is built (a neighbour on the host, a frequency change): on this
project's VMs by 1.3-2x over seconds to minutes, slower than one block of runs (about 25 ms) but faster than a
table round. Interleaved rounds and the ``min`` aggregate leave out a round that met a slow stretch, but when the
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
(the table's error) does not depend on it. Each reference block lasts about half the module's previous block
(at least ``MIN_REFERENCE_RUNS`` runs), so a duet costs about twice the timed runs: within the same time budget,
half the module's samples.

:class:`DuetBackend` wraps a backend so that every runner it prepares (ops, calibration modules, networks) is
timed in the duet; its environment names the reference, so duet numbers never share an environment hash with
plain ones. The protocol itself (:mod:`profiler_service.engine.protocol`) is unchanged: the duet is a clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from torch import nn

from nas_ops.blocks import build_op
from nas_ops.spec import parse_spec
from profiler_service.engine.backends.base import Backend, Runner

#: The reference op: the mid-size canary (a few tenths of a ms on one CPU core), see
#: :data:`profiler_service.engine.canary.CANARY_SPECS`.
DEFAULT_REFERENCE = "mbconv_r16x16_c16-16_k3_e3_s1_relu6_skip"
MIN_REFERENCE_RUNS = 3
MAX_REFERENCE_RUNS = 10_000
BASELINE_BLOCKS = 20


class DuetRunner(Runner):
    """A runner whose timings are scaled by the reference timed around them (module docstring)."""

    def __init__(self, target: Runner, duet: Duet) -> None:
        self.target = target
        self.duet = duet
        self._last_block_ms = 0.0

    def run(self) -> None:
        self.target.run()

    def _reference_runs(self) -> int:
        half_block = self._last_block_ms / 2
        return min(MAX_REFERENCE_RUNS, max(MIN_REFERENCE_RUNS, math.ceil(half_block / self.duet.baseline_ms)))

    def _relative(self, time_block: Callable[[], list[float]], block_ms: Callable[[list[float]], float],
                  before_each: Callable[[], None] | None) -> list[float]:
        runs = self._reference_runs()
        reference = self.duet.reference.time_runs(runs, before_each)
        times = time_block()
        reference += self.duet.reference.time_runs(runs, before_each)
        self._last_block_ms = block_ms(times)
        scale = self.duet.baseline_ms / float(np.median(reference))
        self.duet.scales.append(scale)
        return [t * scale for t in times]

    def time_runs(self, count: int, before_each: Callable[[], None] | None = None) -> list[float]:
        return self._relative(lambda: self.target.time_runs(count, before_each), sum, before_each)

    def time_group(self, count: int, runs_per_timing: int,
                   before_each: Callable[[], None] | None = None) -> list[float]:
        return self._relative(lambda: self.target.time_group(count, runs_per_timing, before_each),
                              lambda times: sum(times) * runs_per_timing, before_each)

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
    """A prepared reference runner and its baseline latency (ms); :meth:`start` builds one."""

    def __init__(self, reference: Runner, baseline_ms: float, spec: str = DEFAULT_REFERENCE) -> None:
        if not baseline_ms > 0:
            raise ValueError(f"baseline_ms: the reference's latency must be > 0 ms, got {baseline_ms!r}")
        self.reference = reference
        self.baseline_ms = baseline_ms
        self.spec = spec
        self.scales: list[float] = []  # baseline / reference median, one per timed block

    @classmethod
    def start(cls, backend: Backend, threads: int, *, spec: str = DEFAULT_REFERENCE, seed: int = 0,
              before_each: Callable[[], None] | None = None, blocks: int = BASELINE_BLOCKS,
              block_runs: int = 10) -> Duet:
        """Prepare the reference ``spec`` (batch 1, float32) on ``backend`` and measure its baseline: the lowest
        median of ``blocks`` blocks of ``block_runs`` runs, each run after ``before_each`` (pass the flush of the
        protocol the duet will time with)."""
        reference = backend.prepare(reference_module(spec), (1, *parse_spec(spec).input_shape), "float32", threads,
                                    seed=seed)
        try:
            reference.time_runs(block_runs, before_each)  # warm-up
            medians = [float(np.median(reference.time_runs(block_runs, before_each))) for _ in range(blocks)]
        except BaseException:
            reference.close()
            raise
        return cls(reference, min(medians), spec)

    def wrap(self, runner: Runner) -> DuetRunner:
        """``runner`` timed in this duet."""
        return DuetRunner(runner, self)

    def describe(self) -> dict[str, Any]:
        """The reference, its baseline and the scale factors applied so far (how many blocks; their p10, median
        and p90: how far the machine moved from the baseline's moment), as plain JSON values."""
        scales = np.asarray(self.scales or [math.nan])
        p10, median, p90 = (float(np.percentile(scales, q)) for q in (10, 50, 90))
        return {"reference": self.spec, "baseline_ms": self.baseline_ms, "blocks": len(self.scales),
                "scale_p10": p10, "scale_median": median, "scale_p90": p90}

    def close(self) -> None:
        """Release the reference's session."""
        self.reference.close()


def reference_module(spec: str) -> nn.Module:
    """The eval-mode module of the reference op ``spec``."""
    return build_op(parse_spec(spec)).eval()


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
        return {**self.inner.environment(threads), "duet_reference": self.duet.spec}

    def _prepare(self, module: nn.Module, input_shape: tuple[int, int, int, int], dtype: str, threads: int,
                 seed: int) -> Runner:
        return self.duet.wrap(self.inner.prepare(module, input_shape, dtype, threads, seed=seed))

