"""The reads behind the service's cached lookups: ``lookup_columns`` and ``context_fingerprint`` (SQLite and
PostgreSQL). Writes go through their own committed sessions, as another process's would."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from latency_db.context import MeasurementContext
from latency_db.repository import lookup_measurements, upsert_measurement
from latency_db.repository import measurements as measurements_module
from latency_db.repository.measurements import LOOKUP_CHUNK, context_fingerprint, lookup_columns
from latency_db.stats import STATS_KEYS
from latency_db.transactions import write_session
from tests.latency_db.db_test_data import make_stats, spec

Args = Callable[..., dict[str, Any]]


def write(session_factory: sessionmaker[Session], **args: Any) -> None:
    with write_session(session_factory) as session:
        upsert_measurement(session, **args)


def fingerprint(session_factory: sessionmaker[Session], device_id: int, context: MeasurementContext) -> tuple:
    with session_factory() as session:
        return context_fingerprint(session, device_id=device_id, context=context)


def test_lookup_columns_gives_the_stats_of_lookup_measurements(
    session_factory: sessionmaker[Session], upsert_args: Args, device_id: int, context: MeasurementContext
) -> None:
    count = LOOKUP_CHUNK + 5  # more than one chunk
    with write_session(session_factory) as session:
        for i in range(count):
            upsert_measurement(session, **upsert_args(spec(i), 1.0 + i / 10))
    wanted = [spec(i) for i in range(0, count, 2)] + [spec(1), spec(0), "conv_r8x8_c3-8_k3_s1_relu6"]
    with session_factory() as session:
        rows = lookup_columns(session, device_id=device_id, context=context, op_specs=wanted, columns=STATS_KEYS)
        orm = lookup_measurements(session, device_id=device_id, context=context, op_specs=wanted)
    assert set(rows) == set(orm) == set(wanted) - {"conv_r8x8_c3-8_k3_s1_relu6"}
    for op_spec, row in rows.items():
        assert tuple(row) == (op_spec, *(getattr(orm[op_spec], key) for key in STATS_KEYS))
        assert row.median_ms == orm[op_spec].median_ms  # by column name too


def test_lookup_columns_reads_one_context_and_names_an_unknown_column(
    session_factory: sessionmaker[Session], upsert_args: Args, device_id: int, context: MeasurementContext
) -> None:
    write(session_factory, **upsert_args(spec(0), 2.0, batch=8))
    with session_factory() as session:
        assert lookup_columns(session, device_id=device_id, context=context, op_specs=[spec(0)],
                              columns=["median_ms"]) == {}
        batch8 = lookup_columns(session, device_id=device_id, context=replace(context, batch=8),
                                op_specs=[spec(0)], columns=["median_ms"])
        assert {key: tuple(row) for key, row in batch8.items()} == {spec(0): (spec(0), 2.0)}
        with pytest.raises(ValueError, match="'no_such_column' not a measurement column"):
            lookup_columns(session, device_id=device_id, context=context, op_specs=[spec(0)],
                           columns=["median_ms", "no_such_column"])


def test_fingerprint_changes_with_every_write_to_its_context_only(
    session_factory: sessionmaker[Session], upsert_args: Args, device_id: int, context: MeasurementContext
) -> None:
    seen = [fingerprint(session_factory, device_id, context)]
    write(session_factory, **upsert_args(spec(0), 1.0))  # insert
    seen.append(fingerprint(session_factory, device_id, context))
    write(session_factory, **upsert_args(spec(1), 1.0))  # insert
    seen.append(fingerprint(session_factory, device_id, context))
    write(session_factory, **upsert_args(spec(0), 3.0))  # update
    seen.append(fingerprint(session_factory, device_id, context))
    assert len(set(seen)) == len(seen), seen
    write(session_factory, **upsert_args(spec(0), 3.0, batch=2))  # another context
    write(session_factory, **upsert_args(spec(0), 3.0, env_hash="cd" * 32))
    assert fingerprint(session_factory, device_id, context) == seen[-1]


def test_an_update_older_than_the_latest_write_still_changes_the_fingerprint(
    session_factory: sessionmaker[Session], upsert_args: Args, device_id: int, context: MeasurementContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A write whose clock time is older than the latest row's (a PostgreSQL transaction that commits after a
    later one; a clock stepped back) changes the fingerprint all the same: it counts writes, not times."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    clock = {"now": start}
    monkeypatch.setattr(measurements_module, "utcnow", lambda: clock["now"])
    write(session_factory, **upsert_args(spec(0), 1.0))
    clock["now"] = start + timedelta(seconds=20)
    write(session_factory, **upsert_args(spec(1), 1.0))
    before = fingerprint(session_factory, device_id, context)
    clock["now"] = start + timedelta(seconds=10)
    write(session_factory, **upsert_args(spec(0), 5.0, stats=make_stats(5.0)))
    after = fingerprint(session_factory, device_id, context)
    assert before == (2,) and after == (3,)


def test_fingerprint_is_one_row_read_not_a_scan_of_the_context(
    session_factory: sessionmaker[Session], upsert_args: Args, device_id: int, context: MeasurementContext
) -> None:
    """The fingerprint reads the context's version row, whatever the number of rows it counts."""
    from sqlalchemy import event

    with write_session(session_factory) as session:
        for i in range(50):
            upsert_measurement(session, **upsert_args(spec(i), 1.0))
    statements: list[str] = []
    with session_factory() as session:
        engine = session.get_bind()
        listener = lambda *args: statements.append(args[2])  # noqa: E731  (conn, cursor, statement, ...)
        event.listen(engine, "before_cursor_execute", listener)
        try:
            assert context_fingerprint(session, device_id=device_id, context=context) == (50,)
        finally:
            event.remove(engine, "before_cursor_execute", listener)
    reads = [text for text in statements if "context_versions" in text]
    assert len(reads) == 1 and "measurements" not in reads[0]
