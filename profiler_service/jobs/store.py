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
from typing import Any, NamedTuple

from sqlalchemy.orm import Session, sessionmaker

from latency_db.context import MeasurementContext
from latency_db.models import LEASE_OWNER_MAX_LEN, Job, JobItem, MeasurementRound
from latency_db.repository import (
    add_round,
    attach_rounds,
    claim_next_job,
    complete_item,
    fail_pending_items,
    finish_job,
    holds_lease,
    job_rounds,
    lookup_measurements,
    pending_items,
    release_lease,
    renew_lease,
    upsert_measurement,
)
from latency_db.transactions import write_session
from profiler_service.engine.stats import RoundMeasurement, Stats

#: The item position of the network of an architecture job (which has no items) in its stored rounds.
NETWORK_POSITION = 0


def new_owner_id() -> str:
    """A lease owner id unique to this worker: host, process id and a random part (a restarted process, or a
    second worker of the same process, is another owner)."""
    suffix = f":{os.getpid()}:{uuid.uuid4().hex[:12]}"
    return socket.gethostname()[: LEASE_OWNER_MAX_LEN - len(suffix)] + suffix


@dataclass(frozen=True)
class ClaimedJob:
    """What the worker needs of a claimed job, read once so that no ORM object outlives its session.

    ``context`` is the context the job was submitted in; the worker measures in its current environment.
    ``attempts``: measurements of its network (an architecture job) that were started and never came back.
    """

    id: int
    kind: str
    context: MeasurementContext
    force: bool
    payload: Any
    attempts: int = 0

    @classmethod
    def of(cls, job: Job) -> ClaimedJob:
        """The claimed view of a job row."""
        return cls(job.id, job.kind, job.context, job.force, job.payload, job.attempts)


class PendingItem(NamedTuple):
    """A pending item of a job: its id, position and op spec, and how many of its measurements were started and
    never came back (the service's process ended while it measured: see :meth:`JobStore.begin_attempt`)."""

    item_id: int
    position: int
    op_spec: str
    attempts: int = 0


def round_values(measurement: RoundMeasurement) -> dict[str, Any]:
    """The columns of a stored round of ``measurement`` (raw statistics and details), for ``add_round``."""
    return {"stats": measurement.raw.as_dict(), "correction_ms": measurement.correction_ms,
            "runs_per_timing": measurement.runs_per_timing, "timer_resolution_ms": measurement.timer_resolution_ms,
            "peak_rss_bytes": measurement.peak_rss_bytes}


def round_of(row: MeasurementRound) -> RoundMeasurement:
    """The round a stored row holds."""
    raw = Stats(row.median_ms, row.mean_ms, row.std_ms, row.min_ms, row.p10_ms, row.p90_ms, row.iqr_ms, row.samples)
    return RoundMeasurement(raw=raw, correction_ms=row.correction_ms, runs_per_timing=row.runs_per_timing,
                            timer_resolution_ms=row.timer_resolution_ms, peak_rss_bytes=row.peak_rss_bytes)


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
    def pending_items(self, job_id: int) -> list[PendingItem]:
        """The job's pending items, in position order."""
        with self.sessions() as session:
            return [PendingItem(item.id, item.position, item.op_spec, item.attempts)
                    for item in pending_items(session, job_id)]

    def begin_attempt(self, job_id: int, item_id: int | None) -> bool:
        """Count a measurement of the item (``item_id`` None: the network of an architecture job) as started,
        before it starts: the count stays raised if the service's process ends while it measures, and goes back
        to 0 once a measurement of the item comes back (:meth:`end_attempt`, or any write of its outcome). False
        when the job is no longer this worker's or the item no longer pending."""
        return self._set_attempts(job_id, item_id, None)

    def end_attempt(self, job_id: int, item_id: int | None) -> bool:
        """The item's measurement came back without an outcome to store (it was stopped): attempts back to 0."""
        return self._set_attempts(job_id, item_id, 0)

    def _set_attempts(self, job_id: int, item_id: int | None, value: int | None) -> bool:
        with write_session(self.sessions) as session:
            if not holds_lease(session, job_id, owner=self.owner):
                return False
            row: Job | JobItem | None = session.get(Job, job_id) if item_id is None else session.get(JobItem, item_id)
            if row is None or (item_id is not None and row.status != "pending"):
                return False
            row.attempts = row.attempts + 1 if value is None else value
            return True

    def stored_rounds(self, job_id: int, context: MeasurementContext) -> dict[int, dict[int, RoundMeasurement]]:
        """The rounds the job has stored in ``context``'s environment and protocol version: position -> round
        index -> round (rounds of another environment are not the current measurement's)."""
        with self.sessions() as session:
            rounds: dict[int, dict[int, RoundMeasurement]] = {}
            for row in job_rounds(session, job_id, context):
                rounds.setdefault(row.position, {})[row.round_index] = round_of(row)
            return rounds

    def store_round(self, job_id: int, item_id: int | None, position: int, context: MeasurementContext,
                    round_index: int, measurement: RoundMeasurement) -> bool:
        """Store one round that does not complete its item (``item_id`` None: the network of an architecture job).

        Returns False, storing nothing, when the job is no longer this worker's or the item no longer pending.
        """
        with write_session(self.sessions) as session:
            if not holds_lease(session, job_id, owner=self.owner):
                return False
            if item_id is not None and not _is_pending(session, item_id):
                return False
            add_round(session, job_id=job_id, position=position, context=context, round_index=round_index,
                      **round_values(measurement))
            row: Job | JobItem | None = session.get(Job, job_id) if item_id is None else session.get(JobItem, item_id)
            if row is not None:
                row.attempts = 0  # this measurement came back
            return True

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
                          stats: dict[str, Any], *, rounds: int | None = None, flagged: str | None = None,
                          position: int | None = None,
                          last_round: tuple[int, RoundMeasurement] | None = None,
                          peak_rss_bytes: int | None = None) -> bool:
        """Store the item's last round (``last_round``: index and round), its measurement row (``stats``, the
        aggregate of ``rounds`` rounds, ``flagged``, the measuring process's peak memory over them) and mark the
        item done, in ONE transaction (crash safety: see the worker's docstring); with ``position``, the item's
        stored rounds are linked to the row.

        Returns False, storing nothing, when the job is no longer this worker's or the item no longer pending.
        """
        with write_session(self.sessions) as session:
            if not holds_lease(session, job_id, owner=self.owner):
                return False
            if not _is_pending(session, item_id):
                return False
            if last_round is not None:
                if position is None:
                    raise ValueError("position: needed to store the item's last round")
                index, measurement = last_round
                add_round(session, job_id=job_id, position=position, context=context, round_index=index,
                          **round_values(measurement))
            row = upsert_measurement(session, device_id=self.device_id, context=context, op_spec=op_spec,
                                     environment=environment, protocol_params=protocol_params, stats=stats,
                                     rounds=rounds, flagged=flagged, peak_rss_bytes=peak_rss_bytes)
            if position is not None:
                attach_rounds(session, job_id=job_id, position=position, context=context, measurement_id=row.id)
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

    def finish_network(self, job_id: int, context: MeasurementContext, round_index: int,
                       measurement: RoundMeasurement | None, result: dict[str, Any]) -> bool:
        """Store the network's last round (None: every round is stored already) and finish the architecture job
        "done" with ``result``, in ONE transaction, if the job still runs under this worker's lease."""
        with write_session(self.sessions) as session:
            if not holds_lease(session, job_id, owner=self.owner):
                return False
            if measurement is not None:
                add_round(session, job_id=job_id, position=NETWORK_POSITION, context=context,
                          round_index=round_index, **round_values(measurement))
            finish_job(session, session.get(Job, job_id), status="done", result=result)
            return True

    def finish(self, job_id: int, **fields: Any) -> bool:
        """Finish the job (see ``finish_job`` for ``fields``) if it still runs under this worker's lease (a job
        cancelled meanwhile stays cancelled); True when it was finished here."""
        with write_session(self.sessions) as session:
            if not holds_lease(session, job_id, owner=self.owner):
                return False
            finish_job(session, session.get(Job, job_id), **fields)
            return True


def _is_pending(session: Session, item_id: int) -> bool:
    item = session.get(JobItem, item_id, populate_existing=True)
    return item is not None and item.status == "pending"


def _complete(session: Session, item_id: int, **fields: Any) -> bool:
    item = session.get(JobItem, item_id)
    if item is None or not complete_item(session, item, **fields):
        return False
    item.attempts = 0  # its outcome came back
    return True
