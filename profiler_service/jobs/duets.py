"""The duets of a job worker (protocol point 11): one reference per measurement context, on one stored scale.

A duet stores every block relative to its reference (:mod:`profiler_service.engine.duet`), on the scale of the
reference's baseline latency. A table and the network that ``verify`` measures later must share that scale, also
across jobs and restarts of the service, or their ratio (the table's error) would carry the difference of two
baselines. So the baseline is persisted per context, as a canary reference is (:mod:`latency_db.repository.
canaries`: the row of the reference's op spec, batch 1, float32, in the context's backend, threads, environment
hash and protocol version; the first stored value is kept): the first duet of a context measures it and stores
it, every later one (another job, another process, another service on the same database) measures the reference
again only to size its blocks and scales by the stored baseline.

A context's duet is started when a job first needs it (the reference prepared, its baseline series timed under
the measurement lock and the job's core pinning, after the protocol's flush) and kept for the worker's lifetime.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.orm import Session, sessionmaker

from latency_db.context import MeasurementContext
from latency_db.repository import store_canary_references
from latency_db.transactions import write_session
from profiler_service.engine.backends import Backend
from profiler_service.engine.duet import Duet, DuetBackend, start_protocol_duet
from profiler_service.engine.protocol import ProtocolParams

#: The context of a stored baseline besides backend, threads, environment and protocol version.
REFERENCE_BATCH, REFERENCE_DTYPE = 1, "float32"
T = TypeVar("T")
#: How a database write is tried: (what, operation) -> its result (the job worker's bounded retries).
Retry = Callable[[str, Callable[[], T]], T]


def _once(what: str, operation: Callable[[], T]) -> T:
    return operation()


def baseline_context(backend: str, threads: int, env_hash: str, protocol_version: str) -> MeasurementContext:
    """Where the baseline of a duet measuring in this backend, threads, environment and version is stored."""
    return MeasurementContext(backend, REFERENCE_BATCH, REFERENCE_DTYPE, threads, env_hash, protocol_version)


class DuetPool:
    """The started duets of one worker, by (backend, threads, environment hash, protocol version)."""

    def __init__(self, sessions: sessionmaker[Session], device_id: int,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.sessions = sessions
        self.device_id = device_id
        self.clock = clock  # what sizes the reference blocks (tests pass a fake machine's)
        self._duets: dict[tuple[str, int, str, str], Duet] = {}
        self._lock = threading.Lock()

    def backend(self, backend: Backend, threads: int, env_hash: str, protocol_version: str,
                params: ProtocolParams, retry: Retry = _once) -> Backend:
        """``backend`` as a job measures with ``params``: itself without a duet (``params.duet_reference`` None),
        else every runner it prepares timed in the duet of this context (started now when it is the first; its
        baseline written through ``retry``)."""
        if params.duet_reference is None:
            return backend
        key = (backend.name, threads, env_hash, protocol_version)
        with self._lock:
            duet = self._duets.get(key)
            if duet is None:
                duet = self._start(backend, threads, baseline_context(*key), params, retry)
                self._duets[key] = duet
        return DuetBackend(backend, duet)

    def _start(self, backend: Backend, threads: int, context: MeasurementContext, params: ProtocolParams,
               retry: Retry) -> Duet:
        measured = start_protocol_duet(backend, threads, params, self.clock)
        try:
            baseline = retry("storing the duet's baseline", lambda: self._stored_baseline(context, measured))
        except BaseException:
            measured.close()
            raise
        return measured.rebased(baseline)

    def _stored_baseline(self, context: MeasurementContext, measured: Duet) -> float:
        """The baseline stored for ``context``: ``measured``'s when it is the first."""
        with write_session(self.sessions) as session:
            stored = store_canary_references(session, device_id=self.device_id, context=context,
                                             values={measured.label: measured.baseline_ms})
        return stored[measured.label]

    def baselines(self) -> dict[tuple[str, int, str, str], float]:
        """The baseline (ms) each started duet scales to, by (backend, threads, environment hash, version)."""
        with self._lock:
            return {key: duet.baseline_ms for key, duet in self._duets.items()}

    def close(self) -> None:
        """Release every reference's session."""
        with self._lock:
            duets, self._duets = list(self._duets.values()), {}
        for duet in duets:
            duet.close()
