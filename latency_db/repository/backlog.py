"""The backlog of a device: how much measuring its open jobs still hold (what the service's queue cap counts)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from latency_db.models import Job, JobItem
from latency_db.repository._checks import check_positive_int
from latency_db.repository.jobs import OPEN_JOB_STATUSES


def pending_work(session: Session, device_id: int) -> int:
    """The items ``device_id`` still has to measure: the pending items of its queued and running jobs, plus one per
    queued or running architecture job (its network). Two counting queries."""
    check_positive_int("device_id", device_id)
    open_jobs = (Job.device_id == device_id, Job.status.in_(OPEN_JOB_STATUSES))
    items = session.scalar(select(func.count()).select_from(JobItem).join(Job, Job.id == JobItem.job_id)
                           .where(*open_jobs, JobItem.status == "pending"))
    networks = session.scalar(select(func.count()).select_from(Job).where(*open_jobs, Job.kind == "architecture"))
    return int(items or 0) + int(networks or 0)
