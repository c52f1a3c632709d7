"""The architecture loss: cross-entropy plus a latency term, and its adaptive weight.

Loss forms (``E_d`` = E[LAT] on device d in ms, ``T_d`` its target, ``r`` = the combined ratio of the ``E_d / T_d``,
weighted over the devices or their max, by :meth:`search_client.table.objective.MultiDeviceLatency.combine`)::

    mul#ratio    scale * CE * r ** strength                     the default: unit-free, any target (strength 0.3)
    mul#log      scale * CE * f ** strength,                     the release's form (scale 0.2, beta 0.3, u 1 ms)
                 f = combined (log(E_d / u) / log(T_d / u))
    add#linear   CE + strength * (r - 1)                         single device: CE + lambda * (E - T) / T (0.1)
    hinge        CE + strength * relu(r - 1)                     a latency budget: no push under the target
    sq#log       CE + strength * log(r / aim) ** 2               two-sided: pulls towards the target from either
                                                                 side, with no pull at it (strength 1, aim 1)

``mul#ratio`` is the multiplicative form without a unit: ``log(loss) = log(scale * CE) + strength * log(r)``, the
soft constraint of MnasNet. It is defined for every latency and target. ``mul#log`` (the paper's code) divides by
``log(T / u)`` with latencies in units ``u = log_unit_ms``: it is undefined when a latency or the target is at or
below ``u`` (with u = 1 ms: every sub-millisecond target) and refused then (:meth:`LatencyLoss.check_units`).
Near the target the two agree when ``strength_ratio = beta / log(T / u)`` (``f = 1 + log(r) / log(T / u)``), so at
the paper's mobile target (80 ms) beta 0.3 acts like a ``mul#ratio`` strength of 0.07. In both multiplicative
forms the target is a constant factor of the loss (``T ** -strength``, ``log(T / u) ** -beta``), which Adam's
step does not see: the target steers those searches only through :class:`AdaptiveStrength` and the derive rule.
``sq#log`` is the target-aware form: its gradient ``2 strength log(r / aim) d log(r)`` points towards the target from
either side and vanishes at it, so near the target the cross-entropy alone chooses between candidates and far from
it the latency term dominates (it is unit-free like ``mul#ratio``). ``aim`` is the expected latency's ratio it
pulls to: 1 (the target itself) unless the adaptive rule moves it (:class:`AdaptiveStrength`). While the
probabilities are spread, the argmax architecture (each cell's most probable candidate) is not the expected one:
with many cells whose cheapest candidate is slightly ahead, the argmax is far cheaper than an expectation at the
target. Moving the aim by the argmax's own miss steers the architecture the search returns, not an average.

``strength`` is the latency weight: the exponent of the ``mul#`` forms, lambda otherwise; 0 turns the latency term
off. :class:`AdaptiveStrength` moves it during the search until the argmax architecture meets its target (for
every form but ``hinge`` it may turn negative, pulling the latency up to the target).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from search_client.nas.target import target_bounds
from search_client.table.objective import MultiDeviceLatency

LOSS_KINDS = ("mul#ratio", "mul#log", "add#linear", "hinge", "sq#log")
DEFAULT_STRENGTH = {"mul#ratio": 0.3, "mul#log": 0.3, "add#linear": 0.1, "hinge": 0.1, "sq#log": 1.0}
MULTIPLICATIVE = ("mul#ratio", "mul#log")
#: Forms whose latency term pulls towards the target from both sides (its weight never turns negative).
TWO_SIDED = ("sq#log",)


def _number(name: str, value: Any, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}: must be a finite number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{name}: must be {'> 0' if positive else '>= 0'}, got {value!r}")
    return float(value)


@dataclass
class LatencyLoss:
    """CE + latency term of one of :data:`LOSS_KINDS` (formulas in the module docstring)."""

    kind: str = "mul#ratio"
    strength: float | None = None
    scale: float = 0.2
    log_unit_ms: float = 1.0
    aim: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in LOSS_KINDS:
            raise ValueError(f"loss: expected one of {', '.join(LOSS_KINDS)}, got {self.kind!r}")
        if self.strength is None:
            self.strength = DEFAULT_STRENGTH[self.kind]
        self.strength = _number("loss strength", self.strength)
        self.scale = _number("loss scale", self.scale, positive=True)
        self.log_unit_ms = _number("loss log_unit_ms", self.log_unit_ms, positive=True)
        self.aim = _number("loss aim", self.aim, positive=True)

    def latency_factor(self, objective: MultiDeviceLatency, probs: Sequence[torch.Tensor]) -> torch.Tensor:
        """The latency part alone: the factor ``r ** strength`` / ``f ** strength`` of the multiplicative forms, the
        added term of ``add#linear``, ``hinge`` and ``sq#log``."""
        if self.kind == "mul#log":
            logs = [torch.log(lat / self.log_unit_ms) / math.log(target / self.log_unit_ms)
                    for lat, target in zip(objective.per_device(probs), objective.targets_ms)]
            return objective.combine(logs) ** self.strength
        r = objective.expected(probs)
        if self.kind == "mul#ratio":
            return r ** self.strength
        if self.kind == "add#linear":
            return self.strength * (r - 1.0)
        if self.kind == "sq#log":
            return self.strength * torch.log(r / self.aim) ** 2
        return self.strength * torch.relu(r - 1.0)

    def __call__(self, ce: torch.Tensor, objective: MultiDeviceLatency,
                 probs: Sequence[torch.Tensor]) -> torch.Tensor:
        """The architecture loss for cross-entropy ``ce`` and per-cell path weights ``probs``."""
        term = self.latency_factor(objective, probs).to(ce.dtype)
        if self.kind in MULTIPLICATIVE:
            return self.scale * ce * term
        return ce + term

    def check_units(self, objective: MultiDeviceLatency) -> None:
        """mul#log takes log(latency / unit): it must be positive for every architecture and every target."""
        if self.kind != "mul#log":
            return
        for d, (table, target) in enumerate(zip(objective.tables, objective.targets_ms)):
            low = table.min_latency()[0]
            if min(low, target) <= self.log_unit_ms:
                raise ValueError(
                    f"loss mul#log on device {d} ({table.device.get('name', '?')}): log(latency / "
                    f"{self.log_unit_ms:g} ms) must be > 0, but the space's minimum latency is {low:.4g} ms and the "
                    f"target {target:.4g} ms; use a smaller log unit (e.g. {_suggest_unit(min(low, target)):g} ms) "
                    "or the unit-free mul#ratio (the default), add#linear or hinge loss"
                )


def _suggest_unit(smallest_ms: float) -> float:
    """A power of ten well below ``smallest_ms`` (so every log is clearly positive)."""
    return 10.0 ** math.floor(math.log10(smallest_ms) - 1)


@dataclass
class AdaptiveStrength:
    """Moves a :class:`LatencyLoss`'s latency weight after each architecture step until the argmax architecture
    meets its target.

    ``ratio`` is the argmax architecture's table latency over its target (combined over devices like the objective);
    it meets the target inside :func:`search_client.nas.target.target_bounds` (``[1 - band, 1 + band]``, or
    ``[0, 1]`` for the ``hinge`` budget). Above that range the weight steps up, below it steps down, inside it
    stays. A step is the weight's own magnitude times ``rate - 1``, at least ``floor``: the weight grows or shrinks
    geometrically and passes zero in steps of ``floor``; ``|weight| <= ceiling``. ``sq#log`` already pulls from
    both sides: a miss on either side steps its weight up, and moves its ``aim`` (the expected latency's ratio it
    pulls to) by the factor ``rate`` against the miss, within ``[1 / max_aim, max_aim]``: an argmax below the range
    raises the aim, one above lowers it, so the pull follows the architecture the search returns (an integral
    controller on the argmax's ratio). For the other forms but ``hinge`` the
    weight may become negative: the latency term then pulls the latency UP towards the target (a two-sided
    target, like MnasNet's soft constraint), because a penalty can only push down and the search may undershoot by
    far. ``hinge`` never steps down (nothing is under its range).
    """

    rate: float = 1.05
    band: float = 0.1
    floor: float = 1e-3
    ceiling: float = 1e3
    max_aim: float = 4.0

    def __post_init__(self) -> None:
        if _number("adaptive rate", self.rate, positive=True) <= 1:
            raise ValueError(f"adaptive rate: must be > 1, got {self.rate!r}")
        if not 0 <= _number("adaptive band", self.band) < 1:
            raise ValueError(f"adaptive band: must be in [0, 1), got {self.band!r}")
        if _number("adaptive floor", self.floor, positive=True) > _number("adaptive ceiling", self.ceiling):
            raise ValueError("adaptive floor: must not exceed the ceiling")

    def update(self, loss: LatencyLoss, ratio: float) -> float:
        """Adjust ``loss.strength`` for the argmax architecture's latency ``ratio``; returns the new weight."""
        weight = float(loss.strength or 0.0)
        step = max(abs(weight) * (self.rate - 1.0), self.floor)
        low, high = target_bounds(self.band, loss.kind)
        if loss.kind in TWO_SIDED and (ratio > high or ratio < low):
            weight += step  # sq#log pulls towards the target from either side: a miss either way needs more pull
            aim = loss.aim / self.rate if ratio > high else loss.aim * self.rate
            loss.aim = min(max(aim, 1.0 / self.max_aim), self.max_aim)
        elif ratio > high:
            weight += step
        elif ratio < low:
            weight -= step
        loss.strength = min(max(weight, -self.ceiling), self.ceiling)
        return loss.strength
