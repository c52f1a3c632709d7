"""Jobs: creation with ordered items, claiming, item completion, finishing, counts, cancellation, listing."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from latency_db.context import MeasurementContext
from latency_db.models import Device, Job, JobItem, utcnow
from latency_db.repository import (
    JobNotFoundError,
    cancel_job,
    claim_next_job,
    complete_item,
    create_job,
    create_or_attach_job,
    failed_items,
    finish_job,
    get_job,
    get_or_create_device,
    holds_lease,
    job_counts,
    list_jobs,
    pending_items,
    release_lease,
    renew_lease,
    upsert_measurement,
)
from latency_db.transactions import write_session
from tests.latency_db.conftest import split_overrides
from tests.latency_db.db_test_data import make_stats, spec

NewJob = Callable[..., Job]
OWNER = "host:1:worker-a"
LEASE_S = 30.0


def claim(session: Session, owner: str = OWNER, now: datetime | None = None) -> Job | None:
    """claim_next_job for the test device (the first device created), leased for LEASE_S."""
    device_id = session.scalars(select(Device.id).order_by(Device.id)).first()
    return claim_next_job(session, device_id=device_id, owner=owner, lease_s=LEASE_S, now=now)


@pytest.fixture
def new_job(session: Session, device_id: int, context: MeasurementContext) -> NewJob:
    """Create an "ops" job in the context: ``new_job(n_ops, **overrides)`` (context fields may be overridden)."""

    def build(n_ops: int = 3, /, **overrides: Any) -> Job:
        args = {"device_id": device_id, "kind": "ops", "op_specs": [spec(i) for i in range(n_ops)], **overrides}
        return create_job(session, **split_overrides(context, args))

    return build


def test_create_job_stores_items_in_order(session_factory: sessionmaker[Session], new_job: NewJob,
                                          session: Session) -> None:
    job = new_job(4, force=True, payload={"note": "x"})
    session.commit()
    with session_factory() as other:
        stored = get_job(other, job.id)
        assert stored is not None
        assert (stored.status, stored.kind, stored.force, stored.payload) == ("queued", "ops", True, {"note": "x"})
        assert stored.started_at is None and stored.finished_at is None and stored.result is None
        assert stored.created_at.tzinfo is not None
        assert [(item.position, item.op_spec, item.status) for item in stored.items] == [
            (i, spec(i), "pending") for i in range(4)
        ]
    assert job_counts(session, job.id) == {
        "total": 4, "done": 0, "skipped": 0, "failed": 0, "cancelled": 0, "pending": 4,
    }


def test_architecture_job_may_have_no_items(new_job: NewJob) -> None:
    job = new_job(0, kind="architecture", payload={"blocks": []})
    assert job.kind == "architecture" and job.items == []


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"kind": "network"}, "kind"),
        ({"op_specs": []}, "op_specs"),
        ({"op_specs": "mbconv_r16x16_c8-8_k3_e3_s1_relu6"}, "op_specs"),
        ({"op_specs": [spec(0), "x" * 129]}, r"op_specs\[1\]"),
        ({"batch": 0}, "batch"),
        ({"threads": True}, "threads"),
        ({"env_hash": "zz"}, "env_hash"),
        ({"force": "yes"}, "force"),
        ({"payload": [1, 2]}, "payload"),
    ],
    ids=lambda value: value if isinstance(value, str) else next(iter(value)),
)
def test_create_job_rejects_bad_arguments(new_job: NewJob, overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        new_job(2, **overrides)


def test_full_lifecycle(session: Session, new_job: NewJob, upsert_args: Callable[..., dict[str, Any]]) -> None:
    job = new_job(4)
    session.commit()

    claimed = claim(session)
    assert claimed is not None and claimed.id == job.id
    assert claimed.status == "running" and claimed.started_at is not None
    started = claimed.started_at
    session.commit()

    items = pending_items(session, job.id)
    assert [item.position for item in items] == [0, 1, 2, 3]
    measured = upsert_measurement(session, **upsert_args(items[0].op_spec, 1.0))
    assert complete_item(session, items[0], status="done", measurement_id=measured.id)
    assert complete_item(session, items[1], status="skipped", measurement_id=measured.id)
    assert complete_item(session, items[2], status="failed", error="out of memory")
    session.commit()
    assert [item.position for item in pending_items(session, job.id)] == [3]
    assert job_counts(session, job.id) == {
        "total": 4, "done": 1, "skipped": 1, "failed": 1, "cancelled": 0, "pending": 1,
    }

    with pytest.raises(ValueError, match="1 pending"):
        finish_job(session, job)
    assert complete_item(session, items[3], status="done", measurement_id=measured.id)
    finished = finish_job(session, job)
    session.commit()

    assert finished.status == "failed"
    assert finished.error == "1 of 4 items failed"
    assert finished.finished_at is not None and finished.finished_at >= started
    assert finished.started_at == started
    assert [(item.position, item.error) for item in failed_items(session, job.id)] == [(2, "out of memory")]
    stored = session.get(JobItem, items[0].id)
    assert stored.measurement_id == measured.id and stored.finished_at is not None
    assert claim(session) is None


def test_finish_job_computes_done_and_takes_result(session: Session, new_job: NewJob) -> None:
    job = new_job(2)
    claim(session)
    for item in pending_items(session, job.id):
        complete_item(session, item, status="skipped")
    result = {**make_stats(3.0), "rounds": 3, "flagged": None}
    finished = finish_job(session, job, result=result)
    assert (finished.status, finished.error, finished.result) == ("done", None, result)


@pytest.mark.parametrize(("result", "named"), [
    ({**make_stats(3.0), "median_ms": float("nan")}, "median_ms: expected a finite number >= 0, got nan"),
    ({**make_stats(3.0), "p90_ms": float("inf")}, "p90_ms: expected a finite number >= 0, got inf"),
    ({"median_ms": 3.0}, "stats: missing mean_ms"),
    ([1, 2, 3], "result: expected a JSON object"),
    ({**make_stats(3.0), "rounds": 0}, "result.rounds: expected an integer >= 1"),
])
def test_finish_job_refuses_a_result_that_is_not_finite_stats(session: Session, new_job: NewJob, result: Any,
                                                              named: str) -> None:
    job = new_job(1)
    claim(session)
    complete_item(session, pending_items(session, job.id)[0], status="skipped")
    with pytest.raises(ValueError, match=named.replace("[", r"\[").replace("(", r"\(")):
        finish_job(session, job, result=result)
    assert session.get(Job, job.id).status == "running"


def test_finish_job_with_explicit_status_cancels_pending_items(session: Session, new_job: NewJob) -> None:
    job = new_job(3)
    claim(session)
    complete_item(session, pending_items(session, job.id)[0], status="done")
    finished = finish_job(session, job, status="failed", error="backend vanished")
    assert (finished.status, finished.error) == ("failed", "backend vanished")
    assert job_counts(session, job.id) == {
        "total": 3, "done": 1, "skipped": 0, "failed": 0, "cancelled": 2, "pending": 0,
    }
    with pytest.raises(ValueError, match=f"job {job.id} is already failed"):
        finish_job(session, job, status="done")


def test_finish_job_rejects_bad_status(session: Session, new_job: NewJob) -> None:
    job = new_job(1)
    with pytest.raises(ValueError, match="status"):
        finish_job(session, job, status="running")


def test_complete_item_checks_status_and_error(session: Session, new_job: NewJob) -> None:
    job = new_job(1)
    item = pending_items(session, job.id)[0]
    with pytest.raises(ValueError, match="status"):
        complete_item(session, item, status="pending")
    with pytest.raises(ValueError, match="error"):
        complete_item(session, item, status="failed")
    assert complete_item(session, item, status="done")
    assert not complete_item(session, item, status="failed", error="late")  # no longer pending: unchanged
    assert session.get(JobItem, item.id).status == "done"


def test_cancel_job(session_factory: sessionmaker[Session], session: Session, new_job: NewJob) -> None:
    job = new_job(3)
    claim(session)
    worker_item = pending_items(session, job.id)[0]
    complete_item(session, pending_items(session, job.id)[1], status="done")
    session.commit()

    with session_factory.begin() as other:  # e.g. the API, while the worker measures item 0
        cancelled = cancel_job(other, job.id)
        assert cancelled.status == "cancelled" and cancelled.finished_at is not None

    # the worker's stale item object: completing it changes nothing
    assert not complete_item(session, worker_item, status="done")
    assert job_counts(session, job.id) == {
        "total": 3, "done": 1, "skipped": 0, "failed": 0, "cancelled": 2, "pending": 0,
    }
    with pytest.raises(ValueError, match=f"job {job.id} is already cancelled"):
        finish_job(session, job)
    with pytest.raises(ValueError, match=f"job {job.id} is already cancelled"):
        cancel_job(session, job.id)
    assert claim(session) is None


def test_cancel_finished_or_unknown_job(session: Session, new_job: NewJob) -> None:
    job = new_job(1)
    claim(session)
    complete_item(session, pending_items(session, job.id)[0], status="done")
    finish_job(session, job)
    with pytest.raises(ValueError, match=f"job {job.id} is already done"):
        cancel_job(session, job.id)
    assert get_job(session, job.id).status == "done"
    with pytest.raises(JobNotFoundError, match="job 987654 does not exist"):
        cancel_job(session, 987654)
    assert get_job(session, 987654) is None


def test_claim_order_oldest_first_running_included(session: Session, new_job: NewJob) -> None:
    first, second, third = new_job(1), new_job(1), new_job(1)
    # Same-instant creation must still be ordered: ties are broken by id.
    second.created_at = first.created_at
    third.created_at = first.created_at - timedelta(seconds=5)  # the oldest
    session.commit()

    assert claim(session).id == third.id
    # still running (e.g. the worker restarted): claimed again before newer jobs
    assert claim(session).id == third.id
    cancel_job(session, third.id)
    assert claim(session).id == first.id
    finish_job(session, first, status="done")
    assert claim(session).id == second.id
    cancel_job(session, second.id)
    assert claim(session) is None


def test_claim_started_at_is_kept_on_reclaim(session: Session, new_job: NewJob) -> None:
    job = new_job(1)
    started = claim(session).started_at
    job.started_at = started - timedelta(minutes=1)
    session.commit()
    assert claim(session).started_at == started - timedelta(minutes=1)


def test_claim_by_device(session: Session, new_job: NewJob) -> None:
    other_device = get_or_create_device(session, "other", {"cpu": "other"}).id
    theirs = new_job(1, device_id=other_device)
    mine = new_job(1)
    theirs.created_at = mine.created_at - timedelta(seconds=1)
    session.commit()
    assert claim(session).id == mine.id
    assert claim_next_job(session, device_id=other_device, owner=OWNER, lease_s=30).id == theirs.id


def test_list_jobs(session: Session, new_job: NewJob) -> None:
    jobs = [new_job(1) for _ in range(4)]
    for offset, job in enumerate(jobs):
        job.created_at = jobs[0].created_at + timedelta(seconds=offset)
    cancel_job(session, jobs[1].id)
    session.commit()
    assert [job.id for job in list_jobs(session)] == [job.id for job in reversed(jobs)]
    assert [job.id for job in list_jobs(session, limit=2)] == [jobs[3].id, jobs[2].id]
    assert [job.id for job in list_jobs(session, status="cancelled")] == [jobs[1].id]
    assert list_jobs(session, status="done") == []
    assert len(list_jobs(session, device_id=jobs[0].device_id)) == 4
    with pytest.raises(ValueError, match="status"):
        list_jobs(session, status="finished")
    with pytest.raises(ValueError, match="limit"):
        list_jobs(session, limit=0)


def test_deleting_a_job_deletes_its_items(session: Session, new_job: NewJob) -> None:
    job = new_job(3)
    session.commit()
    session.expunge_all()
    session.execute(delete(Job).where(Job.id == job.id))  # database-level ON DELETE CASCADE
    session.commit()
    assert session.scalar(select(func.count()).select_from(JobItem)) == 0


def test_a_live_lease_is_never_taken_over_and_an_expired_one_is(session: Session, new_job: NewJob) -> None:
    t0 = utcnow()
    job = new_job(2)
    session.commit()
    claimed = claim(session, "A", now=t0)
    assert (claimed.id, claimed.lease_owner, claimed.lease_expires_at) == (job.id, "A", t0 + timedelta(seconds=30))
    session.commit()
    assert claim(session, "B", now=t0 + timedelta(seconds=29)) is None  # A's lease is live
    assert renew_lease(session, job.id, owner="A", lease_s=LEASE_S, now=t0 + timedelta(seconds=20))
    session.commit()
    assert claim(session, "B", now=t0 + timedelta(seconds=49)) is None  # renewed until t0 + 50
    assert holds_lease(session, job.id, owner="A")

    taken = claim(session, "B", now=t0 + timedelta(seconds=51))  # A stopped renewing (killed): B takes over
    assert (taken.id, taken.status, taken.lease_owner) == (job.id, "running", "B")
    session.commit()
    assert not renew_lease(session, job.id, owner="A", lease_s=LEASE_S)  # A learns it lost the job
    assert not holds_lease(session, job.id, owner="A") and holds_lease(session, job.id, owner="B")
    assert claim(session, "B", now=t0 + timedelta(seconds=52)).id == job.id  # its own lease: B may re-claim


def test_a_released_lease_is_taken_over_at_once(session: Session, new_job: NewJob) -> None:
    t0 = utcnow()
    job = new_job(1)
    claim(session, "A", now=t0)
    assert release_lease(session, job.id, owner="A")
    assert not release_lease(session, job.id, owner="A")  # no longer A's
    session.commit()
    stored = get_job(session, job.id)
    assert (stored.status, stored.lease_owner, stored.lease_expires_at) == ("running", None, None)
    assert claim(session, "B", now=t0 + timedelta(seconds=1)).lease_owner == "B"


def test_a_finished_job_has_no_lease_to_renew(session: Session, new_job: NewJob) -> None:
    job = new_job(1)
    claim(session, "A")
    cancel_job(session, job.id)
    assert not renew_lease(session, job.id, owner="A", lease_s=LEASE_S)
    assert not holds_lease(session, job.id, owner="A")
    assert claim(session, "A") is None


@pytest.mark.parametrize(("owner", "lease_s", "field"), [("", 30.0, "owner"), ("x" * 129, 30.0, "owner"),
                                                         ("A", 0, "lease_s"), ("A", True, "lease_s")])
def test_claim_checks_owner_and_lease(session: Session, device_id: int, owner: str, lease_s: float,
                                      field: str) -> None:
    with pytest.raises(ValueError, match=field):
        claim_next_job(session, device_id=device_id, owner=owner, lease_s=lease_s)


@pytest.mark.postgres
def test_two_claimers_at_the_same_moment_get_different_jobs_on_postgresql(postgres_url: str) -> None:
    """FOR UPDATE SKIP LOCKED: while A's claim transaction is open, B's claim skips A's job."""
    from latency_db.connection import make_engine, make_session_factory
    from latency_db.migrate import upgrade_to_head
    from tests.latency_db.db_test_data import ENV_HASH, FINGERPRINT

    upgrade_to_head(postgres_url)
    engine = make_engine(postgres_url)
    try:
        factory = make_session_factory(engine)
        context = MeasurementContext("ort-cpu", 1, "float32", 1, ENV_HASH, "2")
        with write_session(factory) as session:
            device = get_or_create_device(session, "pg", FINGERPRINT).id
            jobs = [create_job(session, device_id=device, kind="ops", context=context, op_specs=[spec(i)]).id
                    for i in range(2)]
        with write_session(factory) as first, write_session(factory) as second:
            a = claim_next_job(first, device_id=device, owner="A", lease_s=LEASE_S)
            b = claim_next_job(second, device_id=device, owner="B", lease_s=LEASE_S)
            assert (a.id, b.id) == (jobs[0], jobs[1])
    finally:
        engine.dispose()


# --- no duplicate jobs --------------------------------------------------------------------------------------------
def test_a_request_for_the_work_of_an_open_job_attaches_to_it(session_factory: sessionmaker[Session],
                                                              device_id: int, context: MeasurementContext) -> None:
    def submit(specs: list[str], **overrides: Any) -> tuple[int, bool]:
        args = {"device_id": device_id, "kind": "ops", "op_specs": specs, **overrides}
        with write_session(session_factory) as session:
            job, attached = create_or_attach_job(session, **split_overrides(context, args))
            return job.id, attached

    first, attached = submit([spec(0), spec(1)])
    assert not attached
    assert submit([spec(1), spec(0)]) == (first, True)  # the same ops in another order: the same work
    with write_session(session_factory) as session:  # a running job too
        assert claim(session).id == first
    assert submit([spec(0), spec(1)]) == (first, True)
    # part of its ops is its work too (a repeated lut asks only for what is not stored yet), but not more
    assert submit([spec(1)]) == (first, True)
    # other work is a new job: other ops, force, another regime, batch or threads
    others = [submit([spec(0), spec(2)]), submit([spec(0), spec(1)], force=True),
              submit([spec(0), spec(1)], protocol_version="1+warm"), submit([spec(0), spec(1)], batch=2),
              submit([spec(0), spec(1)], threads=2)]
    assert all(not attached for _, attached in others) and len({first, *(i for i, _ in others)}) == 6
    forced = others[1][0]  # a forced request attaches to exactly its own work only
    assert submit([spec(0), spec(1)], force=True) == (forced, True) and submit([spec(0)], force=True)[1] is False
    # an architecture job: the same network attaches, another one does not
    arch = {"blocks": ["conv_r8x8_c3-8_k3_s1_relu6"]}
    network, _ = submit([], kind="architecture", payload=arch)
    assert submit([], kind="architecture", payload=dict(arch)) == (network, True)
    assert submit([], kind="architecture", payload={"blocks": []})[1] is False
    # a finished job is never attached to
    with write_session(session_factory) as session:
        cancel_job(session, first)
    assert submit([spec(0), spec(1)])[1] is False


def test_two_requests_at_the_same_moment_create_one_job(session_factory: sessionmaker[Session], device_id: int,
                                                        context: MeasurementContext) -> None:
    barrier = threading.Barrier(2)

    def submit(_: int) -> tuple[int, bool]:
        barrier.wait()
        with write_session(session_factory) as session:
            job, attached = create_or_attach_job(session, device_id=device_id, kind="ops",
                                                 context=replace(context), op_specs=[spec(3)])
            return job.id, attached

    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(submit, range(2)))
    assert len({job_id for job_id, _ in answers}) == 1 and sorted(a for _, a in answers) == [False, True]
