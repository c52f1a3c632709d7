"""Test doubles of the job worker's tests: scripted measurements, a fixed environment, a worker on a database.

Nothing here times anything: a scripted measurement returns fixed statistics and records who measured what.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from latency_db.connection import make_engine, make_session_factory
from latency_db.context import MeasurementContext
from latency_db.hashing import canonical_hash
from latency_db.repository import create_job, get_or_create_device
from latency_db.transactions import write_session
from profiler_service.engine.backends import get_backend
from profiler_service.engine.protocol_presets import protocol_params_for, protocol_version_for
from profiler_service.engine.protocol import Stats
from profiler_service.jobs.worker import JobWorker

BACKEND = "ort-cpu"
FINGERPRINT = {"cpu_model": "Scripted CPU", "cpu_cores": 2}
DEADLINE_S = 60.0


def environment_named(name: str, served: tuple[str, ...] | None = None
                      ) -> Callable[[str, int], tuple[dict[str, Any], str]]:
    """An environment resolver whose environment is ``{"env": name, ...}`` (so env "A" and env "B" differ). Like
    the service's, it raises for a backend outside ``served`` (None: any backend)."""

    def resolve(backend: str, threads: int) -> tuple[dict[str, Any], str]:
        if served is not None and backend not in served:
            raise LookupError(f"backend {backend!r} is not served")
        env = {"env": name, "backend": backend, "threads": threads}
        return env, canonical_hash(env)

    return resolve


def env_hash_of(name: str, threads: int = 1) -> str:
    """The hash :func:`environment_named` gives for ``name`` on the test backend."""
    return environment_named(name)(BACKEND, threads)[1]


def stats(median_ms: float = 1.0) -> Stats:
    """Fixed statistics around ``median_ms``."""
    return Stats(median_ms=median_ms, mean_ms=median_ms, std_ms=0.0, min_ms=median_ms, p10_ms=median_ms,
                 p90_ms=median_ms, iqr_ms=0.0, samples=10)


@dataclass
class ScriptedMeasurer:
    """Stands in for ``measure_op``: records (who, op spec, keyword arguments) and returns fixed stats.

    ``before_return(spec_text, kwargs)`` runs before the stats are returned (a barrier, a gate, an error).
    """

    who: str = "worker"
    median_ms: float = 1.0
    before_return: Callable[[str, dict[str, Any]], None] | None = None
    calls: list[tuple[str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, spec: Any, backend: Any, batch: int, dtype: str, threads: int, params: Any,
                 calibration_cache: Any = None, **kwargs: Any) -> Stats:
        from nas_ops.spec import format_spec

        text = format_spec(spec)
        with self._lock:
            self.calls.append((self.who, text))
        if self.before_return is not None:
            self.before_return(text, kwargs)
        return stats(self.median_ms)


@dataclass
class Store:
    """A migrated database with this test's device: its engine, session factory and device id."""

    url: str
    engine: Engine
    sessions: sessionmaker[Session]
    device_id: int

    def context(self, env: str = "A", protocol: str = "fast", threads: int = 1) -> MeasurementContext:
        """A measurement context on the test backend in environment ``env``."""
        return MeasurementContext(BACKEND, 1, "float32", threads, env_hash_of(env, threads),
                                  protocol_version_for(protocol))

    def submit(self, op_specs: list[str], *, env: str = "A", protocol: str = "fast", force: bool = False,
               kind: str = "ops", payload: dict[str, Any] | None = None, backend: str | None = None) -> int:
        """Create a queued job (as the API would) and return its id."""
        context = self.context(env, protocol)
        if backend is not None:
            context = MeasurementContext(backend, context.batch, context.dtype, context.threads, context.env_hash,
                                         context.protocol_version)
        with write_session(self.sessions) as session:
            return create_job(session, device_id=self.device_id, kind=kind, context=context, op_specs=op_specs,
                              force=force, payload=payload).id


@contextmanager
def open_store(url: str) -> Iterator[Store]:
    """A :class:`Store` on the migrated database at ``url`` (its own engine: like another process)."""
    engine = make_engine(url)
    try:
        sessions = make_session_factory(engine)
        with write_session(sessions) as session:
            device_id = get_or_create_device(session, "scripted", FINGERPRINT).id
        yield Store(url, engine, sessions, device_id)
    finally:
        engine.dispose()


def make_worker(store: Store, measurer: Callable[..., Stats], *, env: str = "A", protocol: str = "fast",
                backends: tuple[str, ...] = (BACKEND,), **options: Any) -> JobWorker:
    """A worker on ``store`` measuring with ``measurer`` in environment ``env`` (not started)."""
    return JobWorker(
        sessions=store.sessions, device_id=store.device_id, backends={name: get_backend(name) for name in backends},
        protocol_params=protocol_params_for(protocol), protocol_version=protocol_version_for(protocol),
        environment=environment_named(env, backends), measure_op=measurer, **{"poll_s": 0.02, **options},
    )


def wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = DEADLINE_S) -> None:
    """Poll ``predicate`` until it holds; AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout_s:g} s")
        time.sleep(0.01)
