"""Claimed jobs are leased: two services on one database run each op once; a killed owner's job is taken over
after its lease expires, a live owner's never; the lease is renewed while an item runs and given back on stop
(issue 10, point 4). Scripted measurements, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta

from sqlalchemy import select

from latency_db.models import Job, JobItem, Measurement, utcnow
from latency_db.repository import claim_next_job
from latency_db.transactions import write_session
from tests.profiler_service.jobs_fakes import DEADLINE_S, ScriptedMeasurer, Store, make_worker, open_store, wait_for

JOB_A = [f"mbconv_r8x8_c8-8_k{k}_e{e}_s1_relu6" for k in (3, 5, 7) for e in (3, 6)]
JOB_B = [f"mbconv_r8x8_c8-16_k{k}_e{e}_s1_relu6" for k in (3, 5, 7) for e in (3, 6)]


def job_row(store: Store, job_id: int) -> Job:
    with store.sessions() as session:
        return session.get(Job, job_id)


def finished(store: Store, *job_ids: int) -> bool:
    return all(job_row(store, job_id).status in ("done", "failed", "cancelled") for job_id in job_ids)


def item_statuses(store: Store, job_id: int) -> list[str]:
    with store.sessions() as session:
        return list(session.scalars(select(JobItem.status).where(JobItem.job_id == job_id).order_by(JobItem.position)))


def test_two_services_on_one_database_measure_each_op_once(db_url: str) -> None:
    """Two workers (own engines, like two processes) with the same device identity and two jobs: every timing
    waits at a barrier of two, so both workers are provably measuring at the same moments; each op is measured
    exactly once, each job by one worker."""
    barrier = threading.Barrier(2, timeout=DEADLINE_S)
    with open_store(db_url) as first, open_store(db_url) as second:
        assert first.device_id == second.device_id
        jobs = [first.submit(JOB_A, force=True), first.submit(JOB_B, force=True)]
        measurers = [ScriptedMeasurer(who, before_return=lambda *_: barrier.wait()) for who in ("one", "two")]
        workers = [make_worker(store, measurer) for store, measurer in zip((first, second), measurers)]
        for worker in workers:
            worker.start()
        try:
            wait_for(lambda: finished(first, *jobs), "both jobs finished")
        finally:
            barrier.abort()  # a worker left waiting (the bug) must not hang the test
            for worker in workers:
                worker.stop()
        calls = measurers[0].calls + measurers[1].calls
        assert Counter(spec for _, spec in calls) == Counter(JOB_A + JOB_B)  # each op once
        by_worker = {who: {spec for w, spec in calls if w == who} for who in ("one", "two")}
        assert sorted(map(sorted, by_worker.values())) == sorted([sorted(JOB_A), sorted(JOB_B)])  # a job, a worker
        for job_id in jobs:
            assert job_row(first, job_id).status == "done"
            assert item_statuses(first, job_id) == ["done"] * len(JOB_A)
        owners = {job_row(first, job_id).lease_owner for job_id in jobs}
        assert owners == {worker.owner for worker in workers}


def test_a_killed_owners_job_is_taken_over_once_its_lease_expired(db_url: str) -> None:
    with open_store(db_url) as store:
        job_id = store.submit(JOB_A[:3])
        with write_session(store.sessions) as session:  # a service claimed it an hour ago, then was killed
            claim_next_job(session, device_id=store.device_id, owner="killed", lease_s=60,
                           now=utcnow() - timedelta(hours=1))
        measurer = ScriptedMeasurer()
        worker = make_worker(store, measurer)
        worker.start()
        try:
            wait_for(lambda: finished(store, job_id), "the orphaned job finished")
        finally:
            worker.stop()
        assert sorted(spec for _, spec in measurer.calls) == sorted(JOB_A[:3])
        row = job_row(store, job_id)
        assert (row.status, row.lease_owner) == ("done", worker.owner)


def test_a_live_owners_job_is_never_taken_over(db_url: str) -> None:
    """The older job is leased by another live service: this worker runs the newer job and leaves the older alone."""
    with open_store(db_url) as store:
        leased = store.submit(JOB_A[:2])
        with write_session(store.sessions) as session:
            claim_next_job(session, device_id=store.device_id, owner="alive", lease_s=3600)
        newer = store.submit(JOB_B[:2])
        measurer = ScriptedMeasurer()
        worker = make_worker(store, measurer)
        worker.start()
        try:
            wait_for(lambda: finished(store, newer), "the newer job finished")
        finally:
            worker.stop()
        assert sorted(spec for _, spec in measurer.calls) == sorted(JOB_B[:2])
        row = job_row(store, leased)
        assert (row.status, row.lease_owner) == ("running", "alive")
        assert item_statuses(store, leased) == ["pending", "pending"]


def test_the_lease_is_renewed_while_an_item_runs_so_nobody_takes_it_over(db_url: str) -> None:
    """An item that runs for several lease periods: its worker keeps renewing, a second worker never steps in."""
    gate = threading.Event()
    entered = threading.Event()

    def hold_first_item(spec: str, _: dict) -> None:
        if spec == JOB_A[0]:
            entered.set()
            assert gate.wait(DEADLINE_S), "gate never opened"

    with open_store(db_url) as first, open_store(db_url) as second:
        job_id = first.submit(JOB_A[:2])
        holder = ScriptedMeasurer("holder", before_return=hold_first_item)
        other = ScriptedMeasurer("other")
        workers = [make_worker(first, holder, lease_s=1.5), make_worker(second, other, lease_s=1.5)]
        workers[0].start()
        try:
            assert entered.wait(DEADLINE_S)
            workers[1].start()
            expiries = {job_row(first, job_id).lease_expires_at}
            wait_for(lambda: expiries.add(job_row(first, job_id).lease_expires_at) or len(expiries) >= 4,
                     "three renewals")
            gate.set()
            wait_for(lambda: finished(first, job_id), "the job finished")
        finally:
            gate.set()
            for worker in workers:
                worker.stop()
        assert sorted(spec for _, spec in holder.calls) == sorted(JOB_A[:2]) and other.calls == []
        assert job_row(first, job_id).lease_owner == workers[0].owner


def test_a_stopping_worker_gives_its_lease_back_and_the_next_resumes_at_once(db_url: str) -> None:
    gate = threading.Event()
    entered = threading.Event()

    def hold_first_item(spec: str, _: dict) -> None:
        if spec == JOB_A[0]:
            entered.set()
            assert gate.wait(DEADLINE_S), "gate never opened"

    with open_store(db_url) as store:
        job_id = store.submit(JOB_A[:3])
        first = ScriptedMeasurer("first", before_return=hold_first_item)
        worker = make_worker(store, first, lease_s=3600)  # an expiry far away: only the release lets others in
        worker.start()
        assert entered.wait(DEADLINE_S)
        stopper = threading.Thread(target=worker.stop)
        stopper.start()
        gate.set()  # the item in flight finishes, then the worker stops
        stopper.join(DEADLINE_S)
        assert not worker.alive
        row = job_row(store, job_id)
        assert (row.status, row.lease_owner, row.lease_expires_at) == ("running", None, None)
        assert item_statuses(store, job_id) == ["done", "pending", "pending"]

        second = ScriptedMeasurer("second")
        resumed = make_worker(store, second, lease_s=3600)
        resumed.start()
        try:
            wait_for(lambda: finished(store, job_id), "the resumed job finished")
        finally:
            resumed.stop()
        assert [spec for _, spec in first.calls] == [JOB_A[0]]
        assert sorted(spec for _, spec in second.calls) == sorted(JOB_A[1:3])
        with store.sessions() as session:
            assert sorted(session.scalars(select(Measurement.op_spec))) == sorted(JOB_A[:3])
