"""Measurements: upsert by identity, batch lookup (ORM rows, or chosen columns plus the fingerprint of a context),
listing and flat export."""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Row, Select, bindparam, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from latency_db.context import MeasurementContext
from latency_db.models import OP_SPEC_MAX_LEN, ContextVersion, Measurement, utcnow
from latency_db.repository._checks import check_context, check_dict, check_index, check_positive_int, check_text
from latency_db.repository.readable import ReadRows, read_rows
from latency_db.stats import STATS_KEYS

#: Columns that identify a measurement (its unique constraint), in order.
IDENTITY_COLUMNS = ("device_id", "backend", "op_spec", "batch", "dtype", "threads", "env_hash", "protocol_version")

#: Columns of :func:`export_rows`, in order. Timestamps are ISO 8601 strings in UTC; the full environment and
#: protocol parameters are left out (they are identified by ``env_hash`` and ``protocol_version``).
EXPORT_COLUMNS = (
    "id", "device_id", "backend", "op_spec", "batch", "dtype", "threads", "protocol_version", "env_hash",
    *STATS_KEYS, "rounds", "flagged", "created_at", "updated_at",
)
#: Longest reason a flagged measurement may carry.
FLAG_MAX_LEN = 1000

# SQLite limits the number of bound parameters of one statement (999 before 3.32): stay below it.
LOOKUP_CHUNK = 900

_INSERTS = {"sqlite": sqlite_insert, "postgresql": postgresql_insert}


def validate_stats(stats: Mapping[str, Any]) -> dict[str, float | int]:
    """Check a Stats mapping: exactly the keys of STATS_KEYS; ``*_ms`` finite and >= 0; ``samples`` an int >= 1.

    Returns the values as plain float/int. Raises ValueError naming the offending key.
    """
    missing = [key for key in STATS_KEYS if key not in stats]
    if missing:
        raise ValueError(f"stats: missing {', '.join(missing)}")
    unknown = sorted(set(stats) - set(STATS_KEYS))
    if unknown:
        raise ValueError(f"stats: unknown key(s) {', '.join(map(str, unknown))}")
    clean: dict[str, float | int] = {}
    for key in STATS_KEYS:
        value = stats[key]
        if key == "samples":
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"samples: expected an integer >= 1, got {value!r}")
            clean[key] = int(value)
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{key}: expected a finite number >= 0, got {value!r}")
        clean[key] = float(value)
    return clean


def upsert_measurement(
    session: Session,
    *,
    device_id: int,
    context: MeasurementContext,
    op_spec: str,
    environment: dict[str, Any],
    protocol_params: dict[str, Any],
    stats: Mapping[str, float | int],
    rounds: int | None = None,
    flagged: str | None = None,
    peak_rss_bytes: int | None = None,
) -> Measurement:
    """Insert the measurement of ``op_spec`` in ``context``, or overwrite the stats, environment and parameters of
    the row with the same identity.

    ``rounds``: how many rounds the stats aggregate (protocol 3; None before). ``flagged``: why the value is not a
    plain measurement (e.g. below the timer's resolution), None when it is. ``peak_rss_bytes``: the measuring
    process's real peak resident memory over the rounds (None: not known). One ``INSERT ... ON CONFLICT DO
    UPDATE ... RETURNING`` statement, so concurrent writers of the same key end with one row and no error.
    ``created_at`` keeps the first insert's time; ``updated_at`` is now. The context's version
    (:func:`context_fingerprint`) is raised in the same transaction, first: writers of one context then take its
    locks in the same order. Returns the row (the session's copy refreshed). Raises ValueError naming the bad
    argument or stats key.
    """
    values: dict[str, Any] = {
        "device_id": check_positive_int("device_id", device_id),
        **check_context(context).as_dict(),
        "op_spec": check_text("op_spec", op_spec, OP_SPEC_MAX_LEN),
        "environment": check_dict("environment", environment),
        "protocol_params": check_dict("protocol_params", protocol_params),
        **validate_stats(stats),
        "rounds": None if rounds is None else check_positive_int("rounds", rounds),
        "flagged": None if flagged is None else check_text("flagged", flagged, FLAG_MAX_LEN),
        "peak_rss_bytes": None if peak_rss_bytes is None else check_index("peak_rss_bytes", peak_rss_bytes),
    }
    now = utcnow()
    values["created_at"] = now
    values["updated_at"] = now
    insert = _INSERTS[session.get_bind().dialect.name]
    _raise_version(session, insert, {name: values[name] for name in CONTEXT_COLUMNS})
    stmt = insert(Measurement).values(values)
    updated = ("environment", "protocol_params", *STATS_KEYS, "rounds", "flagged", "peak_rss_bytes", "updated_at")
    stmt = stmt.on_conflict_do_update(
        index_elements=list(IDENTITY_COLUMNS), set_={name: stmt.excluded[name] for name in updated}
    )
    return session.scalars(
        stmt.returning(Measurement), execution_options={"populate_existing": True}
    ).one()


def lookup_measurements(
    session: Session, *, device_id: int, context: MeasurementContext, op_specs: Sequence[str]
) -> dict[str, Measurement]:
    """Return the stored measurements of ``op_specs`` in one context, keyed by op spec; missing specs are absent.

    One query (one per :data:`LOOKUP_CHUNK` distinct specs).
    """
    check_context(context)
    specs = list(dict.fromkeys(op_specs))
    found: dict[str, Measurement] = {}
    for start in range(0, len(specs), LOOKUP_CHUNK):
        chunk = specs[start : start + LOOKUP_CHUNK]
        stmt = _context_query(device_id, context).where(Measurement.op_spec.in_(chunk))
        for measurement in session.scalars(stmt, execution_options={"populate_existing": True}):
            found[measurement.op_spec] = measurement
    return found


def lookup_columns(
    session: Session, *, device_id: int, context: MeasurementContext, op_specs: Sequence[str],
    columns: Sequence[str],
) -> dict[str, Row[Any]]:
    """The stored measurements of ``op_specs`` in one context as rows of ``op_spec`` then ``columns`` (measurement
    column names; values by position or by name), keyed by op spec; missing specs are absent.

    A Core select of those columns only (no ORM objects: the cheap read of a hot path), one query per
    :data:`LOOKUP_CHUNK` distinct specs. Raises ValueError for a name that is not a measurement column.
    """
    check_context(context)
    unknown = [name for name in columns if name not in Measurement.__table__.c]
    if unknown:
        raise ValueError(f"columns: {', '.join(map(repr, unknown))} not a measurement column")
    stmt = _columns_statement(tuple(columns))
    params = _context_params(device_id, context)
    specs = list(dict.fromkeys(op_specs))
    connection = session.connection()
    found: dict[str, Row[Any]] = {}
    for start in range(0, len(specs), LOOKUP_CHUNK):
        for row in connection.execute(stmt, {**params, "op_specs": specs[start : start + LOOKUP_CHUNK]}):
            found[row.op_spec] = row
    return found


def context_fingerprint(session: Session, *, device_id: int, context: MeasurementContext) -> tuple[Any, ...]:
    """A value that changes whenever a measurement of the context is inserted or updated, by any session: the
    context's version, which :func:`upsert_measurement` raises in the writing transaction ((0,) before the first
    write). One read of one row, through its unique index.

    Rows are never deleted and versions only grow, so a fingerprint seen once never comes back after a change. To
    validate rows read from the store against it, read the fingerprint FIRST, then the rows: the version and the
    rows it counts commit together, and in PostgreSQL's read-committed mode each statement sees the latest commits,
    so rows read after it are at least as new as the fingerprint says.
    """
    check_context(context)
    version = session.connection().execute(_VERSION_STATEMENT, _context_params(device_id, context)).scalar()
    return (0 if version is None else version,)


def list_measurements(
    session: Session,
    device_id: int,
    *,
    backend: str | None = None,
    batch: int | None = None,
    dtype: str | None = None,
    threads: int | None = None,
    env_hash: str | None = None,
    protocol_version: str | None = None,
) -> ReadRows[Measurement]:
    """All measurements of a device, optionally filtered (None = any), ordered by backend, op spec, batch
    (then dtype, threads, id). A row that cannot be read is left out and counted (:func:`~latency_db.repository.
    readable.read_rows`)."""
    stmt = select(Measurement).where(Measurement.device_id == device_id)
    filters = {
        Measurement.backend: backend,
        Measurement.batch: batch,
        Measurement.dtype: dtype,
        Measurement.threads: threads,
        Measurement.env_hash: env_hash,
        Measurement.protocol_version: protocol_version,
    }
    for column, value in filters.items():
        if value is not None:
            stmt = stmt.where(column == value)
    stmt = stmt.order_by(
        Measurement.backend, Measurement.op_spec, Measurement.batch, Measurement.dtype, Measurement.threads,
        Measurement.id,
    )
    return read_rows(session, stmt, Measurement)


def export_rows(measurements: Iterable[Measurement]) -> list[dict[str, Any]]:
    """Flat dicts with the keys of :data:`EXPORT_COLUMNS` (in that order), ready for JSON or csv.DictWriter."""
    rows = []
    for measurement in measurements:
        row = {name: getattr(measurement, name) for name in EXPORT_COLUMNS}
        row["created_at"] = measurement.created_at.isoformat()
        row["updated_at"] = measurement.updated_at.isoformat()
        rows.append(row)
    return rows


def _context_query(device_id: int, context: MeasurementContext) -> Select[tuple[Measurement]]:
    return select(Measurement).where(*_in_context(_context_values(device_id, context)))


#: The columns that select one device's rows in one measurement context (those of ``ix_measurements_context``).
CONTEXT_COLUMNS = ("device_id", "backend", "batch", "dtype", "threads", "env_hash", "protocol_version")


def _context_values(device_id: int, context: MeasurementContext) -> dict[str, Any]:
    return {"device_id": device_id, **{name: getattr(context, name) for name in CONTEXT_COLUMNS[1:]}}


def _in_context(values: Mapping[str, Any]) -> tuple[ColumnElement[bool], ...]:
    """The rows whose CONTEXT_COLUMNS equal ``values`` (plain values, or bound parameters)."""
    columns = Measurement.__table__.c
    return tuple(columns[name] == values[name] for name in CONTEXT_COLUMNS)


# The hot-path statements are built once, with bound parameters (building one costs more than running it).
_CONTEXT_PARAMS = {name: bindparam(f"context_{name}") for name in CONTEXT_COLUMNS}


def _context_params(device_id: int, context: MeasurementContext) -> dict[str, Any]:
    return {f"context_{name}": value for name, value in _context_values(device_id, context).items()}


@functools.lru_cache(maxsize=16)
def _columns_statement(columns: tuple[str, ...]) -> Select[Any]:
    table = Measurement.__table__
    return select(table.c.op_spec, *(table.c[name] for name in columns)).where(
        *_in_context(_CONTEXT_PARAMS), table.c.op_spec.in_(bindparam("op_specs", expanding=True))
    )


_VERSION_STATEMENT = select(ContextVersion.__table__.c.version).where(
    *(ContextVersion.__table__.c[name] == _CONTEXT_PARAMS[name] for name in CONTEXT_COLUMNS))


def _raise_version(session: Session, insert: Any, context_values: Mapping[str, Any]) -> None:
    """Raise the version of the context ``context_values`` by one (its row made at 1 by the first write)."""
    table = ContextVersion.__table__
    stmt = insert(table).values(**context_values, version=1)
    session.execute(stmt.on_conflict_do_update(index_elements=list(CONTEXT_COLUMNS),
                                               set_={"version": table.c.version + 1}))
