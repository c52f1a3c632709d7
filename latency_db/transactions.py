"""Read and write transactions of the latency store.

A plain session (``factory()``) runs READ transactions: on SQLite they start with a deferred ``BEGIN``, so in WAL
mode they neither wait for nor block anybody (each sees a snapshot of the last commit). Every transaction that
WRITES goes through :func:`write_session` (sessions) or :func:`begin_write` (connections): on SQLite it starts with
``BEGIN IMMEDIATE``, i.e. takes the database's one write lock before its first read, waiting up to the busy
timeout for it. That keeps the read-then-write functions of the repository race-free (a deferred transaction that
reads, then writes after another writer committed, fails at once with "database is locked" instead of waiting). On
PostgreSQL both are ordinary transactions; the repository locks the rows it changes (``FOR UPDATE``).

Rule: a function that writes is called inside a write transaction; a read-only request never holds the write lock.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

#: Connection execution option read by the engine's SQLite "begin" hook: True starts ``BEGIN IMMEDIATE``.
WRITE_LOCK_OPTION = "latency_db_write_lock"


@contextmanager
def write_session(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session inside one write transaction: committed when the block ends, rolled back on an exception.

    On SQLite the transaction holds the write lock from its first statement on (``BEGIN IMMEDIATE``).
    """
    with factory() as session, session.begin():
        session.connection(execution_options={WRITE_LOCK_OPTION: True})
        yield session


@contextmanager
def begin_write(engine: Engine) -> Iterator[Connection]:
    """A connection inside one write transaction (the Core counterpart of :func:`write_session`); commits on
    exit, rolls back on an exception."""
    with engine.connect() as connection, write_transaction(connection):
        yield connection


@contextmanager
def write_transaction(connection: Connection) -> Iterator[Connection]:
    """Begin a write transaction on an open ``connection`` that is not in a transaction yet; commits on exit,
    rolls back on an exception."""
    connection.execution_options(**{WRITE_LOCK_OPTION: True})
    with connection.begin():
        yield connection
