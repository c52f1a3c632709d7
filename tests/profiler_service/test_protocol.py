"""The measurement protocol: statistics, stopping rule, block filter, lock, affinity, calibration."""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from pydantic import ValidationError
from torch import nn

from nas_ops.arch import Architecture
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
    measure_op,
    median_ci,
    pinned_cores,
    relative_ci_halfwidth,
    time_runner,
)

QUICK = {"warmup_runs": 2, "warmup_s": 0.0, "min_runs": 10, "min_blocks": 2, "min_block_runs": 10, "block_s": 1e-9,
         "affinity": False}


class FakeClock:
    """A clock that only moves when a fake run takes time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class ScriptedRunner(Runner):
    """Returns timings drawn from ``draw`` and advances the fake clock by them; records every timed sample."""

    def __init__(self, draw: Callable[[], float], clock: FakeClock) -> None:
        self.draw, self.clock = draw, clock
        self.timed: list[list[float]] = []  # one list per time_runs call
        self.hooks = 0

    @property
    def input(self) -> np.ndarray:
        return np.zeros(1, dtype=np.float32)

    def run(self) -> None:
        self.time_runs(1)

    def time_runs(self, count: int, before_each: Callable[[], None] | None = None) -> list[float]:
        times = []
        for _ in range(count):
            if before_each is not None:
                before_each()
                self.hooks += 1
            t = self.draw()
            self.clock.now += t / 1e3
            times.append(t)
        self.timed.append(times)
        return times

    def output(self) -> np.ndarray:
        return self.input


def scripted(draw: Callable[[], float]) -> tuple[ScriptedRunner, FakeClock]:
    clock = FakeClock()
    return ScriptedRunner(draw, clock), clock


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
    threads = [threading.Thread(target=lambda: [measure_op(spec, backend, 1, "float32", 1, params)
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
    before = os.sched_getaffinity(0)
    with pinned_cores(1) as cores:
        assert cores == {max(before)} and os.sched_getaffinity(0) == cores
    assert os.sched_getaffinity(0) == before
    with pinned_cores(1, enabled=False) as cores:
        assert cores is None and os.sched_getaffinity(0) == before


def test_bad_batch_is_refused() -> None:
    with pytest.raises(ValueError, match="batch"):
        measure_op(parse_spec("head_r4x4_c8-10"), get_backend("ort-cpu"), 0, "float32", 1, ProtocolParams.fast())


# --- calibration ---------------------------------------------------------------------------------------------
@pytest.fixture
def fresh_calibration() -> Iterator[None]:
    calibration.clear_cache()
    yield
    calibration.clear_cache()


def _chain() -> list[OpSpec]:
    """A small network as a chain: stem, blocks (two shape changes, one identity), mix, head."""
    space = load_space("micro-16")
    arch: Architecture = space.architecture([0, space.cells()[1].zero_index, 3])
    return arch.specs()


def test_corrections_telescope_so_sums_match_an_additive_network(fresh_calibration: None) -> None:
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
    predicted = 0.0
    for spec in specs:
        a = spec.input_shape
        b = (spec.out_chs, spec.out_height, spec.out_width)
        entry, exit_ = calibration.is_entry(spec), calibration.is_exit(spec)
        sandwich = o + kernel(spec) + (0 if entry else rin(a) + n(a)) + (0 if exit_ else n(b) + rout(b))
        sandwich += rin(a) if entry else 0.0  # the stem reads the network input as a network does
        sandwich += rout(spec.output_shape) if exit_ else 0.0
        predicted += sandwich - calibration.correction_ms(spec, "depthwise_conv", context, 1, time_median)
    network = o + rin(specs[0].input_shape) + sum(kernel(s) for s in specs) + rout(specs[-1].output_shape)
    assert predicted == pytest.approx(network, rel=1e-12)
    # every calibration graph timed CALIBRATION_REPEATS times, once (then cached)
    assert sorted(calls) == sorted(list(set(calls)) * calibration.CALIBRATION_REPEATS)


def test_a_disturbed_calibration_timing_is_not_kept(fresh_calibration: None) -> None:
    """A value shared by every op of its shape is the lowest of its repeated timings: one timing slowed down by
    something else on the machine (here the first, +40%) does not shift the ops."""
    timings = iter([0.014, 0.010, 0.0102])

    def time_median(module: nn.Module, shape: tuple[int, int, int, int]) -> float:
        return next(timings)

    assert calibration.CALIBRATION_REPEATS == 3
    assert calibration.boundary_ms(("ctx",), "depthwise_conv", 1, (8, 4, 4), time_median) == 0.010
    # cached: no more timings
    assert calibration.boundary_ms(("ctx",), "depthwise_conv", 1, (8, 4, 4), time_median) == 0.010


def test_correction_formula_for_stem_inner_and_head(fresh_calibration: None) -> None:
    values = {(1, 1, 1, 1): 0.01, (1, 8, 8, 8): 0.21, (1, 16, 4, 4): 0.11}

    def time_median(module: nn.Module, shape: tuple[int, int, int, int]) -> float:
        return values[shape]

    stem = parse_spec("conv_r16x16_c3-8_k3_s2_relu6")
    inner = parse_spec("mbconv_r8x8_c8-16_k3_e3_s2_relu6")
    head = parse_spec("head_r4x4_c16-10")
    ctx = ("formula",)
    assert calibration.correction_ms(stem, "depthwise_conv", ctx, 1, time_median) == pytest.approx((0.21 - 0.01) / 2)
    assert calibration.correction_ms(inner, "depthwise_conv", ctx, 1, time_median) == pytest.approx((0.21 + 0.11) / 2)
    assert calibration.correction_ms(head, "depthwise_conv", ctx, 1, time_median) == pytest.approx((0.11 + 0.01) / 2)


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


# --- real measurements -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ort-cpu", "torch-cpu"])
def test_identity_costs_about_nothing_and_a_network_is_measured(name: str) -> None:
    backend = get_backend(name)
    params = ProtocolParams.fast().model_copy(update={"affinity": False})
    identity = measure_op(parse_spec("identity_r8x8_c8-8"), backend, 1, "float32", 1, params)
    conv = measure_op(parse_spec("mbconv_r8x8_c8-16_k3_e6_s2_relu6"), backend, 1, "float32", 1, params)
    assert 0 <= identity.median_ms < conv.median_ms
    arch = load_space("micro-16").architecture([0, 1, 2])
    network = measure_network(arch, backend, 2, "float32", 1, params)
    assert network.median_ms > 0 and network.samples >= 3
