"""Batch lookup of stored latencies: one request for hundreds of op specs."""

from __future__ import annotations

from fastapi import APIRouter

from latency_db.repository import lookup_measurements
from profiler_service.api.deps import SessionDep, StateDep
from profiler_service.api.limits import check_dtype, parse_ops
from profiler_service.api.schemas import ErrorBody, LookupRequest, LookupResponse, Stats

router = APIRouter(tags=["latency"])


def stats_of(row: object) -> Stats:
    """The Stats of a measurement row."""
    return Stats(**{field: getattr(row, field) for field in Stats.model_fields})


@router.post(
    "/lookup", response_model=LookupResponse, summary="Stored stats of many ops (found + missing)",
    responses={422: {"model": ErrorBody}, 413: {"model": ErrorBody}},
)
def lookup(body: LookupRequest, state: StateDep, session: SessionDep) -> LookupResponse:
    check_dtype(state.backend(body.backend), body.dtype)
    parse_ops(state.settings, body.ops, body.batch, body.dtype)
    context = state.context(body.backend, body.batch, body.dtype, body.threads)
    rows = lookup_measurements(session, device_id=state.device_id, context=context, op_specs=body.ops)
    found = {spec: stats_of(row) for spec, row in rows.items()}
    missing = list(dict.fromkeys(op for op in body.ops if op not in found))
    state.metrics.lookups.labels("found").inc(len(found))
    state.metrics.lookups.labels("missing").inc(len(missing))
    return LookupResponse(
        **context.as_dict(), found=found, missing=missing,
    )
