"""/v1/ready sees a store that cannot commit: a SQLite file made immutable while the service runs (its pooled
connections still open), a PostgreSQL database set read-only; and its probe leaves nothing behind (issue 32,
point 6)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from latency_db.connection import make_engine, make_session_factory
from latency_db.migrate import upgrade_to_head
from latency_db.models import Device, Job, Measurement
from profiler_service.api.app import create_app
from tests.conftest import _admin_connect_args
from tests.profiler_service.conftest import SMALL_OPS, make_settings


def chattr(flag: str, *paths: Path) -> bool:
    """``chattr <flag> paths``; False when the file system or this user cannot (not root, tmpfs)."""
    if shutil.which("chattr") is None:
        return False
    return subprocess.run(["chattr", flag, *map(str, paths)], capture_output=True).returncode == 0


@pytest.fixture
def immutable(tmp_path: Path) -> Iterator[list[Path]]:
    """The files the test makes immutable (made mutable again after it, so that tmp_path can be removed)."""
    probe = tmp_path / "probe"
    probe.touch()
    if not (chattr("+i", probe) and chattr("-i", probe)):
        pytest.skip("chattr +i needs root and a file system with inode flags (ext4, xfs)")
    paths: list[Path] = []
    yield paths
    chattr("-i", *paths)


def stored_state(db_url: str) -> tuple[int, int, int, list]:
    engine = make_engine(db_url)
    try:
        with make_session_factory(engine)() as session:
            return (session.scalar(select(func.count()).select_from(Device)),
                    session.scalar(select(func.count()).select_from(Job)),
                    session.scalar(select(func.count()).select_from(Measurement)),
                    list(session.execute(select(Device.id, Device.last_seen)).all()))
    finally:
        engine.dispose()


def test_ready_probe_commits_nothing_that_changes(service_db: str) -> None:
    with TestClient(create_app(make_settings(service_db))) as client:
        before = stored_state(service_db)
        for _ in range(3):
            assert client.get("/v1/ready").status_code == 200
        assert stored_state(service_db) == before  # no row added, last_seen as it was


def test_ready_is_503_when_the_sqlite_file_becomes_immutable(service_db: str, immutable: list[Path]) -> None:
    db_file = Path(make_url(service_db).database)
    with TestClient(create_app(make_settings(service_db))) as client:
        assert client.post("/v1/lookup", json={"backend": "ort-cpu", "ops": SMALL_OPS}).status_code == 200
        assert client.get("/v1/ready").status_code == 200
        immutable += [db_file, db_file.with_name(db_file.name + "-wal")]  # the shared-memory file stays writable
        assert chattr("+i", *immutable)
        try:
            ready = client.get("/v1/ready")  # the pool's connections were opened read-write before
            assert ready.status_code == 503, ready.text
            assert ready.json()["database"] == "error: OperationalError: attempt to write a readonly database"
            assert client.get("/v1/health").status_code == 200
        finally:
            chattr("-i", *immutable)
        assert client.get("/v1/ready").status_code == 200


def _read_only(database: str, on: bool) -> None:
    with psycopg.connect(**_admin_connect_args()) as admin:
        if on:
            admin.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
        else:
            admin.execute(f'ALTER DATABASE "{database}" RESET default_transaction_read_only')


@pytest.mark.postgres
def test_ready_is_503_when_the_postgresql_database_is_set_read_only(postgres_url: str) -> None:
    upgrade_to_head(postgres_url)
    database = make_url(postgres_url).database
    with TestClient(create_app(make_settings(postgres_url))) as client:
        assert client.get("/v1/ready").status_code == 200
        before = stored_state(postgres_url)
        _read_only(database, True)  # new sessions only: the service's pooled connections still write
        try:
            ready = client.get("/v1/ready")
            assert ready.status_code == 503, ready.text
            assert ready.json()["database"] == "error: ReadOnlySqlTransaction: the database is read-only"
            assert database not in ready.text
        finally:
            _read_only(database, False)
        assert client.get("/v1/ready").status_code == 200
        assert stored_state(postgres_url) == before
