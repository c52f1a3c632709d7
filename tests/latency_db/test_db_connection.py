"""latency_db.connection: URL checks, SQLite pragmas, read and write transactions, PostgreSQL connection, UTC timestamps."""

from __future__ import annotations

import sqlite3
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from latency_db.connection import DEFAULT_DB_URL, make_engine, make_session_factory, normalize_url, sqlite_url
from latency_db.models import Device
from latency_db.repository import get_or_create_device, ping
from latency_db.transactions import begin_write, write_session


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


def _try_write_lock(engine: Engine) -> None:
    """Take the write lock from another connection, waiting at most 50 ms (raises "database is locked")."""
    other = engine.raw_connection()
    try:
        cursor = other.cursor()
        cursor.execute("PRAGMA busy_timeout = 50")
        cursor.execute("BEGIN IMMEDIATE")
        cursor.execute("ROLLBACK")
    finally:
        other.close()


def test_sqlite_read_transactions_leave_the_write_lock_free(sqlite_url: str) -> None:
    """A plain session's transaction is deferred: while it reads (snapshot open), another writer gets the lock."""
    engine = make_engine(sqlite_url)
    try:
        with make_session_factory(engine)() as reader:
            assert reader.execute(text("SELECT count(*) FROM sqlite_master")).scalar_one() == 0
            assert reader.in_transaction()
            _try_write_lock(engine)  # no "database is locked"
    finally:
        engine.dispose()


def test_sqlite_write_transactions_hold_the_write_lock(sqlite_url: str) -> None:
    """BEGIN IMMEDIATE for write_session and begin_write: a second writer cannot start while one is open."""
    engine = make_engine(sqlite_url)
    try:
        with begin_write(engine) as conn:
            conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                _try_write_lock(engine)
        with write_session(make_session_factory(engine)) as session:
            session.execute(text("SELECT count(*) FROM t")).scalar_one()  # a read first: the lock is already held
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                _try_write_lock(engine)
            session.execute(text("INSERT INTO t VALUES (1)"))
        _try_write_lock(engine)  # released at commit
        with make_session_factory(engine)() as session:
            assert session.execute(text("SELECT x FROM t")).scalar_one() == 1
    finally:
        engine.dispose()


def test_write_session_rolls_back_on_error(session_factory: sessionmaker[Session]) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with write_session(session_factory) as session:
            get_or_create_device(session, "dev", {"k": "rolled back"})
            raise RuntimeError("boom")
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Device)) == 0


def test_read_then_write_transactions_in_threads_never_fail(sqlite_url: str) -> None:
    """Writers that read before they write (get_or_create_device) in 4 threads at once: no "database is locked"
    (the deferred read-to-write upgrade would fail at once when another writer committed in between)."""
    from latency_db.migrate import upgrade_to_head

    upgrade_to_head(sqlite_url)
    engine = make_engine(sqlite_url)
    factory = make_session_factory(engine)
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def run(writer: int) -> None:
        try:
            barrier.wait(timeout=30)
            for i in range(20):
                with write_session(factory) as session:
                    get_or_create_device(session, f"dev-{i % 5}", {"k": i % 5})
        except BaseException as exc:  # reported below: a thread's exception would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(writer,)) for writer in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in threads)
        assert errors == []
        with factory() as session:
            assert session.scalar(select(func.count()).select_from(Device)) == 5
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


def test_concurrent_sessions_reuse_pooled_connections(db_engine: Engine) -> None:
    """The service runs many requests at once: a second burst of 12 concurrent sessions opens no connection (with
    SQLAlchemy's default pool of 5, every session beyond the fifth opened and then closed one each time)."""
    from sqlalchemy import event

    opened: list[int] = []
    event.listen(db_engine, "connect", lambda *_: opened.append(1))
    factory = make_session_factory(db_engine)
    barrier = threading.Barrier(12)

    def hold() -> None:
        with factory() as session:
            session.execute(text("SELECT 1"))
            barrier.wait(timeout=30)  # all 12 sessions hold a connection at the same time

    def burst() -> None:
        threads = [threading.Thread(target=hold) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)

    burst()
    first = len(opened)
    burst()
    assert first == 12
    assert len(opened) == first
