"""Canaries: re-baseline their references on purpose (docs/protocol.md, "Canaries and drift")."""

from __future__ import annotations

from fastapi import APIRouter

from profiler_service.api.deps import StateDep, TokenDep
from profiler_service.api.errors import ApiError
from profiler_service.api.schemas import ErrorBody, RebaselineOut, RebaselineRequest

router = APIRouter(tags=["canaries"])


@router.post(
    "/canaries/rebaseline", response_model=RebaselineOut, status_code=202,
    responses={401: {"model": ErrorBody}, 409: {"model": ErrorBody}, 422: {"model": ErrorBody}},
    summary="Measure new canary references (the next check, at once)",
    description="The worker's next canary check of the backend (or of every served backend) measures the canaries "
    "twice and replaces the stored references when the two agree (else the request stays pending and the next "
    "check tries again). 409 `canaries_off` when the service checks no canaries.",
)
def rebaseline(state: StateDep, _: TokenDep, body: RebaselineRequest | None = None) -> RebaselineOut:
    if state.canaries is None:
        raise ApiError(409, "canaries_off", "the canaries are off (PROFILER_CANARY_INTERVAL_S=0): there are no "
                       "references to re-baseline")
    backend = None if body is None else body.backend
    names = sorted(state.backends) if backend is None else [state.backend(backend).name]
    state.canaries.request_rebaseline(names)
    state.worker.wake()
    return RebaselineOut(status="scheduled", backends=names)
