"""LatencyTable: entries, E[LAT] gradient, exact min/max, file round trip, missing entries, build_table."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from nas_ops.counting import space_working_set_bytes
from nas_ops.space import SPACES, Candidate, SearchSpace, Stage
from nas_ops.spec import format_spec
from search_client.device.errors import MissingEntriesError
from search_client.table.latency_table import LatencyTable, build_table, table_specs
from tests.search_client.conftest import (
    FAKE_DEVICE,
    FAKE_FINGERPRINT,
    FakeDevice,
    fake_median_ms,
    fake_stats,
    make_table,
    softmax_probs,
)

MICRO = SPACES["micro-16"]


def test_table_specs_are_fixed_then_unique_candidates_without_zero():
    specs = table_specs(MICRO)
    assert specs[:3] == [format_spec(s) for s in MICRO.fixed_specs()]
    assert len(specs) == 3 + 6 + 6  # cells 0 and 1 share their candidates
    assert not any(s.startswith("zero_") for s in specs)


def test_entries_fixed_and_zero():
    table = make_table()
    fixed = sum(fake_median_ms(format_spec(s)) for s in MICRO.fixed_specs())
    assert table.fixed_ms == pytest.approx(fixed, rel=1e-12)
    for cell, row in zip(MICRO.cells(), table.entries):
        for j, op in enumerate(cell.candidates):
            expected = 0.0 if j == cell.zero_index else fake_median_ms(format_spec(op))
            assert row[j] == expected
    assert table.cell_latency(0).dtype == torch.float64 and table.cell_latency(0).shape == (7,)
    assert table.cell_latency(2).shape == (6,)
    assert set(table.stats) == set(table_specs(MICRO))


def test_expected_latency_value_and_breakdown():
    table = make_table()
    _, probs = softmax_probs(table)
    total, per_cell = table.expected_latency(probs)
    manual = [sum(float(p.detach()[j]) * f for j, f in enumerate(row)) for p, row in zip(probs, table.entries)]
    assert per_cell.shape == (3,)
    assert per_cell.tolist() == pytest.approx(manual, rel=1e-12)
    assert total.detach().item() == pytest.approx(table.fixed_ms + sum(manual), rel=1e-12)


def test_expected_latency_gradient_matches_finite_differences():
    table = make_table()
    alphas, _ = softmax_probs(table, seed=3)

    def total_of(*alpha):
        return table.expected_latency([torch.softmax(a, dim=0) for a in alpha])[0]

    assert torch.autograd.gradcheck(total_of, tuple(alphas), eps=1e-6, atol=1e-7)


def test_gradient_with_respect_to_probs_is_f():
    table = make_table()
    probs = [torch.full((len(row),), 1.0 / len(row), dtype=torch.float64, requires_grad=True)
             for row in table.entries]
    total, _ = table.expected_latency(probs)
    grads = torch.autograd.grad(total, probs)
    for i, grad in enumerate(grads):
        assert torch.equal(grad, table.cell_latency(i))


def test_expected_latency_keeps_the_dtype_of_probs():
    table = make_table()
    alphas, probs = softmax_probs(table, dtype=torch.float32)
    total, per_cell = table.expected_latency(probs)
    assert total.dtype == torch.float32 and per_cell.dtype == torch.float32
    total.backward()
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in alphas)


def test_expected_latency_rejects_wrong_shapes():
    table = make_table()
    with pytest.raises(ValueError, match="probs: 2 tensors for 3 cells"):
        table.expected_latency([torch.ones(7), torch.ones(7)])
    with pytest.raises(ValueError, match=r"probs\[2\]: expected a tensor of shape \(6,\)"):
        table.expected_latency([torch.ones(7), torch.ones(7), torch.ones(7)])


def test_one_hot_expectation_equals_latency_of():
    table = make_table()
    choices = [6, 2, 5]
    probs = [torch.nn.functional.one_hot(torch.tensor(c), len(row)).double() for c, row in zip(choices, table.entries)]
    expected = table.expected_latency(probs)[0].detach().item()
    assert expected == pytest.approx(table.latency_of(choices), rel=1e-12)
    assert table.latency_of(choices) == pytest.approx(table.fixed_ms + table.entries[1][2] + table.entries[2][5])
    with pytest.raises(ValueError, match=r"choices\[2\]: expected a candidate index 0..5, got 6"):
        table.latency_of([0, 0, 6])
    with pytest.raises(ValueError, match="choices: 2 values for 3 cells"):
        table.latency_of([0, 0])


def test_min_and_max_are_exact_by_brute_force():
    table = make_table()
    all_choices = list(itertools.product(*[range(len(row)) for row in table.entries]))
    assert len(all_choices) == MICRO.size() == 294
    latencies = {c: table.latency_of(list(c)) for c in all_choices}
    best = min(latencies, key=latencies.get)
    worst = max(latencies, key=latencies.get)
    assert table.min_latency() == (pytest.approx(latencies[best]), list(best))
    assert table.max_latency() == (pytest.approx(latencies[worst]), list(worst))
    assert table.min_latency()[1][:2] == [6, 6]  # Zero (0 ms) wins wherever it is allowed


def test_min_max_on_a_custom_space_without_zero():
    space = SearchSpace(name="tri", input_size=(8, 8), stem_chs=4, stem_stride=1, first_block_chs=4,
                        stages=(Stage(8, 1, 2), Stage(8, 2, 1)), candidates=(Candidate(3, 3.0), Candidate(5, 6.0)),
                        allow_zero=False, mix_chs=16, num_classes=5)
    table = make_table(space)
    brute = [table.latency_of(list(c)) for c in itertools.product(range(2), repeat=3)]
    assert table.min_latency()[0] == pytest.approx(min(brute))
    assert table.max_latency()[0] == pytest.approx(max(brute))
    assert len(space.fixed_specs()) == 4  # stem, first block, mix, head all in fixed_ms
    assert table.fixed_ms == pytest.approx(sum(fake_median_ms(format_spec(s)) for s in space.fixed_specs()))


def test_from_stats_lists_every_missing_spec():
    specs = table_specs(MICRO)
    dropped = [specs[0], specs[4], specs[-1]]
    stats = {s: fake_stats(s) for s in specs if s not in dropped}
    with pytest.raises(MissingEntriesError) as info:
        LatencyTable.from_stats(MICRO, stats, device=FAKE_DEVICE, backend="ort-cpu", batch=1, protocol_version="p",
                                env_hash="e")
    assert info.value.missing == dropped
    assert all(s in str(info.value) for s in dropped)
    assert isinstance(info.value, ValueError)


def test_from_stats_rejects_bad_stats_and_device():
    specs = table_specs(MICRO)
    stats = {s: fake_stats(s) for s in specs}
    stats[specs[5]] = {**stats[specs[5]], "median_ms": -1.0}
    with pytest.raises(ValueError, match=f"stats of {specs[5]}: median_ms must be a finite number >= 0"):
        LatencyTable.from_stats(MICRO, stats, device=FAKE_DEVICE, backend="b", batch=1, protocol_version="p",
                                env_hash="e")
    good = {s: fake_stats(s) for s in specs}
    with pytest.raises(ValueError, match="device: missing field.*fingerprint_hash"):
        LatencyTable.from_stats(MICRO, good, device={"url": "u", "name": "n", "fingerprint": {}}, backend="b",
                                batch=1, protocol_version="p", env_hash="e")


def test_file_round_trip_is_equal_including_stats(tmp_path):
    table = make_table()
    path = table.save(tmp_path / "t.json")
    loaded = LatencyTable.load(path)
    assert loaded == table
    assert loaded.stats == table.stats and loaded.entries == table.entries
    assert loaded.content_hash() == table.content_hash()
    data = json.loads(path.read_text())
    assert data["format"] == "proxyless-latency-table" and data["version"] == 1
    assert data["cells"][0]["candidates"][6] == {"name": "Zero", "op": "zero_r16x16_c8-8_s1", "latency_ms": 0.0,
                                                 "stats": None}
    assert data["device"]["fingerprint"] == FAKE_FINGERPRINT and data["threads"] == 1


def test_load_rejects_edited_files(tmp_path):
    path = make_table().save(tmp_path / "t.json")
    data = json.loads(path.read_text())
    data["cells"][1]["candidates"][0]["latency_ms"] = 0.001
    (tmp_path / "edited.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"cells\[1\]'.*latency_ms values disagree"):
        LatencyTable.load(tmp_path / "edited.json")

    data = json.loads(path.read_text())
    data["fixed"][0]["stats"]["median_ms"] += 1.0
    (tmp_path / "stats.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="content_hash"):
        LatencyTable.load(tmp_path / "stats.json")

    data = json.loads(path.read_text())
    del data["cells"][2]["candidates"][3]["stats"]
    (tmp_path / "broken.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="malformed entry"):
        LatencyTable.load(tmp_path / "broken.json")

    (tmp_path / "other.json").write_text(json.dumps({"format": "proxyless-arch"}))
    with pytest.raises(ValueError, match="not a latency table"):
        LatencyTable.load(tmp_path / "other.json")


def test_content_hash_changes_with_numbers_and_context():
    base = make_table()
    assert make_table().content_hash() == base.content_hash()
    assert make_table(scale=1.5).content_hash() != base.content_hash()
    assert make_table(backend="torch-cpu").content_hash() != base.content_hash()
    assert make_table(env_hash="d" * 64).content_hash() != base.content_hash()


def test_build_table_measures_missing_entries_on_the_device():
    device = FakeDevice(stored={s: fake_stats(s) for s in table_specs(MICRO)[:5]})
    with device.client() as client:
        table = build_table(client, MICRO, backend="ort-cpu", poll_s=0.01, anchors=0)  # the plain sum
    assert device.measured == table_specs(MICRO)[5:]
    assert table.device == FAKE_DEVICE
    assert (table.backend, table.batch, table.dtype, table.threads) == ("ort-cpu", 1, "float32", 1)
    assert table.env_hash == "e" * 64 and table.protocol_version == "test-1"
    assert table.stats == {spec: fake_stats(spec) for spec in table_specs(MICRO)}
    assert table.working_set_bytes == space_working_set_bytes(MICRO, 1, "float32") and table.quality.ok


def test_build_table_without_measuring_lists_missing():
    device = FakeDevice(stored={s: fake_stats(s) for s in table_specs(MICRO)[:5]})
    with device.client() as client, pytest.raises(MissingEntriesError) as info:
        build_table(client, MICRO, backend="ort-cpu", measure_missing=False)
    assert info.value.missing == table_specs(MICRO)[5:]
    assert device.measured == []
