"""Which database errors mean "the store is unavailable now" (retry later) rather than a bug or bad data, and which
mean "the database has no profiler schema" (a database dropped and created again empty, or never migrated).

One rule each, used by the API (503 with Retry-After) and the job worker (bounded retries with back-off).
"""

from __future__ import annotations

import re

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

#: PostgreSQL's SQLSTATE of a write in a read-only transaction (a database or role set read-only, a standby).
READ_ONLY_SQLSTATE = "25006"

#: What a statement says when the table or column it names is not in the database: (SQLSTATE of PostgreSQL, or
#: None for SQLite's message), the pattern that finds the name, and what the name is.
_MISSING_SCHEMA = (
    ("42P01", re.compile(r'relation "([^"]+)" does not exist'), "table"),
    ("42703", re.compile(r'column "([^"]+)"(?: of relation "[^"]+")? does not exist'), "column"),
    ("42703", re.compile(r"column ([\w.]+) does not exist"), "column"),
    (None, re.compile(r"no such table: ([\w.]+)"), "table"),
    (None, re.compile(r"no such column: ([\w.]+)"), "column"),
    (None, re.compile(r"table \w+ has no column named (\w+)"), "column"),
)


def missing_schema_object(exc: BaseException) -> str | None:
    """What of the profiler's schema a statement found missing, e.g. ``table jobs`` or ``column jobs.attempts``;
    None when ``exc`` is not such an error. A database dropped and created again empty (or never migrated, or
    migrated by an older version) raises it on every statement until the migrations run."""
    if not isinstance(exc, DBAPIError):
        return None
    sqlstate = getattr(exc.orig, "sqlstate", None)
    message = str(exc.orig)
    for state, pattern, what in _MISSING_SCHEMA:
        if state is not None and state != sqlstate:
            continue
        if state is None and sqlstate is not None:
            continue
        found = pattern.search(message)
        if found:
            return f"{what} {found.group(1)}"
    return None


def is_store_unavailable(exc: BaseException) -> bool:
    """True for errors that a later attempt may not meet: the database unreachable, restarting or refusing
    connections, a connection lost, the connection pool exhausted, SQLite's lock wait timed out, the disk or the
    database full, a read-only database, a schema missing (the migrations run at the next start). False for
    everything else (constraint violations, bad SQL, bad data)."""
    if isinstance(exc, (OperationalError, InterfaceError, PoolTimeoutError)):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    return (bool(exc.connection_invalidated) or getattr(exc.orig, "sqlstate", None) == READ_ONLY_SQLSTATE
            or missing_schema_object(exc) is not None)


def describe_store_error(exc: BaseException) -> str:
    """One line with the database's own reason, without SQL or parameters, e.g.
    ``OperationalError: database or disk is full``."""
    reason = getattr(exc, "orig", None) or exc
    lines = str(reason).strip().splitlines()
    return f"{type(reason).__name__}: {lines[0][:200]}" if lines else type(reason).__name__
