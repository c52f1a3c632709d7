"""Which database errors mean "the store is unavailable now" (retry later) rather than a bug or bad data.

One rule, used by the API (503 with Retry-After) and the job worker (bounded retries with back-off).
"""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError


def is_store_unavailable(exc: BaseException) -> bool:
    """True for errors that a later attempt may not meet: the database unreachable, restarting or refusing
    connections, a connection lost, the connection pool exhausted, SQLite's lock wait timed out, the disk or the
    database full, a read-only database. False for everything else (constraint violations, bad SQL, bad data)."""
    if isinstance(exc, (OperationalError, InterfaceError, PoolTimeoutError)):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def describe_store_error(exc: BaseException) -> str:
    """One line with the database's own reason, without SQL or parameters, e.g.
    ``OperationalError: database or disk is full``."""
    reason = getattr(exc, "orig", None) or exc
    lines = str(reason).strip().splitlines()
    return f"{type(reason).__name__}: {lines[0][:200]}" if lines else type(reason).__name__
