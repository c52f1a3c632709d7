"""The measurement protocol: how one op (or one whole network) is timed on a backend, and what is stored.

Version ``PROTOCOL_VERSION`` (stored with every measurement, together with ``ProtocolParams.model_dump()``); bump
it whenever what a stored number means changes. Version 4 stores the lowest of an op's round medians (the ``min``
aggregate, see :mod:`profiler_service.engine.aggregate` for the side-by-side comparison that chose it); version 3
stored their median; both measure a job in interleaved rounds (point 9), time runs below the timer's resolution in
groups (point 7) and never store an op that costs multiply-adds as 0 ms (point 10); version 2 measured each op once.
Rows of another version are never served as this one's.

1. Exclusive device. ``MEASURE_LOCK`` (process-wide) is held for the whole measurement: nothing else of ours
   builds, exports or times while an op is timed.
2. Fixed threads and cores. The backend runs with ``threads`` intra-op threads; with ``affinity`` the measuring
   thread (and the runtime threads it creates meanwhile) is pinned to the last ``threads`` cores it may run on
   (``os.sched_setaffinity``, Linux), restored afterwards. Python's garbage collector is off while timing.
3. The module. Built from the op spec with fresh weights (seeded by ``seed``), in eval mode; the backend decides
   what a deployment would do with it (ORT folds BatchNorm into the conv, eager torch keeps it). The input is
   standard normal noise (seeded).
4. Calibration (``calibrate``, for ops, not for whole networks): the op is timed inside a sandwich of boundary ops
   and a per-shape correction is subtracted, so that the SUM of the stored per-op latencies of an architecture
   (stem, blocks, mix, head) predicts the latency of the whole network; the ``conv`` stem carries the one-time
   overhead of the network call. Details and the formula in :mod:`profiler_service.engine.calibration`. Location
   statistics (median, mean, min, p10, p90) are shifted by the correction and floored at 0; std and IQR are
   unchanged. What a round yields keeps both (:class:`~profiler_service.engine.stats.RoundMeasurement`: the raw
   statistics of the sandwich and the correction).
5. Cache state (``cache_flush_kib``, default 16 MiB): a buffer of that size is read, untimed, before every run
   (ops and networks alike), so that weights come from far cache levels (and their pages from a cold TLB), as they
   do in a network, where the rest of the network runs between two calls of an op. For a network larger than a
   core's cache, warm caches make the summed ops underestimate it, and a much larger flush overestimates it where
   activations are small (chosen side by side in the fidelity benchmark; see docs/protocol.md). The flush also
   makes the op's own intermediate buffers cold, which a network does not, so the best size grows with the
   network's memory traffic per inference; 16 MiB suits mobile-size networks. 0 keeps caches warm. Which size a measurement uses follows from the working set of the
   network it belongs to (its cache regime, :mod:`profiler_service.engine.cache_regime`): 0 when the network fits
   in a core's private cache, the working set (rounded up to a power of two) between that and 16 MiB.
6. Warm-up: at least ``warmup_runs`` runs and at least ``warmup_s`` seconds.
7. Timed runs, in blocks of about ``block_s`` seconds (at least ``min_block_runs`` runs), each run timed on its
   own (CUDA events on CUDA). When the first block's median is shorter than ``min_timing_ticks`` ticks of the
   runner's timer (``Runner.timer_resolution_ms``), one run is too short to time: from then on each timing covers
   a group of consecutive runs (doubled until one timing lasts that long, at most ``max_runs_per_timing`` runs;
   the cache flush runs once before each group), and a sample is the group's time per run; the first block is
   dropped. A block whose median is more than ``disturbed_block_rel`` above the fastest block's median was
   disturbed by something else on the machine and is set aside (None keeps all blocks). Stop after a block when
   the kept samples number at least ``min_runs`` over at least ``min_blocks`` blocks and the distribution-free
   (order statistic) ``confidence`` interval of their median has a half-width of at most ``target_rel_ci`` times
   the median; or when ``time_budget_s`` has passed (once ``min_runs`` samples are done); or at ``max_runs``
   samples.
8. Statistics of the kept samples: median, mean, std (ddof 1), min, p10, p90, IQR (numpy's linear percentiles),
   sample count, in milliseconds.
9. Rounds (``rounds``, the job worker's part): a job measures its ops in ``rounds`` rounds, each round over all
   of its pending ops in a fresh seeded random order (:mod:`profiler_service.engine.rounds`), so that a slow
   stretch of time hits one round of many ops instead of every sample of one op; a network is measured in as many
   rounds. Every round's statistics are stored; the stored value is the ``aggregate`` of the rounds
   (:mod:`profiler_service.engine.aggregate`; by default the lowest round median, their median in a duet). Default 3 rounds: the
   smallest count where at least two rounds are undisturbed when one is, and the most that keeps the proxyless-mobile table (70 ops) near a minute on ort-cpu with
   ``time_budget_s`` 0.25 s per round (0.75 s of timed runs per op in all, the 0.5 s of version 2 plus half).
   Under the ``median`` aggregate an item stops before its last round once the rounds left cannot move its
   aggregate by more than ``settle_rel`` (:func:`profiler_service.engine.rounds.settled`).
10. No silent zeros (:func:`profiler_service.engine.rounds.stored_result`): an op that costs multiply-adds whose
   aggregated latency is not above the timer's resolution (calibration floored it at 0, or it stayed below the
   timer even in groups) is stored flagged, with the reason, and with an upper bound instead of 0.
11. Duet (``duet_reference``, the service's ``duet`` setting): every timed block is measured between two blocks
   of a fixed reference op and stored relative to them (:mod:`profiler_service.engine.duet`), so a slowdown of
   the machine that lasts longer than a block cancels out; :func:`~profiler_service.engine.duet.duet_params` sets
   what goes with it (the median aggregate, every block kept). The job worker applies it
   (:mod:`profiler_service.jobs.duets`: one reference and one stored baseline per measurement context); these
   functions only record it. The stored version carries a ``+duet`` suffix.
"""

from __future__ import annotations

import functools
import gc
import math
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from nas_ops.arch import Architecture
from nas_ops.blocks import build_op
from nas_ops.network import build_network
from nas_ops.spec import OpSpec
from profiler_service.engine import calibration
from profiler_service.engine.backends.base import Backend, Runner
from profiler_service.engine.cache_regime import COLD_FLUSH_KIB
from profiler_service.engine.aggregate import AGGREGATES, DEFAULT_AGGREGATE, DEFAULT_QUANTILE, AggregateName
from profiler_service.engine.fingerprint import env_hash
from profiler_service.engine.stats import RoundMeasurement, Stats

__all__ = ["MEASURE_LOCK", "PROTOCOL_VERSION", "MeasurementStopped", "ProtocolParams", "RoundMeasurement", "Stats",
           "measure_network", "measure_network_round", "measure_op_round", "time_runner"]

PROTOCOL_VERSION = "4"
MAX_BATCH = 4096

# One measurement at a time in this process (re-entrant: calibration runs inside an op's measurement).
MEASURE_LOCK = threading.RLock()

Clock = Callable[[], float]
StopReason = Literal["precision", "budget", "max_runs"]
#: Asked between runs of the warm-up and between timed blocks; True gives the measurement up (MeasurementStopped).
StopCheck = Callable[[], bool]


class MeasurementStopped(Exception):
    """A measurement given up because its ``should_stop`` hook said so (its job was cancelled, the worker stops)."""


class ProtocolParams(BaseModel):
    """The knobs of the protocol (module docstring); stored with every measurement."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    warmup_runs: int = Field(5, ge=0, le=100_000, description="warm-up runs (at least)")
    warmup_s: float = Field(0.03, ge=0, le=60, description="warm-up seconds (at least)")
    min_runs: int = Field(10, ge=1, le=1_000_000, description="kept timed runs needed before stopping")
    max_runs: int = Field(20_000, ge=1, le=1_000_000, description="timed runs at most")
    block_s: float = Field(0.025, gt=0, le=60, description="target duration of one block of runs")
    min_block_runs: int = Field(3, ge=1, le=100_000, description="runs per block (at least)")
    min_blocks: int = Field(3, ge=1, le=10_000, description="kept blocks needed before stopping on precision")
    target_rel_ci: float = Field(0.01, gt=0, le=1, description="relative half-width of the median's CI to reach")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="confidence level of that interval")
    time_budget_s: float = Field(0.25, gt=0, le=600, description="seconds of timed runs per round (soft)")
    disturbed_block_rel: float | None = Field(0.05, gt=0, le=10, description="block filter; None keeps all")
    cache_flush_kib: int = Field(COLD_FLUSH_KIB, ge=0, le=1 << 20,
                                 description="KiB read before every run; 0: warm caches")
    affinity: bool = Field(True, description="pin to fixed cores where the OS allows")
    calibrate: bool = Field(True, description="per-op boundary calibration (ops only)")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of the weights, the input and the round orders")
    rounds: int = Field(3, ge=1, le=50, description="interleaved rounds per job (point 9)")
    aggregate: AggregateName = Field(DEFAULT_AGGREGATE, description=f"aggregate of the rounds: {', '.join(AGGREGATES)}")
    aggregate_q: float = Field(DEFAULT_QUANTILE, gt=0, lt=1, description="the quantile of low_quantile")
    settle_rel: float | None = Field(0.01, gt=0, le=1, description="an item stops before its last round once the "
                                     "rounds left cannot move its median aggregate by more than this (relative); "
                                     "None: every round")
    min_timing_ticks: int = Field(100, ge=1, le=10**9, description="timer ticks one timing must last (point 7)")
    max_runs_per_timing: int = Field(1 << 16, ge=1, le=1 << 24, description="runs in one timing at most")
    duet_reference: str | None = Field(None, min_length=1, max_length=256,
                                       description="the duet's reference (point 11); None: no duet")

    @model_validator(mode="after")
    def _runs_ordered(self) -> ProtocolParams:
        if self.min_runs > self.max_runs:
            raise ValueError(f"min_runs ({self.min_runs}) must not exceed max_runs ({self.max_runs})")
        return self

    @classmethod
    def fast(cls) -> ProtocolParams:
        """Short runs (a few ms per op) for tests and smoke checks: numbers with little precision, one round (a
        single round is measured in the job's order: there is nothing to interleave)."""
        return cls(warmup_runs=1, warmup_s=0.0, min_runs=3, min_block_runs=3, min_blocks=1, block_s=0.005,
                   target_rel_ci=0.05, time_budget_s=0.02, cache_flush_kib=0, rounds=1)


# --- statistics of the stopping rule ------------------------------------------------------------------------------
def median_ci(samples: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free confidence interval of the median: order statistics at the binomial ranks
    ``(n - z sqrt(n)) / 2`` and ``1 + (n + z sqrt(n)) / 2`` (normal approximation), clamped to the sample range."""
    ordered = sorted(samples)
    n = len(ordered)
    if n == 0:
        raise ValueError("samples: no timed runs to describe")
    z = statistics.NormalDist().inv_cdf((1 + confidence) / 2)
    half = z * math.sqrt(n) / 2
    lower_rank = max(1, math.floor(n / 2 - half))
    upper_rank = min(n, math.ceil(1 + n / 2 + half))
    return ordered[lower_rank - 1], ordered[upper_rank - 1]


def relative_ci_halfwidth(samples: Sequence[float], confidence: float = 0.95) -> float:
    """Half-width of :func:`median_ci` divided by the median (inf for a zero median)."""
    low, high = median_ci(samples, confidence)
    median = float(np.median(samples))
    return (high - low) / 2 / median if median > 0 else math.inf


def kept_blocks(blocks: Sequence[Sequence[float]], disturbed_rel: float | None) -> list[Sequence[float]]:
    """The blocks whose median is within ``disturbed_rel`` of the fastest block's median (all when None)."""
    if disturbed_rel is None or len(blocks) < 2:
        return list(blocks)
    medians = [float(np.median(block)) for block in blocks]
    limit = min(medians) * (1 + disturbed_rel)
    return [block for block, median in zip(blocks, medians) if median <= limit]


# --- the timing loop ---------------------------------------------------------------------------------------------
@dataclass
class Timing:
    """What the timing loop recorded: the kept samples (ms) and how it went."""

    samples: list[float]
    runs: int
    blocks: int
    discarded_blocks: int
    stopped_by: StopReason
    warmup_runs: int
    elapsed_s: float
    block_runs: int
    runs_per_timing: int
    timer_resolution_ms: float


@functools.lru_cache(maxsize=2)
def _flush_buffer(kib: int) -> np.ndarray:
    return np.ones(kib * 256, dtype=np.float32)


def cache_flusher(kib: int) -> Callable[[], None] | None:
    """A function that reads a buffer of ``kib`` KiB (evicting near caches), or None for 0.

    It reads every byte of the buffer with ``max``: the same memory traffic and the same caches afterwards as any
    full read, at the lowest cost per byte numpy has (``sum`` does about three times the arithmetic), since the
    flush is untimed but counts against a round's time budget."""
    if kib <= 0:
        return None
    buffer = _flush_buffer(kib)

    def flush() -> None:
        buffer.max()

    return flush


def _check_stop(should_stop: StopCheck | None) -> None:
    if should_stop is not None and should_stop():
        raise MeasurementStopped("measurement stopped: its job was cancelled or the worker is stopping")


def runs_per_timing(runner: Runner, flush: Callable[[], None] | None, min_timing_ms: float, max_runs: int,
                    should_stop: StopCheck | None = None) -> int:
    """How many consecutive runs one timing must cover to last at least ``min_timing_ms``: the smallest power of
    two that does (probed one timing each), at most ``max_runs``."""
    group = 1
    while group < max_runs:
        group = min(max_runs, group * 2)
        _check_stop(should_stop)
        if runner.time_group(1, group, flush)[0] * group >= min_timing_ms:
            break
    return group


def time_runner(runner: Runner, params: ProtocolParams, clock: Clock = time.perf_counter,
                should_stop: StopCheck | None = None) -> Timing:
    """Warm up, then time ``runner`` in blocks until the stopping rule of the protocol holds (module docstring).

    ``should_stop`` is asked before every warm-up run and every timed block: when it answers True the loop raises
    MeasurementStopped (nothing is returned; the caller keeps the op to measure another time).
    """
    flush = cache_flusher(params.cache_flush_kib)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        # warm-up, by count and by time; it also estimates the wall time of one run
        warm_start, warm_runs = clock(), 0
        while warm_runs < params.warmup_runs or clock() - warm_start < params.warmup_s:
            _check_stop(should_stop)
            runner.time_runs(1, flush)
            warm_runs += 1
        per_run_s = (clock() - warm_start) / warm_runs if warm_runs else 0.0
        block_runs = params.min_block_runs
        if per_run_s > 0:
            block_runs = max(block_runs, math.ceil(params.block_s / per_run_s))
        # timed blocks; runs shorter than the timer can tell are timed in groups
        resolution_ms = runner.timer_resolution_ms
        min_timing_ms = params.min_timing_ticks * resolution_ms
        start = clock()
        blocks: list[list[float]] = []
        runs, group = 0, 1
        while True:
            _check_stop(should_stop)
            count = min(block_runs, params.max_runs - runs)
            block = runner.time_runs(count, flush) if group == 1 else runner.time_group(count, group, flush)
            if group == 1 and not blocks and float(np.median(block)) < min_timing_ms:
                group = runs_per_timing(runner, flush, min_timing_ms, params.max_runs_per_timing, should_stop)
                block_runs = max(params.min_block_runs, math.ceil(block_runs / group))
                if group > 1:
                    continue  # the first block, timed run by run, says too little: dropped
            blocks.append(block)
            runs += len(blocks[-1])
            kept = kept_blocks(blocks, params.disturbed_block_rel)
            samples = [t for block in kept for t in block]
            reason: StopReason | None = None
            if runs >= params.max_runs:
                reason = "max_runs"
            elif (len(samples) >= params.min_runs and len(kept) >= params.min_blocks
                  and relative_ci_halfwidth(samples, params.confidence) <= params.target_rel_ci):
                reason = "precision"
            elif clock() - start >= params.time_budget_s and runs >= params.min_runs:
                reason = "budget"
            if reason is not None:
                return Timing(samples=samples, runs=runs, blocks=len(blocks), discarded_blocks=len(blocks) - len(kept),
                              stopped_by=reason, warmup_runs=warm_runs, elapsed_s=clock() - start,
                              block_runs=block_runs, runs_per_timing=group, timer_resolution_ms=resolution_ms)
    finally:
        if gc_was_enabled:
            gc.enable()


# --- process state during a measurement -------------------------------------------------------------------------
@contextmanager
def pinned_cores(threads: int, enabled: bool = True) -> Iterator[set[int] | None]:
    """Pin the calling thread to the last ``threads`` cores it may use, with torch's intra-op threads set to as
    many (both restored after); yields the cores, or None when disabled or where the OS has no
    ``sched_setaffinity``.

    Torch's thread count follows the pin because what runs pinned also builds and exports modules with torch
    (tracing runs the module once): torch's default of one thread per core of the machine, squeezed onto fewer
    cores, spins against itself and makes each export many times slower."""
    if not enabled or not hasattr(os, "sched_setaffinity"):
        yield None
        return
    previous = os.sched_getaffinity(0)
    cores = set(sorted(previous)[-threads:])
    previous_threads = torch.get_num_threads()
    os.sched_setaffinity(0, cores)
    torch.set_num_threads(len(cores))
    try:
        yield cores
    finally:
        torch.set_num_threads(previous_threads)
        os.sched_setaffinity(0, previous)


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """torch's CPU random state seeded for the block, the caller's state restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# --- measurements ------------------------------------------------------------------------------------------------
def _check_batch(batch: int) -> None:
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH:
        raise ValueError(f"batch: must be an integer in [1, {MAX_BATCH}], got {batch!r}")


def time_module(module: nn.Module, input_shape: tuple[int, int, int, int], backend: Backend, dtype: str,
                threads: int, params: ProtocolParams, clock: Clock = time.perf_counter,
                should_stop: StopCheck | None = None) -> Timing:
    """Prepare ``module`` on ``backend`` and run the timing loop on it (the caller holds the lock and the cores)."""
    runner = backend.prepare(module, input_shape, dtype, threads, seed=params.seed)
    try:
        return time_runner(runner, params, clock, should_stop)
    finally:
        runner.close()


def measurement_context(backend: Backend, batch: int, dtype: str, threads: int,
                        params: ProtocolParams) -> tuple[str, ...]:
    """The key under which calibration values may be shared: backend environment, dtype, threads, protocol."""
    return (PROTOCOL_VERSION, backend.name, env_hash(backend.environment(threads)), str(batch), dtype, str(threads),
            params.model_dump_json())


def measure_op_round(spec: OpSpec, backend: Backend, batch: int, dtype: str, threads: int,
                     params: ProtocolParams | None = None,
                     calibration_cache: calibration.CalibrationCache | None = None,
                     should_stop: StopCheck | None = None) -> RoundMeasurement:
    """One round of one op at ``batch`` on ``backend``: the raw statistics of what was timed (the op inside its
    sandwich when ``params.calibrate``) and the calibration correction (module docstring, points 4 and 7).

    ``calibration_cache`` holds the calibration values of the measurement session this op belongs to: pass the
    same cache for every op (and every round) of a job, so that neighbouring ops subtract the same boundary
    timings. None: a cache of this call only (nothing shared with any other measurement). ``should_stop``: see
    :func:`time_runner` (asked in the op's timing and in its calibration timings).
    """
    params = params or ProtocolParams()
    cache = calibration.CalibrationCache() if calibration_cache is None else calibration_cache
    _check_batch(batch)
    with MEASURE_LOCK, pinned_cores(threads, params.affinity):
        with seeded(params.seed):
            module = build_op(spec).eval()
            if params.calibrate:
                module = calibration.sandwich(spec, module, backend.boundary_kind)
        input_shape = (batch, *spec.input_shape)
        timing = time_module(module, input_shape, backend, dtype, threads, params, should_stop=should_stop)
        raw = Stats.from_samples(timing.samples)
        correction = 0.0
        if params.calibrate:
            context = measurement_context(backend, batch, dtype, threads, params)

            def time_median(calibration_module: nn.Module, shape: tuple[int, int, int, int]) -> float:
                calibration_timing = time_module(calibration_module, shape, backend, dtype, threads, params,
                                                 should_stop=should_stop)
                return float(np.median(calibration_timing.samples))

            correction = calibration.correction_ms(spec, backend.boundary_kind, cache, context, batch, time_median)
        return RoundMeasurement(raw=raw, correction_ms=correction, runs_per_timing=timing.runs_per_timing,
                                timer_resolution_ms=timing.timer_resolution_ms)


def measure_network_round(arch: Architecture, backend: Backend, batch: int, dtype: str, threads: int,
                          params: ProtocolParams | None = None,
                          should_stop: StopCheck | None = None) -> RoundMeasurement:
    """One round of the whole network of ``arch`` at ``batch`` on ``backend`` (no calibration);
    ``should_stop``: see :func:`time_runner`."""
    params = params or ProtocolParams()
    _check_batch(batch)
    with MEASURE_LOCK, pinned_cores(threads, params.affinity):
        with seeded(params.seed):
            module = build_network(arch).eval()
        input_shape = (batch, arch.in_chs, *arch.input_size)
        timing = time_module(module, input_shape, backend, dtype, threads, params, should_stop=should_stop)
        return RoundMeasurement(raw=Stats.from_samples(timing.samples), runs_per_timing=timing.runs_per_timing,
                                timer_resolution_ms=timing.timer_resolution_ms)


def measure_network(arch: Architecture, backend: Backend, batch: int, dtype: str, threads: int,
                    params: ProtocolParams | None = None, should_stop: StopCheck | None = None) -> Stats:
    """Latency statistics of the whole network, measured once (:func:`measure_network_round`'s statistics)."""
    return measure_network_round(arch, backend, batch, dtype, threads, params, should_stop).raw
