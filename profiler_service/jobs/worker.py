"""The job worker: one thread that measures the items of persistent jobs, one at a time, in order.

Crash safety: an item's measurement row and the item's ``done`` status are written in ONE transaction, so a process
killed at any point leaves each item either pending (nothing stored: it is measured when the service restarts) or
done with its row (never measured again). Jobs left ``running`` by a killed process are claimed again at start.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from latency_db.models import Job, JobItem
from latency_db.repository import (
    claim_next_job,
    complete_item,
    finish_job,
    lookup_measurements,
    pending_items,
    upsert_measurement,
)
from latency_db.transactions import write_session
from nas_ops.arch import architecture_from_json_obj
from nas_ops.spec import parse_spec
from profiler_service.engine.calibration import CalibrationCache
from profiler_service.engine.protocol import measure_network, measure_op

if TYPE_CHECKING:
    from profiler_service.api.state import ServiceState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobContext:
    """The measurement context of a job, read once so that no ORM object outlives its session."""

    id: int
    kind: str
    backend: str
    batch: int
    dtype: str
    threads: int
    env_hash: str
    protocol_version: str
    force: bool
    payload: Any

    @classmethod
    def of(cls, job: Job) -> JobContext:
        return cls(job.id, job.kind, job.backend, job.batch, job.dtype, job.threads, job.env_hash,
                   job.protocol_version, job.force, job.payload)


class JobWorker:
    """Runs in a daemon thread; ``wake()`` after a submit makes it look for work at once."""

    def __init__(self, state: ServiceState) -> None:
        self.state = state
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.current_job: int | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="profiler-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the worker to stop after the item in flight; the job stays running and resumes at the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        self._wake.set()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # --- loop ----------------------------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ctx = self._claim()
                if ctx is None:
                    self._wake.wait(self.state.settings.worker_poll_s)
                    self._wake.clear()
                    continue
                self.current_job = ctx.id
                if ctx.kind == "architecture":
                    self._run_architecture(ctx)
                else:
                    self._run_ops(ctx)
            except Exception:  # keep serving: a DB hiccup must not kill the worker
                log.exception("worker loop error")
                self._stop.wait(1.0)
            finally:
                self.current_job = None

    def _claim(self) -> JobContext | None:
        with write_session(self.state.sessions) as session:
            job = claim_next_job(session, device_id=self.state.device_id)
            return JobContext.of(job) if job is not None else None

    def _complete(self, session: Session, item_id: int, **fields: Any) -> None:
        """Complete an item; a no-op unless it is still pending (it may have been cancelled meanwhile)."""
        item = session.get(JobItem, item_id)
        if item is not None:
            complete_item(session, item, **fields)

    def _finish(self, job_id: int, **fields: Any) -> None:
        """Finish a job that is still running (a cancelled job stays cancelled)."""
        with write_session(self.state.sessions) as session:
            job = session.get(Job, job_id)
            if job is not None and job.status == "running":
                finish_job(session, job, **fields)

    def _job_status(self, job_id: int) -> str:
        with self.state.sessions() as session:
            job = session.get(Job, job_id)
            return job.status if job is not None else "cancelled"

    # --- ops jobs --------------------------------------------------------------------------------------------------
    def _run_ops(self, ctx: JobContext) -> None:
        with self.state.sessions() as session:
            items = [(item.id, item.op_spec) for item in pending_items(session, ctx.id)]
        calibration = CalibrationCache()  # the job's ops share their calibration values, and no other job's
        for item_id, op_spec in items:
            if self._stop.is_set():
                return  # resumes at the next start
            if self._job_status(ctx.id) != "running":
                return  # cancelled meanwhile
            if not ctx.force and self._skip_if_stored(ctx, item_id, op_spec):
                continue
            self._measure_item(ctx, item_id, op_spec, calibration)
        self._finish(ctx.id)

    def _skip_if_stored(self, ctx: JobContext, item_id: int, op_spec: str) -> bool:
        """Mark the item skipped when the same op is already stored under the same environment and protocol."""
        with write_session(self.state.sessions) as session:
            found = lookup_measurements(
                session, device_id=self.state.device_id, backend=ctx.backend, batch=ctx.batch, dtype=ctx.dtype,
                threads=ctx.threads, env_hash=ctx.env_hash, protocol_version=ctx.protocol_version, op_specs=[op_spec],
            )
            if op_spec not in found:
                return False
            self._complete(session, item_id, status="skipped", measurement_id=found[op_spec].id)
            return True

    def _measure_item(self, ctx: JobContext, item_id: int, op_spec: str, calibration: CalibrationCache) -> None:
        state = self.state
        env, _ = state.environment(ctx.backend, ctx.threads)
        started = time.perf_counter()
        try:
            stats = measure_op(parse_spec(op_spec), state.backend(ctx.backend), ctx.batch, ctx.dtype, ctx.threads,
                               state.protocol_params, calibration)
        except Exception as exc:  # an op that fails to build or run fails its item, not the job
            log.warning("measuring %s on %s failed: %s", op_spec, ctx.backend, exc)
            with write_session(state.sessions) as session:
                self._complete(session, item_id, status="failed", error=f"{type(exc).__name__}: {exc}")
            return
        state.metrics.measure_seconds.labels(ctx.backend).observe(time.perf_counter() - started)
        state.metrics.measurements.labels(ctx.backend, "op").inc()
        # The row and the item's status in one transaction: see the module docstring.
        with write_session(state.sessions) as session:
            row = upsert_measurement(
                session, device_id=state.device_id, backend=ctx.backend, op_spec=op_spec, batch=ctx.batch,
                dtype=ctx.dtype, threads=ctx.threads, env_hash=ctx.env_hash, protocol_version=ctx.protocol_version,
                environment=env, protocol_params=state.protocol_params.model_dump(), stats=stats.as_dict(),
            )
            self._complete(session, item_id, status="done", measurement_id=row.id)

    # --- architecture jobs -----------------------------------------------------------------------------------------
    def _run_architecture(self, ctx: JobContext) -> None:
        state = self.state
        started = time.perf_counter()
        try:
            arch = architecture_from_json_obj(ctx.payload)
            stats = measure_network(arch, state.backend(ctx.backend), ctx.batch, ctx.dtype, ctx.threads,
                                    state.protocol_params)
        except Exception as exc:
            log.warning("measuring architecture job %s failed: %s", ctx.id, exc)
            self._finish(ctx.id, status="failed", error=f"{type(exc).__name__}: {exc}")
            return
        state.metrics.measure_seconds.labels(ctx.backend).observe(time.perf_counter() - started)
        state.metrics.measurements.labels(ctx.backend, "network").inc()
        self._finish(ctx.id, status="done", result=stats.as_dict())
