"""The architecture loss: cross-entropy plus a latency term, its adaptive weight, and the target feasibility check.

Loss forms (``E_d`` = E[LAT] on device d in ms, ``T_d`` its target, ``r`` = the objective's combined ratio
``E_d / T_d``, weighted over the devices or their max; see :class:`search_client.table.objective.MultiDeviceLatency`)::

    mul#log      scale * CE * f ** strength,   f = combined (log(E_d / u) / log(T_d / u))    (the release's form;
                 scale = 0.2, strength = beta = 0.3; u = log_unit_ms, 1 ms in the release)
    add#linear   CE + strength * (r - 1)        single device: CE + lambda * (E - T) / T     (lambda = 0.1)
    hinge        CE + strength * relu(r - 1)    no push once the expected latency is under the target

``strength`` is the latency weight: beta for ``mul#log``, lambda otherwise; 0 turns the latency term off.
:class:`AdaptiveStrength` moves it during the search until the argmax architecture meets its target (for
``add#linear`` and ``mul#log`` it may turn negative, pulling the latency up to the target).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from search_client.table.objective import MultiDeviceLatency

LOSS_KINDS = ("mul#log", "add#linear", "hinge")
DEFAULT_STRENGTH = {"mul#log": 0.3, "add#linear": 0.1, "hinge": 0.1}


def _number(name: str, value: Any, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}: must be a finite number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{name}: must be {'> 0' if positive else '>= 0'}, got {value!r}")
    return float(value)


def _combine(values: Sequence[torch.Tensor], objective: MultiDeviceLatency) -> torch.Tensor:
    """Combine per-device values the way the objective combines its ratios (weighted sum or max)."""
    stacked = torch.stack(list(values))
    if objective.mode == "max":
        return stacked.max()
    weights = torch.tensor(objective.weights, dtype=stacked.dtype, device=stacked.device)
    return (weights * stacked).sum()


@dataclass
class LatencyLoss:
    """CE + latency term of one of :data:`LOSS_KINDS` (formulas in the module docstring)."""

    kind: str = "mul#log"
    strength: float | None = None
    scale: float = 0.2
    log_unit_ms: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in LOSS_KINDS:
            raise ValueError(f"loss: expected one of {', '.join(LOSS_KINDS)}, got {self.kind!r}")
        if self.strength is None:
            self.strength = DEFAULT_STRENGTH[self.kind]
        self.strength = _number("loss strength", self.strength)
        self.scale = _number("loss scale", self.scale, positive=True)
        self.log_unit_ms = _number("loss log_unit_ms", self.log_unit_ms, positive=True)

    def latency_factor(self, objective: MultiDeviceLatency, probs: Sequence[torch.Tensor]) -> torch.Tensor:
        """The latency part alone: f ** strength (mul#log) or the added term (add#linear, hinge)."""
        if self.kind == "mul#log":
            ratios = [torch.log(lat / self.log_unit_ms) / math.log(target / self.log_unit_ms)
                      for lat, target in zip(objective.per_device(probs), objective.targets_ms)]
            return _combine(ratios, objective) ** self.strength
        r = objective.expected(probs)
        if self.kind == "add#linear":
            return self.strength * (r - 1.0)
        return self.strength * torch.relu(r - 1.0)

    def __call__(self, ce: torch.Tensor, objective: MultiDeviceLatency,
                 probs: Sequence[torch.Tensor]) -> torch.Tensor:
        """The architecture loss for cross-entropy ``ce`` and per-cell path weights ``probs``."""
        term = self.latency_factor(objective, probs).to(ce.dtype)
        if self.kind == "mul#log":
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
                    "or the add#linear / hinge loss"
                )


def _suggest_unit(smallest_ms: float) -> float:
    """A power of ten well below ``smallest_ms`` (so every log is clearly positive)."""
    return 10.0 ** math.floor(math.log10(smallest_ms) - 1)


def check_targets(objective: MultiDeviceLatency) -> None:
    """Refuse a target outside [fastest, slowest] architecture latency of its device's table, naming both."""
    for d, (table, target) in enumerate(zip(objective.tables, objective.targets_ms)):
        low, high = table.min_latency()[0], table.max_latency()[0]
        name = table.device.get("name") or table.device.get("url") or f"device {d}"
        if target < low:
            raise ValueError(f"target {target:.4g} ms on {name} ({table.backend}) is below the space's minimum "
                             f"latency {low:.4g} ms (maximum {high:.4g} ms): no architecture can meet it")
        if target > high:
            raise ValueError(f"target {target:.4g} ms on {name} ({table.backend}) is above the space's maximum "
                             f"latency {high:.4g} ms (minimum {low:.4g} ms): every architecture meets it, the "
                             "latency term would be meaningless")


def argmax_ratio(objective: MultiDeviceLatency, choices: Sequence[int]) -> float:
    """Table latency of an architecture over its target, combined over the devices like the objective."""
    ratios = [lat / target for lat, target in zip(objective.latency_of(choices), objective.targets_ms)]
    if objective.mode == "max":
        return max(ratios)
    return sum(w * r for w, r in zip(objective.weights, ratios))


@dataclass
class AdaptiveStrength:
    """Moves a :class:`LatencyLoss`'s latency weight after each architecture step until the argmax architecture
    meets its target.

    With ``ratio`` = argmax table latency / target (combined over devices like the objective) the target is met inside
    ``[1 - band, 1 + band]`` for ``add#linear`` and ``mul#log``, inside ``[1 - band, 1]`` for ``hinge`` (an upper
    bound). Above that range the weight steps up, below it steps down, inside it stays. A step is the weight's
    own magnitude times ``rate - 1``, at least ``floor``: the weight grows or shrinks geometrically and passes
    zero in steps of ``floor``; ``|weight| <= ceiling``. For ``add#linear`` and ``mul#log`` the weight may become
    negative: the latency term then pulls the latency UP towards the target (a two-sided target, like MnasNet's
    soft constraint), because a penalty can only push down and the search may undershoot by far. ``hinge``
    never pulls up: its weight stops at 0.
    """

    rate: float = 1.05
    band: float = 0.1
    floor: float = 1e-3
    ceiling: float = 1e3

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
        upper = 1.0 if loss.kind == "hinge" else 1.0 + self.band
        if ratio > upper:
            weight += step
        elif ratio < 1.0 - self.band:
            weight -= step
        low = 0.0 if loss.kind == "hinge" else -self.ceiling
        loss.strength = min(max(weight, low), self.ceiling)
        return loss.strength
