"""Anchoring a latency table on whole networks: the affine map from the summed table to measured networks.

Why. The sum of per-op latencies measured one op at a time predicts a whole network only as well as an op alone
behaves like the same op inside the network. On ORT it does (mean error within +-3% at 96-224 px, protocol 4, on a
quiet VM); on eager torch it does not, and not even in one direction: torch-cpu tables of proxyless-mobile were +18%
(96 px) and -9% (224 px) off on a Xeon VM, +10% to +15% (96) and +21% to +24% (224) on an EPYC VM
(benchmarks/results/fidelity_summary.md). The cache flush evicts the framework's own code, which a network keeps
hot from op to op, and leaves the large late weights nearer than a network does; both depend on the machine's
caches, and no single flush size or framework warm-up removed the bias on both machines (issue 13's note). What is
common: against the networks the error is affine in the prediction (one scale and one offset fit a run to within a
few percent), so the table is anchored on a few networks measured end to end. On ORT too, by default since the
ORT sums were seen off by as much on a drifting VM: proxyless-mobile at 160 px on the EPYC VM, one afternoon, the
plain sum -11.8% (plain protocol) and -10.4% / +6.5% / -0.0% (three duet runs), the anchored tables -0.5% / +2.4% /
+0.0%; on tiny-32 anchoring kept it at +0.4% (-1.4% plain sum).

The anchors (:func:`anchor_choices`): ``count`` architectures from the cheapest to the most expensive of the space,
by the table itself: the all-cheapest network (in every cell the candidate of the lowest table latency: the space's
minimum), the all-slowest (its maximum), and between them mixed networks, drawn as :func:`spread_choices` draws
(:data:`ANCHOR_DRAWS` of them, a fixed seed), whose sums lie nearest to evenly spaced values from the minimum to the
maximum (:func:`pick_evenly`). So the anchors span every prediction the table can make (the map is never
extrapolated) and, between the ends, look like the networks a search samples: candidates mixed from cell to cell.
Deterministic: the same table gives the same anchors. Mixed rather than uniform middle anchors (in anchor k, the
candidate of rank k / (count - 1) in every cell; before 2026-12-03): a network of one candidate repeated has its
own op-versus-network deviation, which mixed networks do not share. Refitted offline on 6 networks of each of 22
fidelity reports' stratified samples (the two ends and 4 mixed; benchmarks/results/fidelity_summary.md,
2026-12-03): the uniform sample's mean error went from +3.9% to +1.3% (ORT, 128 px), -4.7% to -0.0% (ORT, 96),
-3.2% to +0.8% (torch, 160), -6.1% to -2.0% (torch, 96), within5 from 0.72 / 0.54 / 0.78 / 0.22 to 0.94 / 0.88 /
1.00 / 0.96; one run got worse (torch 96 px: -2.9% to -4.7%), in the other 17 the error stayed within +-2.0% (before: +-2.5%).

The measurement (:data:`ANCHOR_PASSES`): each anchor is measured in two passes over all anchors (two jobs, each in the
protocol's interleaved rounds), and its latency is the lower of the two results. The map multiplies every entry of
the table, so an anchor's noise reaches every prediction: anchors get twice an op's rounds (6 round medians under
protocol 4, as many as the fidelity benchmark's ground truth). With 3, on a VM whose rounds of one network spread by
47%, the lowest of 3 rounds sat 4.5% above the lowest of 6, and so did every anchored prediction.

The fit (:func:`fit_anchor_map`): ``measured = a + b * predicted`` by Theil-Sen (b: the median of the pairwise
slopes, a: the median of ``measured - b * predicted``), which one disturbed anchor measurement does not move; when
every anchor predicts the same latency there is no slope to fit and the map is the scale ``b = median(measured /
predicted)``, ``a = 0``. A map that would scale the table by more than 4x either way (``b`` outside
[:data:`MIN_SLOPE`, :data:`MAX_SLOPE`]; torch-cpu on tiny-32 fits b = 0.47 on a VM, its ops alone paying overhead
that networks do not) or make an anchor's prediction non-positive says the table and the networks
disagree beyond any bias: :class:`AnchorFitError`, never a silent fit.

Applied (:meth:`AnchorMap.scale_entry`, :meth:`AnchorMap.shift`): every entry is multiplied by ``b`` and ``a`` is
added to the fixed part, so the anchored table is still a sum over ops (E[LAT] stays linear in the path weights,
with gradient ``b * F``), and an architecture's prediction is ``a + b * (its unanchored sum)``.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: Anchors a table is fitted on unless told otherwise (:func:`default_anchors`).
DEFAULT_ANCHORS = 6
#: Mixed architectures drawn to pick the anchors between the two ends from, and the draw's seed.
ANCHOR_DRAWS = 2000
ANCHOR_SEED = "anchors"
#: Passes over the anchors (each anchor measured in this many jobs; its latency the lowest result).
ANCHOR_PASSES = 2
#: The range of slopes accepted (outside it: AnchorFitError).
MIN_SLOPE, MAX_SLOPE = 0.25, 4.0
FIT_METHOD = "theil-sen"


class AnchorFitError(ValueError):
    """The anchor networks and the table disagree beyond what an affine bias explains (the message says how)."""


@dataclass(frozen=True)
class AnchorNetwork:
    """One anchor: its choices (candidate index per cell), the unanchored table sum and the measured latency (ms)."""

    choices: tuple[int, ...]
    predicted_ms: float
    measured_ms: float

    def as_dict(self) -> dict[str, Any]:
        return {"choices": list(self.choices), "predicted_ms": self.predicted_ms, "measured_ms": self.measured_ms}


@dataclass(frozen=True)
class AnchorMap:
    """``measured ~ a_ms + b * predicted``, fitted on ``networks`` (module docstring)."""

    a_ms: float
    b: float
    networks: tuple[AnchorNetwork, ...]
    method: str = FIT_METHOD

    def apply(self, predicted_ms: float) -> float:
        """The anchored prediction of an unanchored table sum."""
        return self.a_ms + self.b * predicted_ms

    def scale_entry(self, latency_ms: float) -> float:
        """An op's anchored entry (its share of the sum)."""
        return self.b * latency_ms

    def shift(self, fixed_ms: float) -> float:
        """The anchored fixed part (the offset ``a`` lives there, with the ops every network has)."""
        return self.a_ms + self.b * fixed_ms

    def as_dict(self) -> dict[str, Any]:
        """The ``anchor`` object of a table file."""
        return {"method": self.method, "a_ms": self.a_ms, "b": self.b,
                "networks": [n.as_dict() for n in self.networks]}

    @classmethod
    def from_dict(cls, data: Any, source: str = "table") -> AnchorMap:
        """An anchor object of a table file; ValueError naming the bad field. The map is fitted again from the
        networks and must agree with the stored one (a hand-edited map is refused)."""
        try:
            networks = tuple(AnchorNetwork(tuple(int(c) for c in n["choices"]), float(n["predicted_ms"]),
                                           float(n["measured_ms"])) for n in data["networks"])
            stored = (float(data["a_ms"]), float(data["b"]), str(data["method"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{source}: field 'anchor': malformed ({exc!r})") from exc
        fitted = fit_anchor_map([n.predicted_ms for n in networks], [n.measured_ms for n in networks],
                                [n.choices for n in networks])
        if (fitted.a_ms, fitted.b, fitted.method) != stored:
            raise ValueError(f"{source}: field 'anchor': a_ms/b do not follow from its networks (file edited?)")
        return fitted


def default_anchors() -> int:
    """How many anchors a table is fitted on unless told otherwise: :data:`DEFAULT_ANCHORS`, on every backend
    (module docstring: ORT's plain sums were off by up to 12% on a drifting VM, as torch's are)."""
    return DEFAULT_ANCHORS


def anchor_choices(cell_costs: Sequence[Sequence[float]], count: int = DEFAULT_ANCHORS) -> list[list[int]]:
    """``count`` (>= 2) anchor architectures as candidate choices per cell, cheapest first (module docstring);
    fewer when the space has fewer distinct networks to draw."""
    if count < 2:
        raise ValueError(f"anchors: need at least 2 networks to fit a map, got {count}")
    if not cell_costs or any(len(costs) == 0 for costs in cell_costs):
        raise ValueError("anchors: every cell needs at least one candidate")
    drawn = list(dict.fromkeys(map(tuple, spread_choices(cell_costs, ANCHOR_DRAWS, random.Random(ANCHOR_SEED)))))
    sums = [sum(costs[c] for costs, c in zip(cell_costs, choices)) for choices in drawn]
    picked = sorted(pick_evenly(sums, count), key=lambda i: (sums[i], i))
    return [list(drawn[i]) for i in picked]


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
                   choices: Sequence[Sequence[int]] | None = None) -> AnchorMap:
    """The map of ``measured ~ a + b * predicted`` (Theil-Sen; module docstring) over anchors given as parallel
    sequences (``choices``: each anchor's candidate choices, recorded with it). Raises AnchorFitError."""
    if len(predicted) != len(measured) or len(predicted) < 2:
        raise AnchorFitError(f"anchors: need at least 2 (predicted, measured) pairs, got {len(predicted)} and "
                             f"{len(measured)}")
    if min(predicted) <= 0 or min(measured) <= 0:
        raise AnchorFitError(f"anchors: latencies must be positive (predicted {list(predicted)}, measured "
                             f"{list(measured)})")
    slopes = [(measured[j] - measured[i]) / (predicted[j] - predicted[i])
              for i in range(len(predicted)) for j in range(i + 1, len(predicted)) if predicted[j] != predicted[i]]
    if slopes:
        b = float(statistics.median(slopes))
        a = float(statistics.median(m - b * p for p, m in zip(predicted, measured)))
    else:
        b, a = float(statistics.median(m / p for p, m in zip(predicted, measured))), 0.0
    networks = tuple(AnchorNetwork(tuple(c), float(p), float(m))
                     for c, p, m in zip(choices or [()] * len(predicted), predicted, measured))
    anchor = AnchorMap(a, b, networks)
    worst = min(anchor.apply(p) for p in predicted)
    if not MIN_SLOPE <= b <= MAX_SLOPE or worst <= 0:
        pairs = ", ".join(f"{p:.3f}->{m:.3f}" for p, m in zip(predicted, measured))
        raise AnchorFitError(f"anchors: the table and the measured networks disagree beyond a bias (fitted "
                             f"measured = {a:.3f} + {b:.3f} x predicted ms; predicted->measured: {pairs}); "
                             "measure the table again on a quiet device")
    return anchor

