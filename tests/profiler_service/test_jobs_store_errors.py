"""The worker on a store that refuses writes: bounded tries with exponential back-off, then the item fails with a
clear error and the job ends failed (no re-measuring storm); a database that is down makes the loop wait longer
and longer (issue 10, point 7). A recording sleep stands in for the clock; a store that fails on purpose for the
database."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError

from latency_db.models import Job, JobItem, Measurement
from tests.profiler_service.jobs_fakes import ScriptedMeasurer, Store, make_worker, open_store, wait_for

OPS = [f"mbconv_r8x8_c8-8_k{k}_e3_s1_relu6" for k in (3, 5, 7)]
DISK_FULL = "database or disk is full"


class RecordingSleep:
    """The worker's sleep: records each wait and returns at once (True, "stopping", once ``stop_after`` waits)."""

    def __init__(self, stop_after: int | None = None, on_stop: Callable[[], None] | None = None) -> None:
        self.waits: list[float] = []
        self.stop_after = stop_after
        self.on_stop = on_stop

    def __call__(self, seconds: float) -> bool:
        self.waits.append(seconds)
        if self.stop_after is not None and len(self.waits) >= self.stop_after:
            if self.on_stop is not None:
                self.on_stop()
            return True
        return False


def failing(operation: Callable[..., Any], failures: int | None, error: BaseException) -> Callable[..., Any]:
    """``operation`` that raises ``error`` on its first ``failures`` calls (every call for None); counts calls."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        wrapper.calls += 1  # type: ignore[attr-defined]
        if failures is None or wrapper.calls <= failures:  # type: ignore[attr-defined]
            raise error
        return operation(*args, **kwargs)

    wrapper.calls = 0  # type: ignore[attr-defined]
    return wrapper


def disk_full() -> OperationalError:
    return OperationalError("INSERT INTO measurements ...", {}, sqlite3.OperationalError(DISK_FULL))


def job_state(store: Store, job_id: int) -> tuple[str, str | None, list[tuple[str, str | None]]]:
    with store.sessions() as session:
        job = session.get(Job, job_id)
        items = session.scalars(select(JobItem).where(JobItem.job_id == job_id).order_by(JobItem.position)).all()
        return job.status, job.error, [(item.status, item.error) for item in items]


def test_a_store_that_stays_full_fails_the_item_after_bounded_tries_and_ends_the_job(db_url: str) -> None:
    sleep = RecordingSleep()
    with open_store(db_url) as store:
        job_id = store.submit(OPS)
        measurer = ScriptedMeasurer()
        worker = make_worker(store, measurer, sleep=sleep)
        real_store = worker.store.store_measurement
        worker.store.store_measurement = failing(real_store, None, disk_full())
        worker.start()
        try:
            wait_for(lambda: job_state(store, job_id)[0] not in ("queued", "running"), "the job ended")
            status, error, items = job_state(store, job_id)
            assert worker.store.store_measurement.calls == 5  # bounded tries
            assert sleep.waits == [0.5, 1.0, 2.0, 4.0]  # exponential back-off between them
            assert [spec for _, spec in measurer.calls] == OPS[:1]  # measured once, never again
            assert status == "failed"
            assert items[0][0] == "failed"
            assert "could not be stored" in items[0][1] and "refused it 5 times" in items[0][1]
            assert DISK_FULL in items[0][1]
            assert items[1:] == [("cancelled", None), ("cancelled", None)]
            assert DISK_FULL in error and "other pending items were cancelled" in error

            worker.store.store_measurement = real_store  # space again: the worker was not stuck
            later = store.submit(OPS[1:2])
            wait_for(lambda: job_state(store, later)[0] == "done", "the next job done")
        finally:
            worker.stop()
        with store.sessions() as session:
            assert list(session.scalars(select(Measurement.op_spec))) == OPS[1:2]


def test_a_store_error_that_passes_costs_a_short_wait_and_nothing_else(db_url: str) -> None:
    sleep = RecordingSleep()
    with open_store(db_url) as store:
        job_id = store.submit(OPS[:2])
        measurer = ScriptedMeasurer()
        worker = make_worker(store, measurer, sleep=sleep)
        worker.store.store_measurement = failing(worker.store.store_measurement, 2, disk_full())
        worker.start()
        try:
            wait_for(lambda: job_state(store, job_id)[0] == "done", "the job done")
        finally:
            worker.stop()
        assert sleep.waits == [0.5, 1.0]
        assert sorted(spec for _, spec in measurer.calls) == sorted(OPS[:2])
        assert job_state(store, job_id)[2] == [("done", None), ("done", None)]


def test_a_refusal_for_good_fails_the_item_at_once_and_the_job_goes_on(db_url: str) -> None:
    sleep = RecordingSleep()
    with open_store(db_url) as store:
        job_id = store.submit(OPS[:2])
        worker = make_worker(store, ScriptedMeasurer(), sleep=sleep)
        refused = IntegrityError("INSERT INTO measurements ...", {}, sqlite3.IntegrityError("CHECK failed"))
        worker.store.store_measurement = failing(worker.store.store_measurement, 1, refused)
        worker.start()
        try:
            wait_for(lambda: job_state(store, job_id)[0] == "failed", "the job failed")
        finally:
            worker.stop()
        assert sleep.waits == []  # not a transient error: no retries
        items = job_state(store, job_id)[2]
        assert items[0][0] == "failed" and "storing failed: IntegrityError" in items[0][1]
        assert items[1] == ("done", None)


def test_a_database_that_is_down_makes_the_loop_wait_longer_each_time(db_url: str) -> None:
    with open_store(db_url) as store:
        stopped = threading.Event()
        sleep = RecordingSleep(stop_after=8, on_stop=stopped.set)
        worker = make_worker(store, ScriptedMeasurer(), sleep=sleep)
        worker.store.claim = failing(worker.store.claim, None, disk_full())
        worker.start()
        try:
            assert stopped.wait(30)
        finally:
            worker.stop()
        assert sleep.waits[:8] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]  # then 60 s each, until stopped
        assert set(sleep.waits[8:]) <= {60.0}
