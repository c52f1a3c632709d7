"""The within-target derive: the most probable architecture whose table latency meets the target.

ProxylessNAS derives the argmax of p per cell. At the end of a search two candidates of very different cost can be
nearly tied in a cell (say Zero and a large MBConv), so the argmax may flip between epochs and land far from the
target even though the probabilities say little about which of the two is better. This rule keeps the argmax when
it meets the target and otherwise picks, among the architectures that do, the one of highest probability under the
final p (the sum over cells of log p_ij):

    maximise  sum_i log p_i[c_i]    subject to   low <= ratio(c) <= high

``ratio`` is the objective's combined latency ratio (:meth:`search_client.table.objective.MultiDeviceLatency.ratio_of`)
and ``[low, high]`` the range that meets the target (:func:`search_client.nas.target.target_bounds`:
``[1 - band, 1 + band]``, or ``[0, 1]`` for the hinge loss, whose target is a budget).

Latency is additive over cells, so for a weighted objective this is a knapsack-like dynamic programme over the
ratio, quantized in steps of :data:`RATIO_STEP`. The band is shrunk by the worst rounding error (half a step per
cell), so the architecture found always meets the exact band. For ``mode="max"`` the programme runs once per
device on that device's ratio and keeps the most probable answer that meets the band on the combined ratio.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from search_client.nas.target import meets_target, target_bounds
from search_client.table.objective import MultiDeviceLatency

RATIO_STEP = 1e-4
DERIVE_RULES = ("within-target", "argmax")


@dataclass(frozen=True)
class Derived:
    """The derived choices, and how they were found."""

    choices: list[int]
    ratio: float
    argmax_choices: list[int]
    argmax_ratio: float
    rule: str
    target_met: bool

    @property
    def from_argmax(self) -> bool:
        return self.choices == self.argmax_choices


def _most_probable(log_p: Sequence[np.ndarray], costs: Sequence[np.ndarray], fixed: float,
                   low: float, high: float) -> list[int] | None:
    """argmax of sum log_p[i][c_i] subject to low <= fixed + sum costs[i][c_i] <= high (costs >= 0), or None.

    Costs are quantized to :data:`RATIO_STEP`; the bounds are shrunk by the largest total rounding error."""
    slack = 0.5 * RATIO_STEP * len(costs)
    lo_bin = int(np.ceil((low + slack) / RATIO_STEP))
    hi_bin = int(np.floor((high - slack) / RATIO_STEP))
    start = int(round(fixed / RATIO_STEP))
    if hi_bin < max(lo_bin, start):
        return None
    width = hi_bin + 1  # any partial sum above hi_bin can never come back down: costs are >= 0
    best = np.full(width, -np.inf)
    best[start] = 0.0
    back = []
    for lp, cost in zip(log_p, costs):
        shifts = np.rint(cost / RATIO_STEP).astype(np.int64)
        nxt = np.full(width, -np.inf)
        pick = np.zeros(width, dtype=np.int16)
        for j, (shift, value) in enumerate(zip(shifts, lp)):
            if shift >= width:
                continue
            cand = np.full(width, -np.inf)
            cand[shift:] = best[:width - shift] + value
            better = cand > nxt  # strict: the lower candidate index wins ties (deterministic)
            nxt[better] = cand[better]
            pick[better] = j
        back.append(pick)
        best = nxt
    window = best[lo_bin:]
    if window.size == 0 or not np.isfinite(window).any():
        return None
    b = lo_bin + int(np.argmax(window))
    choices = []
    for pick, cost in zip(reversed(back), reversed(costs)):
        j = int(pick[b])
        choices.append(j)
        b -= int(np.rint(cost[j] / RATIO_STEP))
    return choices[::-1]


def _device_costs(objective: MultiDeviceLatency, d: int) -> tuple[float, list[np.ndarray]]:
    table, target = objective.tables[d], objective.targets_ms[d]
    return table.fixed_ms / target, [np.asarray(row, dtype=np.float64) / target for row in table.entries]


def within_target_choices(probs: Sequence[torch.Tensor], objective: MultiDeviceLatency,
                          low: float, high: float) -> list[int] | None:
    """The most probable architecture (under per-cell ``probs``) with ``low <= ratio <= high``; None if none is."""
    log_p = [np.log(np.clip(p.detach().double().cpu().numpy(), 1e-300, None)) for p in probs]
    if objective.mode == "weighted":
        # the combined ratio is additive over cells: combine each cell's per-device cost rows, and the fixed parts
        per_device = [_device_costs(objective, d) for d in range(len(objective.tables))]
        fixed = objective.combine([f for f, _ in per_device])
        costs = [objective.combine([c[i] for _, c in per_device]) for i in range(len(log_p))]
        return _most_probable(log_p, costs, fixed, low, high)
    found: list[tuple[float, list[int]]] = []
    for d in range(len(objective.tables)):
        fixed, costs = _device_costs(objective, d)
        choices = _most_probable(log_p, costs, fixed, low, high)
        if choices is not None and low <= objective.ratio_of(choices) <= high:
            found.append((sum(float(lp[c]) for lp, c in zip(log_p, choices)), choices))
    return max(found, key=lambda item: item[0])[1] if found else None


def derive_choices(probs: Sequence[torch.Tensor], objective: MultiDeviceLatency, *, rule: str, band: float,
                   loss_kind: str) -> Derived:
    """The architecture to export under ``rule`` (one of :data:`DERIVE_RULES`).

    ``argmax``: argmax p per cell. ``within-target``: the argmax when its ratio is inside the target bounds, else
    the most probable architecture inside them; when none exists (only possible with a band narrower than the
    table's granularity) the argmax is kept and ``target_met`` is False.
    """
    if rule not in DERIVE_RULES:
        raise ValueError(f"derive rule: expected one of {', '.join(DERIVE_RULES)}, got {rule!r}")
    low, high = target_bounds(band, loss_kind)
    argmax = [int(torch.argmax(p).item()) for p in probs]
    a_ratio = objective.ratio_of(argmax)
    choices = argmax
    if rule == "within-target" and not meets_target(a_ratio, band, loss_kind):
        choices = within_target_choices(probs, objective, low, high) or argmax
    ratio = objective.ratio_of(choices)
    return Derived(choices, ratio, argmax, a_ratio, rule, meets_target(ratio, band, loss_kind))
