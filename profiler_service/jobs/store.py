"""The job worker's side of the latency store: one method per transaction, under this worker's lease.

Every method that writes runs in a write transaction (:func:`latency_db.transactions.write_session`), and every
write about a job first checks, in the same transaction, that the job is still running under this worker's lease:
a worker whose lease was taken over (it stalled past the expiry) or whose job was cancelled changes nothing.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from latency_db.context import MeasurementContext
from latency_db.models import LEASE_OWNER_MAX_LEN, Job, JobItem
from latency_db.repository import (
    claim_next_job,
    complete_item,
    fail_pending_items,
    finish_job,
    holds_lease,
    lookup_measurements,
    pending_items,
    release_lease,
    renew_lease,
    upsert_measurement,
)
from latency_db.transactions import write_session


def new_owner_id() -> str:
    """A lease owner id unique to this worker: host, process id and a random part (a restarted process, or a
    second worker of the same process, is another owner)."""
    suffix = f":{os.getpid()}:{uuid.uuid4().hex[:12]}"
    return socket.gethostname()[: LEASE_OWNER_MAX_LEN - len(suffix)] + suffix


@dataclass(frozen=True)
class ClaimedJob:
    """What the worker needs of a claimed job, read once so that no ORM object outlives its session.

    ``context`` is the context the job was submitted in; the worker measures in its current environment.
    """

    id: int
    kind: str
    context: MeasurementContext
    force: bool
    payload: Any

    @classmethod
    def of(cls, job: Job) -> ClaimedJob:
        """The claimed view of a job row."""
        return cls(job.id, job.kind, job.context, job.force, job.payload)


class JobStore:
    """The transactions of one worker (``owner``) of one device on the latency store."""

    def __init__(self, sessions: sessionmaker[Session], device_id: int, owner: str, lease_s: float) -> None:
        self.sessions = sessions
        self.device_id = device_id
        self.owner = owner
        self.lease_s = lease_s

    # --- the lease ---------------------------------------------------------------------------------------------
    def claim(self) -> ClaimedJob | None:
        """Lease the next claimable job of this device (see ``claim_next_job``); None when there is none."""
        with write_session(self.sessions) as session:
            job = claim_next_job(session, device_id=self.device_id, owner=self.owner, lease_s=self.lease_s)
            return ClaimedJob.of(job) if job is not None else None

    def renew(self, job_id: int) -> bool:
        """Extend the lease; False when the job is no longer this worker's (taken over, cancelled, finished)."""
        with write_session(self.sessions) as session:
            return renew_lease(session, job_id, owner=self.owner, lease_s=self.lease_s)

    def release(self, job_id: int) -> bool:
        """Give the lease back (the job stays running: the next worker takes it over at once)."""
        with write_session(self.sessions) as session:
            return release_lease(session, job_id, owner=self.owner)

    def holds(self, job_id: int) -> bool:
        """Whether the job is still running under this worker's lease (a read: no lock taken)."""
        with self.sessions() as session:
            job = session.get(Job, job_id, populate_existing=True)
            return job is not None and job.status == "running" and job.lease_owner == self.owner

    # --- items ---------------------------------------------------------------------------------------------------
    def pending_items(self, job_id: int) -> list[tuple[int, str]]:
        """(item id, op spec) of the job's pending items, in position order."""
        with self.sessions() as session:
            return [(item.id, item.op_spec) for item in pending_items(session, job_id)]

    def skip_if_stored(self, job_id: int, item_id: int, context: MeasurementContext, op_spec: str) -> bool:
        """Mark the item skipped when the op is already stored in ``context``; True when it was."""
        with write_session(self.sessions) as session:
            if not holds_lease(session, job_id, owner=self.owner):
                return False
            found = lookup_measurements(session, device_id=self.device_id, context=context, op_specs=[op_spec])
            if op_spec not in found:
                return False
            return _complete(session, item_id, status="skipped", measurement_id=found[op_spec].id)

    def store_measurement(self, job_id: int, item_id: int, context: MeasurementContext, op_spec: str,
                          environment: dict[str, Any], protocol_params: dict[str, Any],
                          stats: dict[str, Any]) -> bool:
        """Store the row and mark the item done, in ONE transaction (crash safety: see the worker's docstring).

        Returns False, storing nothing, when the job is no longer this worker's or the item no longer pending.
        """
        with write_session(self.sessions) as session:
            if not holds_lease(session, job_id, owner=self.owner):
                return False
            item = session.get(JobItem, item_id, populate_existing=True)
            if item is None or item.status != "pending":
                return False
            row = upsert_measurement(session, device_id=self.device_id, context=context, op_spec=op_spec,
                                     environment=environment, protocol_params=protocol_params, stats=stats)
            return _complete(session, item_id, status="done", measurement_id=row.id)

    def fail_item(self, job_id: int, item_id: int, error: str) -> bool:
        """Mark a pending item failed with ``error``; False when the job is no longer this worker's."""
        with write_session(self.sessions) as session:
            if not holds_lease(session, job_id, owner=self.owner):
                return False
            return _complete(session, item_id, status="failed", error=error)

    def abandon(self, job_id: int, item_id: int, item_error: str, job_error: str) -> bool:
        """In one transaction: the item fails with ``item_error`` and the job ends "failed" with ``job_error``
        (its other pending items cancelled); False when the job is no longer this worker's."""
        with write_session(self.sessions) as session:
            if not holds_lease(session, job_id, owner=self.owner):
                return False
            _complete(session, item_id, status="failed", error=item_error)
            finish_job(session, session.get(Job, job_id), status="failed", error=job_error)
            return True

    # --- the job -----------------------------------------------------------------------------------------------
    def fail_job(self, job_id: int, error: str) -> bool:
        """Fail the job and every pending item of it with ``error`` (nothing of it can be measured here), if it
        still runs under this worker's lease; True when it was failed here."""
        with write_session(self.sessions) as session:
            if not holds_lease(session, job_id, owner=self.owner):
                return False
            fail_pending_items(session, job_id, error)
            finish_job(session, session.get(Job, job_id), status="failed", error=error)
            return True

    def finish(self, job_id: int, **fields: Any) -> bool:
        """Finish the job (see ``finish_job`` for ``fields``) if it still runs under this worker's lease (a job
        cancelled meanwhile stays cancelled); True when it was finished here."""
        with write_session(self.sessions) as session:
            if not holds_lease(session, job_id, owner=self.owner):
                return False
            finish_job(session, session.get(Job, job_id), **fields)
            return True


def _complete(session: Session, item_id: int, **fields: Any) -> bool:
    item = session.get(JobItem, item_id)
    return item is not None and complete_item(session, item, **fields)
