"""Measure requests: each becomes a persistent job that the worker runs.

What a request asks for is checked before anything is queued: its ops or architecture against the limits
(``api.limits``; an architecture's size first, ``api.work_limits``), then the device's queue, in the write
transaction that creates the job. The checks that cost time in proportion to the request (parsing thousands of op
specs, building and checking an architecture of many blocks) run in the thread pool, never on the event loop: the
service answers ``/v1/health`` and every other request meanwhile.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from latency_db.models import FINISHED_JOB_STATUSES
from latency_db.repository import create_or_attach_job
from latency_db.repository.backlog import pending_work
from latency_db.transactions import write_session
from nas_ops.arch_files import architecture_from_json_obj
from nas_ops.counting import network_memory_bytes
from profiler_service.api.deps import StateDep, TokenDep
from profiler_service.api.errors import bad_request
from profiler_service.api.job_views import wait_for_job
from profiler_service.api.limits import check_architecture, check_dtype, check_wait, parse_ops
from profiler_service.api.schemas import ArchitectureRequest, ContextBody, ErrorBody, JobOut, MeasureRequest
from profiler_service.api.state import ServiceState
from profiler_service.api.work_limits import check_architecture_size, check_queue

router = APIRouter(tags=["measure"])

ERRORS = {401: {"model": ErrorBody}, 413: {"model": ErrorBody}, 422: {"model": ErrorBody},
          429: {"model": ErrorBody, "description": "the device's queue is full (max_pending_items): retry after "
                "Retry-After seconds"}}
ANSWERS = {200: {"model": JobOut, "description": "the job finished within wait_s"},
           202: {"model": JobOut, "description": "the job is queued or running (wait_s passed, or the service "
                 "began to shut down)"}, **ERRORS}


def _submit(state: ServiceState, body: ContextBody, kind: str, op_specs: list[str], force: bool,
            payload: dict | None, working_set_bytes: int | None) -> tuple[int, bool]:
    """The job under the protocol of ``working_set_bytes``: a queued or running job of this device doing the same
    work (attached: True), else a new one, when the device's queue has room for it (429 otherwise; the new job is
    rolled back). Blocking database work: call it in the threadpool, never on the event loop."""
    context = state.context(body.backend, body.batch, body.dtype, body.threads, working_set_bytes)
    with write_session(state.sessions) as session:
        job, attached = create_or_attach_job(session, device_id=state.device_id, kind=kind, context=context,
                                              op_specs=op_specs, force=force, payload=payload)
        if not attached:  # counted in the transaction that holds the device's lock: two requests never both fit
            added = len(op_specs) if kind == "ops" else 1
            check_queue(state.settings, pending_work(session, state.device_id) - added, added)
        job_id = job.id
    state.worker.wake()
    return job_id, attached


def _checked_architecture(state: ServiceState, body: ArchitectureRequest) -> tuple[dict[str, Any], int]:
    """The job's payload (the architecture, without its metadata) and the working set its cache regime follows;
    422 ``invalid_architecture`` or ``over_limit`` naming what is wrong. Costs time in proportion to the blocks: call
    it in the threadpool."""
    try:
        arch = architecture_from_json_obj(body.architecture)
    except ValueError as exc:
        raise bad_request(f"architecture: {exc}", "invalid_architecture") from None
    check_architecture(state.settings, arch, body.batch, body.dtype)
    payload = arch.to_dict()
    payload["metadata"] = {}  # the job measures the network; metadata plays no part
    return payload, body.working_set_bytes or network_memory_bytes(arch, body.batch, body.dtype)


async def _answer(request: Request, state: ServiceState, job: tuple[int, bool], wait_s: float) -> JSONResponse:
    """200 with the finished job, or 202 with its progress when it is still queued or running (also when the
    server began to shut down, or the client went away, during the wait); ``attached`` says whether the request
    joined a job that was already queued or running."""
    job_id, attached = job
    view = await wait_for_job(state, job_id, wait_s, request.app.state.stopping, request.is_disconnected)
    view = view.model_copy(update={"attached": attached})
    code = 200 if view.status in FINISHED_JOB_STATUSES else 202
    return JSONResponse(view.model_dump(mode="json"), status_code=code)


@router.post(
    "/measure", response_model=JobOut, status_code=202, responses=ANSWERS,
    summary="Measure ops (a job; optionally wait for it)",
    description="Creates a persistent job. Ops already stored under the same environment and protocol version "
    "(the cache regime of `working_set_bytes`) are skipped unless `force`. A queued or running job of this device "
    "with the same ops, context and `force` is answered instead of a new one (`attached`: true). Answers 202 "
    "with the job, or 200 when it finished within `wait_s`.",
)
async def measure(body: MeasureRequest, request: Request, state: StateDep, _: TokenDep) -> JSONResponse:
    check_wait(state.settings, body.wait_s)
    check_dtype(state.backend(body.backend), body.dtype)
    await run_in_threadpool(parse_ops, state.settings, body.ops, body.batch, body.dtype)
    job = await run_in_threadpool(_submit, state, body, "ops", body.ops, body.force, None, body.working_set_bytes)
    return await _answer(request, state, job, body.wait_s)


@router.post(
    "/measure/architecture", response_model=JobOut, status_code=202, responses=ANSWERS,
    summary="Measure a whole network end to end (a job; its result holds the stats)",
    description="The cache regime is that of `working_set_bytes`, by default the architecture's own (nas_ops."
    "counting.network_memory_bytes at the request's batch and dtype). A queued or running job of this device "
    "measuring the same architecture in the same context is answered instead of a new one (`attached`: true).",
)
async def measure_architecture(body: ArchitectureRequest, request: Request, state: StateDep,
                               _: TokenDep) -> JSONResponse:
    check_wait(state.settings, body.wait_s)
    check_dtype(state.backend(body.backend), body.dtype)
    check_architecture_size(state.settings, body.architecture, len(await request.body()))
    payload, working_set = await run_in_threadpool(_checked_architecture, state, body)
    job = await run_in_threadpool(_submit, state, body, "architecture", [], False, payload, working_set)
    return await _answer(request, state, job, body.wait_s)
