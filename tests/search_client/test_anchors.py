"""Anchored tables: the Theil-Sen map, the anchor networks, anchored entries and E[LAT], the file, build_table."""

from __future__ import annotations

import itertools
import json
import random

import pytest
import torch

from nas_ops.arch import Architecture
from nas_ops.space import PRESETS
from search_client.table.anchors import (
    ANCHOR_PASSES,
    DEFAULT_ANCHORS,
    MAX_SLOPE,
    AnchorFitError,
    anchor_choices,
    default_anchors,
    fit_anchor_map,
    pick_evenly,
    spread_choices,
)
from search_client.table.latency_table import LatencyTable, build_table, table_specs
from tests.search_client.conftest import FakeDevice, fake_stats, make_table, softmax_probs

MICRO = PRESETS["micro-16"]


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
    assert default_anchors() == DEFAULT_ANCHORS == 6


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
    with pytest.raises(ValueError, match="field 'anchor': a_ms/b do not follow"):
        LatencyTable.load(tmp_path / "edited.json")
    del data["anchor"]
    (tmp_path / "no_anchor.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="field 'anchor': version 2 files need one"):
        LatencyTable.load(tmp_path / "no_anchor.json")


def test_build_table_anchors_a_table_on_measured_networks():
    plain = make_table(backend="torch-cpu")

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


def test_an_anchor_is_the_lowest_of_its_passes():
    plain = make_table(backend="torch-cpu")
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
