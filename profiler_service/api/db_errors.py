"""The database unavailable is a 503: ``{"detail", "code": "database_unavailable"}`` with ``Retry-After``; a
database without the profiler's schema is a 503 ``schema_missing`` naming what is missing.

A request that meets an unreachable database, a lock that could not be had, a full disk or a read-only store
(:func:`latency_db.errors.is_store_unavailable`) is answered 503, never 500: the caller's request was fine and a
retry after ``Retry-After`` seconds may succeed. The answer names the kind of problem (:func:`public_reason`) and
nothing else: no SQL or parameters, and no database host, port, name, user or file, which a driver's message
often holds (the log keeps the driver's message).

A database dropped and created again empty (or never migrated) answers every statement "no such table": that is
:func:`latency_db.errors.missing_schema_object`, a 503 ``schema_missing`` whose message names the table and how to
recreate the schema (``serve`` migrates the database to head at every start), never a 500 for every request.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from latency_db.errors import describe_store_error, is_store_unavailable, missing_schema_object

log = logging.getLogger(__name__)

#: Seconds a client should wait before it retries a request that met an unavailable database.
RETRY_AFTER_S = 5


#: What the caller is told of a driver's message that contains the left side (lower case): a fixed text.
#: SQLite's own messages name no host or file and are kept as they are.
PUBLIC_REASONS = (
    ("database or disk is full", "database or disk is full"),
    ("readonly database", "attempt to write a readonly database"),
    ("read-only transaction", "the database is read-only"),
    ("database is locked", "database is locked"),
    ("disk i/o error", "disk I/O error"),
    ("unable to open database file", "unable to open database file"),
    ("no space left on device", "no space left on the database's disk"),
    ("could not extend file", "no space left on the database's disk"),
    ("not currently accepting connections", "the database does not accept connections"),
    ("too many clients", "the database server has too many connections"),
    ("the database system is starting up", "the database server is starting up"),
    ("the database system is shutting down", "the database server is shutting down"),
    ("terminating connection", "the database server closed the connection"),
    ("server closed the connection", "the database server closed the connection"),
    ("connection refused", "the database server refused the connection"),
    ("authentication failed", "the database refused this service's credentials"),
    ("does not exist", "the database does not exist"),
    ("timeout", "the database did not answer in time"),
    ("timed out", "the database did not answer in time"),
    ("connection", "no connection to the database server"),
)


def schema_missing_message(missing: str) -> str:
    """What a 503 ``schema_missing`` (and ``/v1/ready``) says of a database without the profiler's schema."""
    return (f"the database has no profiler schema ({missing} missing): restart the service, which migrates the "
            "database at start")


def public_reason(exc: BaseException) -> str:
    """What a 503 (and ``/v1/ready``) says of a store error: the error's type and a fixed text for its kind, e.g.
    ``OperationalError: the database does not accept connections``; never the driver's message itself."""
    reason = getattr(exc, "orig", None) or exc
    missing = missing_schema_object(exc)
    if missing is not None:
        return f"{type(reason).__name__}: {schema_missing_message(missing)}"
    if isinstance(exc, PoolTimeoutError):
        return f"{type(exc).__name__}: no free connection to the database (every one is in use)"
    message = str(reason).lower()
    text = next((public for needle, public in PUBLIC_REASONS if needle in message), None)
    return f"{type(reason).__name__}: {text}" if text else type(reason).__name__


def install_db_error_handlers(app: FastAPI) -> None:
    """Answer a missing schema and the database-unavailable errors with 503 + Retry-After (see the module
    docstring); any other database error stays a bug (the app's 500)."""

    async def _store_error(_: Request, exc: Exception) -> JSONResponse:
        missing = missing_schema_object(exc)
        if missing is not None:
            log.error("database without the profiler schema: %s", describe_store_error(exc))
            return JSONResponse({"detail": schema_missing_message(missing), "code": "schema_missing"},
                                status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})
        if not is_store_unavailable(exc):
            raise exc  # the app's handler of unexpected errors: logged, 500
        log.warning("database unavailable: %s", describe_store_error(exc))
        return JSONResponse(
            {"detail": f"the database is unavailable ({public_reason(exc)}); retry in {RETRY_AFTER_S} s",
             "code": "database_unavailable"},
            status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)},
        )

    for error in (DBAPIError, PoolTimeoutError):
        app.add_exception_handler(error, _store_error)
