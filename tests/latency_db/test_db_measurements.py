"""Measurements: upsert (insert, then update in place), identity, batch lookup, listing, export, validation."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, select, update
from sqlalchemy.orm import Session, sessionmaker

import latency_db.repository.measurements as measurements_module
from latency_db.context import MeasurementContext
from latency_db.models import Measurement, MeasurementRound
from latency_db.repository import (
    EXPORT_COLUMNS,
    LOOKUP_CHUNK,
    export_rows,
    get_or_create_device,
    list_measurements,
    lookup_measurements,
    upsert_measurement,
)
from latency_db.stats import STATS_KEYS
from tests.latency_db.db_test_data import ENV_HASH, make_stats, spec

Args = Callable[..., dict[str, Any]]


def _count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Measurement))


def test_upsert_inserts_then_updates_the_same_row(
    session_factory: sessionmaker[Session], upsert_args: Args, monkeypatch: pytest.MonkeyPatch
) -> None:
    """created_at keeps the first insert's time, updated_at takes the update's: checked exactly on a frozen clock
    (the row's times are moved an hour back between the writes), never on two readings of a real clock."""
    now = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    earlier = now - timedelta(hours=1)
    monkeypatch.setattr(measurements_module, "utcnow", lambda: now)
    with session_factory.begin() as session:
        first = upsert_measurement(session, **upsert_args(spec(0), 2.0))
        first_id = first.id
        assert first.median_ms == 2.0 and first.samples == 50
        assert first.created_at == first.updated_at == now
        session.execute(update(Measurement).values(created_at=earlier, updated_at=earlier))
    with session_factory.begin() as session:
        second = upsert_measurement(
            session, **upsert_args(spec(0), 3.0, environment={"torch": "2.13.0", "note": "rerun"})
        )
        assert second.id == first_id
        assert second.median_ms == 3.0
        assert second.p90_ms == pytest.approx(3.3)
        assert second.environment == {"torch": "2.13.0", "note": "rerun"}
        assert (second.created_at, second.updated_at) == (earlier, now)
    with session_factory() as session:
        assert _count(session) == 1
        row = session.scalars(select(Measurement)).one()
        assert (row.id, row.median_ms, row.mean_ms) == (first_id, 3.0, pytest.approx(3.06))
        assert row.protocol_params == {"warmup": 10, "rel_precision": 0.02}


def test_upsert_refreshes_an_object_already_in_the_session(session: Session, upsert_args: Args) -> None:
    loaded = upsert_measurement(session, **upsert_args(spec(0), 1.0))
    updated = upsert_measurement(session, **upsert_args(spec(0), 4.0))
    assert updated is loaded
    assert loaded.median_ms == 4.0


@pytest.mark.parametrize(
    "change",
    [
        {"backend": "ort-cpu"},
        {"op_spec": spec(1)},
        {"batch": 8},
        {"dtype": "float16"},
        {"threads": 4},
        {"env_hash": "cd" * 32},
        {"protocol_version": "2"},
        {"device_id": "other"},
    ],
    ids=lambda change: next(iter(change)),
)
def test_each_identity_column_separates_rows(
    session_factory: sessionmaker[Session], upsert_args: Args, change: dict[str, Any]
) -> None:
    with session_factory.begin() as session:
        if change.get("device_id") == "other":
            change = {"device_id": get_or_create_device(session, "other", {"cpu": "other"}).id}
        base = upsert_measurement(session, **upsert_args(spec(0), 1.0))
        changed = upsert_measurement(session, **upsert_args(spec(0), 2.0, **change))
        assert changed.id != base.id
    with session_factory() as session:
        assert _count(session) == 2
        assert sorted(session.scalars(select(Measurement.median_ms))) == [1.0, 2.0]


def test_lookup_returns_found_and_leaves_out_missing_in_one_query(
    session: Session, upsert_args: Args, device_id: int, context: MeasurementContext
) -> None:
    for i in range(5):
        upsert_measurement(session, **upsert_args(spec(i), 1.0 + i))
    upsert_measurement(session, **upsert_args(spec(7), 9.0, batch=2))  # other context: not found
    wanted = [spec(0), spec(3), spec(7), "mbconv_r99x99_c8-8_k3_e3_s1_relu6_skip", spec(3)]
    with _counting_selects(session) as selects:
        found = lookup_measurements(session, device_id=device_id, context=context, op_specs=wanted)
    assert len(selects) == 1
    assert sorted(found) == [spec(0), spec(3)]
    assert found[spec(3)].median_ms == 4.0
    assert found[spec(0)].op_spec == spec(0)
    assert lookup_measurements(session, device_id=device_id, context=context, op_specs=[]) == {}


def test_lookup_of_many_specs_chunks_the_in_list(
    session: Session, upsert_args: Args, device_id: int, context: MeasurementContext
) -> None:
    stored = [spec(i) for i in range(0, 2 * LOOKUP_CHUNK + 50, 10)]
    for i, op_spec in enumerate(stored):
        upsert_measurement(session, **upsert_args(op_spec, 1.0 + i))
    wanted = [spec(i) for i in range(2 * LOOKUP_CHUNK + 50)]
    with _counting_selects(session) as selects:
        found = lookup_measurements(session, device_id=device_id, context=context, op_specs=wanted)
    assert len(selects) == 3  # ceil(1850 / 900)
    assert set(found) == set(stored)
    assert found[stored[-1]].median_ms == 1.0 + len(stored) - 1


@contextmanager
def _counting_selects(session: Session) -> Iterator[list[str]]:
    """Collect the SELECT statements the session's engine runs inside the block."""
    engine = session.get_bind()
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_list_filters_and_orders(session: Session, upsert_args: Args, device_id: int) -> None:
    upsert_measurement(session, **upsert_args(spec(2), 1.0, backend="torch-cpu", batch=4))
    upsert_measurement(session, **upsert_args(spec(1), 1.0, backend="torch-cpu", batch=8))
    upsert_measurement(session, **upsert_args(spec(1), 1.0, backend="torch-cpu", batch=1))
    upsert_measurement(session, **upsert_args(spec(0), 1.0, backend="ort-cpu"))
    other = get_or_create_device(session, "other", {"cpu": "other"}).id
    upsert_measurement(session, **upsert_args(spec(0), 1.0, device_id=other))

    rows = list_measurements(session, device_id)
    assert [(m.backend, m.op_spec, m.batch) for m in rows] == [
        ("ort-cpu", spec(0), 1),
        ("torch-cpu", spec(1), 1),
        ("torch-cpu", spec(1), 8),
        ("torch-cpu", spec(2), 4),
    ]
    assert [m.batch for m in list_measurements(session, device_id, backend="torch-cpu", batch=8)] == [8]
    assert list_measurements(session, device_id, env_hash="00" * 32) == []
    assert len(list_measurements(session, device_id, dtype="float32", threads=1, protocol_version="1")) == 4
    assert [m.device_id for m in list_measurements(session, other)] == [other]


def test_export_rows_are_flat_and_serializable(session: Session, upsert_args: Args, device_id: int) -> None:
    upsert_measurement(session, **upsert_args(spec(1), 2.5))
    upsert_measurement(session, **upsert_args(spec(0), 1.5))
    rows = export_rows(list_measurements(session, device_id))
    assert [row["op_spec"] for row in rows] == [spec(0), spec(1)]
    assert all(list(row) == list(EXPORT_COLUMNS) for row in rows)
    assert rows[0]["median_ms"] == 1.5 and rows[0]["samples"] == 50
    assert rows[0]["env_hash"] == ENV_HASH and rows[0]["device_id"] == device_id
    assert rows[0]["created_at"].endswith("+00:00")
    assert json.loads(json.dumps(rows)) == rows
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=EXPORT_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    parsed = list(csv.DictReader(io.StringIO(buffer.getvalue())))
    assert [float(row["median_ms"]) for row in parsed] == [1.5, 2.5]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("median_ms", float("nan")),
        ("mean_ms", float("inf")),
        ("std_ms", -0.1),
        ("p10_ms", "1.0"),
        ("p90_ms", None),
        ("iqr_ms", True),
        ("samples", 0),
        ("samples", 2.5),
        ("min_ms", -float("inf")),
    ],
)
def test_invalid_stats_are_rejected_naming_the_key(
    session: Session, upsert_args: Args, key: str, value: Any
) -> None:
    with pytest.raises(ValueError, match=key):
        upsert_measurement(session, **upsert_args(spec(0), stats=make_stats(**{key: value})))
    assert _count(session) == 0


def test_missing_and_unknown_stats_keys_are_named(session: Session, upsert_args: Args) -> None:
    stats = make_stats()
    del stats["p90_ms"]
    with pytest.raises(ValueError, match="missing p90_ms"):
        upsert_measurement(session, **upsert_args(spec(0), stats=stats))
    with pytest.raises(ValueError, match="unknown key.*max_ms"):
        upsert_measurement(session, **upsert_args(spec(0), stats=make_stats(max_ms=3.0)))


def test_integer_and_zero_stats_are_accepted(session: Session, upsert_args: Args) -> None:
    stats = dict.fromkeys(STATS_KEYS, 0)
    stats["samples"] = 1
    stats["median_ms"] = 2
    row = upsert_measurement(session, **upsert_args(spec(0), stats=stats))
    assert (row.median_ms, row.std_ms, row.samples) == (2.0, 0.0, 1)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("op_spec", "x" * 129),
        ("op_spec", ""),
        ("env_hash", "AB" * 32),
        ("env_hash", "ab" * 31),
        ("batch", 0),
        ("threads", -1),
        ("backend", ""),
        ("environment", ["not", "a", "dict"]),
        ("protocol_params", None),
    ],
)
def test_invalid_identity_or_json_arguments_are_rejected(
    session: Session, upsert_args: Args, field: str, value: Any
) -> None:
    with pytest.raises(ValueError, match=field):
        upsert_measurement(session, **upsert_args(spec(0), **{field: value}))


def test_context_must_be_a_measurement_context(session: Session, upsert_args: Args, device_id: int,
                                               context: MeasurementContext) -> None:
    args = upsert_args(spec(0))
    args["context"] = context.as_dict()
    with pytest.raises(ValueError, match="context: expected a MeasurementContext, got dict"):
        upsert_measurement(session, **args)
    with pytest.raises(ValueError, match="context"):
        lookup_measurements(session, device_id=device_id, context=None, op_specs=[spec(0)])  # type: ignore[arg-type]


def test_every_statistic_is_a_column_of_measurements_and_rounds() -> None:
    for model in (Measurement, MeasurementRound):
        assert set(STATS_KEYS) <= set(model.__table__.columns.keys()), model.__name__
