"""Jobs: status and progress, list, cancel. A job row that cannot be read (written by another program or version)
is left out of the list and counted in ``unreadable``; asked for by id, it is a 409 ``unreadable_row``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from latency_db.models import JobStatus
from latency_db.repository import cancel_job, list_jobs
from latency_db.repository.readable import readable_views
from latency_db.transactions import write_session
from profiler_service.api.deps import SessionDep, StateDep, TokenDep
from profiler_service.api.errors import ApiError
from profiler_service.api.job_views import device_job, job_out, readable_job_out
from profiler_service.api.params import JobId
from profiler_service.api.schemas import ErrorBody, JobList, JobOut

router = APIRouter(tags=["jobs"])


@router.get("/jobs/{job_id}", response_model=JobOut,
            responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody, "description": "the job's row cannot "
                                                       "be read (unreadable_row)"}},
            summary="A job's status and progress")
def job_status(job_id: JobId, session: SessionDep, state: StateDep) -> JobOut:
    return readable_job_out(session, device_job(session, state, job_id))


@router.get("/jobs", response_model=JobList, summary="Recent jobs, newest first")
def jobs(
    session: SessionDep,
    state: StateDep,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="at most this many (and at most max_list_jobs)")] = 50,
) -> JobList:
    limit = min(limit, state.settings.max_list_jobs)
    listed = readable_views(list_jobs(session, status=status, limit=limit, device_id=state.device_id),
                            lambda job: job_out(session, job), "job")
    return JobList(jobs=listed, unreadable=listed.unreadable)


@router.post("/jobs/{job_id}/cancel", response_model=JobOut,
             responses={401: {"model": ErrorBody}, 404: {"model": ErrorBody}, 409: {"model": ErrorBody}},
             summary="Cancel a queued or running job (measured items are kept)")
def cancel(job_id: JobId, state: StateDep, _: TokenDep) -> JobOut:
    with write_session(state.sessions) as session:  # reads, then writes: hold the write lock from the start
        device_job(session, state, job_id)
        try:
            job = cancel_job(session, job_id)
        except ValueError as exc:
            raise ApiError(409, "job_finished", str(exc)) from None
        return readable_job_out(session, job)
