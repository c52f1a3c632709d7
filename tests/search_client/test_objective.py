"""MultiDeviceLatency: weighted and max objectives over several devices' tables of one space."""

from __future__ import annotations

import pytest
import torch

from search_client.table.objective import MultiDeviceLatency
from tests.search_client.conftest import make_table, softmax_probs


@pytest.fixture
def tables():
    # device B is exactly twice as slow as device A on every op
    return [make_table(), make_table(scale=2.0, backend="torch-cpu")]


def test_weighted_objective_numbers(tables):
    _, probs = softmax_probs(tables[0], seed=1)
    lat_a = tables[0].expected_latency(probs)[0].detach().item()
    lat_b = tables[1].expected_latency(probs)[0].detach().item()
    assert lat_b == pytest.approx(2 * lat_a)
    objective = MultiDeviceLatency(tables, targets_ms=[4.0, 10.0], weights=[3.0, 1.0])
    assert objective.weights == [0.75, 0.25]
    assert objective.expected(probs).detach().item() == pytest.approx(0.75 * lat_a / 4.0 + 0.25 * lat_b / 10.0)
    equal = MultiDeviceLatency(tables, targets_ms=[4.0, 10.0])
    assert equal.expected(probs).detach().item() == pytest.approx(0.5 * lat_a / 4.0 + 0.5 * lat_b / 10.0)
    assert [t.detach().item() for t in objective.per_device(probs)] == pytest.approx([lat_a, lat_b])


def test_max_objective_follows_the_device_furthest_over_target(tables):
    _, probs = softmax_probs(tables[0], seed=2)
    lat_a = tables[0].expected_latency(probs)[0].detach().item()
    objective = MultiDeviceLatency(tables, targets_ms=[lat_a / 1.2, 2 * lat_a], mode="max")
    value = objective.expected(probs)
    assert value.detach().item() == pytest.approx(1.2)  # device A: 1.2 x its target; device B: 1.0
    grads = torch.autograd.grad(value, probs)
    for i, grad in enumerate(grads):  # d/dp of E[LAT_A] / target_A only
        assert torch.allclose(grad, tables[0].cell_latency(i) / (lat_a / 1.2))


def test_gradient_of_weighted_objective_is_the_weighted_f(tables):
    _, probs = softmax_probs(tables[0], seed=4)
    objective = MultiDeviceLatency(tables, targets_ms=[2.0, 5.0], weights=[1.0, 1.0])
    grads = torch.autograd.grad(objective.expected(probs), probs)
    for i, grad in enumerate(grads):
        expected = 0.5 * tables[0].cell_latency(i) / 2.0 + 0.5 * tables[1].cell_latency(i) / 5.0
        assert torch.allclose(grad, expected)


def test_latency_of_per_device(tables):
    objective = MultiDeviceLatency(tables, targets_ms=[1.0, 1.0])
    a, b = objective.latency_of([0, 6, 3])
    assert a == pytest.approx(tables[0].latency_of([0, 6, 3]))
    assert b == pytest.approx(2 * a)


def test_validation(tables):
    with pytest.raises(ValueError, match="tables: at least one"):
        MultiDeviceLatency([], [])
    with pytest.raises(ValueError, match="targets_ms: 1 targets for 2 tables"):
        MultiDeviceLatency(tables, [1.0])
    with pytest.raises(ValueError, match=r"targets_ms\[1\]: must be a finite number > 0, got 0"):
        MultiDeviceLatency(tables, [1.0, 0])
    with pytest.raises(ValueError, match=r"targets_ms\[0\]: must be a finite number > 0, got nan"):
        MultiDeviceLatency(tables, [float("nan"), 1.0])
    with pytest.raises(ValueError, match="weights: 3 weights for 2 tables"):
        MultiDeviceLatency(tables, [1.0, 1.0], weights=[1, 1, 1])
    with pytest.raises(ValueError, match=r"weights\[0\]: must be a finite number >= 0, got -1"):
        MultiDeviceLatency(tables, [1.0, 1.0], weights=[-1, 1])
    with pytest.raises(ValueError, match="weights: at least one weight must be > 0"):
        MultiDeviceLatency(tables, [1.0, 1.0], weights=[0, 0])
    with pytest.raises(ValueError, match="mode: expected one of weighted, max, got 'mean'"):
        MultiDeviceLatency(tables, [1.0, 1.0], mode="mean")
    other = make_table("tiny-32")
    with pytest.raises(ValueError, match="tables\\[1\\]: space 'tiny-32' differs"):
        MultiDeviceLatency([tables[0], other], [1.0, 1.0])


@pytest.mark.parametrize("mode", ["weighted", "max"])
def test_one_combination_rule_for_expected_ratios_table_ratios_and_loss_terms(tables, mode):
    """combine() is the only weighted/max rule: E[LAT] ratios (tensors), an architecture's table ratio (floats) and
    the mul#log loss's per-device terms all go through it and agree."""
    objective = MultiDeviceLatency(tables, targets_ms=[4.0, 10.0], weights=None if mode == "max" else [3.0, 1.0],
                                   mode=mode)
    assert objective.combine([1.2, 0.5]) == pytest.approx(1.2 if mode == "max" else 0.75 * 1.2 + 0.25 * 0.5)
    choices = tables[0].max_latency()[1]
    one_hot = [torch.nn.functional.one_hot(torch.tensor(c), len(row)).double()
               for c, row in zip(choices, tables[0].entries)]
    assert objective.expected(one_hot).item() == pytest.approx(objective.ratio_of(choices))
    assert objective.ratio_of(choices) == pytest.approx(
        objective.combine([t.latency_of(choices) / target for t, target in zip(tables, [4.0, 10.0])]))
    with pytest.raises(ValueError, match="combine: 1 values for 2 devices"):
        objective.combine([1.0])
