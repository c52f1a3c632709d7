"""Database health: liveness (ping) and whether the store can take a write (readiness)."""

from __future__ import annotations

import shutil
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.orm import Session

#: A SQLite store whose disk has less free space than this is not writable (a measurement row is ~1 KiB, but the
#: WAL and its checkpoints need room: a nearly full disk fails writes at random).
MIN_FREE_BYTES = 32 * 2**20


class StoreNotWritable(RuntimeError):
    """The database answers but would not take a write (e.g. its disk is full). The message names the file's
    folder; :attr:`public` says the same without it (what a caller of the service is shown)."""

    def __init__(self, message: str, public: str | None = None) -> None:
        super().__init__(message)
        self.public = public if public is not None else message


def ping(session: Session) -> None:
    """Run ``SELECT 1``; raises the driver's error (wrapped by SQLAlchemy) when the database is unreachable."""
    value = session.execute(text("SELECT 1")).scalar_one()
    if value != 1:
        raise RuntimeError(f"database ping returned {value!r} instead of 1")


def free_bytes(folder: Path) -> int:
    """Free bytes on the file system of ``folder``."""
    return shutil.disk_usage(folder).free


def check_writable(session: Session, device_id: int) -> None:
    """Prove the store commits a write, leaving nothing changed: call it in a write transaction on a NEW connection
    (``latency_db.connection.make_engine(url, pooled=False)``) and commit it.

    SQLite: the database file's disk must have :data:`MIN_FREE_BYTES` free (StoreNotWritable otherwise). Both
    databases: an UPDATE of the device's own row that sets its ``last_seen`` to the value it has. Committed, it
    reaches the store: SQLite takes the write lock and writes the page to its WAL file, PostgreSQL writes a new row
    version and flushes its WAL at commit. So a read-only SQLite file (its permissions, ``chattr +i``, a read-only
    mount), a PostgreSQL database or role set read-only, or a disk that cannot take the write raises the driver's
    error here or at the commit, where a write that is rolled back would not: it never leaves the connection.
    Raises StoreNotWritable when the device's row is gone.
    """
    bind = session.get_bind()
    if bind.dialect.name == "sqlite":
        folder = Path(str(bind.url.database)).expanduser().resolve().parent
        free = free_bytes(folder)
        if free < MIN_FREE_BYTES:
            space = f"{free // 2**20} MiB free, {MIN_FREE_BYTES // 2**20} MiB needed"
            raise StoreNotWritable(f"the disk of {folder} is full: {space}", f"the database's disk is full: {space}")
    updated = session.execute(text("UPDATE devices SET last_seen = last_seen WHERE id = :device_id"),
                              {"device_id": device_id}).rowcount
    if updated != 1:
        raise StoreNotWritable(f"device {device_id} has no row in the database")
