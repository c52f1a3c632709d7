"""What a latency target is: the targets a table can be searched for, and which latency ratios meet one.

A device's ``ratio`` is an architecture's table latency on that device over that device's target (1.0 = exactly on
target; :func:`device_ratios`). The search's objective combines the devices' ratios into one
(:meth:`search_client.table.objective.MultiDeviceLatency.combine`: their weighted sum, or their max), and that
combined ratio is what the loss and the adaptive latency weight act on.

Meeting the target (the one definition, used by the within-target derive rule and the search summary's
``target_met``) is per device: an architecture meets it when *every* device's own ratio is inside the band
(:func:`meets_every_target`)::

    mul#ratio, mul#log, add#linear    1 - band <= ratio <= 1 + band    a two-sided target: near it, either side
    hinge                             0 <= ratio <= 1                  an upper bound: anything at or under it

A combined ratio inside the band says nothing about each device (a weighted sum of 0.74 and 1.27 is 1.005), so
the verdict never reads it. With one device the two are the same. The adaptive latency weight
(:class:`search_client.nas.losses.AdaptiveStrength`) moves the one weight of the combined objective, so it steers
the combined ratio into the same band.

The hinge loss is the latency *budget* form: it has no pull below the target (its term is zero there), so an
architecture at half the budget meets it, and the adaptive weight of a hinge never steps down (a larger weight
does nothing under the budget). The other losses price every millisecond, and ``band`` says how close counts.
"""

from __future__ import annotations

from collections.abc import Sequence

from search_client.table.objective import MultiDeviceLatency

UPPER_BOUND_LOSSES = ("hinge",)


def target_bounds(band: float, loss_kind: str) -> tuple[float, float]:
    """``[low, high]`` of the latency ratio that meets the target for ``loss_kind`` (table above)."""
    if isinstance(band, bool) or not isinstance(band, (int, float)) or not 0.0 <= band < 1.0:
        raise ValueError(f"target band: must be in [0, 1), got {band!r}")
    return (0.0, 1.0) if loss_kind in UPPER_BOUND_LOSSES else (1.0 - band, 1.0 + band)


def meets_target(ratio: float, band: float, loss_kind: str) -> bool:
    """Whether an architecture of latency ratio ``ratio`` meets its target (see :func:`target_bounds`)."""
    low, high = target_bounds(band, loss_kind)
    return low <= ratio <= high


def meets_every_target(ratios: Sequence[float], band: float, loss_kind: str) -> bool:
    """Whether every device's own latency ``ratios`` (one per device) meets its target: the verdict of a search."""
    return all(meets_target(ratio, band, loss_kind) for ratio in ratios)


def device_ratios(objective: MultiDeviceLatency, choices: Sequence[int]) -> list[float]:
    """Each device's table latency of the architecture ``choices`` over that device's own target."""
    return [lat / target for lat, target in zip(objective.latency_of(choices), objective.targets_ms)]


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
