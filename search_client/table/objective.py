"""One latency objective over several devices: the tables of the same space on each device, each with its target.

Each device d contributes its normalised expected latency ``r_d = E[LAT_d] / target_d`` (1.0 = on target).

- ``mode="weighted"``: ``sum_d w_d * r_d`` with weights normalised to sum 1 (default: equal weights), so the
  objective is 1.0 when every device is exactly on target.
- ``mode="max"``: ``max_d r_d``, the device furthest over its target (its gradient reaches that device's term only).

:meth:`MultiDeviceLatency.combine` is that rule, written once: the expected ratio (a tensor with gradient), an
architecture's table ratio (floats) and the per-device terms of a loss (see :mod:`search_client.nas.losses`) are
all combined by it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

import torch

from search_client.table.latency_table import LatencyTable

MODES = ("weighted", "max")

Value = TypeVar("Value", float, torch.Tensor)


def _positive(name: str, values: Sequence[float], allow_zero: bool = False) -> list[float]:
    out = []
    for i, v in enumerate(values):
        ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
        if not ok or v < 0 or (v == 0 and not allow_zero):
            bound = ">= 0" if allow_zero else "> 0"
            raise ValueError(f"{name}[{i}]: must be a finite number {bound}, got {v!r}")
        out.append(float(v))
    return out


class MultiDeviceLatency:
    """Latency objective over ``tables`` (one per device, same space) with per-device ``targets_ms``."""

    def __init__(
        self,
        tables: Sequence[LatencyTable],
        targets_ms: Sequence[float],
        weights: Sequence[float] | None = None,
        mode: str = "weighted",
    ) -> None:
        if not tables:
            raise ValueError("tables: at least one latency table is needed")
        if len(targets_ms) != len(tables):
            raise ValueError(f"targets_ms: {len(targets_ms)} targets for {len(tables)} tables")
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {', '.join(MODES)}, got {mode!r}")
        for i, table in enumerate(tables[1:], start=1):
            if table.space != tables[0].space:
                raise ValueError(
                    f"tables[{i}]: space {table.space.name!r} differs from tables[0]'s {tables[0].space.name!r}"
                )
        self.tables = list(tables)
        self.targets_ms = _positive("targets_ms", targets_ms)
        if weights is None:
            weights = [1.0] * len(tables)
        if len(weights) != len(tables):
            raise ValueError(f"weights: {len(weights)} weights for {len(tables)} tables")
        raw = _positive("weights", weights, allow_zero=True)
        if sum(raw) == 0:
            raise ValueError("weights: at least one weight must be > 0")
        self.weights = [w / sum(raw) for w in raw]
        self.mode = mode

    def per_device(self, probs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """E[LAT_d] (ms, scalar tensors with gradient to ``probs``), one per table."""
        return [table.expected_latency(probs)[0] for table in self.tables]

    def ratios(self, probs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """E[LAT_d] / target_d per device."""
        return [lat / target for lat, target in zip(self.per_device(probs), self.targets_ms)]

    def combine(self, values: Sequence[Value]) -> Value:
        """One value per device combined into one: ``sum_d w_d * v_d`` (weighted) or ``max_d v_d`` (max).

        Works on floats and on scalar tensors (the result keeps the gradient; in ``max`` mode it flows to the
        largest value only); in ``weighted`` mode also on arrays (element-wise, e.g. per-candidate costs)."""
        values = list(values)
        if len(values) != len(self.tables):
            raise ValueError(f"combine: {len(values)} values for {len(self.tables)} devices")
        if self.mode == "max":
            return max(values)
        return sum(w * v for w, v in zip(self.weights, values))

    def expected(self, probs: Sequence[torch.Tensor]) -> torch.Tensor:
        """The combined objective (scalar tensor with gradient to ``probs``) of the per-device expected ratios."""
        return self.combine(self.ratios(probs))

    def ratio_of(self, choices: Sequence[int]) -> float:
        """Table latency of one architecture over its target, combined over the devices (1.0 = on target)."""
        return self.combine([lat / target for lat, target in zip(self.latency_of(choices), self.targets_ms)])

    def latency_of(self, choices: Sequence[int]) -> list[float]:
        """Predicted latency (ms) of one architecture on every device."""
        return [table.latency_of(choices) for table in self.tables]
