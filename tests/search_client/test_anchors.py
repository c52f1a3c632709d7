"""Anchored tables: the Theil-Sen and weight-term maps, the anchor networks, anchored entries and E[LAT], the file,
build_table."""

from __future__ import annotations

import itertools
import json
import random

import pytest
import torch

import search_client.table.latency_table as latency_table_module
from nas_ops.arch import Architecture
from nas_ops.space import SPACES
from search_client.table.anchors import (
    ANCHOR_PASSES,
    DEFAULT_ANCHORS,
    MAX_SLOPE,
    WEIGHT_ANCHORS,
    WEIGHT_FIT_MIN,
    AnchorFitError,
    AnchorMap,
    anchor_choices,
    default_anchors,
    fit_anchor_map,
    has_weight_contrast,
    pick_evenly,
    spread_choices,
    weight_contrasts,
)
from search_client.table.latency_table import (
    LatencyTable,
    build_table,
    cell_weights_mb,
    table_specs,
)
from tests.search_client.conftest import (
    FakeDevice,
    device_table,
    fake_stats,
    make_table,
    softmax_probs,
)

MICRO = SPACES["micro-16"]


def test_fit_recovers_an_affine_map_exactly():
    predicted = [1.0, 2.0, 3.5, 5.0, 8.0, 13.0]
    anchor = fit_anchor_map(predicted, [0.5 + 1.2 * p for p in predicted])
    assert anchor.a_ms == pytest.approx(0.5, abs=1e-12) and anchor.b == pytest.approx(1.2, rel=1e-12)
    assert anchor.apply(10.0) == pytest.approx(12.5, rel=1e-12)
    assert anchor.method == "theil-sen"


def test_one_disturbed_anchor_does_not_move_the_fit():
    predicted = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    measured = [0.5 + 1.2 * p for p in predicted]
    measured[2] *= 1.6  # one measurement taken while the machine was busy
    anchor = fit_anchor_map(predicted, measured)
    assert anchor.b == pytest.approx(1.2, rel=1e-12) and anchor.a_ms == pytest.approx(0.5, abs=1e-12)
    least_squares_slope = torch.linalg.lstsq(torch.tensor([[p, 1.0] for p in predicted], dtype=torch.float64),
                                             torch.tensor(measured, dtype=torch.float64)[:, None]).solution[0, 0]
    assert abs(float(least_squares_slope) - 1.2) > 0.05  # what an ordinary fit would have made of it


def test_anchors_with_one_prediction_fit_a_scale():
    anchor = fit_anchor_map([2.0, 2.0, 2.0], [2.2, 2.4, 2.3])
    assert (anchor.a_ms, anchor.b) == (0.0, pytest.approx(1.15))


@pytest.mark.parametrize(("predicted", "measured", "message"), [
    ([1.0], [1.0], "at least 2"),
    ([1.0, 2.0], [1.0], "at least 2"),
    ([1.0, 2.0, 3.0], [1.0, 0.0, 3.0], "must be positive"),
    ([1.0, 2.0, 3.0], [1.0, 2.0 * (MAX_SLOPE + 1), 3.0 * (MAX_SLOPE + 1) * 1.5], "disagree beyond a bias"),
    ([1.0, 2.0, 3.0], [3.0, 2.0, 1.0], "disagree beyond a bias"),
])
def test_fit_refuses_anchors_no_bias_explains(predicted, measured, message):
    with pytest.raises(AnchorFitError, match=message):
        fit_anchor_map(predicted, measured)


def test_anchor_choices_run_from_the_cheapest_to_the_slowest_network_through_mixed_ones():
    costs = [[0.3, 0.1, 0.2], [1.0, 3.0], [0.5, 0.4, 0.9, 0.1]]
    choices = anchor_choices(costs, 3)
    assert choices[0] == [1, 0, 3] and choices[-1] == [0, 1, 2]  # argmin and argmax of every cell

    def total(choice: list[int]) -> float:
        return sum(row[c] for row, c in zip(costs, choice))

    middle = (total(choices[0]) + total(choices[-1])) / 2
    nearest = min(abs(total(list(c)) - middle) for c in itertools.product(range(3), range(2), range(4)))
    assert abs(total(choices[1]) - middle) == pytest.approx(nearest)  # the draws reach every combination here
    assert [total(c) for c in choices] == sorted(total(c) for c in choices)
    assert anchor_choices(costs, 3) == choices  # deterministic


def test_middle_anchors_mix_candidates_across_cells():
    costs = [[float(j + 1) * (1 + 0.1 * cell) for j in range(7)] for cell in range(20)]
    for choice in anchor_choices(costs, 6)[1:-1]:
        assert len(set(choice)) > 1  # not one rank repeated in every cell


def test_spread_choices_reach_both_ends_and_pick_evenly_spans_them():
    costs = [[3.0, 1.0, 2.0], [0.5, 4.0]]
    choices = spread_choices(costs, 200, random.Random(0))
    assert choices[:2] == [[1, 0], [0, 1]]  # all-cheapest, all-most-expensive
    assert len({tuple(c) for c in choices}) == 6  # every combination is drawn
    predicted = [0.0, 10.0, 4.9, 5.2, 1.0, 9.0, 7.4]
    assert pick_evenly(predicted, 3) == [0, 2, 1]
    assert pick_evenly(predicted, 5) == [0, 4, 2, 6, 1]
    assert sorted(pick_evenly([1.0, 2.0], 5)) == [0, 1]  # never the same one twice


def test_anchor_choices_drop_duplicates_and_need_two():
    assert anchor_choices([[1.0, 2.0]], 6) == [[0], [1]]
    with pytest.raises(ValueError, match="at least 2"):
        anchor_choices([[1.0, 2.0]], 1)


def test_every_table_is_anchored_by_default():
    assert default_anchors() == DEFAULT_ANCHORS == 6 >= WEIGHT_FIT_MIN  # the default fits the weight term


# --- the weight term ------------------------------------------------------------------------------------------------
PREDICTED = [2.0, 2.6, 3.1, 3.5, 3.9, 4.4, 5.0, 5.7, 6.1, 7.0]
WEIGHTS = [5.0, 7.5, 6.0, 9.0, 5.5, 8.0, 10.5, 7.0, 11.0, 12.0]  # MB; not a function of the sum


def test_fit_with_weights_recovers_the_weight_term_exactly():
    measured = [0.3 + 1.1 * p + 0.04 * w for p, w in zip(PREDICTED, WEIGHTS)]
    anchor = fit_anchor_map(PREDICTED, measured, None, WEIGHTS)
    assert anchor.method == "huber-weights"
    assert (anchor.a_ms, anchor.b, anchor.c_ms_per_mb) == (pytest.approx(0.3, abs=1e-9), pytest.approx(1.1, rel=1e-9),
                                                            pytest.approx(0.04, rel=1e-7))
    assert anchor.apply(4.0, 8.0) == pytest.approx(0.3 + 4.4 + 0.32, rel=1e-9)
    assert anchor.scale_entry(1.0, 2.0) == pytest.approx(1.1 + 0.08, rel=1e-9)
    assert anchor.shift(1.0, 2.0) == pytest.approx(0.3 + 1.1 + 0.08, rel=1e-9)


def test_one_disturbed_anchor_barely_moves_the_weight_fit():
    measured = [0.3 + 1.1 * p + 0.04 * w for p, w in zip(PREDICTED, WEIGHTS)]
    measured[4] *= 1.3  # one anchor measured while the machine was busy
    anchor = fit_anchor_map(PREDICTED, measured, None, WEIGHTS)
    rows = torch.tensor([[1.0, p, w] for p, w in zip(PREDICTED, WEIGHTS)], dtype=torch.float64)
    ordinary = torch.linalg.lstsq(rows, torch.tensor(measured, dtype=torch.float64)[:, None]).solution[:, 0]
    assert abs(anchor.b - 1.1) < 0.5 * abs(float(ordinary[1]) - 1.1)  # Huber: much nearer than least squares
    assert abs(anchor.c_ms_per_mb - 0.04) < 0.5 * abs(float(ordinary[2]) - 0.04)
    errors = [anchor.apply(p, w) / (0.3 + 1.1 * p + 0.04 * w) - 1 for p, w in zip(PREDICTED, WEIGHTS)]
    assert max(abs(e) for i, e in enumerate(errors) if i != 4) < 0.02


@pytest.mark.parametrize(("predicted", "weights", "why"), [
    (PREDICTED[:WEIGHT_FIT_MIN - 1], WEIGHTS[:WEIGHT_FIT_MIN - 1], "too few anchors"),
    (PREDICTED, [1.5 * p + 2.0 for p in PREDICTED], "weights follow the sums"),
    (PREDICTED, [0.0] * len(PREDICTED), "no weights"),
])
def test_without_weight_contrast_the_fit_is_theil_sen(predicted, weights, why):
    measured = [0.5 + 1.2 * p for p in predicted]
    assert not has_weight_contrast(predicted, weights), why
    anchor = fit_anchor_map(predicted, measured, None, weights)
    assert (anchor.method, anchor.c_ms_per_mb) == ("theil-sen", 0.0)
    assert (anchor.a_ms, anchor.b) == (pytest.approx(0.5, abs=1e-12), pytest.approx(1.2, rel=1e-12))
    assert "c_ms_per_mb" not in anchor.as_dict()


def test_a_weight_term_the_anchors_do_not_show_is_dropped():
    rng = random.Random(5)
    noisy = [(0.5 + 1.2 * p) * (1 + rng.gauss(0, 0.01)) for p in PREDICTED]  # no weight effect, 1% noise
    anchor = fit_anchor_map(PREDICTED, noisy, None, WEIGHTS)
    assert (anchor.method, anchor.c_ms_per_mb) == ("theil-sen", 0.0)
    # nor is the uncertain term of noisy tiny networks (c = 0.31 +- 0.39 ms/MB, b = 0.49)
    tiny = [0.029, 0.041, 0.042, 0.067, 0.062, 0.079]
    sums, mb = [0.029, 0.073, 0.079, 0.081, 0.081, 0.101], [0.02, 0.03, 0.05, 0.055, 0.03, 0.07]
    assert fit_anchor_map(sums, tiny, None, mb).method == "theil-sen"


def test_fit_refuses_mismatched_weights():
    with pytest.raises(AnchorFitError, match="3 weights for 2 anchors"):
        fit_anchor_map([1.0, 2.0], [1.0, 2.0], None, [1.0, 2.0, 3.0])


def test_weight_contrasts_are_the_farthest_below_and_above_the_line_at_middling_sums():
    sums = [0.0, 1.0, 4.0, 5.0, 5.0, 6.0, 6.0, 10.0]
    weights = [0.0, 1.0, 4.0, 2.0, 9.0, 6.5, 6.0, 10.0]  # the line: about weight = sum
    assert weight_contrasts(sums, weights, 2) == [3, 4]  # 5 -> 2 (below), 5 -> 9 (above); the ends never
    # without 4: below the line 3 (-3.2), 6 (-0.2), 2 (-0.2); above it 5 (+0.3)
    assert weight_contrasts(sums, weights, 3, exclude=[4]) == [3, 5, 6]
    assert weight_contrasts(sums, weights, 10) == [3, 4, 6, 5, 2]  # fewer when fewer qualify: sums in [2.5, 7.5]


def test_anchor_choices_with_weights_add_contrasts_between_the_ends():
    rng = random.Random(3)
    costs = [[rng.uniform(0.1, 1.0) for _ in range(6)] for _ in range(12)]
    weights = [[rng.uniform(0.0, 2.0) for _ in range(6)] for _ in range(12)]
    plain = anchor_choices(costs, 6)
    with_weights = anchor_choices(costs, 6, weights)
    assert len(plain) == len(with_weights) == 6
    assert with_weights[0] == plain[0] and with_weights[-1] == plain[-1]  # the ends stay

    def total(values, choice):
        return sum(row[c] for row, c in zip(values, choice))

    along_the_sum = anchor_choices(costs, 6 - WEIGHT_ANCHORS)
    contrasts = [c for c in with_weights if c not in along_the_sum]
    assert len(contrasts) == WEIGHT_ANCHORS
    low, high = total(costs, plain[0]), total(costs, plain[-1])
    assert all(low + 0.25 * (high - low) <= total(costs, c) <= low + 0.75 * (high - low) for c in contrasts)
    assert has_weight_contrast([total(costs, c) for c in with_weights], [total(weights, c) for c in with_weights])
    assert [total(costs, c) for c in with_weights] == sorted(total(costs, c) for c in with_weights)
    assert anchor_choices(costs, WEIGHT_FIT_MIN - 1, weights) == anchor_choices(costs, WEIGHT_FIT_MIN - 1)


def _weight_anchored(a: float = 0.2, b: float = 1.1, c: float = 0.05) -> tuple[LatencyTable, LatencyTable]:
    plain = make_table()
    choices = anchor_choices(plain.entries, 6, cell_weights_mb(plain.space, plain.dtype))
    predicted = [plain.latency_of(ch) for ch in choices]
    weights = [plain.weight_mb_of(ch) for ch in choices]
    measured = [a + b * p + c * w for p, w in zip(predicted, weights)]
    return plain, plain.anchored(fit_anchor_map(predicted, measured, choices, weights))


def test_weight_anchored_table_predicts_and_differentiates_with_the_weight_term():
    plain, table = _weight_anchored()
    assert table.anchor.method == "huber-weights" and table.anchor.c_ms_per_mb == pytest.approx(0.05, rel=1e-6)
    for choices in ([0, 0, 0], [1, 2, 0], [6, 3, 5]):
        expected = 0.2 + 1.1 * plain.latency_of(choices) + 0.05 * plain.weight_mb_of(choices)
        assert table.latency_of(choices) == pytest.approx(expected, rel=1e-9)
    _, probs = softmax_probs(table)
    total, _ = table.expected_latency(probs)
    weights = cell_weights_mb(table.space, table.dtype)
    for i, grad in enumerate(torch.autograd.grad(total, probs)):
        expected = 1.1 * plain.cell_latency(i) + 0.05 * torch.tensor(weights[i], dtype=torch.float64)
        assert torch.allclose(grad, expected, rtol=1e-6)


def test_weight_anchored_file_round_trip_edits_refused_and_old_files_load(tmp_path):
    plain, table = _weight_anchored()
    path = table.save(tmp_path / "t.json")
    data = json.loads(path.read_text())
    assert data["anchor"]["method"] == "huber-weights"
    assert data["anchor"]["c_ms_per_mb"] == pytest.approx(0.05, rel=1e-6)
    assert all(n["weight_mb"] > 0 for n in data["anchor"]["networks"])
    assert LatencyTable.load(path) == table
    edited = json.loads(json.dumps(data))
    edited["anchor"]["c_ms_per_mb"] = 0.06
    (tmp_path / "edited.json").write_text(json.dumps(edited))
    with pytest.raises(ValueError, match="c_ms_per_mb do not follow"):
        LatencyTable.load(tmp_path / "edited.json")
    edited = json.loads(json.dumps(data))
    del edited["anchor"]["networks"][0]["weight_mb"]
    (tmp_path / "partial.json").write_text(json.dumps(edited))
    with pytest.raises(ValueError, match="weight_mb given for 5 of 6 networks"):
        LatencyTable.load(tmp_path / "partial.json")
    old = AnchorMap.from_dict({"method": "theil-sen", "a_ms": 0.5, "b": 1.2, "networks": [  # before the weight term
        {"choices": [0], "predicted_ms": 1.0, "measured_ms": 1.7}, {"choices": [1], "predicted_ms": 2.0,
                                                                   "measured_ms": 2.9}]})
    assert (old.a_ms, old.b, old.c_ms_per_mb) == (pytest.approx(0.5), pytest.approx(1.2), 0.0)


def test_a_weight_term_that_makes_an_entry_negative_is_refused():
    plain = make_table()
    choices = anchor_choices(plain.entries, 6, cell_weights_mb(plain.space, plain.dtype))
    predicted = [plain.latency_of(ch) for ch in choices]
    weights = [plain.weight_mb_of(ch) for ch in choices]
    heavy = max(w for row in cell_weights_mb(plain.space, plain.dtype) for w in row)
    c = -2.0 * max(max(row) for row in plain.entries) / heavy  # the heaviest op's entry would drop below 0
    measured = [10.0 + 1.0 * p + c * w for p, w in zip(predicted, weights)]
    anchor = fit_anchor_map(predicted, measured, choices, weights)
    with pytest.raises(AnchorFitError, match="negative"):
        plain.anchored(anchor)


def _anchored_table(a: float = -0.4, b: float = 1.3) -> tuple[LatencyTable, LatencyTable]:
    plain = make_table()
    choices = anchor_choices(plain.entries, 4)
    predicted = [plain.latency_of(c) for c in choices]
    return plain, plain.anchored(fit_anchor_map(predicted, [a + b * p for p in predicted], choices))


def test_anchored_table_predicts_a_plus_b_times_the_plain_sum():
    plain, table = _anchored_table()
    for choices in ([0, 0, 0], [1, 2, 0], list(table.max_latency()[1])):
        assert table.latency_of(choices) == pytest.approx(-0.4 + 1.3 * plain.latency_of(choices), rel=1e-12)
    assert table.min_latency()[1] == plain.min_latency()[1]
    assert table.stats == plain.stats  # the device's own numbers are kept as they were


def test_anchored_expected_latency_has_gradient_b_times_f():
    plain, table = _anchored_table()
    alphas, probs = softmax_probs(table)
    total, _ = table.expected_latency(probs)
    plain_total, _ = plain.expected_latency([p.detach() for p in probs])
    assert float(total) == pytest.approx(-0.4 + 1.3 * float(plain_total), rel=1e-12)
    dprobs = torch.autograd.grad(total, probs)
    for i, grad in enumerate(dprobs):
        assert torch.allclose(grad, 1.3 * plain.cell_latency(i), rtol=1e-12)


def test_anchored_file_round_trip_and_hand_edits_refused(tmp_path):
    plain, table = _anchored_table()
    path = table.save(tmp_path / "t.json")
    data = json.loads(path.read_text())
    assert data["version"] == 2 and data["anchor"]["b"] == pytest.approx(1.3)
    assert len(data["anchor"]["networks"]) == 4
    assert LatencyTable.load(path) == table
    assert table.content_hash() != plain.content_hash()
    plain_data = json.loads(plain.save(tmp_path / "p.json").read_text())
    assert plain_data["version"] == 1 and "anchor" not in plain_data
    data["anchor"]["b"] = 1.25
    (tmp_path / "edited.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="field 'anchor': a_ms/b/c_ms_per_mb do not follow"):
        LatencyTable.load(tmp_path / "edited.json")
    del data["anchor"]
    (tmp_path / "no_anchor.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="field 'anchor': version 2 files need one"):
        LatencyTable.load(tmp_path / "no_anchor.json")


def test_build_table_anchors_a_table_on_measured_networks():
    plain = device_table(backend="torch-cpu")  # what the fake device's stats sum to

    def network_ms(body):  # the device: networks 10% slower than the sum, plus 0.2 ms
        return 0.2 + 1.1 * plain.latency_of(Architecture.from_dict(body).metadata["choices"])

    device = FakeDevice(stored={s: fake_stats(s) for s in table_specs(MICRO)}, network_ms=network_ms)
    with device.client() as client:
        table = build_table(client, MICRO, backend="torch-cpu", poll_s=0.01)
    assert len(table.anchor.networks) == DEFAULT_ANCHORS
    assert len(device.architectures) == DEFAULT_ANCHORS * ANCHOR_PASSES  # every anchor in each pass
    assert (table.anchor.a_ms, table.anchor.b) == (pytest.approx(0.2, abs=1e-9), pytest.approx(1.1, rel=1e-9))
    choices = [1, 2, 0]
    assert table.latency_of(choices) == pytest.approx(network_ms({**Architecture.to_dict(
        MICRO.architecture(choices))}), rel=1e-9)
    with device.client() as client:  # every backend is anchored by default; 0 asks for the plain sum
        assert build_table(client, MICRO, backend="ort-cpu", poll_s=0.01).anchor.b == pytest.approx(1.1, rel=1e-9)
        assert build_table(client, MICRO, backend="ort-cpu", poll_s=0.01, anchors=0).anchor is None
        assert build_table(client, MICRO, backend="torch-cpu", anchors=0, poll_s=0.01).anchor is None
    assert len(device.architectures) == 2 * DEFAULT_ANCHORS * ANCHOR_PASSES  # anchors=0 measured no network


def test_build_table_fits_the_weight_term_of_a_device_whose_networks_pay_for_weights():
    plain = device_table(backend="ort-cpu")  # what the fake device's stats sum to

    def network_ms(body):  # the device: 0.2 ms + 1.1 x the sum + 0.03 ms per MB of weights
        choices = Architecture.from_dict(body).metadata["choices"]
        return 0.2 + 1.1 * plain.latency_of(choices) + 0.03 * plain.weight_mb_of(choices)

    device = FakeDevice(stored={s: fake_stats(s) for s in table_specs(MICRO)}, network_ms=network_ms)
    with device.client() as client:
        table = build_table(client, MICRO, backend="ort-cpu", poll_s=0.01)
    assert table.anchor.method == "huber-weights"
    assert table.anchor.c_ms_per_mb == pytest.approx(0.03, rel=1e-6)
    for choices in ([1, 2, 0], [6, 0, 3]):
        assert table.latency_of(choices) == pytest.approx(network_ms(Architecture.to_dict(
            MICRO.architecture(choices))), rel=1e-9)


def test_build_table_drops_a_weight_term_that_would_make_an_entry_negative(monkeypatch):
    """When the fit with the weight term (here a noisy one, as a loaded machine gives) would make an entry of the
    table negative, the table is anchored with the map without the weight term instead, which the file refits."""
    plain = device_table(backend="ort-cpu")
    weights_mb = cell_weights_mb(MICRO, "float32")
    entry, weight = min(((e, w) for row, ws in zip(plain.entries, weights_mb) for e, w in zip(row, ws) if w > 0),
                        key=lambda pair: pair[0] / pair[1])
    c = -1.2 * entry / weight  # just past the op with the lowest latency per MB: its entry turns negative

    def network_ms(body):  # the device itself: 0.2 ms + 1.1 x the sum
        return 0.2 + 1.1 * plain.latency_of(Architecture.from_dict(body).metadata["choices"])

    real_fit = latency_table_module.fit_anchor_map

    def noisy_fit(predicted, measured, choices=None, weights=None):
        if weights is None:
            return real_fit(predicted, measured, choices, None)
        return real_fit(predicted, [10.0 + p + c * w for p, w in zip(predicted, weights)], choices, weights)

    monkeypatch.setattr(latency_table_module, "fit_anchor_map", noisy_fit)
    device = FakeDevice(stored={s: fake_stats(s) for s in table_specs(MICRO)}, network_ms=network_ms)
    with device.client() as client:
        table = build_table(client, MICRO, backend="ort-cpu", poll_s=0.01)
    assert (table.anchor.method, table.anchor.c_ms_per_mb) == ("theil-sen", 0.0)
    assert table.anchor.b == pytest.approx(1.1, rel=1e-9) and min(min(row) for row in table.entries) >= 0
    assert all(n.weight_mb is None for n in table.anchor.networks)  # the file refits to the same map


def test_an_anchor_is_the_lowest_of_its_passes():
    plain = device_table(backend="torch-cpu")  # what the fake device's stats sum to
    calls: list[tuple[int, ...]] = []

    def network_ms(body):  # the first pass of every anchor ran while the machine was busy: 30% slower
        choices = tuple(Architecture.from_dict(body).metadata["choices"])
        calls.append(choices)
        slow = 1.3 if calls.count(choices) == 1 else 1.0
        return slow * (0.2 + 1.1 * plain.latency_of(list(choices)))

    device = FakeDevice(stored={s: fake_stats(s) for s in table_specs(MICRO)}, network_ms=network_ms)
    with device.client() as client:
        table = build_table(client, MICRO, backend="torch-cpu", anchors=3, poll_s=0.01)
    assert calls[:3] == calls[3:]  # pass 1 over all anchors, then pass 2
    assert (table.anchor.a_ms, table.anchor.b) == (pytest.approx(0.2, abs=1e-9), pytest.approx(1.1, rel=1e-9))
