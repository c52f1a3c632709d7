"""Canary references: the stored value of each canary op per device and measurement context (the first canary check
of a context stores them; later checks are compared with them)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from latency_db.context import MeasurementContext
from latency_db.models import OP_SPEC_MAX_LEN, CanaryReference, utcnow
from latency_db.repository._checks import check_context, check_finite, check_positive_int, check_text

_INSERTS = {"sqlite": sqlite_insert, "postgresql": postgresql_insert}
#: The columns of a reference's identity (its unique constraint).
IDENTITY = ["device_id", "backend", "op_spec", "batch", "dtype", "threads", "env_hash", "protocol_version"]


def canary_references(session: Session, *, device_id: int, context: MeasurementContext,
                      op_specs: Sequence[str]) -> dict[str, float]:
    """The stored reference values (ms) of ``op_specs`` in ``context``, by op spec; specs without one are absent."""
    check_context(context)
    stmt = select(CanaryReference.op_spec, CanaryReference.median_ms).where(
        CanaryReference.device_id == device_id,
        CanaryReference.backend == context.backend,
        CanaryReference.batch == context.batch,
        CanaryReference.dtype == context.dtype,
        CanaryReference.threads == context.threads,
        CanaryReference.env_hash == context.env_hash,
        CanaryReference.protocol_version == context.protocol_version,
        CanaryReference.op_spec.in_(list(op_specs)),
    )
    return {spec: median for spec, median in session.execute(stmt)}


def store_canary_references(session: Session, *, device_id: int, context: MeasurementContext,
                            values: Mapping[str, float]) -> dict[str, float]:
    """Store ``values`` (ms, by op spec) as the references of ``context`` where none is stored yet (an existing
    reference is never overwritten: two services checking at once keep the first); flushes. Returns the
    references now stored for these specs."""
    check_context(context)
    check_positive_int("device_id", device_id)
    insert = _INSERTS[session.get_bind().dialect.name]
    for spec, value in values.items():
        row = {"device_id": device_id, **context.as_dict(), "op_spec": check_text("op_spec", spec, OP_SPEC_MAX_LEN),
               "median_ms": check_finite(f"values[{spec}]", value, minimum=0.0), "created_at": utcnow()}
        session.execute(insert(CanaryReference).values(row).on_conflict_do_nothing(index_elements=IDENTITY))
    session.flush()
    return canary_references(session, device_id=device_id, context=context, op_specs=list(values))


def replace_canary_references(session: Session, *, device_id: int, context: MeasurementContext,
                              values: Mapping[str, float]) -> dict[str, float]:
    """Store ``values`` (ms, by op spec) as the references of ``context``, replacing the stored ones of these specs
    (a reference set under load, or a re-baseline on purpose); flushes. Returns the references now stored."""
    check_context(context)
    check_positive_int("device_id", device_id)
    specs = list(values)
    session.execute(delete(CanaryReference).where(
        CanaryReference.device_id == device_id,
        *(getattr(CanaryReference, column) == value for column, value in context.as_dict().items()),
        CanaryReference.op_spec.in_(specs),
    ))
    return store_canary_references(session, device_id=device_id, context=context, values=values)
