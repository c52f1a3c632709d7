"""'Meets the target', defined once: the adaptive weight, the derive rule and the summary all use it; with several
devices the verdict is every device on its own ratio."""

from __future__ import annotations

import pytest
import torch

from search_client.nas.losses import LOSS_KINDS, AdaptiveStrength, LatencyLoss
from search_client.nas.target import (
    device_ratios,
    meets_every_target,
    meets_target,
    target_bounds,
)
from search_client.nas.within_target import derive_choices
from search_client.table.objective import MultiDeviceLatency
from tests.search_client.conftest import make_table


def test_bounds_two_sided_or_a_budget() -> None:
    for kind in ("mul#ratio", "mul#log", "add#linear"):
        assert target_bounds(0.1, kind) == (0.9, 1.1)
        assert meets_target(0.95, 0.1, kind) and meets_target(1.1, 0.1, kind) and not meets_target(0.5, 0.1, kind)
    assert target_bounds(0.1, "hinge") == (0.0, 1.0)
    assert meets_target(0.5, 0.1, "hinge") and meets_target(1.0, 0.1, "hinge")
    assert not meets_target(1.05, 0.1, "hinge")
    with pytest.raises(ValueError, match=r"target band: must be in \[0, 1\)"):
        target_bounds(1.0, "hinge")


@pytest.mark.parametrize("kind", LOSS_KINDS)
@pytest.mark.parametrize("ratio", [0.3, 0.85, 0.95, 1.0, 1.05, 1.2])
def test_adaptive_weight_stays_exactly_where_the_target_is_met(kind: str, ratio: float) -> None:
    loss = LatencyLoss(kind, 0.5)
    AdaptiveStrength(band=0.1).update(loss, ratio)
    assert (loss.strength == 0.5) == meets_target(ratio, 0.1, kind)


def test_derive_rule_and_target_met_use_the_same_definition() -> None:
    table = make_table("micro-16")
    low_ms = table.min_latency()[0]
    # a hinge budget far above the argmax (the fastest architecture): met, so the argmax is kept
    objective = MultiDeviceLatency([table], [table.max_latency()[0] * 0.99])
    fastest = table.min_latency()[1]
    probs = []
    for row, c in zip(table.entries, fastest):  # p concentrated on the fastest architecture
        p = torch.full((len(row),), 1e-3)
        p[c] = 1.0
        probs.append(p / p.sum())
    hinge = derive_choices(probs, objective, rule="within-target", band=0.1, loss_kind="hinge")
    assert hinge.choices == fastest and hinge.target_met == meets_target(low_ms / objective.targets_ms[0], 0.1, "hinge")
    two_sided = derive_choices(probs, objective, rule="within-target", band=0.1, loss_kind="mul#ratio")
    assert two_sided.choices != fastest and two_sided.target_met
    assert two_sided.target_met == meets_target(two_sided.ratio, 0.1, "mul#ratio")


def test_the_verdict_is_every_device_on_its_own_ratio() -> None:
    fast, slow = make_table("micro-16"), make_table("micro-16", scale=2.0)
    choices = fast.min_latency()[1]
    objective = MultiDeviceLatency([fast, slow], [fast.latency_of(choices), slow.latency_of(choices) / 1.27],
                                   [0.7, 0.3])
    ratios = device_ratios(objective, choices)
    assert ratios == pytest.approx([1.0, 1.27])
    # the combined ratio (0.7 * 1.0 + 0.3 * 1.27 = 1.081) is inside the band, but it is not the verdict
    assert objective.ratio_of(choices) == pytest.approx(1.081) and meets_target(1.081, 0.1, "mul#ratio")
    assert not meets_every_target(ratios, 0.1, "mul#ratio")
    assert meets_every_target([0.95, 1.08], 0.1, "mul#ratio") and meets_every_target([0.2, 1.0], 0.1, "hinge")
    assert not meets_every_target([0.2, 1.01], 0.1, "hinge")
