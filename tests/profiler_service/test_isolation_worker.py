"""The job worker with items that end processes: attempts counted across restarts (poison items), a measuring
process's errors stored as they name the limit, and each row's real peak memory stored with it."""

from __future__ import annotations

import subprocess
import sys

from sqlalchemy import select

from latency_db.models import Job, JobItem, Measurement, MeasurementRound
from latency_db.transactions import write_session
from profiler_service.isolation.errors import MemoryLimitExceeded
from profiler_service.engine.stats import RoundMeasurement
from profiler_service.jobs.worker import POISON_ATTEMPTS, poison_message
from tests.profiler_service.jobs_fakes import ScriptedMeasurer, make_worker, open_store, stats, wait_for

OPS = ["conv_r16x16_c3-8_k3_s2_relu6", "mbconv_r8x8_c8-8_k3_e3_s1_relu6_skip"]


def _run_to_the_end(store, job_id: int, measurer, **options: object) -> None:
    """A worker measuring with ``measurer`` until the job has finished."""
    worker = make_worker(store, measurer, **options)
    worker.start()
    try:
        wait_for(lambda: _finished(store, job_id), "job finished")
    finally:
        worker.stop()


def _finished(store, job_id: int) -> bool:
    return _job_status(store, job_id) in ("done", "failed")


def _job_status(store, job_id: int) -> str:
    with store.sessions() as session:
        return session.get(Job, job_id).status


def _items(store, job_id: int) -> list[JobItem]:
    with store.sessions() as session:
        return list(session.scalars(select(JobItem).where(JobItem.job_id == job_id).order_by(JobItem.position)))


def test_an_item_that_ended_the_process_twice_fails_without_being_measured_again(db_url: str) -> None:
    with open_store(db_url) as store:
        job_id = store.submit(OPS)
        with write_session(store.sessions) as session:
            first = session.scalars(select(JobItem).where(JobItem.job_id == job_id, JobItem.position == 0)).one()
            first.attempts = POISON_ATTEMPTS
        measurer = ScriptedMeasurer()
        _run_to_the_end(store, job_id, measurer)
        items = _items(store, job_id)
    assert [spec for _, spec in measurer.calls] == [OPS[1]]
    assert (items[0].status, items[0].error) == ("failed", poison_message("op", 2))
    assert items[0].error == ("measuring this op ended the process twice: the service stopped while it measured it "
                              "(killed, e.g. by the OOM killer, or a crash in the runtime); it is not measured again")
    assert (items[1].status, items[1].attempts) == ("done", 0)


def test_attempts_are_raised_while_an_item_is_measured_and_reset_when_it_comes_back(db_url: str) -> None:
    seen: list[int] = []
    with open_store(db_url) as store:
        job_id = store.submit(OPS[:1])

        def look(spec: str, kwargs: object) -> None:
            seen.extend(item.attempts for item in _items(store, job_id))

        _run_to_the_end(store, job_id, ScriptedMeasurer(before_return=look))
        assert seen == [1] and _items(store, job_id)[0].attempts == 0


def test_a_worker_process_killed_twice_by_one_item_fails_it_at_the_third_start(db_url: str) -> None:
    with open_store(db_url) as store:
        job_id = store.submit(OPS[:1])
        codes = [subprocess.run([sys.executable, "-m", "tests.profiler_service.poison_worker", db_url],
                                timeout=120).returncode for _ in range(3)]
        item = _items(store, job_id)[0]
        status = _job_status(store, job_id)
    assert codes == [137, 137, 0]
    assert (item.status, item.error, status) == ("failed", poison_message("op", 2), "failed")


def test_an_error_of_the_measuring_process_is_stored_as_it_names_the_limit(db_url: str) -> None:
    message = ("measuring op conv_r16x16_c3-8_k3_s2_relu6 needed more memory than the per-op memory limit "
               "(max_op_memory_mib) of 512 MiB allows (the runtime refused an allocation: ...)")

    def refuse(spec: str, kwargs: object) -> None:
        if spec == OPS[0]:
            raise MemoryLimitExceeded(message)

    with open_store(db_url) as store:
        job_id = store.submit(OPS)
        _run_to_the_end(store, job_id, ScriptedMeasurer(before_return=refuse))
        items = _items(store, job_id)
    assert (items[0].status, items[0].error) == ("failed", message)
    assert items[1].status == "done"


def test_the_peak_memory_of_each_round_and_the_highest_of_an_ops_rounds_are_stored(db_url: str) -> None:
    peaks = iter([300 << 20, 500 << 20, 400 << 20])

    def measure(*args: object, **kwargs: object) -> RoundMeasurement:
        return RoundMeasurement(raw=stats(1.0), peak_rss_bytes=next(peaks))

    with open_store(db_url) as store:
        job_id = store.submit(OPS[:1])
        worker = make_worker(store, measure, protocol="fast")
        worker.protocol_params = worker.protocol_params.model_copy(update={"rounds": 3, "settle_rel": None})
        worker.start()
        try:
            wait_for(lambda: _finished(store, job_id), "job finished")
        finally:
            worker.stop()
        with store.sessions() as session:
            row = session.scalars(select(Measurement)).one()
            rounds = sorted(r.peak_rss_bytes for r in session.scalars(select(MeasurementRound)))
    assert rounds == [300 << 20, 400 << 20, 500 << 20]
    assert row.peak_rss_bytes == 500 << 20
