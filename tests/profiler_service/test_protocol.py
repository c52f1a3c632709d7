"""The measurement protocol: statistics, stopping rule, block filter, lock, affinity, calibration."""

from __future__ import annotations

import itertools
import math
import os
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from nas_ops.arch import Architecture
from nas_ops.blocks import build_op
from nas_ops.space import load_space
from nas_ops.spec import OpSpec, parse_spec
from profiler_service.engine import calibration
from profiler_service.engine.backends import get_backend
from profiler_service.engine.backends.base import Backend, Runner
from profiler_service.engine.protocol import (
    MEASURE_LOCK,
    PROTOCOL_VERSION,
    ProtocolParams,
    Stats,
    kept_blocks,
    measure_network,
    measure_op_round,
    median_ci,
    pinned_cores,
    relative_ci_halfwidth,
    time_runner,
)
from tests.profiler_service.machine_fakes import FakeClock, ScriptedRunner, scripted

QUICK = {"warmup_runs": 2, "warmup_s": 0.0, "min_runs": 10, "min_blocks": 2, "min_block_runs": 10, "block_s": 1e-9,
         "affinity": False}


# --- statistics ----------------------------------------------------------------------------------------------
def test_stats_equal_numpy_on_the_samples() -> None:
    samples = list(np.random.default_rng(1).lognormal(0.0, 0.3, size=137))
    stats = Stats.from_samples(samples)
    values = np.asarray(samples)
    assert stats.median_ms == pytest.approx(np.median(values))
    assert stats.mean_ms == pytest.approx(values.mean())
    assert stats.std_ms == pytest.approx(values.std(ddof=1))
    assert stats.min_ms == values.min()
    assert stats.p10_ms == pytest.approx(np.percentile(values, 10))
    assert stats.p90_ms == pytest.approx(np.percentile(values, 90))
    assert stats.iqr_ms == pytest.approx(np.percentile(values, 75) - np.percentile(values, 25))
    assert stats.samples == 137
    with pytest.raises(ValueError, match="samples"):
        Stats.from_samples([])


def test_shift_moves_location_floors_at_zero_and_keeps_spread() -> None:
    stats = Stats.from_samples([1.0, 2.0, 3.0, 4.0])
    moved = stats.shifted(-1.5)
    assert moved.median_ms == pytest.approx(1.0) and moved.min_ms == 0.0 and moved.p10_ms == 0.0
    assert moved.std_ms == stats.std_ms and moved.iqr_ms == stats.iqr_ms and moved.samples == 4


def test_median_ci_uses_the_binomial_order_statistics() -> None:
    samples = list(range(1, 101))  # the k-th order statistic is k
    assert median_ci(samples, 0.95) == (40, 61)
    assert relative_ci_halfwidth([5.0] * 20) == 0.0
    low, high = median_ci([3.0, 1.0, 2.0])
    assert (low, high) == (1.0, 3.0)


def test_block_filter_sets_aside_disturbed_blocks() -> None:
    blocks = [[1.0, 1.01, 0.99], [2.0, 2.1, 1.9], [1.02, 1.0, 1.03]]
    assert kept_blocks(blocks, 0.05) == [blocks[0], blocks[2]]
    assert kept_blocks(blocks, None) == blocks


# --- the timing loop -----------------------------------------------------------------------------------------
def test_low_noise_stops_early_on_precision_and_stats_describe_the_kept_samples() -> None:
    rng = np.random.default_rng(0)
    runner, clock = scripted(lambda: 1.0 + rng.normal(0, 0.002))
    params = ProtocolParams(**QUICK, time_budget_s=100.0, target_rel_ci=0.01)
    timing = time_runner(runner, params, clock)
    assert timing.stopped_by == "precision"
    assert timing.runs == 20 and timing.blocks == 2 and timing.warmup_runs == 2  # the earliest possible stop
    recorded = [t for block in runner.timed[2:] for t in block]  # after the two warm-up calls
    assert timing.samples == recorded
    stats = Stats.from_samples(timing.samples)
    assert stats.median_ms == pytest.approx(np.median(recorded)) and stats.p90_ms == pytest.approx(
        np.percentile(recorded, 90))


def test_high_noise_stops_at_the_time_budget() -> None:
    rng = np.random.default_rng(0)
    runner, clock = scripted(lambda: float(rng.lognormal(0.0, 1.0)))
    params = ProtocolParams(**{**QUICK, "disturbed_block_rel": None}, time_budget_s=0.5, target_rel_ci=0.001)
    timing = time_runner(runner, params, clock)
    assert timing.stopped_by == "budget"
    assert 0.5 <= timing.elapsed_s < 0.5 + 0.2  # one block (~10 runs of ~1.6 ms) past the budget at most
    assert timing.runs < params.max_runs and relative_ci_halfwidth(timing.samples) > 0.001


def test_max_runs_caps_the_loop() -> None:
    rng = np.random.default_rng(0)
    runner, clock = scripted(lambda: float(rng.lognormal(0.0, 1.0)))
    params = ProtocolParams(**QUICK, max_runs=35, time_budget_s=600, target_rel_ci=1e-6)
    timing = time_runner(runner, params, clock)
    assert timing.stopped_by == "max_runs" and timing.runs == 35


def test_warmup_respects_count_and_time_and_flush_hook_runs_before_every_run() -> None:
    runner, clock = scripted(lambda: 1.953125)  # 2**-9 s per run: exact sums
    params = ProtocolParams(**{**QUICK, "warmup_runs": 3, "warmup_s": 10 * 2**-9}, cache_flush_kib=4)
    timing = time_runner(runner, params, clock)
    assert timing.warmup_runs == 10  # ten runs' worth of warm-up time beats 3 runs
    assert runner.hooks == timing.warmup_runs + timing.runs


def test_blocks_last_about_block_s() -> None:
    runner, clock = scripted(lambda: 0.48828125)  # 2**-11 s per run
    params = ProtocolParams(**{**QUICK, "block_s": 20 * 2**-11, "min_block_runs": 3})
    timing = time_runner(runner, params, clock)
    assert timing.block_runs == 20


def test_params_validate_and_dump() -> None:
    with pytest.raises(ValidationError, match="min_runs"):
        ProtocolParams(min_runs=50, max_runs=10)
    with pytest.raises(ValidationError):
        ProtocolParams(target_rel_ci=0)
    with pytest.raises(ValidationError):
        ProtocolParams(unknown_knob=1)
    dumped = ProtocolParams.fast().model_dump()
    assert ProtocolParams(**dumped) == ProtocolParams.fast() and dumped["calibrate"] is True
    assert PROTOCOL_VERSION


# --- process state -------------------------------------------------------------------------------------------
class SleepRunner(Runner):
    """Sleeps per run and records the (start, end) of every timed call."""

    def __init__(self, log: list[tuple[float, float]]) -> None:
        self.log = log

    @property
    def input(self) -> np.ndarray:
        return np.zeros(1, dtype=np.float32)

    def run(self) -> None:
        time.sleep(0.001)

    def time_runs(self, count: int, before_each: Callable[[], None] | None = None) -> list[float]:
        start = time.perf_counter()
        for _ in range(count):
            time.sleep(0.001)
        end = time.perf_counter()
        self.log.append((start, end))
        return [(end - start) * 1e3 / count] * count

    def output(self) -> np.ndarray:
        return self.input


class SleepBackend(Backend):
    """A backend whose runners sleep, logging when they time."""

    def __init__(self) -> None:
        self.name = "sleep"
        self.options = {}
        self.log: list[tuple[float, float]] = []

    @property
    def available(self) -> bool:
        return True

    def environment(self, threads: int) -> dict:
        return {"backend": self.name, "threads": threads}

    def _prepare(self, module: nn.Module, input_shape: tuple, dtype: str, threads: int, seed: int) -> Runner:
        return SleepRunner(self.log)


def test_lock_is_exclusive_two_threads_never_time_at_once() -> None:
    backend = SleepBackend()
    params = ProtocolParams(warmup_runs=1, warmup_s=0, min_runs=3, min_block_runs=3, min_blocks=1,
                            time_budget_s=0.005, affinity=False, calibrate=False)
    spec = parse_spec("mbconv_r8x8_c8-8_k3_e3_s1_relu6_skip")
    threads = [threading.Thread(target=lambda: [measure_op_round(spec, backend, 1, "float32", 1, params)
                                                for _ in range(4)]) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    intervals = sorted(backend.log)
    assert len(intervals) >= 8
    assert all(prev[1] <= cur[0] for prev, cur in itertools.pairwise(intervals))


def test_lock_blocks_other_threads_while_held() -> None:
    acquired = []
    with MEASURE_LOCK:
        t = threading.Thread(target=lambda: acquired.append(MEASURE_LOCK.acquire(timeout=0.05)))
        t.start()
        t.join()
    assert acquired == [False]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no sched_setaffinity on this OS")
def test_pinned_cores_pins_and_restores() -> None:
    before, before_threads = os.sched_getaffinity(0), torch.get_num_threads()
    with pinned_cores(1) as cores:
        assert cores == {max(before)} and os.sched_getaffinity(0) == cores
        assert torch.get_num_threads() == 1  # torch's own threads on the pinned cores only
    assert os.sched_getaffinity(0) == before and torch.get_num_threads() == before_threads
    with pinned_cores(1, enabled=False) as cores:
        assert cores is None and os.sched_getaffinity(0) == before


def test_bad_batch_is_refused() -> None:
    with pytest.raises(ValueError, match="batch"):
        measure_op_round(parse_spec("head_r4x4_c8-10"), get_backend("ort-cpu"), 0, "float32", 1, ProtocolParams.fast())


# --- calibration ---------------------------------------------------------------------------------------------
def _chain() -> list[OpSpec]:
    """A small network as a chain: stem, blocks (two shape changes, one identity), mix, head."""
    space = load_space("micro-16")
    arch: Architecture = space.architecture([0, space.cells()[1].zero_index, 3])
    return arch.specs()


def test_corrections_telescope_so_sums_match_an_additive_network() -> None:
    """Synthetic runtime: a graph costs o + rin(first input) + rout(last output) + its ops, with rin != rout
    and boundary ops costing n(S). The corrected sandwich times must sum to the network's cost exactly."""
    o = 0.05

    def size(shape: tuple[int, ...]) -> float:
        return float(np.prod(shape)) / 1000

    def rin(shape: tuple[int, ...]) -> float:
        return 0.3 * size(shape)

    def rout(shape: tuple[int, ...]) -> float:
        return 0.7 * size(shape)

    def n(shape: tuple[int, ...]) -> float:
        return 0.1 * size(shape)

    def kernel(spec: OpSpec) -> float:
        return 0.0 if spec.kind == "identity" else 1.0 + 0.01 * spec.out_chs + 0.001 * spec.kernel

    calls = []

    def time_median(module: nn.Module, shape: tuple[int, int, int, int]) -> float:
        calls.append(shape)
        if isinstance(module, nn.Identity):
            return o
        s = shape[1:]
        return o + rin(s) + 2 * n(s) + rout(s)

    specs = _chain()
    context = ("synthetic",)
    cache = calibration.CalibrationCache()
    predicted = 0.0
    for spec in specs:
        a = spec.input_shape
        b = (spec.out_chs, spec.out_height, spec.out_width)
        entry, exit_ = calibration.is_entry(spec), calibration.is_exit(spec)
        sandwich = o + kernel(spec) + (0 if entry else rin(a) + n(a)) + (0 if exit_ else n(b) + rout(b))
        sandwich += rin(a) if entry else 0.0  # the stem reads the network input as a network does
        sandwich += rout(spec.output_shape) if exit_ else 0.0
        predicted += sandwich - calibration.correction_ms(spec, "depthwise_conv", cache, context, 1, time_median)
    network = o + rin(specs[0].input_shape) + sum(kernel(s) for s in specs) + rout(specs[-1].output_shape)
    assert predicted == pytest.approx(network, rel=1e-12)
    # every calibration graph timed CALIBRATION_REPEATS times, once (then cached)
    assert sorted(calls) == sorted(list(set(calls)) * calibration.CALIBRATION_REPEATS)


def test_a_disturbed_calibration_timing_is_not_kept() -> None:
    """A value shared by every op of its shape is the lowest of its repeated timings: one timing slowed down by
    something else on the machine (here the first, +40%) does not shift the ops."""
    timings = iter([0.014, 0.010, 0.0102])

    def time_median(module: nn.Module, shape: tuple[int, int, int, int]) -> float:
        return next(timings)

    cache = calibration.CalibrationCache()
    assert calibration.CALIBRATION_REPEATS == 3
    assert calibration.boundary_ms(cache, ("ctx",), "depthwise_conv", 1, (8, 4, 4), time_median) == 0.010
    # cached: no more timings
    assert calibration.boundary_ms(cache, ("ctx",), "depthwise_conv", 1, (8, 4, 4), time_median) == 0.010


class CalibrationTimer:
    """A scripted ``time_median``: the n-th timing of a calibration graph is ``base[shape] + n * drift``, so a
    value measured later in the process comes out larger; records every timed shape."""

    def __init__(self, base: dict[tuple[int, int, int, int], float], drift: float) -> None:
        self.base, self.drift = base, drift
        self.timed: list[tuple[int, int, int, int]] = []

    def __call__(self, module: nn.Module, shape: tuple[int, int, int, int]) -> float:
        self.timed.append(shape)
        return self.base[shape] + len(self.timed) * self.drift


def test_calibration_of_a_session_does_not_depend_on_what_the_process_measured_before() -> None:
    """Two sessions measure the same two ops in opposite orders, after a third session measured one of their
    shapes: each session times each of its calibration graphs itself (CALIBRATION_REPEATS times, once), and its
    corrections are those of a session that ran alone."""
    base = {(1, 1, 1, 1): 0.01, (1, 8, 8, 8): 0.21, (1, 16, 4, 4): 0.11, (1, 16, 2, 2): 0.05}
    first = parse_spec("mbconv_r8x8_c8-16_k3_e3_s2_relu6")  # shapes (8, 8, 8) -> (16, 4, 4)
    second = parse_spec("mbconv_r4x4_c16-16_k3_e3_s2_relu6")  # shapes (16, 4, 4) -> (16, 2, 2)
    ctx = ("orders",)

    def session(order: list[OpSpec]) -> tuple[dict[str, float], list[tuple[int, int, int, int]]]:
        timer = CalibrationTimer(base, drift=0.0)
        cache = calibration.CalibrationCache()
        corrections = {str(spec): calibration.correction_ms(spec, "depthwise_conv", cache, ctx, 1, timer)
                       for spec in order}
        return corrections, timer.timed

    # an earlier session on a drifting machine: its values must not leak into the later ones
    noisy = calibration.CalibrationCache()
    calibration.correction_ms(first, "depthwise_conv", noisy, ctx, 1, CalibrationTimer(base, drift=1.0))
    forward, forward_timed = session([first, second])
    backward, backward_timed = session([second, first])
    assert forward == backward
    assert forward[str(first)] == pytest.approx((0.21 + 0.11) / 2)
    assert forward[str(second)] == pytest.approx((0.11 + 0.05) / 2)
    for timed in (forward_timed, backward_timed):  # o and the three shapes, each timed by this session
        assert sorted(timed) == sorted(list(base) * calibration.CALIBRATION_REPEATS)


def test_calibration_values_are_kept_apart_per_context() -> None:
    timer = CalibrationTimer({(1, 8, 4, 4): 0.02}, drift=0.0)
    cache = calibration.CalibrationCache()
    calibration.boundary_ms(cache, ("ort-cpu", "threads=1"), "depthwise_conv", 1, (8, 4, 4), timer)
    calibration.boundary_ms(cache, ("ort-cpu", "threads=2"), "depthwise_conv", 1, (8, 4, 4), timer)
    assert len(timer.timed) == 2 * calibration.CALIBRATION_REPEATS and len(cache) == 2


def test_correction_formula_for_stem_inner_and_head() -> None:
    values = {(1, 1, 1, 1): 0.01, (1, 8, 8, 8): 0.21, (1, 16, 4, 4): 0.11}

    def time_median(module: nn.Module, shape: tuple[int, int, int, int]) -> float:
        return values[shape]

    stem = parse_spec("conv_r16x16_c3-8_k3_s2_relu6")
    inner = parse_spec("mbconv_r8x8_c8-16_k3_e3_s2_relu6")
    head = parse_spec("head_r4x4_c16-10")
    ctx, cache = ("formula",), calibration.CalibrationCache()

    def correction(spec: OpSpec) -> float:
        return calibration.correction_ms(spec, "depthwise_conv", cache, ctx, 1, time_median)

    assert correction(stem) == pytest.approx((0.21 - 0.01) / 2)
    assert correction(inner) == pytest.approx((0.21 + 0.11) / 2)
    assert correction(head) == pytest.approx((0.11 + 0.01) / 2)


def test_sandwich_and_boundary_ops() -> None:
    inner = parse_spec("mbconv_r8x8_c8-16_k3_e3_s2_relu6")
    layers = list(calibration.sandwich(inner, nn.Identity(), "channel_scale"))
    assert len(layers) == 3 and isinstance(layers[0], calibration.ChannelScale)
    assert len(calibration.sandwich(parse_spec("conv_r16x16_c3-8_k3_s2_relu6"), nn.Identity(), "depthwise_conv")) == 2
    assert len(calibration.sandwich(parse_spec("head_r4x4_c16-10"), nn.Identity(), "depthwise_conv")) == 2
    conv = calibration.boundary_op("depthwise_conv", 4)
    assert conv.groups == 4 and conv.kernel_size == (1, 1)
    with pytest.raises(ValueError, match="boundary kind"):
        calibration.boundary_op("fancy", 4)


# --- measure_op_round on a scripted backend -----------------------------------------------------------------------
class CostRunner(ScriptedRunner):
    """Every run of the module costs the same, known time (ms)."""

    def __init__(self, cost_ms: float) -> None:
        super().__init__(lambda: cost_ms, FakeClock())


class CostBackend(Backend):
    """A backend whose runners take a known time: one call ``CALL_MS``, each boundary op ``BOUNDARY_MS``, any other
    layer ``MS_PER_PARAM`` per parameter (an identity costs nothing). Records the shape of every prepared module."""

    CALL_MS, BOUNDARY_MS, MS_PER_PARAM = 0.004, 0.0015, 1e-4
    boundary_kind = "channel_scale"

    def __init__(self) -> None:
        self.name = "cost"
        self.options = {}
        self.prepared: list[tuple[int, int, int, int]] = []

    @property
    def available(self) -> bool:
        return True

    def environment(self, threads: int) -> dict:
        return {"backend": self.name, "threads": threads}

    def layer_ms(self, layer: nn.Module) -> float:
        if isinstance(layer, calibration.ChannelScale):
            return self.BOUNDARY_MS
        return self.MS_PER_PARAM * sum(p.numel() for p in layer.parameters())

    def _prepare(self, module: nn.Module, input_shape: tuple, dtype: str, threads: int, seed: int) -> Runner:
        self.prepared.append(input_shape)
        layers = list(module) if isinstance(module, nn.Sequential) else [module]
        return CostRunner(self.CALL_MS + sum(self.layer_ms(layer) for layer in layers))


SCRIPTED = ProtocolParams.fast().model_copy(update={"affinity": False})


def location(stats: Stats) -> tuple[float, ...]:
    """The location statistics, rounded past float noise (the runner's times are exact by construction)."""
    return tuple(round(v, 12) for v in (stats.median_ms, stats.min_ms, stats.p10_ms, stats.p90_ms))


def test_identity_costs_nothing_and_an_op_costs_its_own_time_after_calibration() -> None:
    """The sandwich's call overhead and boundary ops are subtracted exactly: an identity (which a runtime removes)
    comes out at 0 ms, a conv at what the conv itself costs."""
    backend = CostBackend()
    identity = measure_op_round(parse_spec("identity_r8x8_c8-8"), backend, 1, "float32", 1, SCRIPTED).calibrated()
    spec = parse_spec("mbconv_r8x8_c8-16_k3_e6_s2_relu6")
    conv = measure_op_round(spec, backend, 1, "float32", 1, SCRIPTED).calibrated()
    conv_alone_ms = backend.layer_ms(build_op(spec))
    assert identity.median_ms == pytest.approx(0.0, abs=1e-12) and identity.min_ms == pytest.approx(0.0, abs=1e-12)
    assert conv.median_ms == pytest.approx(conv_alone_ms) and conv.p90_ms == pytest.approx(conv_alone_ms)
    assert identity.median_ms < conv.median_ms
    assert conv.std_ms == pytest.approx(0.0, abs=1e-12) and conv.samples >= SCRIPTED.min_runs


def test_measure_op_shares_calibration_only_within_the_cache_it_is_given() -> None:
    ops = [parse_spec("mbconv_r8x8_c8-16_k3_e6_s2_relu6"), parse_spec("mbconv_r4x4_c16-16_k3_e3_s1_relu6")]
    calibration_graphs = {(1, 1, 1, 1), (1, 8, 8, 8), (1, 16, 4, 4)}

    def calibrations(backend: CostBackend) -> list[tuple[int, int, int, int]]:
        # prepared modules that are not the ops' sandwiches (which run on the ops' input shapes, once per op)
        sandwiches = [(1, *spec.input_shape) for spec in ops]
        timed = list(backend.prepared)
        for shape in sandwiches:
            timed.remove(shape)
        return timed

    shared, cache = CostBackend(), calibration.CalibrationCache()
    together = [measure_op_round(spec, shared, 1, "float32", 1, SCRIPTED, cache).calibrated() for spec in ops]
    assert sorted(calibrations(shared)) == sorted(list(calibration_graphs) * calibration.CALIBRATION_REPEATS)
    alone, reversed_order = CostBackend(), CostBackend()
    each = [measure_op_round(spec, alone, 1, "float32", 1, SCRIPTED).calibrated()  # None: a cache per call
            for spec in ops]
    backward = [measure_op_round(spec, reversed_order, 1, "float32", 1, SCRIPTED).calibrated()
                for spec in reversed(ops)][::-1]
    # the same numbers whatever was measured before, in whichever order (how many runs a block holds follows the
    # real clock, so only the values are compared)
    assert [location(s) for s in together] == [location(s) for s in each] == [location(s) for s in backward]
    per_call = [(1, 1, 1, 1), (1, 8, 8, 8), (1, 16, 4, 4), (1, 1, 1, 1), (1, 16, 4, 4)]  # op 2: in = out shape
    assert sorted(calibrations(alone)) == sorted(per_call * calibration.CALIBRATION_REPEATS)


# --- real measurements (behaviour only: real timings are never compared) ---------------------------------------
@pytest.mark.parametrize("name", ["ort-cpu", "torch-cpu"])
def test_real_ops_and_a_network_are_measured(name: str) -> None:
    backend = get_backend(name)
    params = ProtocolParams.fast().model_copy(update={"affinity": False})
    cache = calibration.CalibrationCache()
    for text in ("identity_r8x8_c8-8", "mbconv_r8x8_c8-16_k3_e6_s2_relu6"):
        stats = measure_op_round(parse_spec(text), backend, 1, "float32", 1, params, cache).calibrated()
        assert all(math.isfinite(v) and v >= 0 for v in stats.as_dict().values()), stats
        assert stats.samples >= params.min_runs
    assert len(cache) == 3  # o and the two shapes of the conv (the identity's shape is the conv's input)
    arch = load_space("micro-16").architecture([0, 1, 2])
    network = measure_network(arch, backend, 2, "float32", 1, params)
    assert all(math.isfinite(v) and v >= 0 for v in network.as_dict().values()), network
    assert network.samples >= params.min_runs


def test_the_cache_flush_reads_its_whole_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The flush reads every element of a buffer of the asked size (what evicts the caches)."""
    from profiler_service.engine import protocol

    read: list[int] = []

    class Buffer:
        def __init__(self, size: int) -> None:
            self.size = size

        def max(self) -> float:
            read.append(self.size)
            return 1.0

    assert protocol._flush_buffer(4).nbytes == 4 * 1024
    monkeypatch.setattr(protocol, "_flush_buffer", lambda kib: Buffer(kib * 256))
    assert protocol.cache_flusher(0) is None
    flush = protocol.cache_flusher(1024)
    flush()
    flush()
    assert read == [1024 * 256, 1024 * 256]  # float32: 1 MiB read in full, every time
