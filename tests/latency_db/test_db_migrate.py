"""Alembic migrations: creation of the whole schema, idempotence, parity with the models, concurrency, packaging."""

from __future__ import annotations

import fnmatch
import multiprocessing
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, inspect, select, text
from sqlalchemy.exc import IntegrityError

from latency_db.connection import make_engine, make_session_factory
from latency_db.migrate import (
    MIGRATIONS_DIR,
    alembic_config,
    current_revision,
    head_revision,
    locked_migration_transaction,
    upgrade_to_head,
)
from latency_db.models import Base, Device, Job
from latency_db.repository import fingerprint_hash, get_or_create_device
from latency_db.transactions import begin_write
from tests.latency_db import db_migrate_worker

EXPECTED_TABLES = {"alembic_version", "devices", "measurements", "jobs", "job_items", "measurement_rounds",
                   "canary_references", "context_versions", "service_heartbeats"}
REPO_ROOT = Path(__file__).resolve().parents[2]

# A fresh, unmigrated database of each kind.
raw_url = pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)(lambda request: request.getfixturevalue({"sqlite": "sqlite_url", "postgresql": "postgres_url"}[request.param]))


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_creates_every_table_at_head(raw_url: str) -> None:
    assert current_revision(raw_url) is None
    upgrade_to_head(raw_url)
    assert _tables(raw_url) == EXPECTED_TABLES
    assert current_revision(raw_url) == head_revision() == "0005"


def test_upgrade_is_idempotent_and_keeps_data(raw_url: str) -> None:
    upgrade_to_head(raw_url)
    engine = make_engine(raw_url)
    try:
        with make_session_factory(engine).begin() as session:
            get_or_create_device(session, "dev", {"k": 1})
        upgrade_to_head(raw_url)
        upgrade_to_head(raw_url)
        with make_session_factory(engine)() as session:
            assert session.scalar(select(func.count()).select_from(Device)) == 1
    finally:
        engine.dispose()
    assert current_revision(raw_url) == head_revision()


def test_migrated_schema_matches_the_models(db_url: str) -> None:
    """Alembic's autogenerate finds nothing to change: the migrations and the ORM models agree."""
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_upgrade_does_not_depend_on_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sqlite_url: str) -> None:
    monkeypatch.chdir(tmp_path)
    upgrade_to_head(sqlite_url)
    assert current_revision(sqlite_url) == head_revision()


def test_current_revision_does_not_create_a_missing_sqlite_file(tmp_path: Path) -> None:
    from latency_db.connection import sqlite_url as make_sqlite_url

    path = tmp_path / "absent.db"
    assert current_revision(make_sqlite_url(path)) is None
    assert not path.exists()


def test_two_processes_upgrading_at_once(raw_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=db_migrate_worker.migrate_after_barrier, args=(raw_url, barrier)) for _ in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=90)
    assert [proc.exitcode for proc in procs] == [0, 0]
    assert _tables(raw_url) == EXPECTED_TABLES
    assert current_revision(raw_url) == head_revision()


def test_package_data_ships_every_migration_file() -> None:
    """Every file of latency_db/migrations matches a [tool.setuptools.package-data] glob, so wheels carry it."""
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["latency_db"]
    package_dir = MIGRATIONS_DIR.parent
    files = [
        path.relative_to(package_dir).as_posix()
        for path in MIGRATIONS_DIR.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    ]
    assert "migrations/env.py" in files and "migrations/script.py.mako" in files
    assert any(name.startswith("migrations/versions/") for name in files)
    unshipped = [name for name in files if not any(fnmatch.fnmatch(name, glob) for glob in globs)]
    assert unshipped == []


def _migrate(url: str, direction: str, target: str) -> None:
    """Run ``alembic upgrade|downgrade target`` the way latency_db.migrate does (locked transaction)."""
    engine = make_engine(url)
    try:
        with locked_migration_transaction(engine) as connection:
            config = alembic_config(url)
            config.attributes["connection"] = connection
            getattr(command, direction)(config, target)
    finally:
        engine.dispose()


def test_0002_keeps_rows_and_references_and_makes_name_part_of_the_device(raw_url: str) -> None:
    """A 0001 store with a device, a job and its item: after 0002 everything is there and still linked, a second
    name on the same host is a second device, and foreign keys are enforced again."""
    fingerprint = {"cpu": "A"}
    _migrate(raw_url, "upgrade", "0001")
    engine = make_engine(raw_url)
    try:
        with begin_write(engine) as conn:
            now = {"now": datetime(2025, 1, 1, tzinfo=UTC).replace(tzinfo=None)}
            device_id = conn.execute(text(
                "INSERT INTO devices (name, fingerprint, fingerprint_hash, first_seen, last_seen) "
                "VALUES ('box', '{\"cpu\":\"A\"}', :hash, :now, :now) RETURNING id"),
                {"hash": fingerprint_hash(fingerprint), **now}).scalar_one()
            job_id = conn.execute(text(
                "INSERT INTO jobs (device_id, kind, status, backend, batch, dtype, threads, env_hash, "
                "protocol_version, force, created_at, updated_at) VALUES (:device, 'ops', 'running', 'ort-cpu', 1, "
                "'float32', 1, :hash, '2', false, :now, :now) RETURNING id"),
                {"device": device_id, "hash": "cd" * 32, **now}).scalar_one()
            conn.execute(text("INSERT INTO job_items (job_id, position, op_spec, status) "
                              "VALUES (:job, 0, 'x', 'pending')"), {"job": job_id})
    finally:
        engine.dispose()

    upgrade_to_head(raw_url)
    assert current_revision(raw_url) == head_revision()
    engine = make_engine(raw_url)
    try:
        with make_session_factory(engine)() as session:
            job = session.get(Job, job_id)
            assert (job.device_id, job.status, job.lease_owner, job.lease_expires_at) == (
                device_id, "running", None, None)
            assert [item.op_spec for item in job.items] == ["x"]
            assert session.get(Device, device_id).name == "box"
        with make_session_factory(engine).begin() as session:
            assert get_or_create_device(session, "box", fingerprint).id == device_id
            second = get_or_create_device(session, "box-2", fingerprint)
            assert second.id != device_id and second.fingerprint_hash == fingerprint_hash(fingerprint)
        with pytest.raises(IntegrityError, match="(?i)foreign key"), begin_write(engine) as conn:
            conn.execute(text("INSERT INTO job_items (job_id, position, op_spec, status) "
                              "VALUES (:job, 0, 'y', 'pending')"), {"job": job_id + 999})
    finally:
        engine.dispose()


def test_0002_downgrades_and_upgrades_again(raw_url: str) -> None:
    upgrade_to_head(raw_url)
    _migrate(raw_url, "downgrade", "0001")
    assert current_revision(raw_url) == "0001"
    upgrade_to_head(raw_url)
    assert current_revision(raw_url) == head_revision()
