"""Interleaved rounds (protocol point 9) and what they become when stored (point 10: no silent zeros).

A job's ops are measured in ``ProtocolParams.rounds`` rounds; each round goes over every op of the job that still
lacks that round, in an order of its own: a seeded shuffle of the job's item positions (seeded by the protocol's
seed, the job id and the round index, so a resumed job measures its remaining ops in the same order as the killed
one would have). A single round is measured in the job's order: there is nothing to interleave. A disturbance of
the machine then slows down one round of many ops instead of all the samples of one op, and the robust aggregate
of the rounds (:mod:`profiler_service.engine.aggregate`) leaves it out.

The stored value (:func:`stored_result`) is the aggregate of the rounds' calibrated statistics, unless the op costs
multiply-adds and that aggregate is not above the timer's resolution per run (one tick divided by the runs a timing
covered): a real op is never stored as 0 ms. Then it
is stored flagged, with one of the reasons of :data:`FLAG_KINDS` and an upper bound instead of 0:

- ``calibrated_to_zero``: the boundary correction is as large as the op in its sandwich (the op costs less than
  the calibration can resolve, or the correction does not fit this op's context); the value is the aggregated
  latency of the sandwich itself (the op and its two boundary ops), which the op cannot exceed.
- ``below_resolution``: even timed in groups of ``max_runs_per_timing`` runs the op stays below the timer's
  resolution; the value is one tick per group, which it cannot exceed. (A measurer that claims an exact clock and
  0 ms for such an op is refused: ValueError, the item fails.)

No location statistic of an op that costs multiply-adds is stored at 0 or below either: calibration shifts the
median, mean, min, p10 and p90 by the correction and floors them at 0, so a measured op's fastest samples can read 0
ms while its median does not. :func:`location_floor_ms` is the one positive bound (the flagged rule's: the timer's
resolution per run) that every location statistic of such an op is raised to; the row is flagged only when its
median needed it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from profiler_service.engine.aggregate import aggregate_function, aggregate_stats
from profiler_service.engine.protocol import ProtocolParams
from profiler_service.engine.stats import RoundMeasurement, Stats

FLAG_KINDS = ("calibrated_to_zero", "below_resolution")
#: The floor of an op's location statistics when its rounds claim an exact clock (a resolution of 0 ms): 1 ns.
EXACT_CLOCK_FLOOR_MS = 1e-6


def round_order(positions: Sequence[int], *, seed: int, job_id: int, round_index: int, rounds: int) -> list[int]:
    """The order in which round ``round_index`` (of ``rounds``) measures the items at ``positions``: the job's
    order (ascending) for a single round, else a shuffle seeded by (``seed``, ``job_id``, ``round_index``)."""
    if not 0 <= round_index < rounds:
        raise ValueError(f"round_index: expected 0..{rounds - 1}, got {round_index!r}")
    order = sorted(positions)
    if rounds > 1:
        random.Random(f"rounds:{seed}:{job_id}:{round_index}").shuffle(order)
    return order


def lacking_rounds(stored: Sequence[int], rounds: int) -> list[int]:
    """The round indexes in 0..rounds-1 that are not in ``stored``, ascending."""
    have = set(stored)
    return [index for index in range(rounds) if index not in have]


def settled(rounds: Sequence[RoundMeasurement], params: ProtocolParams) -> bool:
    """Whether the rounds measured so far fix the item's stored value to ``params.settle_rel``, so its remaining
    rounds are not needed. Only the ``median`` aggregate (a duet's) has such a bound: with R rounds planned and k
    measured, whatever the R - k missing rounds measure, the median of all R lies between two of the k sorted round
    medians: the ``ceil(R/2) - (R-k)``-th (all missing rounds lower) and the ``floor(R/2) + 1``-th (all missing
    rounds higher), 1-based; k must reach both. The item is settled
    when that interval's half-width is at most ``settle_rel`` of its middle; it is then stored as the median of the
    k rounds (inside the interval). Other aggregates (``min``: a missing round can always be lower) never settle
    early."""
    planned, k = params.rounds, len(rounds)
    if params.settle_rel is None or params.aggregate != "median" or k >= planned or k < 2:
        return False
    medians = sorted(r.calibrated().median_ms for r in rounds)
    high_rank = planned // 2 + 1
    low_rank = (planned + 1) // 2 - (planned - k)
    if low_rank < 1 or high_rank > k:
        return False
    low, high = medians[low_rank - 1], medians[high_rank - 1]
    middle = (low + high) / 2
    return middle > 0 and (high - low) / 2 <= params.settle_rel * middle


def location_floor_ms(rounds: Sequence[RoundMeasurement]) -> float:
    """The lowest value a location statistic (median, mean, min, p10, p90) of an op that costs multiply-adds is
    stored with: the timer's resolution per run (one tick divided by the runs a timing covered, the coarsest of
    the rounds), which is also the flagged rule's bound; :data:`EXACT_CLOCK_FLOOR_MS` for an exact clock."""
    per_run_ms = max(r.timer_resolution_ms / r.runs_per_timing for r in rounds)
    return per_run_ms if per_run_ms > 0 else EXACT_CLOCK_FLOOR_MS


@dataclass(frozen=True)
class StoredResult:
    """What a measurement stores: its statistics, how many rounds they aggregate, and why it is flagged (None: it
    is not)."""

    stats: Stats
    rounds: int
    flagged: str | None


def stored_result(rounds: Sequence[RoundMeasurement], params: ProtocolParams, *, costs_compute: bool
                  ) -> StoredResult:
    """The stored value of an op (or a network) from its rounds: the aggregate ``params.aggregate`` of their
    calibrated statistics; for an op that ``costs_compute`` (non-zero multiply-adds) whose aggregated median is not
    above the timer's resolution, a flagged upper bound instead (module docstring); every location statistic of
    such an op is at least :func:`location_floor_ms`. Zero and identity ops (``costs_compute`` False) may cost
    0 ms."""
    if not rounds:
        raise ValueError("rounds: nothing measured")
    stats = aggregate_stats([r.calibrated() for r in rounds], params.aggregate, params.aggregate_q)
    # what one run's value can resolve: a tick, shared by the runs of a timing
    per_run_ms = max(r.timer_resolution_ms / r.runs_per_timing for r in rounds)
    if not costs_compute:
        return StoredResult(stats, len(rounds), None)
    floor_ms = location_floor_ms(rounds)
    if stats.median_ms > per_run_ms:
        return StoredResult(stats.at_least(floor_ms), len(rounds), None)
    raw = aggregate_stats([r.raw for r in rounds], params.aggregate, params.aggregate_q)
    if any(r.correction_ms > 0 for r in rounds) and raw.median_ms > per_run_ms:
        correction = aggregate_function(params.aggregate, params.aggregate_q)([r.correction_ms for r in rounds])
        reason = (f"calibrated_to_zero: the op timed {raw.median_ms:.4g} ms inside its boundary ops and the "
                  f"boundary correction is {correction:.4g} ms, as large; stored the sandwich's latency, an upper "
                  f"bound")
        return StoredResult(raw.at_least(floor_ms), len(rounds), reason)
    if per_run_ms <= 0:
        raise ValueError(f"an op that costs multiply-adds measured {stats.median_ms:g} ms on an exact clock: "
                         "refusing to store it")
    coarsest = max(rounds, key=lambda r: r.timer_resolution_ms / r.runs_per_timing)
    reason = (f"below_resolution: {stats.median_ms:.4g} ms, not above the timer's resolution "
              f"({coarsest.timer_resolution_ms:.3g} ms) even in timings of {coarsest.runs_per_timing} runs; stored "
              f"{per_run_ms:.3g} ms, an upper bound")
    return StoredResult(stats.at_least(per_run_ms), len(rounds), reason)
