"""Robust aggregates of round values: how R interleaved rounds of one op (or network) become one stored number.

A round is one measurement of the op in its own stretch of time (see :mod:`profiler_service.engine.rounds`). A
disturbance on the machine (a neighbour, a frequency drop) slows down every op measured while it lasts, i.e. one
round of many ops rather than every sample of one op; an aggregate that ignores the odd round therefore removes it
from the result. The candidates, each a small pure function of the rounds' values:

- ``median``: the median of the round medians. Ignores up to ``(R - 1) // 2`` disturbed rounds in either direction
  and does not depend on R when the rounds are undisturbed (an unbiased location for symmetric noise).
- ``min``: the lowest round median. Disturbances only ever slow a run down, so the least disturbed round is the
  fastest; with noise the minimum of R values falls a little as R grows (ops are measured in 3 rounds, networks
  in more), a bias much smaller than what one disturbed round adds to a median. The default (protocol 4).
- ``low_quantile``: the q-quantile of the round medians (numpy's linear interpolation, q in (0, 1), default 0.25):
  between the two, e.g. with 3 rounds and q = 0.25 halfway between the lowest and the middle round.

Why ``min`` is the default of plain timings: with few rounds, one slow round in three moves the ``median``, and the
more load on the machine, the more often that happens, while ``min`` ignores it; ``low_quantile`` lies between the
two. The three were compared side by side in the fidelity benchmark; see docs/protocol.md.

Under a duet (the service's default, :func:`profiler_service.engine.duet.duet_params`) the rounds are
aggregated by their ``median``: a block scaled by its reference is off in either direction, so the reasoning for
``min`` (disturbances only slow a run down) no longer holds; ``min`` stays the aggregate of plain timings
(``serve --no-duet``).

Which one predicts whole networks best on a given machine is an empirical question (the fidelity benchmark
compares them side by side); the protocol's ``aggregate`` parameter names the one in use, and every round's
statistics are stored, so a table can be aggregated again another way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Literal

import numpy as np

from profiler_service.engine.stats import Stats

AggregateName = Literal["median", "min", "low_quantile"]
AGGREGATES: tuple[str, ...] = ("median", "min", "low_quantile")
DEFAULT_AGGREGATE: AggregateName = "min"
DEFAULT_QUANTILE = 0.25


def _checked(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError("rounds: expected at least one round value")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"rounds: expected finite values, got {list(values)!r}")
    return array


def median_of_medians(values: Sequence[float]) -> float:
    """The median of the round values (the mean of the middle two for an even count)."""
    return float(np.median(_checked(values)))


def min_of_medians(values: Sequence[float]) -> float:
    """The lowest round value."""
    return float(np.min(_checked(values)))


def low_quantile(values: Sequence[float], q: float = DEFAULT_QUANTILE) -> float:
    """The ``q``-quantile of the round values (linear interpolation between order statistics), 0 < q < 1."""
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 < q < 1:
        raise ValueError(f"q: expected a quantile in (0, 1), got {q!r}")
    return float(np.quantile(_checked(values), q))


def aggregate_function(name: str, q: float = DEFAULT_QUANTILE) -> Callable[[Sequence[float]], float]:
    """The aggregate called ``name`` (one of :data:`AGGREGATES`) as a function of the round values."""
    if name == "median":
        return median_of_medians
    if name == "min":
        return min_of_medians
    if name == "low_quantile":
        low_quantile([0.0], q)  # the quantile is checked now, not at the first call
        return lambda values: low_quantile(values, q)
    raise ValueError(f"aggregate: expected one of {', '.join(AGGREGATES)}, got {name!r}")


def aggregate_stats(rounds: Sequence[Stats], name: str, q: float = DEFAULT_QUANTILE) -> Stats:
    """One Stats from the Stats of R rounds: every statistic (median, mean, std, min, p10, p90, IQR) is the
    aggregate ``name`` of that statistic over the rounds; ``samples`` is the rounds' total.

    The aggregates are monotone, so the order of the statistics holds (min <= p10 <= median <= p90) whenever it
    holds in every round.
    """
    if not rounds:
        raise ValueError("rounds: expected at least one round")
    combine = aggregate_function(name, q)
    values = {f.name: combine([getattr(r, f.name) for r in rounds]) for f in fields(Stats) if f.name != "samples"}
    return Stats(**values, samples=sum(r.samples for r in rounds))

