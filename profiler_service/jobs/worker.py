"""The job worker: one thread that measures the items of persistent jobs, one at a time, in order.

Rounds (protocol point 9): an ops job is measured in ``protocol_params.rounds`` rounds, each round over every
pending item that lacks it, in the round's seeded order (:func:`profiler_service.engine.rounds.round_order`); each
round is stored as it is measured, and an item's LAST round, its measurement row (the robust aggregate of its
rounds, flagged rather than 0 ms for an op that costs multiply-adds: :func:`~profiler_service.engine.rounds.
stored_result`) and the item's ``done`` status are written in ONE transaction. An architecture job measures its
network in as many rounds; the last one and the job's result are written together.

Crash safety: a process killed at any point leaves each item either pending with some of its rounds stored (the
restarted service measures only the rounds it lacks, in the environment of now: rounds of another environment or
protocol version do not count) or done with its row and all its rounds (never measured again).

Leases: a worker claims a job with a lease (owner = this worker, expiry ``lease_s`` ahead) and renews it every
``lease_s / 3`` seconds while it works (:class:`~profiler_service.jobs.lease.LeaseKeeper`). Services sharing one
database never run the same job: a live owner's job is never claimed by another worker; a killed owner's job is
taken over once its lease has expired; a stopping worker gives its lease back, so a restart resumes at once.

Cancel and stop: the measurement asks a stop hook between timed blocks (``should_stop``), answered True once the
worker is stopping or the watch found the job cancelled or taken over (checked every ``check_s`` seconds), so a
cancelled job does not keep the device busy with its item in flight; the given-up item is not stored.

Database errors: every database operation of a job gets a bounded number of tries with exponential back-off
(:mod:`profiler_service.jobs.retry`); when the store keeps refusing (a full disk), the item fails with that error
and the job ends failed, instead of being measured again and again. Errors outside a job (claims while the
database is down) make the loop wait longer each time (1 s doubling to 60 s), never spin.

Where a job runs: a claimed job is measured on a backend this worker serves, in the environment and protocol
version of now (resolved inside the job's error handling): a job whose backend is no longer served fails, with
each pending item, "backend X is no longer served by this device", and the worker goes on with the next job; a
job resumed after a restart with another runtime stores its rows under the environment they were measured in.
With ``protocol_for_job`` the protocol follows the job: a job submitted in the warm cache regime (protocol version
``4+warm``, chosen by the service's ``auto`` preset from the request's working set) is measured and stored warm,
one submitted under ``4+flush1024`` with that flush. A protocol with a ``duet_reference`` (the service's ``duet``
setting) is measured in the duet of the job's context (:mod:`profiler_service.jobs.duets`: started by the first
job that needs it, on the one baseline of its backend, threads and environment, shared by every regime), ops and
networks alike.

Where items are measured: by the ``measure_op``/``measure_network`` functions and the duet ``start_duet`` the
worker is given, in the service's process by default, in a measuring process per backend with the service's
:class:`~profiler_service.isolation.measurer.IsolatedMeasurer` (its limits end the item, never the service). An
error of an item fails that item with its message (a limit's names the limit) and the job goes on.

Poison items: before each measurement the item's ``attempts`` are raised in the store, and any outcome that comes
back (a stored round or row, a failure, a stop) sets them back to 0; so they count the measurements during which
the service's own process ended (killed, e.g. by the OOM killer). An item found with :data:`POISON_ATTEMPTS` of
them is failed ("measuring this op ended the process twice") and never measured again; the network of an
architecture job likewise, with the job's own count.

Canaries: with a :class:`~profiler_service.jobs.canaries.CanaryWatch`, the worker measures the canary ops at its
start, every ``interval_s`` while it serves (also between the items of a long job) and before a job, and keeps
the drift report the API shows.

The worker gets what it needs and nothing of the web service: a session factory, this device's id, the served
backends, the protocol (parameters and stored version: those of the canary checks, and of every job unless
``protocol_for_job`` resolves its own), an environment resolver and, optionally, a canary watch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from latency_db.context import MeasurementContext
from latency_db.errors import describe_store_error, is_store_unavailable
from nas_ops.arch_files import architecture_from_json_obj
from nas_ops.counting import count_flops
from nas_ops.spec import parse_spec
from profiler_service.engine.backends import Backend
from profiler_service.engine.calibration import CalibrationCache
from profiler_service.engine.canary import canary_params
from profiler_service.engine.protocol import (
    MeasurementStopped,
    ProtocolParams,
    measure_network_round,
    measure_op_round,
)
from profiler_service.engine.protocol_presets import ResolvedProtocol
from profiler_service.engine.rounds import lacking_rounds, round_order, settled, stored_result
from profiler_service.engine.stats import RoundMeasurement, Stats
from profiler_service.jobs.canaries import CANARY_BATCH, CANARY_DTYPE, CanaryWatch
from profiler_service.engine.duet import start_regime_duet
from profiler_service.isolation.errors import IsolationError
from profiler_service.jobs.duets import DuetPool, DuetStarter
from profiler_service.jobs.lease import LeaseKeeper
from profiler_service.jobs.retry import Backoff, Interrupted, Sleep, StoreUnavailable, with_retries
from profiler_service.jobs.store import NETWORK_POSITION, ClaimedJob, JobStore, PendingItem, new_owner_id

log = logging.getLogger(__name__)
T = TypeVar("T")

#: (backend name, threads) -> (environment, its hash): the environment a measurement runs in.
EnvironmentResolver = Callable[[str, int], tuple[dict[str, Any], str]]
#: The protocol a job submitted under a protocol version is measured under now (its cache regime: see
#: profiler_service.engine.protocol_presets.ServiceProtocol.for_job); without one, every job gets the worker's fixed protocol.
ProtocolForJob = Callable[[str], ResolvedProtocol]
#: Called after each measurement with (backend name, "op" | "network", seconds it took).
MeasuredHook = Callable[[str, str, float], None]
#: How one round of an op / a whole network is measured (the protocol's functions; tests pass scripted ones, which
#: may return plain Stats: final values, see RoundMeasurement.of).
OpMeasurer = Callable[..., RoundMeasurement | Stats]
NetworkMeasurer = Callable[..., RoundMeasurement | Stats]

#: Seconds a claimed job stays leased without a renewal (renewed every third of it while the worker works).
DEFAULT_LEASE_S = 15.0
#: Seconds between two checks that the job in work was not cancelled: a cancel stops the item in flight this fast
#: (plus one timed block).
DEFAULT_CHECK_S = 0.5
#: Tries of one database operation of a job (waits 0.5, 1, 2, 4 s between them) before the item fails.
STORE_BACKOFF = Backoff(attempts=5, first_s=0.5, factor=2.0, max_s=30.0)
#: Measurements of one item during which the service's process ended, after which the item is failed for good.
POISON_ATTEMPTS = 2
#: Waits of the loop after consecutive errors outside a job (e.g. claims while the database is down): 1, 2, 4 ...
#: up to 60 s; back to 1 s after a success.
LOOP_BACKOFF = Backoff(attempts=1, first_s=1.0, factor=2.0, max_s=60.0)


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
        lease_s: float = DEFAULT_LEASE_S,
        check_s: float = DEFAULT_CHECK_S,
        backoff: Backoff = STORE_BACKOFF,
        loop_backoff: Backoff = LOOP_BACKOFF,
        sleep: Sleep | None = None,
        owner: str | None = None,
        on_measured: MeasuredHook | None = None,
        measure_op: OpMeasurer = measure_op_round,
        measure_network: NetworkMeasurer = measure_network_round,
        canaries: CanaryWatch | None = None,
        protocol_for_job: ProtocolForJob | None = None,
        start_duet: DuetStarter = start_regime_duet,
    ) -> None:
        self.device_id = device_id
        self.backends = backends
        self.protocol_params = protocol_params
        self.protocol_version = protocol_version
        self.protocol_for_job = protocol_for_job
        self.environment = environment
        self.poll_s = poll_s
        self.lease_s = lease_s
        self.check_s = check_s
        self.backoff = backoff
        self.loop_backoff = loop_backoff
        self.store = JobStore(sessions, device_id, owner or new_owner_id(), lease_s)
        self.on_measured = on_measured
        self.measure_op = measure_op
        self.measure_network = measure_network
        self.canaries = canaries
        self.duets = DuetPool(sessions, device_id, starter=start_duet)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._sleep: Sleep = sleep or self._stop.wait
        self.current_job: int | None = None

    @property
    def owner(self) -> str:
        """This worker's lease owner id."""
        return self.store.owner

    def start(self) -> None:
        """Start the worker thread (it resumes the jobs a killed process left running, once their leases expire)."""
        self._thread = threading.Thread(target=self._run, name="profiler-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the worker: the item in flight is given up between two timed blocks and stays pending, the job
        stays running, its lease is given back, and it resumes at the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if not self.alive:
            self.duets.close()

    def wake(self) -> None:
        """Look for work now (after a submit) instead of at the next poll."""
        self._wake.set()

    @property
    def alive(self) -> bool:
        """Whether the worker thread runs."""
        return self._thread is not None and self._thread.is_alive()

    # --- loop ----------------------------------------------------------------------------------------------------
    def _run(self) -> None:
        failures = 0
        self._check_canaries("start", self.backends, self._stop.is_set)
        while not self._stop.is_set():
            try:
                self._check_canaries("interval", self.backends, self._stop.is_set)
                job = self.store.claim()
                failures = 0
                if job is None:
                    self._wake.wait(self.poll_s)
                    self._wake.clear()
                    continue
                self._run_job(job)
            except Exception as exc:  # keep serving: a DB outage must not kill the worker, nor make it spin
                failures += 1
                wait = self.loop_backoff.wait_s(failures)
                if is_store_unavailable(exc) or isinstance(exc, StoreUnavailable):
                    log.warning("worker: the database is unavailable (%s); next try in %.0f s", exc, wait)
                else:
                    log.exception("worker loop error; next try in %.0f s", wait)
                self._sleep(wait)

    def _retry(self, what: str, operation: Callable[[], T]) -> T:
        """A database operation of a job, with bounded retries (see :mod:`profiler_service.jobs.retry`)."""
        return with_retries(operation, what, self.backoff, self._sleep)

    def _run_job(self, job: ClaimedJob) -> None:
        self.current_job = job.id
        try:
            try:
                run = self._in_current_environment(job)
            except Exception as exc:  # nothing of this job can be measured here: fail it, go on with the next
                log.warning("job %s cannot run here: %s", job.id, exc)
                error = str(exc)
                self._retry(f"failing job {job.id}", lambda: self.store.fail_job(job.id, error))
                return
            with LeaseKeeper(lambda: self.store.renew(job.id), self.lease_s / 3, lambda: self.store.holds(job.id),
                             min(self.check_s, self.lease_s / 3)) as lease:
                self._check_canaries("job", [job.context.backend], self._should_stop(lease))
                try:
                    if job.kind == "architecture":
                        self._run_architecture(run, lease)
                    else:
                        self._run_ops(run, lease)
                except StoreUnavailable as exc:  # not even the failure could be written: the job stays running
                    log.error("job %s: %s; it resumes when the database answers again", job.id, exc)
                except Interrupted:
                    pass  # stopping during a back-off wait
            if self._stop.is_set() and not lease.lost:
                self._release(job.id)  # left unfinished: whoever starts next resumes it at once
        finally:
            self.current_job = None

    def _release(self, job_id: int) -> None:
        try:
            self.store.release(job_id)
        except Exception as exc:  # the lease then expires on its own
            log.warning("giving back the lease of job %s failed: %s", job_id, describe_store_error(exc))

    def _in_current_environment(self, job: ClaimedJob) -> _Run:
        """The job as this worker measures it: on a served backend, in the environment and protocol version of NOW
        (a job resumed after a restart with another runtime stores its rows under the environment they were
        measured in, never under the one it was submitted in). Raises BackendGone / the resolver's error."""
        name = job.context.backend
        if name not in self.backends:
            served = ", ".join(sorted(self.backends)) or "none"
            raise BackendGone(f"backend {name!r} is no longer served by this device (served: {served})")
        try:
            environment, current_hash = self.environment(name, job.context.threads)
        except Exception as exc:
            raise RuntimeError(f"the environment of backend {name!r} cannot be read: {type(exc).__name__}: {exc}"
                               ) from exc
        params, version = self.protocol_params, self.protocol_version
        if self.protocol_for_job is not None:
            resolved = self.protocol_for_job(job.context.protocol_version)
            params, version = resolved.params, resolved.version
        context = job.context.in_environment(current_hash, version)
        backend = self.duets.backend(self.backends[name], context.threads, current_hash, version, params,
                                     retry=lambda what, operation: self._retry(f"job {job.id}: {what}", operation))
        return _Run(job, backend, context, environment, params)

    def _measured(self, backend: str, kind: str, started: float) -> None:
        if self.on_measured is not None:
            self.on_measured(backend, kind, time.perf_counter() - started)

    def _keeps_working(self, run: _Run, lease: LeaseKeeper) -> bool:
        """Not stopping, and the job still runs under this worker's lease (not cancelled, not taken over)."""
        if self._stop.is_set() or lease.lost:
            return False
        return self._retry(f"reading job {run.job.id}", lambda: self.store.holds(run.job.id))

    def _should_stop(self, lease: LeaseKeeper) -> Callable[[], bool]:
        """The measurement's stop hook: the worker is stopping, or the job was cancelled or taken over."""
        return lambda: self._stop.is_set() or lease.lost

    # --- canaries ----------------------------------------------------------------------------------------------
    def _check_canaries(self, reason: str, backends: Iterable[str], should_stop: Callable[[], bool]) -> None:
        """Run the canary checks of ``backends`` that are due for ``reason``; a failed check is logged (the
        report keeps its last value), a stop gives the check up."""
        if self.canaries is None:
            return
        for name in sorted(backends):
            if should_stop() or not self.canaries.due(name, reason):
                continue
            try:
                threads = self.canaries.threads
                report = self.canaries.check(name, reason, self.environment(name, threads)[1],
                                             self._canary_measurer(name, threads, should_stop), self.protocol_params)
            except MeasurementStopped:
                return
            except Exception as exc:  # the device still serves; the drift report stays as it was
                log.warning("canary check of %s (%s) failed: %s: %s", name, reason, type(exc).__name__, exc)
                continue
            if report.drifting:
                log.warning("drift on %s: the canaries run at %.3gx their stored values (threshold %g)", name,
                            report.ratio, report.threshold_rel)

    def rebaseline_canaries(self, backends: Iterable[str]) -> dict[str, Any]:
        """Measure new canary references for ``backends`` now, in the caller's thread (for a worker that is not
        started: ``proxyless-profiler rebaseline``), replacing the stored ones when the two measurements agree.
        Returns each backend's report; raises CanariesUnsettled when they disagree, ValueError without canaries."""
        if self.canaries is None:
            raise ValueError("the canaries are off (canary_interval_s = 0): there is no reference to re-baseline")
        reports = {}
        for name in sorted(backends):
            self.canaries.request_rebaseline([name])
            threads = self.canaries.threads
            reports[name] = self.canaries.check(name, "interval", self.environment(name, threads)[1],
                                                self._canary_measurer(name, threads, self._stop.is_set),
                                                self.protocol_params)
        return reports

    def _canary_measurer(self, backend: str, threads: int,
                         should_stop: Callable[[], bool]) -> Callable[[str], RoundMeasurement]:
        """One round of one canary op on ``backend`` with the canary protocol (a check is one session)."""
        params = canary_params(self.protocol_params)
        calibration = CalibrationCache()

        def measure(spec: str) -> RoundMeasurement:
            return RoundMeasurement.of(self.measure_op(parse_spec(spec), self.backends[backend], CANARY_BATCH,
                                                       CANARY_DTYPE, threads, params, calibration,
                                                       should_stop=should_stop))

        return measure

    # --- ops jobs --------------------------------------------------------------------------------------------------
    def _run_ops(self, run: _Run, lease: LeaseKeeper) -> None:
        job, rounds = run.job, run.params.rounds
        calibration = CalibrationCache()  # the job's ops share their calibration values, and no other job's
        items = self._retry(f"reading the items of job {job.id}", lambda: self.store.pending_items(job.id))
        stored = self._retry(f"reading the rounds of job {job.id}", lambda: self.store.stored_rounds(job.id,
                                                                                                   run.context))
        open_items = {item.position: item for item in items}
        for item in items:  # every round stored, not done (cannot happen through this worker): finish it
            if not lacking_rounds(list(stored.get(item.position, {})), rounds):
                if self._finish_item(run, item, stored[item.position], None) is _Outcome.STOP:
                    return
                del open_items[item.position]
        for round_index in range(rounds):
            order = round_order(list(open_items), seed=run.params.seed, job_id=job.id,
                                round_index=round_index, rounds=rounds)
            for position in order:
                item = open_items.get(position)
                item_rounds = stored.setdefault(position, {})
                if item is None or round_index in item_rounds:
                    continue  # finished in an earlier round of this run, or this round was stored before
                self._check_canaries("interval", self.backends, self._should_stop(lease))
                if not self._keeps_working(run, lease):
                    return  # stopping (resumes at the next start), cancelled, or taken over
                if not job.force and self._retry(f"looking up {item.op_spec}", lambda: self.store.skip_if_stored(
                        job.id, item.item_id, run.context, item.op_spec)):
                    del open_items[position]
                    continue
                outcome = self._measure_round(run, item, round_index, item_rounds, calibration,
                                              self._should_stop(lease))
                if outcome is _Outcome.STOP:
                    return
                if outcome is _Outcome.ITEM_CLOSED:
                    del open_items[position]
        self._retry(f"finishing job {job.id}", lambda: self.store.finish(job.id))

    def _measure_round(self, run: _Run, item: PendingItem, round_index: int,
                       item_rounds: dict[int, RoundMeasurement], calibration: CalibrationCache,
                       should_stop: Callable[[], bool]) -> _Outcome:
        """Measure one round of one item and store it (with the item's result when it is its last round)."""
        context = run.context
        if item.attempts >= POISON_ATTEMPTS:
            return self._fail_item(run, item.item_id, poison_message("op", item.attempts))
        if not self._retry(f"counting an attempt of {item.op_spec}",
                           lambda: self.store.begin_attempt(run.job.id, item.item_id)):
            return _Outcome.STOP  # no longer this worker's job
        started = time.perf_counter()
        try:
            measurement = RoundMeasurement.of(self.measure_op(
                parse_spec(item.op_spec), run.backend, context.batch, context.dtype, context.threads,
                run.params, calibration, should_stop=should_stop))
        except MeasurementStopped:
            log.info("measuring %s of job %s stopped (cancelled or stopping)", item.op_spec, run.job.id)
            self._end_attempt(run.job.id, item.item_id)
            return _Outcome.STOP
        except Exception as exc:  # an op that fails to build or run fails its item, not the job
            log.warning("measuring %s on %s failed: %s", item.op_spec, context.backend, exc)
            return self._fail_item(run, item.item_id, describe_error(exc))
        self._measured(context.backend, "op", started)
        measured = {**item_rounds, round_index: measurement}
        if lacking_rounds(list(measured), run.params.rounds) and not settled(list(measured.values()), run.params):
            return self._store_round(run, item, round_index, measurement, item_rounds)
        return self._finish_item(run, item, measured, round_index)

    def _end_attempt(self, job_id: int, item_id: int | None) -> None:
        """A stopped measurement came back: its attempt does not count (best effort: a failure leaves one more)."""
        try:
            self.store.end_attempt(job_id, item_id)
        except Exception as exc:
            log.warning("job %s: resetting the attempts of a stopped item failed: %s", job_id,
                        describe_store_error(exc))

    def _store_round(self, run: _Run, item: PendingItem, round_index: int, measurement: RoundMeasurement,
                     item_rounds: dict[int, RoundMeasurement]) -> _Outcome:
        """Store a round that does not complete its item."""
        try:
            stored = self._retry(f"storing round {round_index} of {item.op_spec}", lambda: self.store.store_round(
                run.job.id, item.item_id, item.position, run.context, round_index, measurement))
        except StoreUnavailable as exc:
            self._abandon(run, item.item_id, f"a round could not be stored: {exc}")
            return _Outcome.STOP
        except Exception as exc:
            return self._fail_item(run, item.item_id, f"storing a round failed: {type(exc).__name__}: {exc}")
        if not stored:
            log.warning("job %s is no longer this worker's: round %s of %s was not stored", run.job.id,
                        round_index, item.op_spec)
            return _Outcome.STOP
        item_rounds[round_index] = measurement
        return _Outcome.MEASURED

    def _finish_item(self, run: _Run, item: PendingItem, item_rounds: Mapping[int, RoundMeasurement],
                     last_index: int | None) -> _Outcome:
        """Store the item's measurement (the aggregate of its rounds), its last round (``last_index``; None: all
        stored already) and its done status in one transaction: ITEM_CLOSED (done, or failed when its value or
        row is refused), or STOP when the worker must leave the job."""
        context = run.context
        ordered = [item_rounds[index] for index in sorted(item_rounds)[: run.params.rounds]]
        try:
            result = stored_result(ordered, run.params,
                                   costs_compute=count_flops(parse_spec(item.op_spec)) > 0)
        except ValueError as exc:
            return self._fail_item(run, item.item_id, str(exc))
        if result.flagged is not None:
            log.warning("%s on %s stored flagged: %s", item.op_spec, context.backend, result.flagged)
        last_round = None if last_index is None else (last_index, item_rounds[last_index])
        try:
            stored = self._retry(f"storing the measurement of {item.op_spec}", lambda: self.store.store_measurement(
                run.job.id, item.item_id, context, item.op_spec, run.environment, run.params.model_dump(),
                result.stats.as_dict(), rounds=result.rounds, flagged=result.flagged, position=item.position,
                last_round=last_round, peak_rss_bytes=peak_of(ordered)))
        except StoreUnavailable as exc:  # e.g. the disk is full: fail the item and end the job, no retry storm
            self._abandon(run, item.item_id, f"the measurement could not be stored: {exc}")
            return _Outcome.STOP
        except Exception as exc:  # refused for good (e.g. stats the store rejects): the item fails, the job goes on
            return self._fail_item(run, item.item_id, f"storing failed: {describe_error(exc)}")
        if not stored:
            log.warning("job %s is no longer this worker's: the measurement of %s was not stored", run.job.id,
                        item.op_spec)
            return _Outcome.STOP
        return _Outcome.ITEM_CLOSED

    def _fail_item(self, run: _Run, item_id: int, error: str) -> _Outcome:
        """Mark the item failed (the job goes on: ITEM_CLOSED); STOP when the job is no longer this worker's."""
        try:
            failed = self._retry(f"failing an item of job {run.job.id}",
                                 lambda: self.store.fail_item(run.job.id, item_id, error))
        except StoreUnavailable as exc:
            self._abandon(run, item_id, f"{error}; and the failure could not be stored: {exc}")
            return _Outcome.STOP
        return _Outcome.ITEM_CLOSED if failed else _Outcome.STOP

    def _abandon(self, run: _Run, item_id: int, error: str) -> None:
        """The store refuses writes: the item fails with ``error`` and the job ends failed (its other pending items
        cancelled), in one transaction (retried; StoreUnavailable when even that cannot be written)."""
        log.error("job %s: %s; the job ends", run.job.id, error)
        job_error = f"stopped: {error}; the job's other pending items were cancelled"
        self._retry(f"failing job {run.job.id}", lambda: self.store.abandon(run.job.id, item_id, error, job_error))

    # --- architecture jobs -----------------------------------------------------------------------------------------
    def _run_architecture(self, run: _Run, lease: LeaseKeeper) -> None:
        job, context, rounds = run.job, run.context, run.params.rounds
        try:
            arch = architecture_from_json_obj(job.payload)
        except Exception as exc:
            self._fail_architecture(job, exc)
            return
        stored = self._retry(f"reading the rounds of job {job.id}", lambda: self.store.stored_rounds(
            job.id, context)).get(NETWORK_POSITION, {})
        lacking = lacking_rounds(list(stored), rounds)
        if lacking and job.attempts >= POISON_ATTEMPTS:
            self._fail_architecture(job, poison_message("network", job.attempts))
            return
        for round_index in lacking:
            if not self._retry(f"counting an attempt of job {job.id}", lambda: self.store.begin_attempt(job.id, None)):
                return  # no longer this worker's job
            started = time.perf_counter()
            try:
                measurement = RoundMeasurement.of(self.measure_network(
                    arch, run.backend, context.batch, context.dtype, context.threads, run.params,
                    should_stop=self._should_stop(lease)))
            except MeasurementStopped:
                log.info("measuring architecture job %s stopped (cancelled or stopping)", job.id)
                self._end_attempt(job.id, None)
                return
            except Exception as exc:
                self._fail_architecture(job, exc)
                return
            self._measured(context.backend, "network", started)
            stored[round_index] = measurement
            last = (round_index, measurement)
            if round_index == lacking[-1] or settled(list(stored.values()), run.params):
                break  # the last round is stored with the job's result
            if not self._retry(f"storing round {round_index} of job {job.id}", lambda: self.store.store_round(
                    job.id, None, NETWORK_POSITION, context, round_index, measurement)):
                return  # no longer this worker's job
        try:
            result = stored_result([stored[i] for i in sorted(stored)[:rounds]], run.params,
                                   costs_compute=count_flops(arch) > 0)
        except ValueError as exc:
            self._fail_architecture(job, exc)
            return
        if not lacking:
            last = (0, None)
        peak = peak_of([stored[i] for i in sorted(stored)[:rounds]])
        self._retry(f"finishing job {job.id}", lambda: self.store.finish_network(
            job.id, context, last[0], last[1], {**result.stats.as_dict(), "rounds": result.rounds,
                                                "flagged": result.flagged, "peak_rss_bytes": peak}))

    def _fail_architecture(self, job: ClaimedJob, error: Exception | str) -> None:
        message = error if isinstance(error, str) else describe_error(error)
        log.warning("measuring architecture job %s failed: %s", job.id, message)
        self._retry(f"failing job {job.id}", lambda: self.store.finish(job.id, status="failed", error=message))


def describe_error(exc: BaseException) -> str:
    """An item's error as stored: a measuring process's message as it is (it names the item and the limit),
    any other as ``Type: message``."""
    return str(exc) if isinstance(exc, IsolationError) else f"{type(exc).__name__}: {exc}"


def poison_message(what: str, attempts: int) -> str:
    """Why an item whose measurements ended the service's process ``attempts`` times is not measured again."""
    times = "twice" if attempts == 2 else f"{attempts} times"
    return (f"measuring this {what} ended the process {times}: the service stopped while it measured it (killed, "
            "e.g. by the OOM killer, or a crash in the runtime); it is not measured again")


def peak_of(rounds: Iterable[RoundMeasurement]) -> int | None:
    """The highest peak resident memory of ``rounds`` (None when none was measured in a measuring process)."""
    peaks = [r.peak_rss_bytes for r in rounds if r.peak_rss_bytes is not None]
    return max(peaks) if peaks else None


class _Outcome(Enum):
    """What became of an item's round: stored (MEASURED), the item is done or failed (ITEM_CLOSED), or the worker
    must leave the job (STOP: stopping, cancelled, taken over, or the store refuses)."""

    MEASURED = "measured"
    ITEM_CLOSED = "item_closed"
    STOP = "stop"


class BackendGone(LookupError):
    """A claimed job's backend is not served by this device (any more)."""


@dataclass(frozen=True)
class _Run:
    """A claimed job on the backend, in the context and the environment it is measured in now."""

    job: ClaimedJob
    backend: Backend
    context: MeasurementContext
    environment: dict[str, Any]
    params: ProtocolParams
