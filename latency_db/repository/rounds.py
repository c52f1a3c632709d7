"""The rounds of measurements (protocol 3): every round of every op (or network) a job measured, kept so that a
table can be aggregated again later.

A round belongs to a job and an item position (0 for the network of an architecture job) and to the environment
and protocol version it was measured in: a job resumed in another environment measures its rounds again and never
mixes them with the old ones. Once the op's measurement is stored, its rounds point at it; measuring the op again
(a later job, ``force``) moves that link to the new rounds, the old ones stay with their job.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from latency_db.context import MeasurementContext
from latency_db.models import MeasurementRound
from latency_db.repository._checks import check_context, check_finite, check_index, check_positive_int
from latency_db.repository.measurements import validate_stats

#: What a round stores besides its statistics, in order.
ROUND_DETAIL_KEYS = ("correction_ms", "runs_per_timing", "timer_resolution_ms")


def add_round(
    session: Session,
    *,
    job_id: int,
    position: int,
    context: MeasurementContext,
    round_index: int,
    stats: Mapping[str, float | int],
    correction_ms: float,
    runs_per_timing: int,
    timer_resolution_ms: float,
    peak_rss_bytes: int | None = None,
) -> MeasurementRound:
    """Store one round of the item at ``position`` of job ``job_id``, measured in ``context`` (its environment
    hash and protocol version); flushes. ``stats`` are the raw statistics of what was timed. Raises ValueError
    naming the bad argument; a round stored twice violates ``uq_measurement_rounds_round``. ``peak_rss_bytes``: the
    measuring process's real peak resident memory while it measured the round (None: not known)."""
    check_context(context)
    row = MeasurementRound(
        job_id=check_positive_int("job_id", job_id),
        position=check_index("position", position),
        env_hash=context.env_hash,
        protocol_version=context.protocol_version,
        round_index=check_index("round_index", round_index),
        **validate_stats(stats),
        correction_ms=check_finite("correction_ms", correction_ms),
        runs_per_timing=check_positive_int("runs_per_timing", runs_per_timing),
        timer_resolution_ms=check_finite("timer_resolution_ms", timer_resolution_ms, minimum=0.0),
        peak_rss_bytes=None if peak_rss_bytes is None else check_index("peak_rss_bytes", peak_rss_bytes),
    )
    session.add(row)
    session.flush()
    return row


def job_rounds(session: Session, job_id: int, context: MeasurementContext) -> list[MeasurementRound]:
    """The rounds job ``job_id`` stored in ``context``'s environment and protocol version, by position and round."""
    check_context(context)
    stmt = (
        select(MeasurementRound)
        .where(MeasurementRound.job_id == job_id, MeasurementRound.env_hash == context.env_hash,
               MeasurementRound.protocol_version == context.protocol_version)
        .order_by(MeasurementRound.position, MeasurementRound.round_index)
    )
    return list(session.scalars(stmt, execution_options={"populate_existing": True}))


def attach_rounds(session: Session, *, job_id: int, position: int, context: MeasurementContext,
                  measurement_id: int) -> int:
    """Link the rounds of the item at ``position`` of job ``job_id`` (in ``context``) to ``measurement_id``, and
    unlink the rounds of any earlier measuring of that row; flushes. Returns how many rounds were linked."""
    check_context(context)
    check_positive_int("measurement_id", measurement_id)
    mine = (MeasurementRound.job_id == job_id, MeasurementRound.position == position,
            MeasurementRound.env_hash == context.env_hash,
            MeasurementRound.protocol_version == context.protocol_version)
    session.execute(
        update(MeasurementRound)
        .where(MeasurementRound.measurement_id == measurement_id, MeasurementRound.job_id != job_id)
        .values(measurement_id=None)
        .execution_options(synchronize_session=False)
    )
    result = session.execute(
        update(MeasurementRound).where(*mine).values(measurement_id=measurement_id)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount


def measurement_rounds(session: Session, measurement_id: int) -> list[MeasurementRound]:
    """The rounds the stored measurement ``measurement_id`` aggregates, in round order."""
    stmt = (
        select(MeasurementRound)
        .where(MeasurementRound.measurement_id == measurement_id)
        .order_by(MeasurementRound.round_index, MeasurementRound.id)
    )
    return list(session.scalars(stmt, execution_options={"populate_existing": True}))
