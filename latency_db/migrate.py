"""Schema migrations of the latency store, run from code (Alembic, scripts shipped inside this package).

The migrations are the only way the schema is created or changed. :func:`upgrade_to_head` is idempotent and safe
when several processes call it at once on the same database: each runs the whole upgrade inside one transaction
that first takes a database-wide lock (SQLite: ``BEGIN IMMEDIATE``, the write lock, taken by
:func:`latency_db.transactions.begin_write`; PostgreSQL: a transaction-level advisory lock). The second caller
waits, then finds the schema at head and does nothing. Both databases have transactional DDL, so a failed upgrade leaves the schema as it was.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

from latency_db.connection import make_engine, normalize_url
from latency_db.transactions import write_transaction

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# Arbitrary constant key of the PostgreSQL advisory lock that serializes migrations ("lat_mig" in ASCII).
_PG_MIGRATION_LOCK_KEY = 0x6C61745F6D6967


def alembic_config(url: str | None = None) -> Config:
    """Return an Alembic Config pointing at the packaged migrations (independent of the working directory)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        # ConfigParser interpolation: a literal % in the URL (escaped password) must be doubled.
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str:
    """The newest revision of the packaged migrations."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


@contextmanager
def locked_migration_transaction(engine: Engine) -> Iterator[Connection]:
    """Yield a connection inside a transaction that holds the database-wide migration lock; commit on exit.

    SQLite: foreign keys are off for the connection while it migrates (SQLite's documented procedure for
    rebuilding a table that others reference: the pragma cannot change inside a transaction), and
    ``PRAGMA foreign_key_check`` must find nothing before the commit.
    """
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            _sqlite_foreign_keys(connection, enabled=False)
        try:
            with write_transaction(connection):
                if connection.dialect.name == "postgresql":
                    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK_KEY})
                yield connection
                if sqlite:
                    _check_sqlite_foreign_keys(connection)
        finally:
            if sqlite:
                _sqlite_foreign_keys(connection, enabled=True)


def _sqlite_foreign_keys(connection: Connection, *, enabled: bool) -> None:
    # On the driver's connection, outside any transaction (SQLAlchemy would begin one for its own execute).
    connection.connection.driver_connection.execute(f"PRAGMA foreign_keys = {'ON' if enabled else 'OFF'}")


def _check_sqlite_foreign_keys(connection: Connection) -> None:
    violations = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
    if violations:
        raise RuntimeError(f"migration left {len(violations)} foreign key violation(s), e.g. {tuple(violations[0])}")


def upgrade_to_head(url: str) -> None:
    """Create or upgrade the schema of the database at ``url`` to the newest revision (idempotent, race-safe)."""
    engine = make_engine(url)
    try:
        with locked_migration_transaction(engine) as connection:
            config = alembic_config(url)
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        engine.dispose()


def current_revision(url: str) -> str | None:
    """The schema revision of the database at ``url``; None when it has never been migrated.

    A SQLite file that does not exist is reported as None without being created.
    """
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite" and not Path(str(parsed.database)).exists():
        return None
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
