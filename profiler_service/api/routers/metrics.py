"""Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from sqlalchemy import func, select

from latency_db.models import Job, Measurement
from profiler_service.api.deps import SessionDep, StateDep
from profiler_service.api.metrics import CONTENT_TYPE

router = APIRouter(tags=["metrics"])


@router.get("/metrics", summary="Prometheus exposition text", response_class=Response)
def metrics(state: StateDep, session: SessionDep) -> Response:
    jobs = dict(session.execute(
        select(Job.status, func.count()).where(Job.device_id == state.device_id).group_by(Job.status)).all())
    stored = session.scalar(select(func.count()).select_from(Measurement).where(
        Measurement.device_id == state.device_id)) or 0
    return Response(state.metrics.render(jobs, stored), media_type=CONTENT_TYPE)
