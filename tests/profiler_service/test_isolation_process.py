"""The measuring process's service side: frames, limits enforced by ending the child, deaths named, restarts.

A scripted child (:mod:`tests.profiler_service.scripted_child`) speaks the real protocol; the time and memory
limits read a fake clock and a fake resident size where the test needs them to pass at a known moment.
"""

from __future__ import annotations

import io
import itertools
import os
import signal
import sys

import pytest

from profiler_service.engine.protocol import MeasurementStopped
from profiler_service.isolation.errors import (
    MeasuringProcessDied,
    MemoryLimitExceeded,
    RemoteError,
    TimeLimitExceeded,
)
from profiler_service.isolation.frames import read_frame, write_frame
from profiler_service.isolation.process import MeasuringProcess, describe_exit

SCRIPTED = (sys.executable, "-m", "tests.profiler_service.scripted_child")
MIB = 1 << 20


@pytest.fixture
def child() -> MeasuringProcess:
    process = MeasuringProcess("scripted", command=SCRIPTED, poll_s=0.01)
    yield process
    process.close()


def test_a_frame_comes_back_as_written_and_a_cut_frame_is_end_of_file() -> None:
    stream = io.BytesIO()
    write_frame(stream, {"kind": "echo", "value": [1.5, "x"]})
    data = stream.getvalue()
    assert read_frame(io.BytesIO(data)) == {"kind": "echo", "value": [1.5, "x"]}
    with pytest.raises(EOFError):
        read_frame(io.BytesIO(data[:-3]))


def test_a_request_is_answered_with_its_value_and_the_peak(child: MeasuringProcess) -> None:
    assert child.request({"kind": "echo", "value": 42}, what="an echo") == (42, 1234)
    assert child.generation == 1 and child.pid is not None and child.idle_rss_bytes > 0


def test_an_item_error_is_raised_as_the_child_said_and_the_child_stays(child: MeasuringProcess) -> None:
    child.request({"kind": "echo", "value": 1}, what="an echo")
    pid = child.pid
    with pytest.raises(RemoteError, match=r"^ValueError: op spec 'x': unknown kind$"):
        child.request({"kind": "remote_error"}, what="op x")
    assert child.pid == pid


def test_a_refused_allocation_names_the_limit_and_its_setting(child: MeasuringProcess) -> None:
    with pytest.raises(MemoryLimitExceeded) as caught:
        child.request({"kind": "memory_error"}, what="op big", memory_bytes=600 * MIB,
                      memory_setting="the per-op memory limit (max_op_memory_mib)")
    assert str(caught.value).startswith("measuring op big needed more memory than the per-op memory limit "
                                        "(max_op_memory_mib) of 600 MiB allows")


def test_the_data_limit_makes_a_real_allocation_past_the_limit_fail_and_the_child_goes_on(
        child: MeasuringProcess) -> None:
    ok, peak = child.request({"kind": "allocate", "mib": 64}, what="a small item", memory_bytes=512 * MIB)
    assert ok == 1 and 64 * MIB < peak <= 512 * MIB
    with pytest.raises(MemoryLimitExceeded, match="of 512 MiB allows"):
        child.request({"kind": "allocate", "mib": 1024}, what="a big item", memory_bytes=512 * MIB)
    assert child.request({"kind": "echo", "value": "after"}, what="an echo")[0] == "after"
    assert child.generation == 1


def test_resident_memory_past_the_limit_ends_the_child_and_the_next_request_starts_another() -> None:
    readings = iter([10 * MIB, 900 * MIB])
    process = MeasuringProcess("scripted", command=SCRIPTED, poll_s=0.01, rss=lambda pid: next(readings, 900 * MIB))
    try:
        process.request({"kind": "echo", "value": 0}, what="warm-up")
        pid = process.pid
        with pytest.raises(MemoryLimitExceeded) as caught:
            process.request({"kind": "sleep", "seconds": 30}, what="op huge", memory_bytes=512 * MIB,
                            memory_setting="the per-op memory limit (max_op_memory_mib)")
        assert str(caught.value) == ("measuring op huge passed the per-op memory limit (max_op_memory_mib) of "
                                     "512 MiB: the measuring process reached 900 MiB resident and was ended")
        assert process.pid is None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        assert process.request({"kind": "echo", "value": 2}, what="an echo")[0] == 2
        assert process.generation == 2
    finally:
        process.close()


def test_the_time_limit_ends_the_child_and_names_the_setting() -> None:
    ticks = itertools.count(0.0, 1.0)  # every look at the clock is one second later
    process = MeasuringProcess("scripted", command=SCRIPTED, poll_s=0.01, clock=lambda: next(ticks))
    try:
        with pytest.raises(TimeLimitExceeded) as caught:
            process.request({"kind": "sleep", "seconds": 30}, what="op slow", time_limit_s=5)
        assert str(caught.value) == ("measuring op slow took longer than the time limit of 5 s per item "
                                     "(item_time_limit_s); the measuring process was ended")
        assert process.pid is None
    finally:
        process.close()


def test_a_stop_ends_the_item_in_flight_by_ending_the_child(child: MeasuringProcess) -> None:
    child.request({"kind": "echo", "value": 0}, what="warm-up")
    looks = itertools.count()
    with pytest.raises(MeasurementStopped, match="measuring op long stopped"):
        child.request({"kind": "sleep", "seconds": 60}, what="op long", should_stop=lambda: next(looks) >= 3)
    assert child.pid is None


@pytest.mark.parametrize(("sig", "words"), [(signal.SIGSEGV, "ended by SIGSEGV"),
                                            (signal.SIGKILL, "killed by SIGKILL (the kernel's OOM killer")])
def test_a_child_that_dies_is_named_with_its_signal_and_replaced(child: MeasuringProcess, sig: int,
                                                                 words: str) -> None:
    with pytest.raises(MeasuringProcessDied) as caught:
        child.request({"kind": "crash", "signal": sig}, what="op crashy")
    assert str(caught.value).startswith("the measuring process of scripted died while measuring op crashy: " + words)
    assert child.request({"kind": "echo", "value": 3}, what="an echo")[0] == 3
    assert child.generation == 2


def test_a_child_that_cannot_start_is_a_clear_error() -> None:
    process = MeasuringProcess("scripted", command=SCRIPTED, poll_s=0.01,
                               env={**os.environ, "SCRIPTED_CHILD_EXIT_BEFORE_READY": "1"})
    with pytest.raises(MeasuringProcessDied, match=r"^the measuring process of scripted did not start: "
                                                   r"exited with status 3$"):
        process.request({"kind": "echo", "value": 1}, what="an echo")


def test_exits_are_described_in_words() -> None:
    assert describe_exit(3) == "exited with status 3"
    assert describe_exit(-signal.SIGTERM) == "ended by SIGTERM"
