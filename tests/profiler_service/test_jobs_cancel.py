"""Cancel stops the item in flight: the measurement loop asks a ``should_stop`` hook between timed blocks, and the
worker wires it to "job cancelled (or taken over) or worker stopping" (issue 10, points 3 and 8: an item must not
hold the device after its job was cancelled)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from sqlalchemy import func, select

from latency_db.models import Job, JobItem, Measurement
from latency_db.repository import cancel_job
from latency_db.transactions import write_session
from nas_ops.spec import parse_spec
from profiler_service.engine.backends import Runner, get_backend
from profiler_service.engine.protocol import MeasurementStopped, ProtocolParams, measure_op_round, time_runner
from tests.profiler_service.jobs_fakes import DEADLINE_S, ScriptedMeasurer, Store, make_worker, open_store, wait_for

OPS = [f"mbconv_r8x8_c8-8_k{k}_e3_s1_relu6" for k in (3, 5, 7)]
#: How long the scripted item waits for its stop hook before it gives up and "finishes" (the bug).
ITEM_S = 20.0


class CountingRunner(Runner):
    """A runner that times nothing: each run takes 1 ms; it counts the blocks it was asked for."""

    def __init__(self) -> None:
        self.calls = 0

    @property
    def input(self) -> np.ndarray:
        return np.zeros(1, dtype=np.float32)

    def run(self) -> None:
        pass

    def output(self) -> np.ndarray:
        return np.zeros(1, dtype=np.float32)

    def time_runs(self, count: int, before_each: Callable[[], None] | None = None) -> list[float]:
        self.calls += 1
        return [1.0] * count


def stop_after(checks: int) -> Callable[[], bool]:
    """A hook that answers False ``checks`` times, then True."""
    asked = [0]

    def should_stop() -> bool:
        asked[0] += 1
        return asked[0] > checks

    return should_stop


# never stops on precision or budget (a fixed clock): only max_runs ends it, after 100 blocks of 10 runs
ENDLESS = ProtocolParams(warmup_runs=2, warmup_s=0.0, min_runs=1, max_runs=1000, min_block_runs=10,
                         min_blocks=10_000, block_s=1e-9, target_rel_ci=1e-9, time_budget_s=600,
                         disturbed_block_rel=None, cache_flush_kib=0)


def test_the_timing_loop_asks_the_hook_between_blocks_and_stops() -> None:
    runner = CountingRunner()
    with pytest.raises(MeasurementStopped, match="cancelled or the worker is stopping"):
        time_runner(runner, ENDLESS, clock=lambda: 0.0, should_stop=stop_after(2 + 3))
    assert runner.calls == 2 + 3  # two warm-up runs, three timed blocks, then the hook said stop
    full = CountingRunner()
    timing = time_runner(full, ENDLESS, clock=lambda: 0.0, should_stop=lambda: False)
    assert (timing.runs, timing.stopped_by, full.calls) == (1000, "max_runs", 2 + 100)


def test_measure_op_passes_the_hook_down() -> None:
    spec = parse_spec("conv_r16x16_c3-8_k3_s2_relu6")
    with pytest.raises(MeasurementStopped):
        measure_op_round(spec, get_backend("ort-cpu"), 1, "float32", 1, ProtocolParams.fast(), should_stop=lambda: True)


def waiting_for_its_stop_hook(entered: threading.Event, outcome: list[str]) -> Callable[[str, dict], None]:
    """A scripted item that runs until its stop hook says stop (like the timing loop), for at most ITEM_S."""

    def run(_: str, kwargs: dict[str, Any]) -> None:
        should_stop = kwargs.get("should_stop") or (lambda: False)
        entered.set()
        deadline = time.monotonic() + ITEM_S
        while time.monotonic() < deadline:
            if should_stop():
                outcome.append("stopped")
                raise MeasurementStopped("stopped by its hook")
            time.sleep(0.005)
        outcome.append("ran to its end")

    return run


def counts(store: Store, job_id: int) -> tuple[str, list[str], int]:
    with store.sessions() as session:
        statuses = list(session.scalars(select(JobItem.status).where(JobItem.job_id == job_id)
                                        .order_by(JobItem.position)))
        return (session.get(Job, job_id).status, statuses,
                session.scalar(select(func.count()).select_from(Measurement)))


def test_cancel_stops_the_item_in_flight_and_the_worker_goes_on(db_url: str) -> None:
    entered, outcome = threading.Event(), []
    with open_store(db_url) as store:
        job_id = store.submit(OPS)
        measurer = ScriptedMeasurer(before_return=waiting_for_its_stop_hook(entered, outcome))
        worker = make_worker(store, measurer, check_s=0.05)
        worker.start()
        try:
            assert entered.wait(DEADLINE_S)
            with write_session(store.sessions) as session:
                cancel_job(session, job_id)
            wait_for(lambda: bool(outcome), "the item in flight ended", timeout_s=ITEM_S + 5)
            assert outcome == ["stopped"]
            wait_for(lambda: worker.current_job is None, "the worker left the cancelled job")
            assert counts(store, job_id) == ("cancelled", ["cancelled"] * 3, 0)
            assert [spec for _, spec in measurer.calls] == OPS[:1]  # the others never started

            measurer.before_return = None
            later = store.submit(OPS[1:2])
            wait_for(lambda: counts(store, later)[0] == "done", "the next job done")
        finally:
            worker.stop()


def test_stopping_the_worker_stops_the_item_in_flight_and_keeps_it_pending(db_url: str) -> None:
    entered, outcome = threading.Event(), []
    with open_store(db_url) as store:
        job_id = store.submit(OPS[:2])
        worker = make_worker(store, ScriptedMeasurer(before_return=waiting_for_its_stop_hook(entered, outcome)))
        worker.start()
        assert entered.wait(DEADLINE_S)
        worker.stop(timeout=ITEM_S + 5)
        assert outcome == ["stopped"] and not worker.alive
        assert counts(store, job_id) == ("running", ["pending", "pending"], 0)
        with store.sessions() as session:
            assert session.get(Job, job_id).lease_owner is None  # given back: the next start resumes it at once
