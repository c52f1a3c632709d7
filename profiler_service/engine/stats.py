"""What a measurement yields: :class:`Stats` of its timed runs, and :class:`RoundMeasurement`, one round of an op
or a network as the protocol times it (the raw statistics of the timed module, the calibration correction, the
grouping of runs per timing and the timer's resolution)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from latency_db.stats import StatsFields


@dataclass(frozen=True)
class Stats(StatsFields):
    """Robust statistics of one measurement, in milliseconds; ``samples`` is the number of timings they describe.

    The fields are :class:`latency_db.stats.StatsFields` (the one definition of the statistics); this class adds
    how they are computed and adjusted."""

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> Stats:
        """Statistics of the samples (numpy's linear percentiles, std with ddof 1); ValueError if empty."""
        values = np.asarray(samples_ms, dtype=np.float64)
        if values.size == 0:
            raise ValueError("samples: no timed runs to describe")
        p10, p25, p50, p75, p90 = np.percentile(values, [10, 25, 50, 75, 90])
        return cls(median_ms=float(p50), mean_ms=float(values.mean()),
                   std_ms=float(values.std(ddof=1)) if values.size > 1 else 0.0,
                   min_ms=float(values.min()), p10_ms=float(p10), p90_ms=float(p90), iqr_ms=float(p75 - p25),
                   samples=int(values.size))

    def shifted(self, offset_ms: float) -> Stats:
        """Location statistics moved by ``offset_ms`` and floored at 0; spread (std, IQR) unchanged."""
        def move(value: float) -> float:
            return max(0.0, value + offset_ms)

        return Stats(median_ms=move(self.median_ms), mean_ms=move(self.mean_ms), std_ms=self.std_ms,
                     min_ms=move(self.min_ms), p10_ms=move(self.p10_ms), p90_ms=move(self.p90_ms),
                     iqr_ms=self.iqr_ms, samples=self.samples)

    def at_least(self, floor_ms: float) -> Stats:
        """Location statistics raised to at least ``floor_ms``; spread unchanged."""
        return Stats(median_ms=max(self.median_ms, floor_ms), mean_ms=max(self.mean_ms, floor_ms),
                     std_ms=self.std_ms, min_ms=max(self.min_ms, floor_ms), p10_ms=max(self.p10_ms, floor_ms),
                     p90_ms=max(self.p90_ms, floor_ms), iqr_ms=self.iqr_ms, samples=self.samples)

    def as_dict(self) -> dict[str, Any]:
        """The eight statistics by name."""
        return asdict(self)


@dataclass(frozen=True)
class RoundMeasurement:
    """One round of one op or network.

    ``raw``: statistics of what was timed (for a calibrated op: the op inside its boundary sandwich), per run.
    ``correction_ms``: what calibration subtracts for summing (0 for networks and uncalibrated ops).
    ``runs_per_timing``: runs inside one timing (1; more when one run is below the timer's resolution).
    ``timer_resolution_ms``: the resolution of the clock that timed the runs (0: exact, e.g. scripted stats).
    ``peak_rss_bytes``: the measuring process's real peak resident memory while it measured the round (None: not
    measured in a measuring process).
    """

    raw: Stats
    correction_ms: float = 0.0
    runs_per_timing: int = 1
    timer_resolution_ms: float = 0.0
    peak_rss_bytes: int | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.correction_ms):
            raise ValueError(f"correction_ms: expected a finite number, got {self.correction_ms!r}")
        if not (math.isfinite(self.timer_resolution_ms) and self.timer_resolution_ms >= 0):
            raise ValueError(f"timer_resolution_ms: expected a finite number >= 0, got {self.timer_resolution_ms!r}")
        if isinstance(self.runs_per_timing, bool) or not isinstance(self.runs_per_timing, int) \
                or self.runs_per_timing < 1:
            raise ValueError(f"runs_per_timing: expected an integer >= 1, got {self.runs_per_timing!r}")

    def calibrated(self) -> Stats:
        """The statistics for summing: ``raw`` shifted by the correction, location statistics floored at 0."""
        return self.raw.shifted(-self.correction_ms) if self.correction_ms else self.raw

    @classmethod
    def of(cls, result: Stats | RoundMeasurement) -> RoundMeasurement:
        """A measurer's result as a round: a plain Stats is final already (no correction, one run per timing,
        an exact clock)."""
        if isinstance(result, RoundMeasurement):
            return result
        if isinstance(result, Stats):
            return cls(raw=result)
        raise TypeError(f"a measurement must return Stats or a RoundMeasurement, got {type(result).__name__}")
