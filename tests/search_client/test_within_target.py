"""The within-target derive rule: the most probable architecture inside every device's target band, checked by brute
force."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from search_client.nas.target import device_ratios, meets_target, target_bounds
from search_client.nas.within_target import (
    RATIO_STEP,
    derive_choices,
    within_target_choices,
)
from search_client.table.latency_table import LatencyTable
from search_client.table.objective import MultiDeviceLatency
from tests.search_client.conftest import make_table, other_device_table, softmax_probs


def _grid(rows: list[np.ndarray]) -> np.ndarray:
    """The sum over cells of rows[i][c_i] for every architecture, shape [n_0, n_1, ...]."""
    total = np.zeros([len(r) for r in rows])
    for i, row in enumerate(rows):
        shape = [1] * len(rows)
        shape[i] = len(row)
        total = total + np.asarray(row, dtype=np.float64).reshape(shape)
    return total


def _brute_force(probs: list[torch.Tensor], objective: MultiDeviceLatency, low: float, high: float
                 ) -> tuple[float, np.ndarray]:
    """Best log-probability with every device's own ratio inside [low, high] (exact ratios), and the mask of those
    feasible architectures."""
    ratios = [t.fixed_ms / target + _grid([np.asarray(r) / target for r in t.entries])
              for t, target in zip(objective.tables, objective.targets_ms)]
    log_p = _grid([np.log(p.detach().numpy()) for p in probs])
    feasible = np.logical_and.reduce([(ratio >= low) & (ratio <= high) for ratio in ratios])
    return (float(log_p[feasible].max()) if feasible.any() else -np.inf), feasible


def _log_p(probs: list[torch.Tensor], choices: list[int]) -> float:
    return sum(float(torch.log(p[c].detach())) for p, c in zip(probs, choices))


def _assert_optimal(probs: list[torch.Tensor], objective: MultiDeviceLatency, low: float, high: float,
                    choices: list[int]) -> None:
    """No feasible architecture is more probable, and none inside the band shrunk by the quantization slack is
    more probable either (the programme's guarantee)."""
    slack = 0.5 * RATIO_STEP * len(probs)
    best, _ = _brute_force(probs, objective, low, high)
    best_inner, _ = _brute_force(probs, objective, low + slack, high - slack)
    assert best_inner - 1e-9 <= _log_p(probs, choices) <= best + 1e-9


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("fraction", [0.15, 0.4, 0.8])
def test_within_target_is_the_most_probable_architecture_in_the_band(seed: int, fraction: float) -> None:
    table = make_table("tiny-32")
    low_ms, high_ms = table.min_latency()[0], table.max_latency()[0]
    objective = MultiDeviceLatency([table], [low_ms + fraction * (high_ms - low_ms)])
    _, probs = softmax_probs(table, seed=seed)
    low, high = target_bounds(0.05, "add#linear")
    choices = within_target_choices(probs, objective, low, high)
    _, feasible = _brute_force(probs, objective, low, high)
    assert feasible.any()
    assert choices is not None
    assert low <= objective.ratio_of(choices) <= high
    _assert_optimal(probs, objective, low, high, choices)


@pytest.mark.parametrize("seed", range(4))
def test_within_target_matches_brute_force_on_a_small_space(seed: int) -> None:
    table = make_table("micro-16")
    objective = MultiDeviceLatency([table], [5.0])
    _, probs = softmax_probs(table, seed=seed)
    low, high = target_bounds(0.1, "add#linear")
    choices = within_target_choices(probs, objective, low, high)
    best, _ = _brute_force(probs, objective, low, high)
    assert choices is not None
    assert _log_p(probs, choices) == pytest.approx(best, abs=1e-12)


def test_argmax_inside_the_band_is_kept() -> None:
    table = make_table("micro-16")
    _, probs = softmax_probs(table, seed=1)
    argmax = [int(p.argmax()) for p in probs]
    objective = MultiDeviceLatency([table], [table.latency_of(argmax) * 1.05])
    derived = derive_choices(probs, objective, rule="within-target", band=0.1, loss_kind="add#linear")
    assert derived.choices == argmax and derived.from_argmax and derived.target_met
    assert derived.ratio == pytest.approx(1 / 1.05)


def test_argmax_outside_the_band_is_replaced_and_reported() -> None:
    table = make_table("tiny-32")
    _, probs = softmax_probs(table, seed=2)
    argmax = [int(p.argmax()) for p in probs]
    objective = MultiDeviceLatency([table], [table.latency_of(argmax) / 1.3])
    derived = derive_choices(probs, objective, rule="within-target", band=0.1, loss_kind="add#linear")
    assert derived.argmax_choices == argmax
    assert derived.argmax_ratio == pytest.approx(1.3)
    assert not derived.from_argmax and derived.target_met
    assert 0.9 <= derived.ratio <= 1.1
    assert derived.ratio == pytest.approx(objective.ratio_of(derived.choices))
    # the argmax rule exports the argmax and says it misses
    plain = derive_choices(probs, objective, rule="argmax", band=0.1, loss_kind="add#linear")
    assert plain.choices == argmax and not plain.target_met


def test_hinge_only_needs_the_latency_under_the_target() -> None:
    table = make_table("tiny-32")
    _, probs = softmax_probs(table, seed=3)
    argmax = [int(p.argmax()) for p in probs]
    at = table.latency_of(argmax)
    under = derive_choices(probs, MultiDeviceLatency([table], [at * 2.0]), rule="within-target", band=0.1,
                           loss_kind="hinge")
    assert under.choices == argmax and under.target_met  # half the target: fine for a hinge
    over = derive_choices(probs, MultiDeviceLatency([table], [at / 1.2]), rule="within-target", band=0.1,
                          loss_kind="hinge")
    assert over.target_met and over.ratio <= 1.0
    _assert_optimal(probs, MultiDeviceLatency([table], [at / 1.2]), 0.0, 1.0, over.choices)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("mode", ["weighted", "max"])
@pytest.mark.parametrize("loss", ["add#linear", "hinge"])
def test_two_devices_every_band_is_met_when_an_architecture_can_meet_them(seed: int, mode: str, loss: str) -> None:
    a, b = make_table("micro-16"), other_device_table("micro-16")
    _, probs = softmax_probs(a, seed=seed)
    targets = [t.min_latency()[0] + (0.3 + 0.1 * seed) * (t.max_latency()[0] - t.min_latency()[0]) for t in (a, b)]
    objective = MultiDeviceLatency([a, b], targets, [0.7, 0.3], mode=mode)
    low, high = target_bounds(0.1, loss)
    best_inner, inner = _brute_force(probs, objective, low + 0.01, high - 0.01)
    choices = within_target_choices(probs, objective, low, high)
    if inner.any():  # an architecture meets both bands with room to spare: the rule finds the most probable
        assert choices is not None
        assert all(low <= r <= high for r in device_ratios(objective, choices))
        assert _log_p(probs, choices) >= best_inner - 1e-9
    elif choices is not None:
        assert all(low <= r <= high for r in device_ratios(objective, choices))


def test_proportional_devices_match_brute_force() -> None:
    fast, slow = make_table("tiny-32"), make_table("tiny-32", scale=2.5)
    _, probs = softmax_probs(fast, seed=4)
    objective = MultiDeviceLatency([fast, slow], [(fast.min_latency()[0] + fast.max_latency()[0]) / 2,
                                                  (slow.min_latency()[0] + slow.max_latency()[0]) / 2], mode="max")
    low, high = target_bounds(0.1, "add#linear")
    choices = within_target_choices(probs, objective, low, high)
    _, feasible = _brute_force(probs, objective, low, high)
    assert feasible.any() and choices is not None
    assert all(low <= r <= high for r in device_ratios(objective, choices))
    best_inner, _ = _brute_force(probs, objective, low + 0.01, high - 0.01)
    assert _log_p(probs, choices) >= best_inner - 1e-9


def _concentrated(table: LatencyTable, choices: list[int]) -> list[torch.Tensor]:
    """Per-cell p with most of the mass on ``choices`` (the argmax) and the rest spread by a fixed draw."""
    _, probs = softmax_probs(table, seed=7)
    out = []
    for p, c in zip(probs, choices):
        q = p.detach().clone() * 0.3
        q[c] += 0.7
        out.append(q / q.sum())
    return out


@pytest.mark.parametrize("mode", ["weighted", "max"])
def test_a_combined_ratio_in_the_band_does_not_hide_a_device_that_misses(mode: str) -> None:
    """Device A on its target, device B 27% over it: weighted 0.7/0.3 the combined ratio is 1.081, inside the
    +-10% band. The verdict is per device: the argmax misses, and the rule exports one that meets both."""
    a, b = make_table("tiny-32"), other_device_table("tiny-32")
    argmax = [0, 1, 2, 3, 4, 5, 0]
    probs = _concentrated(a, argmax)
    assert [int(p.argmax()) for p in probs] == argmax
    objective = MultiDeviceLatency([a, b], [a.latency_of(argmax), b.latency_of(argmax) / 1.27], [0.7, 0.3],
                                   mode=mode)
    plain = derive_choices(probs, objective, rule="argmax", band=0.1, loss_kind="add#linear")
    assert plain.argmax_device_ratios == pytest.approx([1.0, 1.27])
    if mode == "weighted":
        assert plain.argmax_ratio == pytest.approx(1.081) and meets_target(plain.argmax_ratio, 0.1, "add#linear")
    assert plain.choices == argmax and plain.device_met == [True, False] and not plain.target_met
    derived = derive_choices(probs, objective, rule="within-target", band=0.1, loss_kind="add#linear")
    _, feasible = _brute_force(probs, objective, 0.9, 1.1)
    assert feasible.any()
    assert not derived.from_argmax and derived.target_met and derived.device_met == [True, True]
    assert all(0.9 <= r <= 1.1 for r in derived.device_ratios)
    assert derived.device_ratios == pytest.approx(device_ratios(objective, derived.choices))
    # what the rule gave up: the log-probability of the argmax's ops over the exported ones, in the changed cells
    changed = derived.changed_cells
    assert changed and changed == [i for i, (x, y) in enumerate(zip(argmax, derived.choices)) if x != y]
    assert derived.log_prob_given_up == pytest.approx(_log_p(probs, argmax) - _log_p(probs, derived.choices))
    assert derived.log_prob_given_up > 0


def test_an_argmax_that_meets_every_device_is_kept_and_nothing_is_given_up() -> None:
    a, b = make_table("tiny-32"), other_device_table("tiny-32")
    argmax = [0, 1, 2, 3, 4, 5, 0]
    probs = _concentrated(a, argmax)
    objective = MultiDeviceLatency([a, b], [a.latency_of(argmax) / 0.95, b.latency_of(argmax) / 1.08])
    derived = derive_choices(probs, objective, rule="within-target", band=0.1, loss_kind="mul#ratio")
    assert derived.from_argmax and derived.changed_cells == [] and derived.log_prob_given_up == 0.0
    assert derived.target_met and derived.device_met == [True, True]
    assert derived.device_ratios == pytest.approx([0.95, 1.08])


def test_no_architecture_in_the_band_keeps_the_argmax_and_says_so() -> None:
    table = make_table("micro-16")
    _, probs = softmax_probs(table, seed=0)
    # a zero-width band at a target no architecture hits exactly
    low_ms = table.min_latency()[0]
    objective = MultiDeviceLatency([table], [low_ms * 1.0001 + 1e-7])
    derived = derive_choices(probs, objective, rule="within-target", band=0.0, loss_kind="add#linear")
    assert derived.choices == derived.argmax_choices
    assert not derived.target_met


def test_bad_rule_and_band() -> None:
    table = make_table("micro-16")
    _, probs = softmax_probs(table)
    objective = MultiDeviceLatency([table], [5.0])
    with pytest.raises(ValueError, match="derive rule: expected one of within-target, argmax, got 'best'"):
        derive_choices(probs, objective, rule="best", band=0.1, loss_kind="add#linear")
    with pytest.raises(ValueError, match=r"target band: must be in \[0, 1\), got 1.5"):
        target_bounds(1.5, "add#linear")
