"""What one running service holds: settings, database, this device's row, its backends and the job worker."""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from latency_db.connection import make_engine, make_session_factory
from latency_db.context import MeasurementContext
from latency_db.repository import get_or_create_device
from latency_db.transactions import write_session
from profiler_service.engine.backends import Backend, available_backends, get_backend
from profiler_service.api.errors import bad_request
from profiler_service.engine.fingerprint import device_fingerprint, env_hash, environment
from profiler_service.api.heartbeat import Heartbeat
from profiler_service.api.metrics import ServiceMetrics
from profiler_service.engine.cache_regime import configured_cache
from profiler_service.engine.duet import BASELINE_SCHEME
from profiler_service.engine.protocol_presets import ResolvedProtocol, ServiceProtocol
from profiler_service.isolation.measurer import IsolatedMeasurer
from profiler_service.settings import ProfilerSettings
from profiler_service.jobs.canaries import CanaryWatch
from profiler_service.jobs.worker import JobWorker


MIB = 1 << 20


def select_backends(names: list[str] | None) -> dict[str, Backend]:
    """The backends to serve: the named ones (each must be available here), or every available one."""
    if names is None:
        return {b.name: b for b in available_backends()}
    return {name: get_backend(name) for name in names}


class ServiceState:
    """Shared by every request and the worker; built once at start-up (the DB must already be at head)."""

    def __init__(self, settings: ProfilerSettings) -> None:
        self.settings = settings
        self.engine = make_engine(settings.db_url)
        self.sessions: sessionmaker[Session] = make_session_factory(self.engine)
        # readiness probes write through a connection of their own, opened for each probe: see check_writable
        self.probe_engine = make_engine(settings.db_url, pooled=False)
        self.probe_sessions: sessionmaker[Session] = make_session_factory(self.probe_engine)
        self.fingerprint = device_fingerprint()
        self.backends = select_backends(settings.backend_names())
        self.protocol = ServiceProtocol(settings.protocol, configured_cache(settings.cache_kib), settings.duet)
        # the protocol of a request without a working set
        self.protocol_params = self.protocol.base.params
        self.protocol_version = self.protocol.base.version
        canary = self.protocol.canary_base  # never in a duet: the canaries watch the machine's raw speed
        self.metrics = ServiceMetrics()
        self._env_cache: dict[tuple[str, int], tuple[dict[str, Any], str]] = {}
        self._env_lock = threading.Lock()
        with write_session(self.sessions) as session:
            self.device_id = get_or_create_device(session, settings.device_name, self.fingerprint).id
        self.canaries = None if settings.canary_interval_s == 0 else CanaryWatch(
            sessions=self.sessions, device_id=self.device_id, protocol_version=canary.version,
            threads=settings.threads, interval_s=settings.canary_interval_s,
            before_job_s=settings.canary_before_job_s, threshold_rel=settings.canary_drift_rel,
        )
        self.measurer = None if settings.isolation == "none" else IsolatedMeasurer(
            op_memory_bytes=int(settings.max_op_memory_mib * MIB),
            network_memory_bytes=int(settings.max_network_memory_mib * MIB),
            time_limit_s=settings.item_time_limit_s)
        measuring: dict[str, Any] = {} if self.measurer is None else {
            "measure_op": self.measurer.measure_op_round, "measure_network": self.measurer.measure_network_round,
            "start_duet": self.measurer.start_regime_duet}
        self.worker = JobWorker(
            sessions=self.sessions, device_id=self.device_id, backends=self.backends,
            protocol_params=canary.params, protocol_version=canary.version,
            environment=self.environment, poll_s=settings.worker_poll_s, on_measured=self._count_measurement,
            canaries=self.canaries, protocol_for_job=self.protocol.for_job, **measuring,
        )
        self.heartbeat: Heartbeat | None = None  # serve's (api.heartbeat): one live service per device identity

    def backend(self, name: str) -> Backend:
        """The served backend ``name``; a 422 listing the served ones otherwise."""
        if name not in self.backends:
            served = ", ".join(sorted(self.backends)) or "none"
            raise bad_request(f"backend {name!r} is not served by this device; served: {served}", "unknown_backend")
        return self.backends[name]

    def resolve_threads(self, threads: int | None) -> int:
        """The thread count of a request: its own, or the service default for None."""
        return self.settings.threads if threads is None else threads

    def context(self, backend_name: str, batch: int, dtype: str, threads: int | None,
                working_set_bytes: int | None = None) -> MeasurementContext:
        """The measurement context of a request on this service: its backend, batch, dtype and threads (None: the
        default) in this service's current environment, under the protocol version of the cache regime of
        ``working_set_bytes`` (:meth:`protocol_for`; 422 for a backend not served)."""
        threads = self.resolve_threads(threads)
        _, current_hash = self.environment(backend_name, threads)
        return MeasurementContext(backend=backend_name, batch=batch, dtype=dtype, threads=threads,
                                  env_hash=current_hash,
                                  protocol_version=self.protocol_for(working_set_bytes).version)

    def protocol_for(self, working_set_bytes: int | None) -> ResolvedProtocol:
        """The protocol of a request measuring a network of ``working_set_bytes`` (None: not given, cold)."""
        return self.protocol.for_working_set(working_set_bytes)

    def environment(self, backend_name: str, threads: int) -> tuple[dict[str, Any], str]:
        """(environment, its hash) of a backend at a thread count: part of every measurement's identity. A duet
        service's environment names the duet's scale (``duet_baseline``), so rows on another scale are never
        served as its own."""
        key = (backend_name, threads)
        with self._env_lock:
            if key not in self._env_cache:
                env = environment(self.backend(backend_name), threads)
                if self.protocol.duet:
                    env = {**env, "duet_baseline": BASELINE_SCHEME}
                self._env_cache[key] = (env, env_hash(env))
            return self._env_cache[key]

    def _count_measurement(self, backend_name: str, kind: str, seconds: float) -> None:
        self.metrics.measure_seconds.labels(backend_name).observe(seconds)
        self.metrics.measurements.labels(backend_name, kind).inc()

    def close(self) -> None:
        self.worker.stop()
        if self.heartbeat is not None:  # after the worker: no other service measures while this one still does
            self.heartbeat.stop()
        if self.measurer is not None:
            self.measurer.close()
        self.engine.dispose()
        self.probe_engine.dispose()
