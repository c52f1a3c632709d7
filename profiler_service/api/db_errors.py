"""The database unavailable is a 503: ``{"detail", "code": "database_unavailable"}`` with ``Retry-After``.

A request that meets an unreachable database, a lock that could not be had, a full disk or a read-only store
(:func:`latency_db.errors.is_store_unavailable`) is answered 503, never 500: the caller's request was fine and a
retry after ``Retry-After`` seconds may succeed. Nothing of the SQL or its parameters is shown.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from latency_db.errors import describe_store_error

log = logging.getLogger(__name__)

#: Seconds a client should wait before it retries a request that met an unavailable database.
RETRY_AFTER_S = 5


def install_db_error_handlers(app: FastAPI) -> None:
    """Answer the database-unavailable errors with 503 + Retry-After (see the module docstring)."""

    async def _unavailable(_: Request, exc: Exception) -> JSONResponse:
        reason = describe_store_error(exc)
        log.warning("database unavailable: %s", reason)
        return JSONResponse(
            {"detail": f"the database is unavailable ({reason}); retry in {RETRY_AFTER_S} s",
             "code": "database_unavailable"},
            status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)},
        )

    for error in (OperationalError, InterfaceError, PoolTimeoutError):
        app.add_exception_handler(error, _unavailable)
