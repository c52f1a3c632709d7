"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from latency_db.repository import ping
from profiler_service import __version__
from profiler_service.api.deps import StateDep
from profiler_service.api.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health, summary="Liveness: the process answers")
def health() -> Health:
    return Health(status="ok", version=__version__)


@router.get(
    "/ready", response_model=Readiness, summary="Readiness: the database answers and the worker runs",
    responses={503: {"model": Readiness, "description": "the database or the worker is down"}},
)
def ready(state: StateDep) -> Readiness | JSONResponse:
    try:
        with state.sessions() as session:
            ping(session)
        database = "ok"
    except Exception as exc:  # report, don't raise: readiness is a question, not a failure
        database = f"error: {type(exc).__name__}"
    worker = "ok" if state.worker.alive else "stopped"
    body = Readiness(status="ready" if database == "ok" and worker == "ok" else "unavailable",
                     database=database, worker=worker)
    if body.status != "ready":
        return JSONResponse(body.model_dump(), status_code=503)
    return body
