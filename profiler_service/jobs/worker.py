"""The job worker: one thread that measures the items of persistent jobs, one at a time, in order.

Crash safety: an item's measurement row and the item's ``done`` status are written in ONE transaction, so a process
killed at any point leaves each item either pending (nothing stored: it is measured when the service restarts) or
done with its row (never measured again). Jobs left ``running`` by a killed process are claimed again at start.

The worker gets what it needs and nothing of the web service: a session factory, this device's id, the served
backends, the protocol (parameters and stored version) and an environment resolver.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from latency_db.context import MeasurementContext
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
from profiler_service.engine.backends import Backend
from profiler_service.engine.calibration import CalibrationCache
from profiler_service.engine.protocol import ProtocolParams, Stats, measure_network, measure_op

log = logging.getLogger(__name__)

#: (backend name, threads) -> (environment, its hash): the environment a measurement runs in.
EnvironmentResolver = Callable[[str, int], tuple[dict[str, Any], str]]
#: Called after each measurement with (backend name, "op" | "network", seconds it took).
MeasuredHook = Callable[[str, str, float], None]
#: How an op / a whole network is measured (the protocol's functions; tests pass scripted ones).
OpMeasurer = Callable[..., Stats]
NetworkMeasurer = Callable[..., Stats]


@dataclass(frozen=True)
class ClaimedJob:
    """What the worker needs of a claimed job, read once so that no ORM object outlives its session."""

    id: int
    kind: str
    context: MeasurementContext
    force: bool
    payload: Any

    @classmethod
    def of(cls, job: Job) -> ClaimedJob:
        """The claimed view of a job row."""
        return cls(job.id, job.kind, job.context, job.force, job.payload)


class JobWorker:
    """Runs in a daemon thread; ``wake()`` after a submit makes it look for work at once."""

    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        device_id: int,
        backends: Mapping[str, Backend],
        protocol_params: ProtocolParams,
        protocol_version: str,
        environment: EnvironmentResolver,
        poll_s: float,
        on_measured: MeasuredHook | None = None,
        measure_op: OpMeasurer = measure_op,
        measure_network: NetworkMeasurer = measure_network,
    ) -> None:
        self.sessions = sessions
        self.device_id = device_id
        self.backends = backends
        self.protocol_params = protocol_params
        self.protocol_version = protocol_version
        self.environment = environment
        self.poll_s = poll_s
        self.on_measured = on_measured
        self.measure_op = measure_op
        self.measure_network = measure_network
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.current_job: int | None = None

    def start(self) -> None:
        """Start the worker thread (it resumes the jobs a killed process left running)."""
        self._thread = threading.Thread(target=self._run, name="profiler-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the worker to stop after the item in flight; the job stays running and resumes at the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        """Look for work now (after a submit) instead of at the next poll."""
        self._wake.set()

    @property
    def alive(self) -> bool:
        """Whether the worker thread runs."""
        return self._thread is not None and self._thread.is_alive()

    # --- loop ----------------------------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                job = self._claim()
                if job is None:
                    self._wake.wait(self.poll_s)
                    self._wake.clear()
                    continue
                self.current_job = job.id
                if job.kind == "architecture":
                    self._run_architecture(job)
                else:
                    self._run_ops(job)
            except Exception:  # keep serving: a DB hiccup must not kill the worker
                log.exception("worker loop error")
                self._stop.wait(1.0)
            finally:
                self.current_job = None

    def _claim(self) -> ClaimedJob | None:
        with write_session(self.sessions) as session:
            job = claim_next_job(session, device_id=self.device_id)
            return ClaimedJob.of(job) if job is not None else None

    def _complete(self, session: Session, item_id: int, **fields: Any) -> None:
        """Complete an item; a no-op unless it is still pending (it may have been cancelled meanwhile)."""
        item = session.get(JobItem, item_id)
        if item is not None:
            complete_item(session, item, **fields)

    def _finish(self, job_id: int, **fields: Any) -> None:
        """Finish a job that is still running (a cancelled job stays cancelled)."""
        with write_session(self.sessions) as session:
            job = session.get(Job, job_id)
            if job is not None and job.status == "running":
                finish_job(session, job, **fields)

    def _job_status(self, job_id: int) -> str:
        with self.sessions() as session:
            job = session.get(Job, job_id)
            return job.status if job is not None else "cancelled"

    def _measured(self, backend: str, kind: str, started: float) -> None:
        if self.on_measured is not None:
            self.on_measured(backend, kind, time.perf_counter() - started)

    # --- ops jobs --------------------------------------------------------------------------------------------------
    def _run_ops(self, job: ClaimedJob) -> None:
        with self.sessions() as session:
            items = [(item.id, item.op_spec) for item in pending_items(session, job.id)]
        calibration = CalibrationCache()  # the job's ops share their calibration values, and no other job's
        for item_id, op_spec in items:
            if self._stop.is_set():
                return  # resumes at the next start
            if self._job_status(job.id) != "running":
                return  # cancelled meanwhile
            if not job.force and self._skip_if_stored(job.context, item_id, op_spec):
                continue
            self._measure_item(job.context, item_id, op_spec, calibration)
        self._finish(job.id)

    def _skip_if_stored(self, context: MeasurementContext, item_id: int, op_spec: str) -> bool:
        """Mark the item skipped when the same op is already stored in the same context."""
        with write_session(self.sessions) as session:
            found = lookup_measurements(session, device_id=self.device_id, context=context, op_specs=[op_spec])
            if op_spec not in found:
                return False
            self._complete(session, item_id, status="skipped", measurement_id=found[op_spec].id)
            return True

    def _measure_item(self, context: MeasurementContext, item_id: int, op_spec: str,
                      calibration: CalibrationCache) -> None:
        env, _ = self.environment(context.backend, context.threads)
        started = time.perf_counter()
        try:
            stats = self.measure_op(parse_spec(op_spec), self.backends[context.backend], context.batch,
                                    context.dtype, context.threads, self.protocol_params, calibration)
        except Exception as exc:  # an op that fails to build or run fails its item, not the job
            log.warning("measuring %s on %s failed: %s", op_spec, context.backend, exc)
            with write_session(self.sessions) as session:
                self._complete(session, item_id, status="failed", error=f"{type(exc).__name__}: {exc}")
            return
        self._measured(context.backend, "op", started)
        # The row and the item's status in one transaction: see the module docstring.
        with write_session(self.sessions) as session:
            row = upsert_measurement(
                session, device_id=self.device_id, context=context, op_spec=op_spec, environment=env,
                protocol_params=self.protocol_params.model_dump(), stats=stats.as_dict(),
            )
            self._complete(session, item_id, status="done", measurement_id=row.id)

    # --- architecture jobs -----------------------------------------------------------------------------------------
    def _run_architecture(self, job: ClaimedJob) -> None:
        context = job.context
        started = time.perf_counter()
        try:
            arch = architecture_from_json_obj(job.payload)
            stats = self.measure_network(arch, self.backends[context.backend], context.batch, context.dtype,
                                         context.threads, self.protocol_params)
        except Exception as exc:
            log.warning("measuring architecture job %s failed: %s", job.id, exc)
            self._finish(job.id, status="failed", error=f"{type(exc).__name__}: {exc}")
            return
        self._measured(context.backend, "network", started)
        self._finish(job.id, status="done", result=stats.as_dict())
