"""The within-target derive: the most probable architecture whose table latency meets every device's target.

ProxylessNAS derives the argmax of p per cell. At the end of a search two candidates of very different cost can be
nearly tied in a cell (say Zero and a large MBConv), so the argmax may flip between epochs and land far from the
target even though the probabilities say little about which of the two is better. This rule keeps the argmax when
it meets the target and otherwise picks, among the architectures that do, the one of highest probability under the
final p (the sum over cells of log p_ij):

    maximise  sum_i log p_i[c_i]    subject to   low <= ratio_d(c) <= high   for every device d

``ratio_d`` is device d's table latency over its own target (:func:`search_client.nas.target.device_ratios`) and
``[low, high]`` the range that meets the target (:func:`search_client.nas.target.target_bounds`:
``[1 - band, 1 + band]``, or ``[0, 1]`` for the hinge loss, whose target is a budget). Each device is checked on
its own ratio whatever the objective's mode: the objective's combined ratio (weighted or max) is what the search
optimises, but a weighted ratio inside the band can hide a device far outside it.

Latency is additive over cells, so this is a knapsack-like dynamic programme over the devices' ratios, quantized in
steps of :data:`RATIO_STEP` (one device) or coarser for several, so the grid of every device's ratio holds at most
:data:`MAX_GRID_STATES` states. The band is shrunk by the worst rounding error (half a step per cell), so the
architecture found always meets the exact band on every device. With several devices, the most probable
architecture of each device's own (finer) programme is also considered when it happens to meet every band.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from search_client.nas.target import (
    device_ratios,
    meets_every_target,
    meets_target,
    target_bounds,
)
from search_client.table.objective import MultiDeviceLatency

RATIO_STEP = 1e-4
MAX_GRID_STATES = 1 << 20
DERIVE_RULES = ("within-target", "argmax")


@dataclass(frozen=True)
class Derived:
    """The derived choices, and how they were found.

    ``ratio`` and ``argmax_ratio`` are combined over the devices like the objective (what the search optimises);
    ``device_ratios`` / ``argmax_device_ratios`` are each device's own ratio and ``device_met`` whether each one
    meets its target; ``target_met`` is every device meeting it. ``log_prob_given_up`` is the sum over the cells
    where the export differs from the argmax of ``log p(argmax op) - log p(exported op)`` (0 when it does not).
    """

    choices: list[int]
    ratio: float
    argmax_choices: list[int]
    argmax_ratio: float
    rule: str
    target_met: bool
    device_ratios: list[float]
    argmax_device_ratios: list[float]
    device_met: list[bool]
    log_prob_given_up: float = 0.0

    @property
    def from_argmax(self) -> bool:
        """Whether the exported architecture is the argmax (the rule kept it, or found nothing better)."""
        return self.choices == self.argmax_choices

    @property
    def changed_cells(self) -> list[int]:
        """The cells (0-based, as in ``choices``) whose exported op is not the argmax."""
        return [i for i, (a, c) in enumerate(zip(self.argmax_choices, self.choices)) if a != c]


def _most_probable(log_p: Sequence[np.ndarray], costs: Sequence[np.ndarray], fixed: np.ndarray,
                   low: float, high: float, steps: np.ndarray) -> list[int] | None:
    """argmax of sum log_p[i][c_i] subject to low <= fixed[d] + sum costs[i][c_i, d] <= high for every device d
    (costs >= 0; ``costs[i]`` has one row per candidate, one column per device), or None.

    Device d's costs are quantized to ``steps[d]``; the bounds are shrunk by the largest total rounding error."""
    slack = 0.5 * steps * len(costs)
    lo_bin = np.ceil((low + slack) / steps).astype(np.int64)
    hi_bin = np.floor((high - slack) / steps).astype(np.int64)
    start = np.rint(fixed / steps).astype(np.int64)
    if (hi_bin < np.maximum(lo_bin, start)).any():
        return None
    # bin b of device d sits at index b - start[d]: any partial sum above hi_bin never comes back down
    shape = tuple(int(w) for w in hi_bin - start + 1)
    best = np.full(shape, -np.inf)
    best[(0,) * len(shape)] = 0.0
    back = []
    all_shifts = []
    for lp, cost in zip(log_p, costs):
        shifts = np.rint(cost / steps).astype(np.int64)
        nxt = np.full(shape, -np.inf)
        pick = np.zeros(shape, dtype=np.int8 if len(lp) <= 127 else np.int16)
        for j, (shift, value) in enumerate(zip(shifts, lp)):
            if any(s >= w for s, w in zip(shift, shape)):
                continue
            cand = best[tuple(slice(0, w - s) for s, w in zip(shift, shape))] + value
            dst = tuple(slice(s, None) for s in shift)
            region, chosen = nxt[dst], pick[dst]  # views
            better = cand > region  # strict: the lower candidate index wins ties (deterministic)
            region[better] = cand[better]
            chosen[better] = j
        back.append(pick)
        all_shifts.append(shifts)
        best = nxt
    window = best[tuple(slice(max(int(lo - s0), 0), None) for lo, s0 in zip(lo_bin, start))]
    if window.size == 0 or not np.isfinite(window).any():
        return None
    b = np.array(np.unravel_index(int(np.argmax(window)), window.shape), dtype=np.int64)
    b += np.maximum(lo_bin - start, 0)
    choices = []
    for pick, shifts in zip(reversed(back), reversed(all_shifts)):
        j = int(pick[tuple(b)])
        choices.append(j)
        b -= shifts[j]
    return choices[::-1]


def _device_costs(objective: MultiDeviceLatency, d: int) -> tuple[float, list[np.ndarray]]:
    table, target = objective.tables[d], objective.targets_ms[d]
    return table.fixed_ms / target, [np.asarray(row, dtype=np.float64) / target for row in table.entries]


def _grid_steps(fixed: np.ndarray, high: float) -> np.ndarray:
    """Per-device quantization steps: :data:`RATIO_STEP`, or coarser so the grid holds :data:`MAX_GRID_STATES`."""
    bins = math.floor(MAX_GRID_STATES ** (1.0 / len(fixed)))
    return np.maximum(RATIO_STEP, (high - fixed) / max(bins - 1, 1))


def _log_prob(log_p: Sequence[np.ndarray], choices: Sequence[int]) -> float:
    return sum(float(lp[c]) for lp, c in zip(log_p, choices))


def _log_probs(probs: Sequence[torch.Tensor]) -> list[np.ndarray]:
    return [np.log(np.clip(p.detach().double().cpu().numpy(), 1e-300, None)) for p in probs]


def within_target_choices(probs: Sequence[torch.Tensor], objective: MultiDeviceLatency,
                          low: float, high: float) -> list[int] | None:
    """The most probable architecture (under per-cell ``probs``) with ``low <= ratio_d <= high`` on every device d
    (its own table latency over its own target); None if the programme finds none."""
    log_p = _log_probs(probs)
    per_device = [_device_costs(objective, d) for d in range(len(objective.tables))]
    fixed = np.array([f for f, _ in per_device], dtype=np.float64)
    costs = [np.stack([c[i] for _, c in per_device], axis=1) for i in range(len(log_p))]
    found = _most_probable(log_p, costs, fixed, low, high, _grid_steps(fixed, high))
    if len(per_device) == 1:
        return found
    # each device's own programme (finer steps) may find one inside the margins the coarse grid shrank away
    options = [] if found is None else [found]
    for d in range(len(per_device)):
        steps = np.array([RATIO_STEP])
        one = _most_probable(log_p, [c[:, d:d + 1] for c in costs], fixed[d:d + 1], low, high, steps)
        if one is not None and all(low <= r <= high for r in device_ratios(objective, one)):
            options.append(one)
    return max(options, key=lambda c: _log_prob(log_p, c)) if options else None


def derive_choices(probs: Sequence[torch.Tensor], objective: MultiDeviceLatency, *, rule: str, band: float,
                   loss_kind: str) -> Derived:
    """The architecture to export under ``rule`` (one of :data:`DERIVE_RULES`).

    ``argmax``: argmax p per cell. ``within-target``: the argmax when every device's ratio is inside the target
    bounds, else the most probable architecture whose ratios all are; when none is found (only possible with a
    band narrower than the tables' granularity) the argmax is kept and ``target_met`` is False.
    """
    if rule not in DERIVE_RULES:
        raise ValueError(f"derive rule: expected one of {', '.join(DERIVE_RULES)}, got {rule!r}")
    low, high = target_bounds(band, loss_kind)
    argmax = [int(torch.argmax(p).item()) for p in probs]
    a_ratios = device_ratios(objective, argmax)
    choices = argmax
    if rule == "within-target" and not meets_every_target(a_ratios, band, loss_kind):
        choices = within_target_choices(probs, objective, low, high) or argmax
    ratios = device_ratios(objective, choices)
    met = [meets_target(r, band, loss_kind) for r in ratios]
    log_p = _log_probs(probs)
    given_up = sum(float(lp[a] - lp[c]) for lp, a, c in zip(log_p, argmax, choices) if a != c)
    return Derived(choices, objective.ratio_of(choices), argmax, objective.ratio_of(argmax), rule, all(met),
                   ratios, a_ratios, met, given_up)
