"""Jobs as the API shows them, and waiting for a job to finish."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from latency_db.models import FINISHED_JOB_STATUSES, Job, JobItem
from latency_db.repository import get_job, job_counts
from latency_db.repository.readable import UNREADABLE_ERRORS
from profiler_service.api.errors import ApiError, not_found
from profiler_service.api.schemas import FailedItem, JobOut, Stats
from profiler_service.api.state import ServiceState

MAX_FAILED_ITEMS_SHOWN = 50
POLL_S = 0.1  # how often a long-poll looks at its job


def job_out(session: Session, job: Job) -> JobOut:
    """The API view of a job with its progress counts (an architecture job counts as one item)."""
    if job.kind == "architecture":
        counts = {key: 0 for key in ("done", "skipped", "failed", "cancelled", "pending")}
        key = {"done": "done", "failed": "failed", "cancelled": "cancelled"}.get(job.status, "pending")
        counts[key] = 1
        counts["total"] = 1
        failed_items: list[FailedItem] = []
    else:
        counts = job_counts(session, job.id)
        rows = session.execute(
            select(JobItem.op_spec, JobItem.error)
            .where(JobItem.job_id == job.id, JobItem.status == "failed")
            .order_by(JobItem.position)
            .limit(MAX_FAILED_ITEMS_SHOWN)
        ).all()
        failed_items = [FailedItem(op=op, error=error) for op, error in rows]
    return JobOut(
        id=job.id, kind=job.kind, status=job.status, backend=job.backend, batch=job.batch, dtype=job.dtype,
        threads=job.threads, protocol_version=job.protocol_version, total=counts["total"], done=counts["done"], skipped=counts["skipped"],
        failed=counts["failed"], cancelled=counts["cancelled"], pending=counts["pending"], error=job.error,
        result=Stats(**job.result) if job.result else None, created_at=job.created_at, started_at=job.started_at,
        finished_at=job.finished_at, failed_items=failed_items,
    )


def unreadable_job(job_id: int, exc: Exception) -> ApiError:
    """409 for a job whose row cannot be read."""
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return ApiError(409, "unreadable_row", f"job {job_id} is stored in a form this service cannot read ({reason}): "
                    "another program or version wrote it")


def readable_job_out(session: Session, job: Job) -> JobOut:
    """:func:`job_out`, or a 409 ``unreadable_row`` when a stored value of the job cannot be read."""
    try:
        return job_out(session, job)
    except UNREADABLE_ERRORS as exc:
        raise unreadable_job(job.id, exc) from None


def device_job(session: Session, state: ServiceState, job_id: int) -> Job:
    """Job ``job_id`` of THIS device (several devices may share one database); 404 otherwise, 409
    ``unreadable_row`` when its row cannot be read."""
    try:
        job = get_job(session, job_id)
    except UNREADABLE_ERRORS as exc:
        raise unreadable_job(job_id, exc) from None
    if job is None or job.device_id != state.device_id:
        raise not_found(f"job {job_id} does not exist")
    return job


def load_job_out(state: ServiceState, job_id: int) -> JobOut:
    """A fresh view of job ``job_id`` (404 when there is none)."""
    with state.sessions() as session:
        return readable_job_out(session, device_job(session, state, job_id))


async def wait_for_job(state: ServiceState, job_id: int, wait_s: float, stopping: threading.Event,
                       client_gone: Callable[[], Awaitable[bool]] | None = None) -> JobOut:
    """Poll the job until it is finished, ``wait_s`` has passed, the server is ``stopping`` (a SIGTERM: the
    long-poll answers at once with the progress so far) or the client has gone (``client_gone``); the event loop
    stays free meanwhile. The caller has bounded ``wait_s`` (finite, at most the service's ``max_wait_s``)."""
    deadline = time.monotonic() + wait_s
    view = await asyncio.to_thread(load_job_out, state, job_id)
    while view.status not in FINISHED_JOB_STATUSES and time.monotonic() < deadline and not stopping.is_set():
        if client_gone is not None and await client_gone():
            break
        await asyncio.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
        view = await asyncio.to_thread(load_job_out, state, job_id)
    return view
