"""The connection to the latency store: the SQLAlchemy Engine and session factory, built from a database URL.

Supported URLs:

- SQLite files: ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` (see :func:`sqlite_url`).
  Every connection gets ``journal_mode=WAL`` (readers never block the writer), ``busy_timeout`` (a writer waits up to
  :data:`SQLITE_BUSY_TIMEOUT_S` for the lock instead of failing) and ``foreign_keys=ON``. A transaction starts with
  a deferred ``BEGIN`` (a reader: it never takes the write lock, so concurrent lookups never block each other or a
  writer), or with ``BEGIN IMMEDIATE`` when it was opened by :func:`latency_db.transactions.write_session` /
  :func:`~latency_db.transactions.begin_write` (a writer: it takes the database's one write lock up front, because
  a deferred transaction that reads and then writes fails at once, SQLITE_BUSY without waiting, when another writer
  committed in between; taking the lock first turns that failure into a short wait).
- PostgreSQL: ``postgresql+psycopg://user@host:port/dbname`` (psycopg 3). A plain ``postgresql://`` URL is taken to
  mean the same driver; any other driver is rejected.

In-memory SQLite (``sqlite://``) is rejected: each pooled connection would see its own empty database.

Both keep :data:`POOL_SIZE` connections open. The service answers up to 40 requests at once in its thread pool
(the search client sends several lookups in parallel); with a smaller pool every request beyond it would open a
new connection and close it again afterwards (for SQLite: the connect hook's four pragmas each time). PostgreSQL
connections are checked with a ping when taken from the pool (a server restart or a killed backend is then seen
before a statement fails); SQLite connections are to a local file and cannot go stale, so they are not pinged.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from latency_db.transactions import WRITE_LOCK_OPTION

#: Default store: a SQLite file named ``proxyless_latency.db`` in the current working directory.
DEFAULT_DB_URL = "sqlite:///./proxyless_latency.db"

#: How long a SQLite connection waits for another connection's write lock before failing.
SQLITE_BUSY_TIMEOUT_S = 30.0

#: Connections each engine keeps open (and how many more it opens, then closes, under a burst).
POOL_SIZE = 16
POOL_OVERFLOW = 16

_SQLITE_DRIVERS = {None, "pysqlite"}
_POSTGRES_DRIVERS = {None, "psycopg"}


def sqlite_url(path: str | Path) -> str:
    """Return the SQLAlchemy URL of the SQLite file at ``path`` (made absolute, so it does not depend on cwd)."""
    return URL.create("sqlite", database=str(Path(path).expanduser().resolve())).render_as_string()


def normalize_url(url: str) -> URL:
    """Parse ``url`` and check that it names a supported database.

    Returns the parsed URL, with ``postgresql://`` made explicit as ``postgresql+psycopg://``.
    Raises ValueError naming the dialect (or driver) when it is not SQLite (pysqlite) or PostgreSQL (psycopg 3),
    and for in-memory SQLite.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ValueError(f"database url: cannot parse {url!r}: {exc}") from None
    dialect = parsed.get_backend_name()
    driver = parsed.get_driver_name() if "+" in parsed.drivername else None
    if dialect == "sqlite":
        if driver not in _SQLITE_DRIVERS:
            raise ValueError(f"database url: unsupported SQLite driver {driver!r} (use sqlite:///path.db)")
        if parsed.database in (None, "", ":memory:"):
            raise ValueError("database url: in-memory SQLite is not supported; give a file path (sqlite:///path.db)")
        return parsed
    if dialect == "postgresql":
        if driver not in _POSTGRES_DRIVERS:
            raise ValueError(f"database url: unsupported PostgreSQL driver {driver!r} (use postgresql+psycopg://)")
        return parsed.set(drivername="postgresql+psycopg")
    raise ValueError(f"database url: unsupported dialect {dialect!r} (supported: sqlite, postgresql+psycopg)")


def make_engine(url: str, *, pooled: bool = True) -> Engine:
    """Create an Engine for ``url`` (see the module docstring for what each dialect gets).

    ``pooled=False``: every connection is opened for its use and closed after it (no pool), so it meets the
    database as a new client would: a SQLite file whose permissions changed, a PostgreSQL database set read-only
    since the pool's connections were opened (what a readiness probe must see).

    Raises ValueError for an unsupported dialect or driver, and for a SQLite file whose folder does not exist.
    """
    parsed = normalize_url(url)
    pool: dict[str, Any] = (
        {"pool_size": POOL_SIZE, "max_overflow": POOL_OVERFLOW} if pooled else {"poolclass": NullPool}
    )
    if parsed.get_backend_name() == "sqlite":
        folder = Path(str(parsed.database)).expanduser().parent
        if not folder.is_dir():
            raise ValueError(f"database url: the folder {str(folder)!r} of the SQLite file does not exist")
        engine = create_engine(parsed, **pool, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
        _configure_sqlite(engine)
        return engine
    return create_engine(parsed, pool_pre_ping=pooled, **pool)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Return the session factory for ``engine`` (objects stay usable after commit: ``expire_on_commit=False``)."""
    return sessionmaker(bind=engine, expire_on_commit=False)


def _configure_sqlite(engine: Engine) -> None:
    """Install the connect/begin hooks that set SQLite's pragmas and start read (deferred) or write (immediate)
    transactions."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module (it would BEGIN lazily, and only before DML);
        # the "begin" hook below starts every transaction explicitly instead. This also makes SAVEPOINT reliable.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
            _enable_wal(cursor)
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        writes = connection.get_execution_options().get(WRITE_LOCK_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")


def _enable_wal(cursor: sqlite3.Cursor) -> None:
    """Switch the database file to WAL mode (persistent: later connections find it set and do nothing).

    Changing the journal mode needs the file to be unlocked and, unlike other statements, does not wait through
    busy_timeout; so when another connection holds a lock (two processes opening a new file at once), retry until
    SQLITE_BUSY_TIMEOUT_S has passed.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        mode = cursor.execute("PRAGMA journal_mode").fetchone()[0]
        if mode == "wal":
            return
        try:
            mode = cursor.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
            continue
        if mode != "wal":
            raise RuntimeError(f"SQLite refused WAL journal mode (got {mode!r})")
