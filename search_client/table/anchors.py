"""Anchoring a latency table on whole networks: the map from the summed table to measured networks.

Why. A table sums latencies measured one op at a time; a whole network does not cost exactly that sum (the
framework's code and the weights stay in cache from op to op in a network, not across isolated ops), and the error
depends on the runtime and the machine. Against measured networks it is close to affine in the prediction, so the
table is anchored on a few networks measured end to end. docs/protocol.md "Anchors" explains it for users.

The anchors (:func:`anchor_choices`): ``count`` architectures chosen by the table itself, deterministically: the
all-cheapest and the all-slowest network (so the map is never extrapolated) and, between them, mixed networks like
those a search samples: weight contrasts (:func:`weight_contrasts`) and networks whose sums are evenly spaced
(:func:`pick_evenly`). Each anchor is measured in :data:`ANCHOR_PASSES` passes and keeps its lowest result, since
its noise reaches every anchored prediction.

The fit (:func:`fit_anchor_map`): ``measured = a + b * predicted + c * weight_mb``. ``a`` and ``b`` are robust
(Theil-Sen, or Huber-weighted least squares with the weight term) so one disturbed anchor does not move them; ``c``
(ms per MB of weights) can change a ranking, and is kept only where the anchors show it (:data:`WEIGHT_MIN_T`
standard errors from 0). A slope outside [:data:`MIN_SLOPE`, :data:`MAX_SLOPE`] or a non-positive anchored
prediction means table and networks disagree beyond any bias: :class:`AnchorFitError`, never a silent fit.

Applied (:meth:`AnchorMap.scale_entry`, :meth:`AnchorMap.shift`): an entry ``F`` of an op holding ``w`` MB becomes
``b * F + c * w`` and the fixed part gets ``a`` besides, so the anchored table is still a sum over ops (E[LAT]
stays linear in the path weights).
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: Anchors a table is fitted on unless told otherwise (:func:`default_anchors`): the two ends, 4 weight contrasts.
DEFAULT_ANCHORS = 6
#: Anchors from which on the weight term is fitted, and how many of them are weight contrasts.
WEIGHT_FIT_MIN, WEIGHT_ANCHORS = 6, 4
#: Bytes of one MB of weights (the unit of ``c``).
BYTES_PER_MB = 1e6
#: Anchors' weights whose residual from their weights-versus-sum line spreads less than this share of their mean
#: weight have no contrast to fit ``c`` on.
MIN_WEIGHT_CONTRAST = 0.01
#: The weight term is kept only when ``c`` lies more than this many standard errors from 0 (side by side: module docstring).
WEIGHT_MIN_T = 1.0
#: Huber's tuning constant (in units of the residuals' robust scale) and the reweighting iterations at most.
HUBER_K, HUBER_ITERATIONS = 1.345, 100
#: Mixed architectures drawn to pick the anchors between the two ends from, and the draw's seed.
ANCHOR_DRAWS = 2000
ANCHOR_SEED = "anchors"
#: Passes over the anchors (each anchor measured in this many jobs; its latency the lowest result).
ANCHOR_PASSES = 2
#: The range of slopes accepted (outside it: AnchorFitError).
MIN_SLOPE, MAX_SLOPE = 0.25, 4.0
FIT_METHOD = "theil-sen"
WEIGHT_FIT_METHOD = "huber-weights"


class AnchorFitError(ValueError):
    """The anchor networks and the table disagree beyond what an affine bias explains (the message says how)."""


@dataclass(frozen=True)
class AnchorNetwork:
    """One anchor: its choices (candidate index per cell), the unanchored table sum, the measured latency (ms)
    and its weights (MB; None: not known, as in files written before the weight term)."""

    choices: tuple[int, ...]
    predicted_ms: float
    measured_ms: float
    weight_mb: float | None = None

    def as_dict(self) -> dict[str, Any]:
        data = {"choices": list(self.choices), "predicted_ms": self.predicted_ms, "measured_ms": self.measured_ms}
        return data if self.weight_mb is None else {**data, "weight_mb": self.weight_mb}


@dataclass(frozen=True)
class AnchorMap:
    """``measured ~ a_ms + b * predicted + c_ms_per_mb * weight_mb``, fitted on ``networks`` (module docstring)."""

    a_ms: float
    b: float
    networks: tuple[AnchorNetwork, ...]
    method: str = FIT_METHOD
    c_ms_per_mb: float = 0.0

    def apply(self, predicted_ms: float, weight_mb: float = 0.0) -> float:
        """The anchored prediction of an unanchored table sum of a network holding ``weight_mb`` MB of weights."""
        return self.a_ms + self.b * predicted_ms + self.c_ms_per_mb * weight_mb

    def scale_entry(self, latency_ms: float, weight_mb: float = 0.0) -> float:
        """An op's anchored entry (its share of the sum) from its latency and its weights (MB)."""
        return self.b * latency_ms + self.c_ms_per_mb * weight_mb

    def shift(self, fixed_ms: float, fixed_weight_mb: float = 0.0) -> float:
        """The anchored fixed part (the offset ``a`` lives there, with the ops every network has)."""
        return self.a_ms + self.scale_entry(fixed_ms, fixed_weight_mb)

    def as_dict(self) -> dict[str, Any]:
        """The ``anchor`` object of a table file (``c_ms_per_mb`` only when the weight term was fitted)."""
        data: dict[str, Any] = {"method": self.method, "a_ms": self.a_ms, "b": self.b}
        if self.method == WEIGHT_FIT_METHOD:
            data["c_ms_per_mb"] = self.c_ms_per_mb
        return {**data, "networks": [n.as_dict() for n in self.networks]}

    @classmethod
    def from_dict(cls, data: Any, source: str = "table") -> AnchorMap:
        """An anchor object of a table file; ValueError naming the bad field. The map is fitted again from the
        networks and must agree with the stored one (a hand-edited map is refused)."""
        try:
            rows = list(data["networks"])
            networks = tuple(AnchorNetwork(tuple(int(c) for c in n["choices"]), float(n["predicted_ms"]),
                                           float(n["measured_ms"]),
                                           None if n.get("weight_mb") is None else float(n["weight_mb"]))
                             for n in rows)
            stored = (float(data["a_ms"]), float(data["b"]), float(data.get("c_ms_per_mb", 0.0)),
                      str(data["method"]))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{source}: field 'anchor': malformed ({exc!r})") from exc
        known = [n.weight_mb for n in networks if n.weight_mb is not None]
        if known and len(known) != len(networks):
            raise ValueError(f"{source}: field 'anchor': weight_mb given for {len(known)} of {len(networks)} networks")
        fitted = fit_anchor_map([n.predicted_ms for n in networks], [n.measured_ms for n in networks],
                                [n.choices for n in networks], known or None)
        if (fitted.a_ms, fitted.b, fitted.c_ms_per_mb, fitted.method) != stored:
            raise ValueError(f"{source}: field 'anchor': a_ms/b/c_ms_per_mb do not follow from its networks (file "
                             "edited?)")
        return fitted


def default_anchors() -> int:
    """How many anchors a table is fitted on unless told otherwise: :data:`DEFAULT_ANCHORS`, on every backend
    (the summed table of any runtime can be off from its networks; module docstring)."""
    return DEFAULT_ANCHORS


def anchor_choices(cell_costs: Sequence[Sequence[float]], count: int = DEFAULT_ANCHORS,
                   cell_weights: Sequence[Sequence[float]] | None = None) -> list[list[int]]:
    """``count`` (>= 2) anchor architectures as candidate choices per cell, cheapest first (module docstring);
    fewer when the space has fewer distinct networks to draw. With ``cell_weights`` (each candidate's weights in
    MB, shaped as ``cell_costs``) and ``count >= WEIGHT_FIT_MIN``, :data:`WEIGHT_ANCHORS` of them are weight
    contrasts (:func:`weight_contrasts`), the others spread along the sum."""
    if count < 2:
        raise ValueError(f"anchors: need at least 2 networks to fit a map, got {count}")
    if not cell_costs or any(len(costs) == 0 for costs in cell_costs):
        raise ValueError("anchors: every cell needs at least one candidate")
    drawn = list(dict.fromkeys(map(tuple, spread_choices(cell_costs, ANCHOR_DRAWS, random.Random(ANCHOR_SEED)))))
    sums = [network_sum(cell_costs, choices) for choices in drawn]
    contrasts = WEIGHT_ANCHORS if cell_weights is not None and count >= WEIGHT_FIT_MIN else 0
    picked = pick_evenly(sums, count - contrasts)
    if contrasts:
        weights = [network_sum(cell_weights, choices) for choices in drawn]
        picked += weight_contrasts(sums, weights, contrasts, exclude=picked)
    return [list(drawn[i]) for i in sorted(picked, key=lambda i: (sums[i], i))]


def network_sum(cell_values: Sequence[Sequence[float]], choices: Sequence[int]) -> float:
    """The sum over cells of the chosen candidates' values (latencies or weights)."""
    return sum(values[c] for values, c in zip(cell_values, choices))


def weight_contrasts(sums: Sequence[float], weights: Sequence[float], count: int,
                     exclude: Sequence[int] = ()) -> list[int]:
    """Indexes of ``count`` networks (not in ``exclude``) whose sums lie in the middle half of the range of
    ``sums`` and whose ``weights`` lie farthest from the least-squares line of weights on sums: alternately the
    farthest below and the farthest above it (ties to the lower index); fewer when fewer qualify."""
    low, high = min(sums), max(sums)
    line = _line(sums, weights)
    taken = set(exclude)
    middle = [i for i in range(len(sums))
              if low + 0.25 * (high - low) <= sums[i] <= low + 0.75 * (high - low) and i not in taken]
    ranked = sorted(middle, key=lambda i: (weights[i] - line(sums[i]), i))
    picked: list[int] = []
    while len(picked) < count and ranked:
        picked.append(ranked.pop(0) if len(picked) % 2 == 0 else ranked.pop())
    return picked


def _line(x: Sequence[float], y: Sequence[float]) -> Any:
    """The least-squares line of ``y`` on ``x`` as a function (constant when ``x`` does not vary)."""
    mx, my = statistics.fmean(x), statistics.fmean(y)
    sxx = sum((v - mx) ** 2 for v in x)
    slope = 0.0 if sxx == 0 else sum((u - mx) * (v - my) for u, v in zip(x, y)) / sxx
    return lambda v: my + slope * (v - mx)


def spread_choices(cell_costs: Sequence[Sequence[float]], count: int, rng: random.Random) -> list[list[int]]:
    """Architectures (candidate choices) spread from cheap to expensive: the all-cheapest, the all-most-expensive,
    and ``count`` more, each with its own bias: a position u in [0, 1] and a spread s; at every cell the candidate
    at rank ~ N(u, s) (clipped) of the cell's candidates ordered by cost."""
    ranked = [sorted(range(len(costs)), key=lambda j, c=costs: (c[j], j)) for costs in cell_costs]
    choices = [[order[0] for order in ranked], [order[-1] for order in ranked]]
    for _ in range(count):
        u, spread = rng.random(), rng.uniform(0.05, 0.5)
        choices.append([order[round(min(1.0, max(0.0, rng.gauss(u, spread))) * (len(order) - 1))]
                        for order in ranked])
    return choices


def pick_evenly(values: Sequence[float], count: int) -> list[int]:
    """Indexes of ``values`` nearest to ``count`` evenly spaced values from its min to its max, each index at most
    once (greedy, in increasing order of the targets; ties to the lower index)."""
    low, high = min(values), max(values)
    targets = [low + (high - low) * k / (count - 1) for k in range(count)] if count > 1 else [low]
    free = sorted(range(len(values)), key=lambda i: (values[i], i))
    picked = []
    for target in targets[:len(free)]:
        best = min(range(len(free)), key=lambda k: (abs(values[free[k]] - target), free[k]))
        picked.append(free.pop(best))
    return picked


def fit_anchor_map(predicted: Sequence[float], measured: Sequence[float],
                   choices: Sequence[Sequence[int]] | None = None,
                   weights_mb: Sequence[float] | None = None) -> AnchorMap:
    """The map of ``measured ~ a + b * predicted (+ c * weights_mb)`` over anchors given as parallel sequences
    (``choices``: each anchor's candidate choices, recorded with it; ``weights_mb``: each anchor's weights). The
    weight term is kept when :func:`_weight_fit` finds it (Huber), else ``c = 0`` (Theil-Sen); module docstring.
    Raises AnchorFitError."""
    if len(predicted) != len(measured) or len(predicted) < 2:
        raise AnchorFitError(f"anchors: need at least 2 (predicted, measured) pairs, got {len(predicted)} and "
                             f"{len(measured)}")
    if weights_mb is not None and len(weights_mb) != len(predicted):
        raise AnchorFitError(f"anchors: {len(weights_mb)} weights for {len(predicted)} anchors")
    if min(predicted) <= 0 or min(measured) <= 0:
        raise AnchorFitError(f"anchors: latencies must be positive (predicted {list(predicted)}, measured "
                             f"{list(measured)})")
    weight_fit = _weight_fit(predicted, measured, weights_mb) if weights_mb is not None else None
    if weight_fit is not None:
        (a, b, c), method = weight_fit, WEIGHT_FIT_METHOD
    else:
        (a, b), c, method = _theil_sen(predicted, measured), 0.0, FIT_METHOD
    networks = tuple(AnchorNetwork(tuple(ch), float(p), float(m), None if w is None else float(w))
                     for ch, p, m, w in zip(choices or [()] * len(predicted), predicted, measured,
                                            weights_mb or [None] * len(predicted)))
    anchor = AnchorMap(a, b, networks, method, c)
    worst = min(anchor.apply(n.predicted_ms, n.weight_mb or 0.0) for n in networks)
    if not MIN_SLOPE <= b <= MAX_SLOPE or worst <= 0:
        pairs = ", ".join(f"{p:.3f}->{m:.3f}" for p, m in zip(predicted, measured))
        raise AnchorFitError(f"anchors: the table and the measured networks disagree beyond a bias (fitted "
                             f"measured = {a:.3f} + {b:.3f} x predicted ms + {c:.4f} x weight MB; predicted->"
                             f"measured: {pairs}); measure the table again on a quiet device")
    return anchor


def has_weight_contrast(predicted: Sequence[float], weights_mb: Sequence[float]) -> bool:
    """Whether anchors can fit the weight term: at least :data:`WEIGHT_FIT_MIN` of them, whose weights' residuals
    from their weights-versus-sum line spread by at least :data:`MIN_WEIGHT_CONTRAST` of their mean weight."""
    if len(predicted) < WEIGHT_FIT_MIN or statistics.fmean(weights_mb) <= 0:
        return False
    line = _line(predicted, weights_mb)
    residuals = [w - line(p) for p, w in zip(predicted, weights_mb)]
    return statistics.pstdev(residuals) >= MIN_WEIGHT_CONTRAST * statistics.fmean(weights_mb)


def _theil_sen(predicted: Sequence[float], measured: Sequence[float]) -> tuple[float, float]:
    """``(a, b)`` of Theil-Sen; the scale ``median(measured / predicted)`` with ``a = 0`` without any slope."""
    slopes = [(measured[j] - measured[i]) / (predicted[j] - predicted[i])
              for i in range(len(predicted)) for j in range(i + 1, len(predicted)) if predicted[j] != predicted[i]]
    if not slopes:
        return 0.0, float(statistics.median(m / p for p, m in zip(predicted, measured)))
    b = float(statistics.median(slopes))
    return float(statistics.median(m - b * p for p, m in zip(predicted, measured))), b


def _weight_fit(predicted: Sequence[float], measured: Sequence[float],
                weights_mb: Sequence[float]) -> tuple[float, float, float] | None:
    """``(a, b, c)`` of the Huber fit with the weight term when the anchors determine it: they contrast weights
    (:func:`has_weight_contrast`), ``c`` lies more than :data:`WEIGHT_MIN_T` standard errors from 0, and the map keeps
    ``b`` within [MIN_SLOPE, MAX_SLOPE] and every anchor's prediction positive; else None (the fit is Theil-Sen's)."""
    if not has_weight_contrast(predicted, weights_mb):
        return None
    rows = [(1.0, p, w) for p, w in zip(predicted, weights_mb)]
    try:
        (a, b, c), standard_errors = _huber_fit(rows, list(measured))
    except AnchorFitError:
        return None
    positive = all(a + b * p + c * w > 0 for p, w in zip(predicted, weights_mb))
    if abs(c) <= WEIGHT_MIN_T * standard_errors[2] or not MIN_SLOPE <= b <= MAX_SLOPE or not positive:
        return None
    return a, b, c


def _huber_fit(rows: Sequence[tuple[float, ...]], y: Sequence[float]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Huber regression of ``y`` on ``rows`` by iteratively reweighted least squares (pure Python, so a table
    file refits to the same bits on every machine): weight 1 within ``HUBER_K`` robust scales (1.4826 x the
    residuals' MAD), ``HUBER_K * scale / |r|`` beyond. Returns the coefficients and their standard errors (of the
    final weighted fit); AnchorFitError when the rows do not determine them."""
    weights = [1.0] * len(y)
    coef = _weighted_least_squares(rows, y, weights)
    for _ in range(HUBER_ITERATIONS):
        residuals = [v - sum(c * x for c, x in zip(coef, row)) for row, v in zip(rows, y)]
        centre = statistics.median(residuals)
        scale = 1.4826 * statistics.median(abs(r - centre) for r in residuals)
        if scale <= 0:
            break
        weights = [1.0 if abs(r) <= HUBER_K * scale else HUBER_K * scale / abs(r) for r in residuals]
        new = _weighted_least_squares(rows, y, weights)
        if new == coef:
            break
        coef = new
    n = len(coef)
    residuals = [v - sum(c * x for c, x in zip(coef, row)) for row, v in zip(rows, y)]
    variance = sum(w * r * r for w, r in zip(weights, residuals)) / max(1, len(y) - n)
    normal = _normal_matrix(rows, weights)
    errors = tuple(math.sqrt(max(0.0, variance * _solve(normal, [float(i == k) for i in range(n)])[k]))
                   for k in range(n))
    return tuple(float(c) for c in coef), errors


def _normal_matrix(rows: Sequence[tuple[float, ...]], weights: Sequence[float]) -> list[list[float]]:
    """``X^T W X`` of the rows."""
    n = len(rows[0])
    return [[sum(w * row[r] * row[c] for w, row in zip(weights, rows)) for c in range(n)] for r in range(n)]


def _weighted_least_squares(rows: Sequence[tuple[float, ...]], y: Sequence[float],
                            weights: Sequence[float]) -> tuple[float, ...]:
    """The weighted least-squares coefficients (the normal equations); AnchorFitError when they are singular."""
    n = len(rows[0])
    rhs = [sum(w * row[r] * v for w, row, v in zip(weights, rows, y)) for r in range(n)]
    return _solve(_normal_matrix(rows, weights), rhs)


def _solve(matrix: Sequence[Sequence[float]], rhs: Sequence[float]) -> tuple[float, ...]:
    """``matrix^-1 rhs`` by Gaussian elimination with partial pivoting; AnchorFitError when singular."""
    n = len(rhs)
    m = [list(row) + [v] for row, v in zip(matrix, rhs)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(m[r][col]))
        if abs(m[pivot][col]) <= 1e-12 * max(1.0, max(abs(v) for v in m[pivot][:n])):
            raise AnchorFitError("anchors: the anchors do not determine the map (singular fit)")
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(col + 1, n):
            f = m[r][col] / m[col][col]
            m[r] = [a - f * b for a, b in zip(m[r], m[col])]
    coef = [0.0] * n
    for r in reversed(range(n)):
        coef[r] = (m[r][n] - sum(m[r][c] * coef[c] for c in range(r + 1, n))) / m[r][r]
    return tuple(coef)
