"""Engine construction: URL checks, SQLite pragmas and transactions, PostgreSQL connection, UTC timestamps."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from latency_db.engine import DEFAULT_DB_URL, make_engine, normalize_url, sqlite_url
from latency_db.models import Device
from latency_db.repository import get_or_create_device, ping


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("mysql+pymysql://u@localhost/db", "'mysql'"),
        ("oracle://u@localhost/db", "'oracle'"),
        ("postgresql+psycopg2://u@localhost/db", "'psycopg2'"),
        ("postgresql+asyncpg://u@localhost/db", "'asyncpg'"),
        ("sqlite+aiosqlite:///x.db", "'aiosqlite'"),
        ("sqlite://", "in-memory"),
        ("sqlite:///:memory:", "in-memory"),
        ("not a url", "cannot parse"),
    ],
)
def test_unsupported_url_is_rejected_naming_it(url: str, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        make_engine(url)


def test_sqlite_file_in_a_missing_folder_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no-such-dir"):
        make_engine(sqlite_url(tmp_path / "no-such-dir" / "x.db"))


def test_plain_postgresql_url_means_psycopg3() -> None:
    assert normalize_url("postgresql://postgres@h:5432/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgresql+psycopg://postgres@h/db").drivername == "postgresql+psycopg"


def test_sqlite_url_is_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    url = sqlite_url("sub/store.db")
    assert url == f"sqlite:///{tmp_path.resolve()}/sub/store.db"
    assert normalize_url(url).database == str(tmp_path.resolve() / "sub" / "store.db")


def test_default_url_is_a_sqlite_file_in_cwd() -> None:
    parsed = normalize_url(DEFAULT_DB_URL)
    assert parsed.get_backend_name() == "sqlite"
    assert parsed.database == "./proxyless_latency.db"


def test_sqlite_connections_get_wal_busy_timeout_and_foreign_keys(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() == 30000
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
    finally:
        engine.dispose()


def test_sqlite_transactions_hold_the_write_lock(sqlite_url: str) -> None:
    """BEGIN IMMEDIATE: a second writer cannot start while the first transaction is open."""
    engine = make_engine(sqlite_url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        with engine.connect() as first:
            first.exec_driver_sql("INSERT INTO t VALUES (1)")
            other = engine.raw_connection()
            try:
                cursor = other.cursor()
                cursor.execute("PRAGMA busy_timeout = 50")
                with pytest.raises(sqlite3.OperationalError, match="locked"):
                    cursor.execute("BEGIN IMMEDIATE")
            finally:
                other.close()
            first.rollback()
    finally:
        engine.dispose()


def test_session_factory_keeps_objects_after_commit(session_factory: sessionmaker[Session]) -> None:
    with session_factory() as session:
        device = get_or_create_device(session, "dev", {"k": 1})
        session.commit()
    # expire_on_commit=False: attributes are readable after the session is gone
    assert device.name == "dev"
    assert device.fingerprint == {"k": 1}


def test_ping(session: Session) -> None:
    ping(session)


def test_foreign_keys_are_enforced(session: Session) -> None:
    from latency_db.models import Job

    session.add(
        Job(device_id=9999, kind="ops", backend="b", batch=1, dtype="float32", threads=1, env_hash="0" * 64,
            protocol_version="1")
    )
    with pytest.raises(Exception, match="(?i)foreign key"):
        session.flush()


def test_timestamps_come_back_utc_aware(session_factory: sessionmaker[Session]) -> None:
    paris = timezone(timedelta(hours=2))
    seen = datetime(2024, 5, 1, 14, 30, 15, 123456, tzinfo=paris)
    with session_factory.begin() as session:
        device = get_or_create_device(session, "dev", {"k": 2})
        device.first_seen = seen
        device_pk = device.id
    with session_factory() as session:
        stored = session.scalars(select(Device).where(Device.id == device_pk)).one()
        assert stored.first_seen == seen
        assert stored.first_seen.utcoffset() == timedelta(0)
        assert stored.first_seen.hour == 12
        assert stored.last_seen.tzinfo is not None


def test_naive_timestamp_is_rejected(session: Session) -> None:
    device = get_or_create_device(session, "dev", {"k": 3})
    device.last_seen = datetime(2024, 1, 1)
    with pytest.raises(Exception, match="naive"):
        session.flush()


def test_json_columns_round_trip(session_factory: sessionmaker[Session]) -> None:
    fingerprint = {"gpu": None, "cores": 16, "versions": {"torch": "2.13.0"}, "flags": [True, False], "f": 1.25}
    with session_factory.begin() as session:
        device_pk = get_or_create_device(session, "dev", fingerprint).id
    with session_factory() as session:
        assert session.get(Device, device_pk).fingerprint == fingerprint
        assert session.execute(text("SELECT count(*) FROM devices")).scalar_one() == 1
