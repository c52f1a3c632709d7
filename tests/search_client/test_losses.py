"""Loss forms (numbers), the latency term's gradient w.r.t. alpha, feasibility, units and the adaptive weight."""

from __future__ import annotations

import math

import pytest
import torch

from search_client.nas.losses import AdaptiveStrength, LatencyLoss
from search_client.nas.target import check_targets
from search_client.table.objective import MultiDeviceLatency
from tests.search_client.conftest import make_table, softmax_probs


def _objective(target: float, scale: float = 1.0) -> tuple[MultiDeviceLatency, list[torch.Tensor]]:
    table = make_table(scale=scale)
    return MultiDeviceLatency([table], [target]), softmax_probs(table)[1]


@pytest.mark.parametrize("kind", ["mul#ratio", "add#linear", "hinge", "mul#log", "sq#log"])
def test_loss_numbers(kind: str) -> None:
    objective, probs = _objective(target=3.0, scale=4.0)
    e = objective.per_device(probs)[0].item()
    ce = torch.tensor(2.0, dtype=torch.float64)
    loss = LatencyLoss(kind)(ce, objective, probs).item()
    expected = {
        "add#linear": 2.0 + 0.1 * (e - 3.0) / 3.0,
        "hinge": 2.0 + 0.1 * max(0.0, e / 3.0 - 1.0),
        "mul#log": 0.2 * 2.0 * (math.log(e) / math.log(3.0)) ** 0.3,
        "mul#ratio": 0.2 * 2.0 * (e / 3.0) ** 0.3,
        "sq#log": 2.0 + 1.0 * math.log(e / 3.0) ** 2,
    }[kind]
    assert loss == pytest.approx(expected, rel=1e-9)


def test_hinge_is_plain_ce_under_the_target() -> None:
    objective, probs = _objective(target=1000.0)
    ce = torch.tensor(1.5, dtype=torch.float64)
    assert LatencyLoss("hinge", 5.0)(ce, objective, probs).item() == 1.5
    assert LatencyLoss("add#linear", 0.0)(ce, objective, probs).item() == 1.5  # strength 0: no latency term


def test_mul_log_with_a_unit() -> None:
    objective, probs = _objective(target=3.0)
    e = objective.per_device(probs)[0].item()
    loss = LatencyLoss("mul#log", 0.5, scale=1.0, log_unit_ms=0.01)
    expected = 2.0 * (math.log(e / 0.01) / math.log(3.0 / 0.01)) ** 0.5
    assert loss(torch.tensor(2.0, dtype=torch.float64), objective, probs).item() == pytest.approx(expected)


@pytest.mark.parametrize("kind", ["mul#ratio", "add#linear", "hinge", "mul#log", "sq#log"])
def test_latency_term_gradient_reaches_alpha(kind: str) -> None:
    table = make_table(scale=4.0)
    low, high = table.min_latency()[0], table.max_latency()[0]
    objective = MultiDeviceLatency([table], [low + 0.1 * (high - low)])  # E[LAT] above target: hinge active
    alphas, _ = softmax_probs(table, seed=3)
    loss_fn = LatencyLoss(kind, 0.7)
    ce = torch.tensor(1.3, dtype=torch.float64)

    def value() -> torch.Tensor:
        return loss_fn(ce, objective, [torch.softmax(a, 0) for a in alphas])

    value().backward()
    eps = 1e-6
    for a in alphas:
        assert a.grad is not None and a.grad.abs().max() > 0
        for j in range(len(a)):
            with torch.no_grad():
                a[j] += eps
                up = value().item()
                a[j] -= 2 * eps
                down = value().item()
                a[j] += eps
            assert float(a.grad[j]) == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-9)


def test_target_below_min_or_above_max_is_refused_with_both_numbers() -> None:
    table = make_table()
    low, high = table.min_latency()[0], table.max_latency()[0]
    with pytest.raises(ValueError, match="below the space's minimum") as below:
        check_targets(MultiDeviceLatency([table], [low * 0.5]))
    assert f"{low:.4g}" in str(below.value) and f"{high:.4g}" in str(below.value)
    with pytest.raises(ValueError, match="above the space's maximum") as above:
        check_targets(MultiDeviceLatency([table], [high * 2]))
    assert f"{low:.4g}" in str(above.value) and f"{high:.4g}" in str(above.value)
    check_targets(MultiDeviceLatency([table], [(low + high) / 2]))


def test_mul_log_refuses_latencies_below_the_log_unit() -> None:
    table = make_table()  # fake latencies of a few ms: log(ms) can be negative for the fastest architectures
    objective = MultiDeviceLatency([table], [table.max_latency()[0] * 0.9])
    low = table.min_latency()[0]
    loss = LatencyLoss("mul#log", log_unit_ms=low * 2)
    with pytest.raises(ValueError, match="mul#log.*must be > 0"):
        loss.check_units(objective)
    LatencyLoss("mul#log", log_unit_ms=low / 10).check_units(objective)
    LatencyLoss("hinge", log_unit_ms=low * 2).check_units(objective)  # only mul#log takes a log


@pytest.mark.parametrize("scale", [1e-3, 0.05, 1.0, 200.0])
def test_default_loss_takes_any_target_inside_the_range_whatever_the_unit(scale: float) -> None:
    """The default loss is unit-free: tables of microseconds or of seconds, any target in [min, max]; its value is
    the same for the same ratios, and it is defined where the release's mul#log (1 ms unit) is refused."""
    table = make_table(scale=scale)
    low, high = table.min_latency()[0], table.max_latency()[0]
    _, probs = softmax_probs(table, seed=4)
    ce = torch.tensor(1.7, dtype=torch.float64)
    default = LatencyLoss()
    assert default.kind == "mul#ratio"
    values = []
    for fraction in (0.0, 0.01, 0.5, 1.0):
        objective = MultiDeviceLatency([table], [low + fraction * (high - low)])
        check_targets(objective)
        default.check_units(objective)
        value = default(ce, objective, probs).item()
        assert math.isfinite(value) and value > 0
        values.append(value)
    reference = make_table(scale=1.0)
    ref_low, ref_high = reference.min_latency()[0], reference.max_latency()[0]
    ref = LatencyLoss()(ce, MultiDeviceLatency([reference], [ref_low + 0.5 * (ref_high - ref_low)]), probs).item()
    assert values[2] == pytest.approx(ref, rel=1e-9)  # same ratios, same loss: no unit inside
    if low < 1.0:
        with pytest.raises(ValueError, match="mul#log.*must be > 0.*mul#ratio"):
            LatencyLoss("mul#log").check_units(MultiDeviceLatency([table], [(low + high) / 2]))


def test_bad_loss_arguments() -> None:
    with pytest.raises(ValueError, match="loss: expected one of"):
        LatencyLoss("square")
    with pytest.raises(ValueError, match="strength"):
        LatencyLoss("hinge", -1.0)
    assert LatencyLoss("mul#log").strength == 0.3 and LatencyLoss("add#linear").strength == 0.1
    assert LatencyLoss().kind == "mul#ratio" and LatencyLoss().strength == 0.3


def test_adaptive_strength_moves_towards_the_target() -> None:
    loss = LatencyLoss("add#linear", 0.1)
    rule = AdaptiveStrength(rate=2.0, band=0.1, floor=0.01)
    assert rule.update(loss, 1.2) == pytest.approx(0.2)    # over target: stronger (0.1 + 0.1 * (2 - 1))
    assert rule.update(loss, 0.95) == pytest.approx(0.2)   # within the band: unchanged
    assert rule.update(loss, 1.05) == pytest.approx(0.2)   # within the band on either side
    assert rule.update(loss, 0.5) == pytest.approx(0.0)    # well under: weaker (0.2 - 0.2)
    assert rule.update(loss, 0.5) == pytest.approx(-0.01)  # through zero in floor steps: now pulls latency up
    assert rule.update(loss, 0.5) == pytest.approx(-0.02)
    hinge = LatencyLoss("hinge", 0.01)
    # a budget: anything at or under it meets it, so the weight never steps down (nor below 0)
    assert rule.update(hinge, 0.5) == 0.01 and rule.update(hinge, 1.0) == 0.01
    assert rule.update(hinge, 1.05) == pytest.approx(0.02)  # over the budget (even inside the band): stronger
    zero = LatencyLoss("hinge", 0.0)
    assert rule.update(zero, 0.2) == 0.0 and rule.update(zero, 1.05) == pytest.approx(0.01)  # grows from 0
    capped = AdaptiveStrength(rate=10.0, ceiling=1.0)
    assert capped.update(LatencyLoss("mul#log", 0.5), 2.0) == 1.0
    with pytest.raises(ValueError, match="adaptive rate"):
        AdaptiveStrength(rate=0.9)


@pytest.mark.parametrize("share", [0.1, 0.9])
def test_the_two_sided_loss_pulls_towards_the_target_from_either_side(share: float) -> None:
    """sq#log: one gradient step moves the expected latency towards a target below it and towards one above it;
    the multiplicative default pushes it down whatever the target."""
    table = make_table(scale=4.0)
    low, high = table.min_latency()[0], table.max_latency()[0]
    objective = MultiDeviceLatency([table], [low + share * (high - low)])
    ce = torch.tensor(1.0, dtype=torch.float64)
    moved = {}
    for kind in ("sq#log", "mul#ratio"):
        alphas, probs = softmax_probs(table, seed=2)
        before = objective.per_device(probs)[0].item()
        LatencyLoss(kind)(ce, objective, probs).backward()
        with torch.no_grad():
            after = objective.per_device([torch.softmax(a - 0.1 * a.grad, 0) for a in alphas])[0].item()
        moved[kind] = after - before
    target = objective.targets_ms[0]
    assert (moved["sq#log"] > 0) == (before < target)  # towards the target
    assert moved["mul#ratio"] < 0  # always down


def test_the_adaptive_weight_of_the_two_sided_loss_grows_on_a_miss_either_way() -> None:
    rule = AdaptiveStrength(rate=2.0, band=0.1, floor=0.01)
    loss = LatencyLoss("sq#log", 1.0)
    assert rule.update(loss, 1.3) == pytest.approx(2.0) and rule.update(loss, 0.6) == pytest.approx(4.0)
    assert rule.update(loss, 1.05) == pytest.approx(4.0)  # inside the band: unchanged


def test_negative_weight_pulls_latency_up() -> None:
    table = make_table(scale=4.0)
    objective = MultiDeviceLatency([table], [table.max_latency()[0] * 0.9])
    for kind in ("mul#ratio", "add#linear", "mul#log"):
        alphas, probs = softmax_probs(table, seed=1)
        loss = LatencyLoss(kind, 0.5)
        loss.strength = -0.5  # only the adaptive rule sets a negative weight
        loss(torch.tensor(1.0, dtype=torch.float64), objective, probs).backward()
        # one gradient-descent step on the alphas raises the expected latency
        with torch.no_grad():
            new = [torch.softmax(a - 0.1 * a.grad, 0) for a in alphas]
            assert objective.per_device(new)[0] > objective.per_device(probs)[0]


def test_several_devices() -> None:
    fast, slow = make_table(), make_table(scale=3.0)
    targets = [fast.max_latency()[0] * 0.8, slow.max_latency()[0] * 0.8]
    weighted = MultiDeviceLatency([fast, slow], targets, weights=[1, 3])
    worst = MultiDeviceLatency([fast, slow], targets, mode="max")
    choices = fast.max_latency()[1]
    ratios = [fast.latency_of(choices) / targets[0], slow.latency_of(choices) / targets[1]]
    assert weighted.ratio_of(choices) == pytest.approx(0.25 * ratios[0] + 0.75 * ratios[1])
    assert worst.ratio_of(choices) == pytest.approx(max(ratios))
    _, probs = softmax_probs(fast)
    ce = torch.tensor(1.0, dtype=torch.float64)
    e = [v.item() for v in weighted.per_device(probs)]
    add = LatencyLoss("add#linear", 1.0)(ce, weighted, probs).item()
    assert add == pytest.approx(1.0 + 0.25 * e[0] / targets[0] + 0.75 * e[1] / targets[1] - 1.0)
    mul = LatencyLoss("mul#log", 1.0, scale=1.0, log_unit_ms=0.01)(ce, worst, probs).item()
    f = [math.log(e[d] / 0.01) / math.log(targets[d] / 0.01) for d in range(2)]
    assert mul == pytest.approx(max(f))


def test_the_two_sided_adaptive_rule_moves_the_aim_against_the_argmaxs_miss() -> None:
    loss, rule = LatencyLoss("sq#log"), AdaptiveStrength(rate=1.25, band=0.1, max_aim=2.0)
    rule.update(loss, 0.5)  # argmax too cheap: aim up, more pull
    assert (loss.aim, loss.strength) == (pytest.approx(1.25), pytest.approx(1.25))
    rule.update(loss, 1.0)  # inside the band: nothing moves
    assert (loss.aim, loss.strength) == (pytest.approx(1.25), pytest.approx(1.25))
    rule.update(loss, 1.5)  # argmax too slow: aim down, more pull
    assert loss.aim == pytest.approx(1.0) and loss.strength == pytest.approx(1.5625)
    for _ in range(10):
        rule.update(loss, 0.5)
    assert loss.aim == pytest.approx(2.0)  # clamped to max_aim


def test_the_sq_log_term_vanishes_at_its_aim() -> None:
    table = make_table()
    objective = MultiDeviceLatency([table], [1.0])
    _, probs = softmax_probs(table)
    expected = float(objective.expected(probs))
    loss = LatencyLoss("sq#log", strength=2.0, aim=expected)
    assert float(loss.latency_factor(objective, probs)) == pytest.approx(0.0, abs=1e-9)
    loss.aim = expected / math.e
    assert float(loss.latency_factor(objective, probs)) == pytest.approx(2.0)
