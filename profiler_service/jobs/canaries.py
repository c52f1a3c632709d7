"""The canary watch of a service: when a canary check is due, the stored references, and the latest drift report
of every backend (read by the API while the worker writes it).

Checks run in the job worker's thread (one measurement at a time on the device): at the worker's start, every
``interval_s`` seconds while it serves (between two items of a long job too) and before a job, unless the job's
backend was checked within the last ``before_job_s`` seconds. The first check of a measurement context stores the
canaries' values as its references (:mod:`latency_db.repository.canaries`); later checks are compared with them
(:func:`profiler_service.engine.canary.compare`).

One disturbed measurement decides nothing (a client starting on the same core made a check read 0.75x or 1.48x on
the 2-core VM): the references are stored only when two measurements in a row agree within the threshold (their
mean; else :class:`CanariesUnsettled`, nothing stored, the next due check tries again), and a check that drifts
is measured once more at once, the report being that second measurement's.

Two agreeing measurements can still be slow together (another job ran the whole time). Disturbances only slow a
machine down, so when :data:`~profiler_service.engine.canary.REESTABLISH_CHECKS` consecutive checks agree with
each other and are all faster than reference / (1 + threshold), the reference was set under load: it is replaced by
their mean (:func:`~profiler_service.engine.canary.agreeing_quiet_value`), logged, and that check's report says so
(``reestablished``). Checks slower than the reference stay drift. :meth:`CanaryWatch.request_rebaseline` asks for
new references on purpose (``POST /v1/canaries/rebaseline``, ``proxyless-profiler rebaseline``): the next check
of the backend measures twice and replaces them when the two agree.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from latency_db.context import MeasurementContext
from latency_db.models import utcnow
from latency_db.repository import canary_references, replace_canary_references, store_canary_references
from latency_db.transactions import write_session
from profiler_service.engine.canary import (
    CANARY_SPECS,
    CHECK_REASONS,
    DEFAULT_DRIFT_REL,
    DriftReport,
    agreeing_quiet_value,
    canary_params,
    compare,
    measure_canaries,
)
from profiler_service.engine.protocol import ProtocolParams
from profiler_service.engine.stats import RoundMeasurement

log = logging.getLogger(__name__)
#: The measurement context of the canaries besides backend, threads, environment and protocol.
CANARY_BATCH, CANARY_DTYPE = 1, "float32"


class CanariesUnsettled(RuntimeError):
    """The two measurements that would set a context's references disagreed: nothing was stored."""


@dataclass(frozen=True)
class DriftStatus:
    """The drift of a set of backends: ``status`` is "drift" when any of them drifts, "unchecked" when one has no
    report yet, else "ok"; ``reports`` are the latest reports (of the backends that have one)."""

    status: str
    threshold_rel: float
    reports: tuple[DriftReport, ...]


class CanaryWatch:
    """The canary checks of one service (thread-safe)."""

    def __init__(self, *, sessions: sessionmaker[Session], device_id: int, protocol_version: str, threads: int,
                 interval_s: float, before_job_s: float, threshold_rel: float = DEFAULT_DRIFT_REL,
                 specs: Sequence[str] = CANARY_SPECS, clock: Callable[[], float] = time.monotonic) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s: expected seconds > 0, got {interval_s!r}")
        if not before_job_s >= 0:
            raise ValueError(f"before_job_s: expected seconds >= 0, got {before_job_s!r}")
        if not threshold_rel > 0:
            raise ValueError(f"threshold_rel: expected a number > 0, got {threshold_rel!r}")
        self.sessions = sessions
        self.device_id = device_id
        self.protocol_version = protocol_version
        self.threads = threads
        self.interval_s = interval_s
        self.before_job_s = before_job_s
        self.threshold_rel = threshold_rel
        self.specs = tuple(specs)
        self._clock = clock
        self._lock = threading.Lock()
        self._reports: dict[str, DriftReport] = {}
        self._last_try: dict[str, float] = {}
        self._quiet: dict[str, list[dict[str, float]]] = {}  # consecutive checks faster than the references
        self._rebaseline: set[str] = set()  # backends whose references are to be measured anew
        self._checks = 0

    def request_rebaseline(self, backends: Iterable[str]) -> None:
        """Measure new references for ``backends`` at their next check (which is due at once), replacing the
        stored ones when its two measurements agree."""
        with self._lock:
            self._rebaseline.update(backends)

    def due(self, backend: str, reason: str) -> bool:
        """Whether a check of ``backend`` for ``reason`` should run now: "start" when it was never tried,
        "interval" when the last try is ``interval_s`` old, "job" when it is ``before_job_s`` old."""
        if reason not in CHECK_REASONS:
            raise ValueError(f"reason: expected one of {', '.join(CHECK_REASONS)}, got {reason!r}")
        with self._lock:
            last = self._last_try.get(backend)
            if backend in self._rebaseline:
                return True
        if last is None:
            return True
        if reason == "start":
            return False
        age = self._clock() - last
        return age >= (self.interval_s if reason == "interval" else self.before_job_s)

    def check(self, backend: str, reason: str, env_hash: str, measure: Callable[[str], RoundMeasurement],
              params: ProtocolParams) -> DriftReport:
        """Measure the canaries on ``backend`` (``measure(spec)``: one round of one canary with
        :func:`~profiler_service.engine.canary.canary_params`) and keep the report. Without references in this
        context, a second measurement follows and the mean of the two is stored if they agree
        (:class:`CanariesUnsettled` if not); a measurement beyond the threshold is repeated once and the repeat is
        reported (module docstring). A failed check counts as tried (no retry before the next due time)."""
        with self._lock:
            self._last_try[backend] = self._clock()
        context = MeasurementContext(backend, CANARY_BATCH, CANARY_DTYPE, self.threads, env_hash,
                                     self.protocol_version)
        current = self._measure(measure, params)
        with self.sessions() as session:
            references = canary_references(session, device_id=self.device_id, context=context, op_specs=self.specs)
        with self._lock:
            rebaseline = backend in self._rebaseline
        if rebaseline:
            current = self._settle(backend, current, self._measure(measure, params))
            with write_session(self.sessions) as session:
                references = replace_canary_references(session, device_id=self.device_id, context=context,
                                                       values=current)
            with self._lock:
                self._rebaseline.discard(backend)
                self._quiet.pop(backend, None)
            log.warning("canary references of %s re-established on request", backend)
            return self._keep(backend, self._compare(backend, reason, current, references,
                                                     "re-established on request (rebaseline)"))
        if len(references) < len(self.specs):
            current = self._settle(backend, current, self._measure(measure, params))
            with write_session(self.sessions) as session:
                references = store_canary_references(session, device_id=self.device_id, context=context,
                                                     values=current)
        report = self._compare(backend, reason, current, references)
        if report.drifting:  # confirmed or taken back by a second measurement
            current = self._measure(measure, params)
            report = self._compare(backend, reason, current, references)
        return self._keep(backend, self._reestablish_if_quiet(backend, reason, context, current, references, report))

    def _reestablish_if_quiet(self, backend: str, reason: str, context: MeasurementContext,
                              current: dict[str, float], references: dict[str, float],
                              report: DriftReport) -> DriftReport:
        """``report``, or, when this check completes a run of agreeing checks all faster than the references
        (module docstring), the report against the references it stores in their place."""
        with self._lock:
            quiet = self._quiet.setdefault(backend, [])
            if report.ratio < 1 / (1 + self.threshold_rel):
                quiet.append(current)
            else:
                quiet.clear()
            replacement = agreeing_quiet_value(quiet, references, self.threshold_rel)
        if replacement is None:
            return report
        with write_session(self.sessions) as session:
            stored = replace_canary_references(session, device_id=self.device_id, context=context,
                                               values=replacement)
        with self._lock:
            self._quiet.pop(backend, None)
        why = (f"re-established: {len(quiet)} consecutive checks agreed at {report.ratio:.3g}x the stored values, "
               "which were set while the device was loaded")
        log.warning("canary references of %s %s; the new ones are their mean", backend, why)
        return self._compare(backend, reason, current, stored, why)

    def _keep(self, backend: str, report: DriftReport) -> DriftReport:
        with self._lock:
            self._reports[backend] = report
        return report

    def _measure(self, measure: Callable[[str], RoundMeasurement], params: ProtocolParams) -> dict[str, float]:
        """One measurement of the canaries (:func:`measure_canaries`), seeded by its own number."""
        with self._lock:
            self._checks += 1
            check_id = self._checks
        return measure_canaries(self.specs, measure, canary_params(params), check_id=check_id)

    def _settle(self, backend: str, first: dict[str, float], second: dict[str, float]) -> dict[str, float]:
        """The references from two measurements: their mean when they agree within the threshold, else
        :class:`CanariesUnsettled`."""
        agreement = compare(second, first, backend=backend, threshold_rel=self.threshold_rel, reason="start",
                            checked_at=utcnow())
        if agreement.drifting:
            raise CanariesUnsettled(f"the two measurements that would set the canary references of {backend} "
                                    f"disagree ({agreement.ratio:.3g}x): nothing stored, the next check tries again")
        return {spec: (first[spec] + second[spec]) / 2 for spec in first}

    def _compare(self, backend: str, reason: str, current: dict[str, float], references: dict[str, float],
                 reestablished: str | None = None) -> DriftReport:
        """``current`` against ``references`` as a report of this watch."""
        return compare(current, references, backend=backend, threshold_rel=self.threshold_rel, reason=reason,
                       checked_at=utcnow(), reestablished=reestablished)

    def status(self, backends: Iterable[str]) -> DriftStatus:
        """The drift of ``backends`` now (see :class:`DriftStatus`)."""
        names = sorted(set(backends))
        with self._lock:
            reports = tuple(self._reports[name] for name in names if name in self._reports)
        if any(report.drifting for report in reports):
            status = "drift"
        elif len(reports) < len(names):
            status = "unchecked"
        else:
            status = "ok"
        return DriftStatus(status, self.threshold_rel, reports)


def drift_view(watch: CanaryWatch | None, backends: Iterable[str]) -> dict[str, Any]:
    """The drift of ``backends`` as the API shows it (``status``, ``threshold_rel``, one report per checked
    backend); status "off" without a watch."""
    if watch is None:
        return {"status": "off", "threshold_rel": None, "backends": []}
    drift = watch.status(backends)
    return {"status": drift.status, "threshold_rel": drift.threshold_rel,
            "backends": [report.as_dict() for report in drift.reports]}
