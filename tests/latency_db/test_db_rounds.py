"""Protocol 3 in the store: every round of a measurement kept (per job, position, environment), linked to the
measurement that aggregates it and moved on a re-measure; measurements carry their round count and flag; canary
references are stored once; migration 0003 keeps older rows as they were. SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from alembic import command
from sqlalchemy import delete, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from latency_db.connection import make_engine, make_session_factory
from latency_db.context import MeasurementContext
from latency_db.migrate import (
    alembic_config,
    current_revision,
    head_revision,
    locked_migration_transaction,
    upgrade_to_head,
)
from latency_db.models import Job, Measurement, MeasurementRound
from latency_db.repository import (
    EXPORT_COLUMNS,
    add_round,
    attach_rounds,
    canary_references,
    create_job,
    export_rows,
    job_rounds,
    lookup_measurements,
    measurement_rounds,
    store_canary_references,
    upsert_measurement,
)
from latency_db.repository.measurements import context_fingerprint
from latency_db.transactions import begin_write
from tests.latency_db.db_test_data import ENV_HASH, make_stats, spec

OTHER_ENV = "cd" * 32


def new_job(session: Session, device_id: int, context: MeasurementContext, n: int = 2) -> int:
    job = create_job(session, device_id=device_id, kind="ops", context=context, op_specs=[spec(i) for i in range(n)])
    return job.id


def round_args(context: MeasurementContext, job_id: int, position: int, round_index: int,
               median_ms: float = 1.0) -> dict[str, Any]:
    """The keyword arguments of add_round for one round."""
    return {"job_id": job_id, "position": position, "context": context, "round_index": round_index,
            "stats": make_stats(median_ms), "correction_ms": 0.25, "runs_per_timing": 1, "timer_resolution_ms": 1e-6}


def test_rounds_are_kept_per_job_position_and_environment(session: Session, device_id: int,
                                                          context: MeasurementContext) -> None:
    job_id = new_job(session, device_id, context)
    for position, round_index, median in ((1, 0, 2.0), (0, 1, 1.5), (0, 0, 1.0)):
        add_round(session, **round_args(context, job_id, position, round_index, median))
    elsewhere = MeasurementContext(context.backend, 1, "float32", 1, OTHER_ENV, context.protocol_version)
    add_round(session, **round_args(elsewhere, job_id, 0, 0, 9.0))  # the same round, measured in another env
    session.commit()
    rows = job_rounds(session, job_id, context)
    assert [(r.position, r.round_index, r.median_ms) for r in rows] == [(0, 0, 1.0), (0, 1, 1.5), (1, 0, 2.0)]
    assert rows[0].correction_ms == 0.25 and rows[0].runs_per_timing == 1 and rows[0].timer_resolution_ms == 1e-6
    assert [r.median_ms for r in job_rounds(session, job_id, elsewhere)] == [9.0]
    with pytest.raises(IntegrityError):  # a round is stored once
        add_round(session, **round_args(context, job_id, 0, 0))
    session.rollback()


@pytest.mark.parametrize(("overrides", "field"), [
    ({"round_index": -1}, "round_index"), ({"position": True}, "position"), ({"runs_per_timing": 0}, "runs_per_timing"),
    ({"correction_ms": float("nan")}, "correction_ms"), ({"timer_resolution_ms": -1.0}, "timer_resolution_ms"),
    ({"stats": make_stats(1.0, samples=0)}, "samples"), ({"job_id": 0}, "job_id"),
])
def test_add_round_refuses_bad_values(session: Session, device_id: int, context: MeasurementContext,
                                      overrides: dict[str, Any], field: str) -> None:
    job_id = new_job(session, device_id, context)
    with pytest.raises(ValueError, match=field):
        add_round(session, **{**round_args(context, job_id, 0, 0), **overrides})


def test_a_measurement_links_its_rounds_and_a_re_measure_moves_the_link(
    session: Session, device_id: int, context: MeasurementContext, upsert_args: Any
) -> None:
    first, second = new_job(session, device_id, context), new_job(session, device_id, context)
    for job_id in (first, second):
        for round_index in range(3):
            add_round(session, **round_args(context, job_id, 0, round_index, 1.0 + round_index))
    row = upsert_measurement(session, **upsert_args(spec(0), 2.0), rounds=3)
    assert attach_rounds(session, job_id=first, position=0, context=context, measurement_id=row.id) == 3
    assert [r.job_id for r in measurement_rounds(session, row.id)] == [first] * 3
    again = upsert_measurement(session, **upsert_args(spec(0), 2.5), rounds=3)  # forced: the same row, new rounds
    assert again.id == row.id
    assert attach_rounds(session, job_id=second, position=0, context=context, measurement_id=row.id) == 3
    assert [(r.job_id, r.round_index) for r in measurement_rounds(session, row.id)] == [(second, i) for i in range(3)]
    old = session.scalars(select(MeasurementRound).where(MeasurementRound.job_id == first)).all()
    assert len(old) == 3 and all(r.measurement_id is None for r in old)  # history kept with its job
    session.commit()
    session.expunge_all()
    session.execute(delete(Job).where(Job.id == second))  # a job's rounds go with it (ON DELETE CASCADE)
    session.commit()
    assert measurement_rounds(session, row.id) == []
    assert session.scalar(select(func.count()).select_from(MeasurementRound)) == 3


def test_measurements_carry_their_round_count_and_flag(session: Session, context: MeasurementContext,
                                                       upsert_args: Any, device_id: int) -> None:
    plain = upsert_measurement(session, **upsert_args(spec(0), 1.0), rounds=3)
    flagged = upsert_measurement(session, **upsert_args(spec(1), 0.5), rounds=3, flagged="below_resolution: x")
    old = upsert_measurement(session, **upsert_args(spec(2), 0.5))
    assert (plain.rounds, plain.flagged, flagged.flagged, old.rounds, old.flagged) == (
        3, None, "below_resolution: x", None, None)
    cleared = upsert_measurement(session, **upsert_args(spec(1), 0.7), rounds=3)  # measured again, unflagged
    assert cleared.id == flagged.id and cleared.flagged is None
    found = lookup_measurements(session, device_id=device_id, context=context, op_specs=[spec(1)])
    assert found[spec(1)].flagged is None
    exported = export_rows([plain])[0]
    assert list(exported) == list(EXPORT_COLUMNS) and (exported["rounds"], exported["flagged"]) == (3, None)
    for bad, field in (({"rounds": 0}, "rounds"), ({"flagged": ""}, "flagged"), ({"flagged": "x" * 1001}, "flagged")):
        with pytest.raises(ValueError, match=field):
            upsert_measurement(session, **upsert_args(spec(3), 1.0), **bad)


def test_canary_references_are_stored_once_per_context(session_factory: sessionmaker[Session], device_id: int,
                                                       context: MeasurementContext) -> None:
    with session_factory.begin() as session:
        stored = store_canary_references(session, device_id=device_id, context=context, values={"a": 1.0, "b": 2.0})
        assert stored == {"a": 1.0, "b": 2.0}
    with session_factory.begin() as session:  # a later check never overwrites them
        stored = store_canary_references(session, device_id=device_id, context=context, values={"a": 5.0, "c": 3.0})
        assert stored == {"a": 1.0, "c": 3.0}
        elsewhere = MeasurementContext(context.backend, 1, "float32", 1, OTHER_ENV, context.protocol_version)
        assert canary_references(session, device_id=device_id, context=elsewhere, op_specs=["a"]) == {}
        with pytest.raises(ValueError, match="values"):
            store_canary_references(session, device_id=device_id, context=context, values={"d": float("inf")})


def _migrate(url: str, direction: str, target: str) -> None:
    engine = make_engine(url)
    try:
        with locked_migration_transaction(engine) as connection:
            config = alembic_config(url)
            config.attributes["connection"] = connection
            getattr(command, direction)(config, target)
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def raw_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue({"sqlite": "sqlite_url", "postgresql": "postgres_url"}[request.param])


def test_0003_keeps_protocol_2_rows_and_never_serves_them_as_protocol_3(raw_url: str) -> None:
    _migrate(raw_url, "upgrade", "0002")
    engine = make_engine(raw_url)
    now = {"now": datetime(2025, 1, 1, tzinfo=UTC).replace(tzinfo=None)}
    try:
        with begin_write(engine) as conn:
            device_id = conn.execute(text(
                "INSERT INTO devices (name, fingerprint, fingerprint_hash, first_seen, last_seen) "
                "VALUES ('box', '{}', :hash, :now, :now) RETURNING id"), {"hash": "ef" * 32, **now}).scalar_one()
            conn.execute(text(
                "INSERT INTO measurements (device_id, backend, op_spec, batch, dtype, threads, protocol_version, "
                "env_hash, environment, protocol_params, median_ms, mean_ms, std_ms, min_ms, p10_ms, p90_ms, iqr_ms, "
                "samples, created_at, updated_at) VALUES (:device, 'ort-cpu', :op, 1, 'float32', 1, '2', :env, '{}', "
                "'{}', 1.5, 1.5, 0.1, 1.4, 1.45, 1.6, 0.1, 50, :now, :now)"),
                {"device": device_id, "op": spec(0), "env": ENV_HASH, **now})
    finally:
        engine.dispose()
    upgrade_to_head(raw_url)
    assert current_revision(raw_url) == head_revision()
    engine = make_engine(raw_url)
    try:
        with make_session_factory(engine)() as session:
            row = session.scalars(select(Measurement)).one()
            assert (row.protocol_version, row.median_ms, row.rounds, row.flagged) == ("2", 1.5, None, None)
            for version in ("3", "3+warm"):
                context = MeasurementContext("ort-cpu", 1, "float32", 1, ENV_HASH, version)
                assert lookup_measurements(session, device_id=device_id, context=context, op_specs=[spec(0)]) == {}
                assert context_fingerprint(session, device_id=device_id, context=context) == (0,)
            old = MeasurementContext("ort-cpu", 1, "float32", 1, ENV_HASH, "2")
            assert context_fingerprint(session, device_id=device_id, context=old) == (1,)  # 0004 counted it
    finally:
        engine.dispose()
    _migrate(raw_url, "downgrade", "0002")  # and back: the row keeps its statistics
    engine = make_engine(raw_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT median_ms FROM measurements")).scalar_one() == 1.5
    finally:
        engine.dispose()
    upgrade_to_head(raw_url)
    assert current_revision(raw_url) == head_revision()
