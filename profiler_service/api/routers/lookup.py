"""Batch lookup of stored latencies: one request for hundreds of op specs.

The answer comes from the service's lookup caches (``profiler_service.api.lookup_cache``): the same checks, errors
and stored values as parsing every op and reading every row, at a fraction of the cost. It is the JSON of
LookupResponse (the documented ``response_model``), assembled as bytes. The route opens its read session itself
rather than through ``SessionDep``: a generator dependency costs two more hops through the thread pool per request,
more than the rest of a cached lookup.
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from profiler_service.api.deps import StateDep
from profiler_service.api.limits import check_dtype
from profiler_service.api.lookup_cache import LookupAnswer, lookup_cache_of, stats_of
from profiler_service.api.schemas import Drift, ErrorBody, LookupRequest, LookupResponse
from profiler_service.jobs.canaries import drift_view

__all__ = ["router", "stats_of"]

router = APIRouter(tags=["latency"])


@router.post(
    "/lookup", response_model=LookupResponse, summary="Stored stats of many ops (found + missing)",
    responses={422: {"model": ErrorBody}, 413: {"model": ErrorBody}},
)
def lookup(body: LookupRequest, state: StateDep) -> Response:
    check_dtype(state.backend(body.backend), body.dtype)
    cache = lookup_cache_of(state)
    cache.checked.check(body.ops, body.batch, body.dtype)
    context = state.context(body.backend, body.batch, body.dtype, body.threads, body.working_set_bytes)
    with state.sessions() as session:  # a read session (deferred transaction), as SessionDep gives
        answer = LookupAnswer.of(cache.stored.fragments(session, state.device_id, context, body.ops))
    state.metrics.lookups.labels("found").inc(len(answer.found))
    state.metrics.lookups.labels("missing").inc(len(answer.missing))
    fields = {**context.as_dict(), "drift": Drift(**drift_view(state.canaries, [body.backend])),
              "unreadable": answer.unreadable}
    return Response(answer.json(fields), media_type="application/json")
