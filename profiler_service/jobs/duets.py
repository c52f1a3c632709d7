"""The duets of a job worker (protocol point 11): one reference per measurement context, on ONE stored scale.

A duet stores every block relative to its reference (:mod:`profiler_service.engine.duet`), on the scale of the
reference's baseline latency. A table and the network that ``verify`` measures later must share that scale, also
across cache regimes (a table measured under ``4+flush1024+duet``, a network under ``4+warm+duet``), jobs and
restarts of the service, or their ratio (the table's error) would carry the difference of two baselines. So ONE
baseline is persisted per (backend, threads, environment hash): the reference op's latency after the cold flush
(:data:`~profiler_service.engine.duet.BASELINE_FLUSH_KIB`), stored as a canary reference is
(:mod:`latency_db.repository.canaries`: the row of the reference's op spec, batch 1, float32, under the version
key :data:`BASELINE_VERSION`; the first stored value is kept). Every regime's duet converts it into its own
regime's baseline by a ratio timed in adjacent blocks (:func:`~profiler_service.engine.duet.start_regime_duet`),
which the load of the moment cancels out of.

The baseline is set from two series that agree (:meth:`~profiler_service.engine.duet.DuetStart.
agreed_baseline_ms`); the pool measures up to :data:`BASELINE_TRIES` times, and when no try agrees (a machine
whose speed keeps changing) it takes the lowest series of all the tries: a disturbance only slows the reference
down, so the lowest is the least disturbed, and a job never waits on a quiet moment that may not come. The value
matters less than that it is one: every regime, job and ``verify`` of the environment shares it. Baselines stored per protocol version (``4+warm+duet`` etc.) by earlier releases are no longer
read: they are superseded, and so are the rows measured on their scale, because a duet service's environment names
the scale (:data:`~profiler_service.engine.duet.BASELINE_SCHEME`), so its rows have a new environment hash.

A context's duet is started when a job first needs it (the reference prepared and timed under the measurement
lock and the job's core pinning) and kept for the worker's lifetime.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.orm import Session, sessionmaker

from latency_db.context import MeasurementContext
from latency_db.repository import canary_references, store_canary_references
from latency_db.transactions import write_session
from profiler_service.engine.backends import Backend
from profiler_service.engine.duet import BASELINE_FLUSH_KIB, Duet, DuetBackend, DuetStart, start_regime_duet
from profiler_service.engine.protocol import PROTOCOL_VERSION, ProtocolParams

log = logging.getLogger(__name__)
#: The context of a stored baseline besides backend, threads and environment.
REFERENCE_BATCH, REFERENCE_DTYPE = 1, "float32"
#: The protocol version key of the shared baselines (one per backend, threads and environment; never a row's).
BASELINE_VERSION = f"{PROTOCOL_VERSION}+duet-baseline"
#: Starts of a duet whose baseline is not stored yet before the pool gives up until the next job.
BASELINE_TRIES = 3
T = TypeVar("T")
#: How a database write is tried: (what, operation) -> its result (the job worker's bounded retries).
Retry = Callable[[str, Callable[[], T]], T]
#: How a context's duet is started: start_regime_duet's signature (a measuring process's starter runs it there).
DuetStarter = Callable[..., DuetStart]


def _once(what: str, operation: Callable[[], T]) -> T:
    return operation()


def baseline_context(backend: str, threads: int, env_hash: str) -> MeasurementContext:
    """Where the one baseline of every duet in this backend, threads and environment is stored."""
    return MeasurementContext(backend, REFERENCE_BATCH, REFERENCE_DTYPE, threads, env_hash, BASELINE_VERSION)


class DuetPool:
    """The started duets of one worker, by (backend, threads, environment hash, protocol version)."""

    def __init__(self, sessions: sessionmaker[Session], device_id: int,
                 clock: Callable[[], float] = time.perf_counter, starter: DuetStarter = start_regime_duet) -> None:
        self.sessions = sessions
        self.device_id = device_id
        self.clock = clock  # what sizes the reference blocks (tests pass a fake machine's)
        self.starter = starter  # where a duet is started and lives: this process, or a measuring process
        self._duets: dict[tuple[str, int, str, str], Duet] = {}
        self._lock = threading.Lock()

    def backend(self, backend: Backend, threads: int, env_hash: str, protocol_version: str,
                params: ProtocolParams, retry: Retry = _once) -> Backend:
        """``backend`` as a job measures with ``params``: itself without a duet (``params.duet_reference`` None),
        else every runner it prepares timed in the duet of this context (started now when it is the first, on the
        shared baseline of (backend, threads, environment), which is read, or written when none is stored yet,
        through ``retry``; :class:`DuetBaselineUnsettled` when none is stored and none could be agreed)."""
        if params.duet_reference is None:
            return backend
        key = (backend.name, threads, env_hash, protocol_version)
        with self._lock:
            duet = self._duets.get(key)
            if duet is None:
                duet = self._start(backend, threads, baseline_context(backend.name, threads, env_hash), params,
                                   retry)
                self._duets[key] = duet
        return DuetBackend(backend, duet)

    def _start(self, backend: Backend, threads: int, context: MeasurementContext, params: ProtocolParams,
               retry: Retry) -> Duet:
        seen: list[float] = []  # every series of the tries, for the fallback
        for attempt in range(1, BASELINE_TRIES + 1):
            started = self.starter(backend, threads, params, clock=self.clock)
            seen.extend(started.series_ms)
            last_try = attempt == BASELINE_TRIES
            value = started.agreed_baseline_ms()
            if value is None and last_try:
                value = min(seen)
                log.warning("the duet baseline of %s (%s threads): no two series agreed in %d tries (%s ms); taking "
                            "the lowest, %.4g ms (is other work running on the device?)", backend.name, threads,
                            BASELINE_TRIES, ", ".join(f"{v:.4g}" for v in seen), value)
            try:
                baseline = retry("storing the duet's baseline",
                                 lambda: self._stored_baseline(context, started.duet.label, value))
            except BaseException:
                started.duet.close()
                raise
            if baseline is not None:
                return started.scaled(baseline)
            started.duet.close()
            log.warning("the two series of the duet baseline of %s (%s threads) disagree (%.4g ms, %.4g ms), try "
                        "%d of %d", backend.name, threads, *started.series_ms, attempt, BASELINE_TRIES)
        raise AssertionError("unreachable: the last try always has a value")

    def _stored_baseline(self, context: MeasurementContext, label: str, value: float | None) -> float | None:
        """The baseline stored for ``context``; when there is none, ``value`` stored now (None, storing nothing,
        when ``value`` is None: this try's two series disagreed)."""
        with write_session(self.sessions) as session:
            stored = canary_references(session, device_id=self.device_id, context=context, op_specs=[label])
            if label in stored:
                return stored[label]
            if value is None:
                return None
            stored = store_canary_references(session, device_id=self.device_id, context=context,
                                             values={label: value})
        log.info("duet baseline of %s (%s threads) set: %s at %.4g ms after a %d KiB flush", context.backend,
                 context.threads, label, stored[label], BASELINE_FLUSH_KIB)
        return stored[label]

    def baselines(self) -> dict[tuple[str, int, str, str], float]:
        """The baseline (ms) each started duet scales to in its own regime (the shared baseline times the regime's
        ratio), by (backend, threads, environment hash, version)."""
        with self._lock:
            return {key: duet.baseline_ms for key, duet in self._duets.items()}

    def close(self) -> None:
        """Release every reference's session."""
        with self._lock:
            duets, self._duets = list(self._duets.values()), {}
        for duet in duets:
            duet.close()
