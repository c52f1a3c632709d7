"""Measuring in real measuring processes (the runtimes loaded in a child): what comes back, the memory limit
enforced on a real op, a duet that lives in the child and survives its restart, a stop that ends the item."""

from __future__ import annotations

import threading
import time

import pytest

from nas_ops.arch import Architecture
from nas_ops.spec import parse_spec
from profiler_service.engine.backends import get_backend
from profiler_service.engine.calibration import CalibrationCache
from profiler_service.engine.duet import DuetBackend, duet_params
from profiler_service.engine.protocol import MeasurementStopped, ProtocolParams
from profiler_service.isolation.errors import MemoryLimitExceeded, RemoteError
from profiler_service.isolation.measurer import IsolatedMeasurer, RemoteDuet

MIB = 1 << 20
SMALL = "mbconv_r8x8_c8-8_k3_e3_s1_relu6_skip"
#: About 1 GiB to export and time: past a 700 MiB limit on either backend.
BIG = "conv_r256x256_c3-512_k3_s1_relu6"
FAST = ProtocolParams.fast()


@pytest.fixture
def measurer() -> IsolatedMeasurer:
    isolated = IsolatedMeasurer(op_memory_bytes=700 * MIB, network_memory_bytes=900 * MIB, time_limit_s=120)
    yield isolated
    isolated.close()


@pytest.mark.parametrize("backend", ["ort-cpu", "torch-cpu"])
def test_an_op_round_comes_back_with_its_real_peak_within_the_limit(measurer: IsolatedMeasurer,
                                                                    backend: str) -> None:
    round_ = measurer.measure_op_round(parse_spec(SMALL), get_backend(backend), 1, "float32", 1, FAST,
                                       CalibrationCache())
    process = measurer.process(backend)
    assert round_.raw.samples >= FAST.min_runs and round_.raw.median_ms > 0
    assert process.idle_rss_bytes <= round_.peak_rss_bytes <= 700 * MIB


def test_an_op_past_the_memory_limit_fails_naming_it_and_the_next_op_is_measured(
        measurer: IsolatedMeasurer) -> None:
    backend = get_backend("ort-cpu")
    with pytest.raises(MemoryLimitExceeded, match=rf"measuring op {BIG} .*the per-op memory limit "
                                                  r"\(max_op_memory_mib\) of 700 MiB"):
        measurer.measure_op_round(parse_spec(BIG), backend, 1, "float32", 1, FAST)
    after = measurer.measure_op_round(parse_spec(SMALL), backend, 1, "float32", 1, FAST)
    assert after.peak_rss_bytes <= 700 * MIB


def test_an_op_the_runtime_cannot_build_is_the_items_own_error(measurer: IsolatedMeasurer) -> None:
    with pytest.raises(RemoteError, match=r"^ValueError: dtype: 'float16' is not measured on ort-cpu"):
        measurer.measure_op_round(parse_spec(SMALL), get_backend("ort-cpu"), 1, "float16", 1, FAST)


def test_a_network_is_measured_under_the_network_limit(measurer: IsolatedMeasurer) -> None:
    arch = Architecture(stem=parse_spec("conv_r16x16_c3-8_k3_s2_relu6"), blocks=[parse_spec(SMALL)],
                        mix=None, head=parse_spec("head_r8x8_c8-10"))
    round_ = measurer.measure_network_round(arch, get_backend("ort-cpu"), 1, "float32", 1, FAST)
    assert round_.raw.median_ms > 0 and round_.peak_rss_bytes <= 900 * MIB


def test_a_duet_lives_in_the_child_and_is_started_again_after_a_restart(measurer: IsolatedMeasurer) -> None:
    params = duet_params(FAST)
    backend = get_backend("ort-cpu")
    started = measurer.start_regime_duet(backend, 1, params)
    assert isinstance(started.duet, RemoteDuet) and all(v > 0 for v in started.series_ms)
    duet = started.scaled(min(started.series_ms))
    assert duet.shared_baseline_ms == pytest.approx(min(started.series_ms))
    first = measurer.measure_op_round(parse_spec(SMALL), DuetBackend(backend, duet), 1, "float32", 1, params)
    measurer.process("ort-cpu").kill()
    again = measurer.measure_op_round(parse_spec(SMALL), DuetBackend(backend, duet), 1, "float32", 1, params)
    assert measurer.process("ort-cpu").generation == 2
    assert first.raw.median_ms > 0 and again.raw.median_ms > 0


def test_a_stop_ends_the_item_in_flight_within_seconds(measurer: IsolatedMeasurer) -> None:
    slow = ProtocolParams(time_budget_s=60, min_runs=1_000_000, max_runs=1_000_000, target_rel_ci=0.0001,
                          rounds=1, calibrate=False)
    backend = get_backend("ort-cpu")
    measurer.measure_op_round(parse_spec(SMALL), backend, 1, "float32", 1, FAST)  # the child is up
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    started = time.monotonic()
    with pytest.raises(MeasurementStopped):
        measurer.measure_op_round(parse_spec(SMALL), backend, 1, "float32", 1, slow, should_stop=stop.is_set)
    assert time.monotonic() - started < 10  # the item would time for 60 s
    assert measurer.process("ort-cpu").pid is None


def test_the_ops_of_one_session_share_their_calibration_values_in_the_child(measurer: IsolatedMeasurer) -> None:
    backend = get_backend("ort-cpu")
    cache = CalibrationCache()  # the job's: empty on this side, its values live in the child
    first = measurer.measure_op_round(parse_spec(SMALL), backend, 1, "float32", 1, FAST, cache)
    again = measurer.measure_op_round(parse_spec(SMALL), backend, 1, "float32", 1, FAST, cache)
    assert first.correction_ms == again.correction_ms  # the same boundary timings, measured once
