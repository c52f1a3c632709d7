"""Jobs and their items: create, claim for work, record progress, finish, cancel, report.

Lifecycle: a job is created "queued" with one "pending" item per op (positions 0..n-1). A worker claims it with a
lease (:func:`claim_next_job` -> "running", owner and expiry), renews the lease while it works
(:func:`renew_lease`), completes its pending items one by one (:func:`complete_item` -> "done", "skipped", "failed"
or "cancelled") and finishes it (:func:`finish_job`); a worker that stops early gives the lease back
(:func:`release_lease`). A job whose owner died is taken over once its lease has expired; a live owner's job never
is. :func:`cancel_job` cancels a queued or running job and its pending items. Rows that change state are read
``FOR UPDATE`` (PostgreSQL; on SQLite a write transaction holds the write lock, see
:mod:`latency_db.transactions`), so a cancel, a claim and a worker do not overwrite each other.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from latency_db.context import MeasurementContext
from latency_db.models import (
    FINISHED_JOB_STATUSES,
    ITEM_STATUSES,
    JOB_KINDS,
    JOB_STATUSES,
    LEASE_OWNER_MAX_LEN,
    OP_SPEC_MAX_LEN,
    Device,
    Job,
    JobItem,
    utcnow,
)
from latency_db.repository._checks import check_choice, check_context, check_dict, check_positive_int, check_text
from latency_db.repository.measurements import FLAG_MAX_LEN, validate_stats
from latency_db.repository.readable import ReadRows, read_rows
from latency_db.stats import STATS_KEYS

#: Statuses a worker may give an item.
ITEM_FINAL_STATUSES = ("done", "skipped", "failed", "cancelled")
#: Keys of :func:`job_counts`.
COUNT_KEYS = ("total", "done", "skipped", "failed", "cancelled", "pending")
MAX_LIST_LIMIT = 1000


class JobNotFoundError(ValueError):
    """No job has the given id."""


def create_job(
    session: Session,
    *,
    device_id: int,
    kind: str,
    context: MeasurementContext,
    op_specs: Sequence[str],
    force: bool = False,
    payload: dict[str, Any] | None = None,
) -> Job:
    """Create a queued job in ``context`` with one pending item per op spec, in order (positions 0..n-1); flushes.

    An "ops" job needs at least one op spec; an "architecture" job may have none (its work is in ``payload``).
    Raises ValueError naming the bad argument.
    """
    check_choice("kind", kind, JOB_KINDS)
    if isinstance(op_specs, str):
        raise ValueError("op_specs: expected a sequence of op spec strings, got one string")
    specs = [check_text(f"op_specs[{i}]", spec, OP_SPEC_MAX_LEN) for i, spec in enumerate(op_specs)]
    if kind == "ops" and not specs:
        raise ValueError("op_specs: an ops job needs at least one op spec")
    if not isinstance(force, bool):
        raise ValueError(f"force: expected a bool, got {force!r}")
    job = Job(
        device_id=check_positive_int("device_id", device_id),
        kind=kind,
        status="queued",
        **check_context(context).as_dict(),
        force=force,
        payload=None if payload is None else check_dict("payload", payload),
        items=[JobItem(position=i, op_spec=spec, status="pending") for i, spec in enumerate(specs)],
    )
    session.add(job)
    session.flush()
    return job


#: Statuses of a job that a new request with the same work attaches to instead of queueing a duplicate.
OPEN_JOB_STATUSES = ("queued", "running")


def create_or_attach_job(
    session: Session,
    *,
    device_id: int,
    kind: str,
    context: MeasurementContext,
    op_specs: Sequence[str],
    force: bool = False,
    payload: dict[str, Any] | None = None,
) -> tuple[Job, bool]:
    """The queued or running job of ``device_id`` that does the same work, or a new one: ``(job, attached)``.

    The same work: the same kind, measurement context (backend, batch, dtype, threads, environment hash, protocol
    version), ``force`` and ``payload`` (an architecture job's network), and op specs the open job measures: every
    one of ``op_specs`` among its items (as a multiset: the order plays no part), or exactly its items when
    ``force`` (a forced request wants values measured after it, and an open job may have finished some items
    already). A request for part of an open job's ops is that job's work: a repeated ``lut`` asks only for the ops
    not stored yet, which an open job of the first ``lut`` is measuring. Otherwise as :func:`create_job`. Call it in a write transaction: the device's row is locked first
    (``FOR UPDATE`` on PostgreSQL; SQLite's write lock is held already), so two requests at the same moment
    never both create the job.
    """
    check_positive_int("device_id", device_id)
    check_context(context)
    session.execute(select(Device.id).where(Device.id == device_id).with_for_update())
    wanted = sorted(op_specs) if not isinstance(op_specs, str) else None
    candidates = session.scalars(
        select(Job).where(
            Job.device_id == device_id, Job.kind == kind, Job.status.in_(OPEN_JOB_STATUSES), Job.force == force,
            *(getattr(Job, column) == value for column, value in context.as_dict().items()),
        ).order_by(Job.created_at, Job.id)
    ).all()
    for job in candidates:
        if job.payload != payload:
            continue
        specs = session.scalars(select(JobItem.op_spec).where(JobItem.job_id == job.id)).all()
        if sorted(specs) == wanted or (not force and wanted and not Counter(wanted) - Counter(specs)):
            return job, True
    return create_job(session, device_id=device_id, kind=kind, context=context, op_specs=op_specs, force=force,
                      payload=payload), False


def claim_next_job(
    session: Session, *, device_id: int, owner: str, lease_s: float, now: datetime | None = None
) -> Job | None:
    """Lease the oldest claimable job of ``device_id`` to ``owner`` for ``lease_s`` seconds; None when there is none.

    Claimable: queued, or running without a live lease of another owner (its lease expired because its owner was
    killed, was released by a stopping owner, or is ``owner``'s own, e.g. a worker that restarted its loop). A job
    whose lease another owner holds is never returned. Sets status "running", ``started_at`` (if unset), the
    owner and ``lease_expires_at = now + lease_s``; flushes. Call it in a write transaction: on PostgreSQL the row
    is locked with ``FOR UPDATE SKIP LOCKED`` (two claimers at the same moment get different jobs), on SQLite the
    transaction holds the database's write lock.
    """
    check_positive_int("device_id", device_id)
    check_text("owner", owner, LEASE_OWNER_MAX_LEN)
    duration = _lease_duration(lease_s)
    now = utcnow() if now is None else now
    lease_free = or_(Job.lease_expires_at.is_(None), Job.lease_expires_at <= now, Job.lease_owner == owner)
    stmt = (
        select(Job)
        .where(Job.device_id == device_id, or_(Job.status == "queued", and_(Job.status == "running", lease_free)))
        .order_by(Job.created_at, Job.id)
        .limit(1)
        .with_for_update(skip_locked=True)  # SQLite renders no FOR UPDATE: its write lock is already held
    )
    job = session.scalars(stmt, execution_options={"populate_existing": True}).first()
    if job is None:
        return None
    job.status = "running"
    if job.started_at is None:
        job.started_at = now
    job.lease_owner = owner
    job.lease_expires_at = now + duration
    session.flush()
    return job


def renew_lease(session: Session, job_id: int, *, owner: str, lease_s: float, now: datetime | None = None) -> bool:
    """Extend ``owner``'s lease of a running job to ``now + lease_s``; flushes.

    Returns False, changing nothing, when the job is no longer running or its lease belongs to another owner
    (it was taken over after the lease expired): the caller must stop working on it.
    """
    check_text("owner", owner, LEASE_OWNER_MAX_LEN)
    expires = (utcnow() if now is None else now) + _lease_duration(lease_s)
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "running", Job.lease_owner == owner)
        .values(lease_expires_at=expires)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def release_lease(session: Session, job_id: int, *, owner: str) -> bool:
    """Give up ``owner``'s lease of a running job (it stays running: any worker may take it over at once);
    flushes. Returns False, changing nothing, when ``owner`` does not hold it."""
    check_text("owner", owner, LEASE_OWNER_MAX_LEN)
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "running", Job.lease_owner == owner)
        .values(lease_owner=None, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def holds_lease(session: Session, job_id: int, *, owner: str) -> bool:
    """Whether the job is running under ``owner``'s lease (the row read ``FOR UPDATE``: in a write transaction, no
    claim can take the job over before the transaction ends)."""
    job = session.get(Job, job_id, with_for_update=True, populate_existing=True)
    return job is not None and job.status == "running" and job.lease_owner == owner


def get_job(session: Session, job_id: int) -> Job | None:
    """The job with this id (freshly read), or None."""
    return session.get(Job, job_id, populate_existing=True)


def list_jobs(
    session: Session, *, status: str | None = None, limit: int = 50, device_id: int | None = None
) -> ReadRows[Job]:
    """The newest jobs first, optionally only those with ``status`` / of ``device_id``; at most ``limit``
    (1..1000). A job row that cannot be read is left out and counted (:func:`~latency_db.repository.readable.
    read_rows`)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST_LIMIT:
        raise ValueError(f"limit: expected an integer in 1..{MAX_LIST_LIMIT}, got {limit!r}")
    stmt = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    if status is not None:
        stmt = stmt.where(Job.status == check_choice("status", status, JOB_STATUSES))
    if device_id is not None:
        stmt = stmt.where(Job.device_id == device_id)
    return read_rows(session, stmt, Job)


def pending_items(session: Session, job_id: int) -> list[JobItem]:
    """The job's items still to do, in position order."""
    return _items_with_status(session, job_id, "pending")


def failed_items(session: Session, job_id: int) -> list[JobItem]:
    """The job's failed items (with their errors), in position order."""
    return _items_with_status(session, job_id, "failed")


def complete_item(
    session: Session,
    item: JobItem,
    *,
    status: str,
    measurement_id: int | None = None,
    error: str | None = None,
) -> bool:
    """Record the outcome of a pending item; flushes.

    ``status`` is one of "done", "skipped", "failed" (needs ``error``), "cancelled". Returns False, changing
    nothing, when the item is no longer pending (e.g. its job was cancelled meanwhile); True otherwise.
    """
    check_choice("status", status, ITEM_FINAL_STATUSES)
    if status == "failed" and not error:
        raise ValueError("error: a failed item needs an error message")
    session.refresh(item, with_for_update=True)
    if item.status != "pending":
        return False
    item.status = status
    item.measurement_id = measurement_id
    item.error = error
    item.finished_at = utcnow()
    session.flush()
    return True


def fail_pending_items(session: Session, job_id: int, error: str) -> int:
    """Mark every pending item of the job failed with ``error`` (e.g. its backend is gone); flushes. Returns how many
    items were failed."""
    check_text("error", error, 10_000)
    result = session.execute(
        update(JobItem)
        .where(JobItem.job_id == job_id, JobItem.status == "pending")
        .values(status="failed", error=error, finished_at=utcnow())
        .execution_options(synchronize_session="fetch")
    )
    return result.rowcount


def finish_job(
    session: Session,
    job: Job,
    *,
    status: str | None = None,
    error: str | None = None,
    result: dict[str, Any] | None = None,
) -> Job:
    """Mark a queued or running job finished; sets ``finished_at``, ``error`` and ``result``; flushes.

    With ``status`` None the status follows from the items: "failed" when any item failed (``error`` defaults to
    "<k> of <n> items failed"), else "cancelled" when any was cancelled, else "done" (every item done or skipped,
    or no items). Items still pending are then an error (ValueError). With an explicit status ("done", "failed" or
    "cancelled"), items still pending are marked "cancelled": nothing will work on them any more.
    ``result`` (an architecture job's network) holds the statistics (:func:`~latency_db.repository.measurements.
    validate_stats`: finite numbers, NaN and infinity refused) and may add ``rounds`` and ``flagged``.
    Raises ValueError "job N is already <status>" when the job was finished before (e.g. cancelled meanwhile), and
    ValueError naming a bad statistic of ``result``.
    """
    if status is not None:
        check_choice("status", status, FINISHED_JOB_STATUSES)
    if result is not None:
        result = check_result(result)
    session.refresh(job, with_for_update=True)
    if job.status in FINISHED_JOB_STATUSES:
        raise ValueError(f"job {job.id} is already {job.status}")
    counts = job_counts(session, job.id)
    if status is None:
        if counts["pending"]:
            raise ValueError(f"status: job {job.id} still has {counts['pending']} pending items")
        if counts["failed"]:
            status = "failed"
            error = error or f"{counts['failed']} of {counts['total']} items failed"
        elif counts["cancelled"]:
            status = "cancelled"
        else:
            status = "done"
    now = utcnow()
    if counts["pending"]:
        _cancel_pending_items(session, job.id, now)
    job.status = status
    job.error = error
    job.result = result
    job.finished_at = now
    session.flush()
    return job


def check_result(result: Any) -> dict[str, Any]:
    """A job's result as :func:`finish_job` stores it: a dict with every statistic of STATS_KEYS (checked by
    validate_stats) and optionally ``rounds`` (an int >= 1 or None) and ``flagged`` (a reason or None); other keys are
    kept as they are. Raises ValueError naming the bad key."""
    result = check_dict("result", result)
    stats = validate_stats({key: result[key] for key in STATS_KEYS if key in result})
    if result.get("rounds") is not None:
        check_positive_int("result.rounds", result["rounds"])
    if result.get("flagged") is not None:
        check_text("result.flagged", result["flagged"], FLAG_MAX_LEN)
    return {**result, **stats}


def cancel_job(session: Session, job_id: int) -> Job:
    """Cancel a queued or running job: its pending items and the job become "cancelled"; flushes.

    Raises JobNotFoundError (a ValueError) for an unknown id and ValueError "job N is already <status>" for a
    finished job.
    """
    job = session.get(Job, job_id, with_for_update=True, populate_existing=True)
    if job is None:
        raise JobNotFoundError(f"job {job_id} does not exist")
    if job.status in FINISHED_JOB_STATUSES:
        raise ValueError(f"job {job_id} is already {job.status}")
    now = utcnow()
    _cancel_pending_items(session, job_id, now)
    job.status = "cancelled"
    job.finished_at = now
    session.flush()
    return job


def job_counts(session: Session, job_id: int) -> dict[str, int]:
    """Item counts of a job by status, plus "total" (keys: :data:`COUNT_KEYS`); one grouped query."""
    stmt = select(JobItem.status, func.count()).where(JobItem.job_id == job_id).group_by(JobItem.status)
    counts = dict.fromkeys(COUNT_KEYS, 0)
    for item_status, count in session.execute(stmt):
        counts[item_status] = count
        counts["total"] += count
    return counts


def _lease_duration(lease_s: float) -> timedelta:
    if isinstance(lease_s, bool) or not isinstance(lease_s, (int, float)) or not 0 < lease_s < 10**6:
        raise ValueError(f"lease_s: expected a number of seconds in (0, 1e6), got {lease_s!r}")
    return timedelta(seconds=lease_s)


def _items_with_status(session: Session, job_id: int, status: str) -> list[JobItem]:
    check_choice("status", status, ITEM_STATUSES)
    stmt = select(JobItem).where(JobItem.job_id == job_id, JobItem.status == status).order_by(JobItem.position)
    return list(session.scalars(stmt, execution_options={"populate_existing": True}))


def _cancel_pending_items(session: Session, job_id: int, now: Any) -> None:
    session.execute(
        update(JobItem)
        .where(JobItem.job_id == job_id, JobItem.status == "pending")
        .values(status="cancelled", finished_at=now)
        .execution_options(synchronize_session="fetch")
    )
