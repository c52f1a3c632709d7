"""Liveness and readiness."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from latency_db.errors import describe_store_error
from latency_db.repository import StoreNotWritable, check_writable, ping
from latency_db.transactions import write_session
from profiler_service import __version__
from profiler_service.api.db_errors import public_reason
from profiler_service.api.deps import StateDep
from profiler_service.api.schemas import Health, Readiness
from profiler_service.jobs.canaries import drift_view

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health, summary="Liveness: the process answers")
def health() -> Health:
    return Health(status="ok", version=__version__)


@router.get(
    "/ready", response_model=Readiness, summary="Readiness: the database takes a write and the worker runs",
    responses={503: {"model": Readiness, "description": "the database is down or full, or the worker stopped"}},
)
def ready(state: StateDep) -> Readiness | JSONResponse:
    try:
        with write_session(state.probe_sessions) as session:  # a new connection, and a write it commits
            ping(session)
            check_writable(session, state.device_id)  # a full disk or a read-only store is not ready either
        database = "ok"
    except StoreNotWritable as exc:  # report, don't raise: readiness is a question, not a failure
        log.warning("readiness: database not writable: %s", exc)
        database = f"not writable: {exc.public}"
    except Exception as exc:
        log.warning("readiness: database error: %s", describe_store_error(exc))
        database = f"error: {public_reason(exc)}"  # anyone may ask: no host, port or database name
    worker = "ok" if state.worker.alive else "stopped"
    # drift is reported, never a reason to be unready: the device still answers and measures, and an orchestrator
    # that evicts a throttled device only hides what its canaries saw
    drift = drift_view(state.canaries, state.backends)["status"]
    body = Readiness(status="ready" if database == "ok" and worker == "ok" else "unavailable",
                     database=database, worker=worker, drift=drift)
    if body.status != "ready":
        return JSONResponse(body.model_dump(), status_code=503)
    return body
