"""Canary ops: a few fixed small ops whose latency shows when the device itself changed speed.

The environment hash sees a new runtime or driver; it cannot see thermal throttling, a new neighbour on the host
or another frequency governor. Canaries can: they are re-measured from time to time and compared with their
stored reference values (the first check in an environment stores them). Each check measures the canaries in
``ProtocolParams.rounds`` interleaved rounds (uncalibrated: the raw op is timed, which the boundary correction
cannot blur) and takes the protocol's aggregate of each canary's round medians. The device DRIFTS when the median
over the canaries of current / reference leaves [1 / (1 + threshold), 1 + threshold]: a slowdown and a speed-up
alike mean that the stored table no longer describes the device as it is now.

This module holds the pure parts (the specs, one check's measuring loop with an injected measurer, the comparison);
the job worker schedules the checks and keeps the references (:mod:`profiler_service.jobs.canaries`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from datetime import datetime
from typing import Any

import numpy as np

from profiler_service.engine.aggregate import aggregate_function
from profiler_service.engine.protocol import ProtocolParams
from profiler_service.engine.rounds import round_order
from profiler_service.engine.stats import RoundMeasurement

#: The canary ops: a stem-like conv and two small MBConv blocks (a few tenths of a ms each on a CPU core).
CANARY_SPECS: tuple[str, ...] = (
    "conv_r32x32_c3-16_k3_s2_relu6",
    "mbconv_r16x16_c16-16_k3_e3_s1_relu6_skip",
    "mbconv_r16x16_c16-32_k5_e6_s2_relu6",
)
#: Relative change of the canaries beyond which the device reports drift: the fidelity bar of the tables is
#: +-10%, so a device that moved by more no longer matches its table.
DEFAULT_DRIFT_REL = 0.10
#: Consecutive checks, all faster than reference / (1 + threshold) and agreeing with each other within the
#: threshold, that show a reference was set under load (disturbances only slow a machine down): it is replaced.
REESTABLISH_CHECKS = 3
#: Why a check ran.
CHECK_REASONS = ("start", "interval", "job")


def canary_params(params: ProtocolParams) -> ProtocolParams:
    """The protocol of a canary check: the service's, without calibration (the raw op is compared)."""
    return params.model_copy(update={"calibrate": False})


def measure_canaries(specs: Sequence[str], measure: Callable[[str], RoundMeasurement], params: ProtocolParams,
                     *, check_id: int = 0) -> dict[str, float]:
    """One check: ``params.rounds`` interleaved rounds over ``specs`` (each round in its own seeded order,
    ``check_id`` seeding it like a job id), ``measure(spec)`` timing one round of one canary. Returns each canary's
    aggregated raw median (ms)."""
    if not specs:
        raise ValueError("specs: no canary ops to measure")
    medians: dict[str, list[float]] = {spec: [] for spec in specs}
    for round_index in range(params.rounds):
        order = round_order(range(len(specs)), seed=params.seed, job_id=check_id, round_index=round_index,
                            rounds=params.rounds)
        for position in order:
            medians[specs[position]].append(measure(specs[position]).raw.median_ms)
    combine = aggregate_function(params.aggregate, params.aggregate_q)
    return {spec: combine(values) for spec, values in medians.items()}


@dataclass(frozen=True)
class CanaryReading:
    """One canary in one check: its stored reference and its value now (ms)."""

    op_spec: str
    reference_ms: float
    current_ms: float

    @property
    def ratio(self) -> float:
        """current / reference (both > 0: :func:`compare` checks them)."""
        return self.current_ms / self.reference_ms


@dataclass(frozen=True)
class DriftReport:
    """The outcome of one canary check of one backend."""

    backend: str
    checked_at: datetime
    reason: str
    threshold_rel: float
    readings: tuple[CanaryReading, ...]
    reestablished: str | None = None  # why this check replaced the stored references (None: it did not)

    @cached_property  # a report never changes, and every lookup answer shows it
    def ratio(self) -> float:
        """The median over the canaries of current / reference."""
        return float(np.median([reading.ratio for reading in self.readings]))

    @property
    def drifting(self) -> bool:
        """Whether the canaries moved beyond the threshold, either way."""
        return is_drift(self.ratio, self.threshold_rel)

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON values (what /v1/device shows per backend)."""
        return {
            "backend": self.backend, "drifting": self.drifting, "ratio": self.ratio,
            "threshold_rel": self.threshold_rel, "checked_at": self.checked_at.isoformat(), "reason": self.reason,
            "reestablished": self.reestablished,
            "canaries": [{"op": r.op_spec, "reference_ms": r.reference_ms, "current_ms": r.current_ms,
                          "ratio": r.ratio} for r in self.readings],
        }


def agreeing_quiet_value(checks: Sequence[Mapping[str, float]], reference: Mapping[str, float],
                         threshold_rel: float) -> dict[str, float] | None:
    """The value that replaces ``reference`` when the last :data:`REESTABLISH_CHECKS` of ``checks`` (each a check's
    values by canary) were all faster than ``reference / (1 + threshold_rel)`` (median ratio over the canaries) and
    agree with each other (the largest of their ratios at most ``1 + threshold_rel`` times the smallest): each
    canary's mean over them. None otherwise (a slowdown stays drift: a reference set under load is the only way a
    quiet machine reads faster than its references, while a slower machine is what drift reports)."""
    recent = list(checks)[-REESTABLISH_CHECKS:]
    if len(recent) < REESTABLISH_CHECKS:
        return None
    ratios = [float(np.median([values[spec] / reference[spec] for spec in values])) for values in recent]
    if max(ratios) >= 1 / (1 + threshold_rel) or max(ratios) > min(ratios) * (1 + threshold_rel):
        return None
    return {spec: float(np.mean([values[spec] for values in recent])) for spec in recent[-1]}


def is_drift(ratio: float, threshold_rel: float) -> bool:
    """Whether a ratio current / reference lies outside [1 / (1 + threshold), 1 + threshold]."""
    if not threshold_rel > 0:
        raise ValueError(f"threshold_rel: expected a number > 0, got {threshold_rel!r}")
    return not 1 / (1 + threshold_rel) <= ratio <= 1 + threshold_rel


def compare(current: Mapping[str, float], reference: Mapping[str, float], *, backend: str, threshold_rel: float,
            reason: str, checked_at: datetime, reestablished: str | None = None) -> DriftReport:
    """The drift report of a check: every canary of ``current`` against its ``reference`` value (``reestablished``:
    why the check replaced the references, if it did)."""
    if reason not in CHECK_REASONS:
        raise ValueError(f"reason: expected one of {', '.join(CHECK_REASONS)}, got {reason!r}")
    absent = [spec for spec in current if spec not in reference]
    if absent or not current:
        raise ValueError(f"reference: no stored value for {', '.join(absent) or 'any canary'}")
    for spec, value in (*current.items(), *((spec, reference[spec]) for spec in current)):
        if not value > 0:
            raise ValueError(f"canary {spec}: a latency must be > 0 ms to compare, got {value!r}")
    is_drift(1.0, threshold_rel)  # checks the threshold
    readings = tuple(CanaryReading(spec, reference[spec], value) for spec, value in current.items())
    return DriftReport(backend, checked_at, reason, threshold_rel, readings, reestablished)
