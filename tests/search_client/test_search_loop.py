"""The search loop: determinism, resume equivalence, checkpoints, logs, warm-up, latency pressure, outputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from search_client.table.latency_table import LatencyTable
from search_client.nas.checkpoint import CHECKPOINT_NAME
from search_client.nas.config import SearchConfig
from search_client.nas.search_loop import SearchRun, run_search
from search_client.plots.search_curves import plot_search_result
from search_client.training.datasets import DataOptions
from tests.search_client.conftest import make_table

torch.set_num_threads(1)


def _table() -> LatencyTable:
    return make_table("micro-16")


def _config(table: LatencyTable, **overrides: Any) -> SearchConfig:
    low, high = table.min_latency()[0], table.max_latency()[0]
    base: dict[str, Any] = dict(targets_ms=[low + 0.4 * (high - low)], data=DataOptions("synthetic:160:10"), epochs=2,
                                warmup_epochs=0, batch_size=16, loss="add#linear", arch_every=2)
    return SearchConfig(**{**base, **overrides})


def _alphas(run: SearchRun) -> torch.Tensor:
    return torch.cat([p.detach() for p in run.supernet.arch_parameters()])


def test_same_seed_same_architecture(tmp_path: Path) -> None:
    table = _table()
    runs = []
    for name in ("a", "b"):
        run = SearchRun(_config(table, mode="two"), [table], tmp_path / name)
        run.run()
        runs.append(run)
    assert torch.equal(_alphas(runs[0]), _alphas(runs[1]))
    assert runs[0].supernet.argmax_choices() == runs[1].supernet.argmax_choices()
    other = SearchRun(_config(table, seed=1), [table], tmp_path / "c")
    other.run()
    assert not torch.equal(_alphas(runs[0]), _alphas(other))


@pytest.mark.parametrize("overrides", [{}, {"grad_estimator": "reinforce", "reinforce_samples": 2},
                                       {"adaptive": True, "warmup_epochs": 1, "epochs": 1}])
def test_resume_equals_not_stopping(tmp_path: Path, overrides: dict[str, Any]) -> None:
    table = _table()
    config = _config(table, **overrides)
    straight = SearchRun(config, [table], tmp_path / "straight")
    straight.run()
    first = SearchRun(config, [table], tmp_path / "stopped")
    first.run(stop_after_epochs=1)
    assert first.epoch == 1
    resumed = SearchRun(config, [table], tmp_path / "stopped")
    resumed.resume()
    resumed.run()
    assert torch.equal(_alphas(straight), _alphas(resumed))
    for (k, a), (_, b) in zip(straight.supernet.state_dict().items(), resumed.supernet.state_dict().items()):
        assert torch.equal(a, b), k
    assert straight.loss_fn.strength == resumed.loss_fn.strength
    drop = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in straight.history] == \
        [{k: v for k, v in r.items() if k not in drop} for r in resumed.history]


def test_checkpoint_holds_everything(tmp_path: Path) -> None:
    table = _table()
    run = SearchRun(_config(table, epochs=1), [table], tmp_path)
    run.run()
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    for key in ("config", "table_hashes", "epoch", "joint_steps", "supernet", "weight_optimizer", "arch_optimizer",
                "schedule", "sample_generator", "train_stream", "valid_stream", "loss_strength", "reinforce"):
        assert key in state
    assert state["table_hashes"] == [table.content_hash()]
    assert SearchConfig.from_dict(state["config"]) == run.config
    assert state["epoch"] == 1 and state["weight_optimizer"]["state"]


def test_resume_refuses_other_config_or_tables(tmp_path: Path) -> None:
    table = _table()
    SearchRun(_config(table, epochs=1), [table], tmp_path).run()
    changed = SearchRun(_config(table, epochs=1, seed=5, arch_lr=0.1), [table], tmp_path)
    with pytest.raises(ValueError, match="config differs .* in seed, arch_lr"):
        changed.resume()
    other_table = make_table("micro-16", scale=1.5)
    config = _config(table, epochs=1)
    other = SearchRun(config, [other_table], tmp_path)
    with pytest.raises(ValueError, match="latency tables differ"):
        other.resume()
    with pytest.raises(ValueError, match="no checkpoint"):
        SearchRun(config, [table], tmp_path / "empty").resume()


def test_warmup_trains_weights_only(tmp_path: Path) -> None:
    table = _table()
    run = SearchRun(_config(table, warmup_epochs=1, epochs=1), [table], tmp_path)
    before = _alphas(run).clone()
    weights = [p.detach().clone() for p in run.supernet.weight_parameters()]
    run.run(stop_after_epochs=1)
    assert torch.equal(_alphas(run), before) and run.arch_steps == 0
    assert any(not torch.equal(p.detach(), w) for p, w in zip(run.supernet.weight_parameters(), weights))
    assert run.history[0]["phase"] == "warmup"
    run.run()
    assert run.arch_steps == len(run.data.train) // 2 and not torch.equal(_alphas(run), before)


def test_logs_have_one_row_per_epoch(tmp_path: Path) -> None:
    table = _table()
    run = SearchRun(_config(table, warmup_epochs=1, epochs=2), [table], tmp_path)
    run.run()
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["phase"] for r in rows] == ["warmup", "search", "search"]
    for r in rows:
        assert r["argmax_ms"][0] == pytest.approx(table.latency_of(r["choices"]))
        assert 0 < r["entropy"] <= max(torch.log(torch.tensor(7.0)).item(), 0) + 1e-6
        assert 0.0 <= r["valid_acc"] <= 1.0 and r["expected_ms"][0] > table.fixed_ms
    with open(tmp_path / "log.csv", encoding="utf-8") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert len(csv_rows) == 3 and {"expected_ms_0", "argmax_ms_0", "entropy", "valid_acc"} <= set(csv_rows[0])


def test_latency_weight_pushes_the_architecture_down(tmp_path: Path) -> None:
    table = make_table("micro-16")
    low, high = table.min_latency()[0], table.max_latency()[0]
    common = dict(epochs=3, arch_every=1, arch_lr=0.1, targets_ms=[low * 1.05])
    free = SearchRun(_config(table, strength=0.0, **common), [table], tmp_path / "free")
    free.run()
    pushed = SearchRun(_config(table, strength=5.0, **common), [table], tmp_path / "pushed")
    pushed.run()
    free_ms = table.latency_of(free.supernet.argmax_choices())
    pushed_ms = table.latency_of(pushed.supernet.argmax_choices())
    assert pushed_ms < free_ms
    assert pushed_ms <= low + 0.25 * (high - low)


def test_run_search_writes_every_output(tmp_path: Path) -> None:
    table = _table()
    result = run_search(_config(table, epochs=1), [table], tmp_path)
    assert result.finished
    for name in ("log.jsonl", "log.csv", "checkpoint.pt", "arch.json", "weights.pt", "model.onnx", "summary.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert not (tmp_path / "latency.png").exists()  # the loop draws nothing; the plots come from the result
    assert plot_search_result(result) == {"latency_plot": tmp_path / "latency.png",
                                          "probabilities_plot": tmp_path / "probabilities.png"}
    assert (tmp_path / "latency.png").stat().st_size > 0 and (tmp_path / "probabilities.png").stat().st_size > 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["choices"] == result.choices
    assert summary["predicted_latency_ms"]["fake/ort-cpu"] == pytest.approx(table.latency_of(result.choices))
    with pytest.raises(ValueError, match="already holds a search checkpoint"):
        run_search(_config(table, epochs=1), [table], tmp_path)


def test_bad_configs() -> None:
    table = _table()
    with pytest.raises(ValueError, match="'mode'"):
        _config(table, mode="three")
    with pytest.raises(ValueError, match="'mode': darts"):
        _config(table, mode="darts", grad_estimator="reinforce")
    with pytest.raises(ValueError, match="'adaptive'"):
        _config(table, adaptive=True, grad_estimator="reinforce")
    with pytest.raises(ValueError, match="'epochs'"):
        _config(table, epochs=0)
    with pytest.raises(ValueError, match="'derive': expected one of within-target, argmax, got 'best'"):
        _config(table, derive="best")
    with pytest.raises(ValueError, match=r"'target_band': must be in \[0, 1\), got 1.0"):
        _config(table, target_band=1.0)
    with pytest.raises(ValueError, match="'target_band': must be a finite number >= 0, got -0.1"):
        _config(table, target_band=-0.1)
    with pytest.raises(ValueError, match="targets_ms: 2 target"):
        SearchRun(_config(table, targets_ms=[1.0, 2.0]), [table], "unused")
    with pytest.raises(ValueError, match="below the space's minimum"):
        SearchRun(_config(table, targets_ms=[table.min_latency()[0] / 2]), [table], "unused")
    with pytest.raises(ValueError, match="not a torch device"):
        SearchRun(_config(table), [table], "unused", device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            SearchRun(_config(table), [table], "unused", device="cuda")


@pytest.mark.parametrize("overrides", [{"mode": "full"}, {"mode": "full_v2"}, {"mode": "darts"},
                                       {"grad_estimator": "reinforce", "reinforce_samples": 3},
                                       {"loss": "mul#log", "log_unit_ms": 0.01, "adaptive": True}])
def test_every_mode_searches(tmp_path: Path, overrides: dict[str, Any]) -> None:
    table = _table()
    run = SearchRun(_config(table, epochs=1, **overrides), [table], tmp_path)
    before = _alphas(run).clone()
    run.run()
    assert run.arch_steps == len(run.data.train) // 2
    assert not torch.equal(_alphas(run), before)
    assert torch.isfinite(_alphas(run)).all()


def test_two_devices(tmp_path: Path) -> None:
    fast, slow = make_table("micro-16"), make_table("micro-16", scale=2.0)
    targets = [(t.min_latency()[0] + t.max_latency()[0]) / 2 for t in (fast, slow)]
    result = run_search(_config(fast, targets_ms=targets, device_mode="max"), [fast, slow], tmp_path)
    row = result.history[-1]
    assert len(row["expected_ms"]) == 2 and row["targets_ms"] == targets
    assert row["choices"] == result.derived.argmax_choices
    assert row["argmax_ms"] == [fast.latency_of(row["choices"]), slow.latency_of(row["choices"])]
    summary = json.loads((tmp_path / "summary.json").read_text())
    # both tables carry the same device name and backend: their keys are told apart by index
    derived_ms = [fast.latency_of(result.choices), slow.latency_of(result.choices)]
    assert summary["predicted_latency_ms"] == {"fake/ort-cpu#0": pytest.approx(derived_ms[0]),
                                               "fake/ort-cpu#1": pytest.approx(derived_ms[1])}
    assert summary["target_met"] and all(0.9 <= ms / t <= 1.1 for ms, t in zip(derived_ms, targets))  # each device
    keys = ["fake/ort-cpu#0", "fake/ort-cpu#1"]
    assert summary["device_ratios"] == {k: pytest.approx(ms / t) for k, ms, t in zip(keys, derived_ms, targets)}
    assert summary["device_target_met"] == dict.fromkeys(keys, True)


@pytest.mark.parametrize("rule", ["within-target", "argmax"])
def test_derive_rule_decides_the_exported_architecture(tmp_path: Path, rule: str) -> None:
    table = _table()
    # a target far above where one epoch of search leaves the argmax
    low, high = table.min_latency()[0], table.max_latency()[0]
    config = _config(table, epochs=1, targets_ms=[low + 0.5 * (high - low)], derive=rule, target_band=0.05)
    result = run_search(config, [table], tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    last = result.history[-1]
    assert summary["argmax_choices"] == last["choices"] == result.derived.argmax_choices
    assert summary["argmax_ratio"] == pytest.approx(last["argmax_ratio"])
    assert summary["derive"] == rule and summary["target_band"] == 0.05
    assert summary["choices"] == result.choices
    assert summary["ratio"] == pytest.approx(table.latency_of(result.choices) / config.targets_ms[0])
    assert abs(last["argmax_ratio"] - 1) > 0.05  # the argmax misses: the rules differ
    key = "fake/ort-cpu"
    assert summary["device_ratios"] == {key: pytest.approx(summary["ratio"])}  # one device: its ratio is the ratio
    assert summary["argmax_device_ratios"] == {key: pytest.approx(summary["argmax_ratio"])}
    assert summary["device_target_met"] == {key: summary["target_met"]}
    if rule == "argmax":
        assert result.choices == last["choices"] and summary["target_met"] is False
        assert summary["derive_kept_argmax"] is True
        assert summary["derive_changes"] == [] and summary["derive_log_prob_given_up"] == 0
    else:
        assert result.choices != last["choices"] and summary["target_met"] is True
        assert 0.95 <= summary["ratio"] <= 1.05
        # which cells the rule changed, named, and the log-probability it gave up under the final p
        assert summary["derive_kept_argmax"] is False
        names = [cell.candidate_names for cell in table.space.cells()]
        changed = [i for i, (a, c) in enumerate(zip(last["choices"], result.choices)) if a != c]
        assert summary["derive_changes"] == [{"cell": i, "argmax": names[i][last["choices"][i]],
                                              "exported": names[i][result.choices[i]]} for i in changed]
        probs = [p.detach() for p in result.supernet.probs()]
        given_up = sum(float(torch.log(probs[i][last["choices"][i]]) - torch.log(probs[i][result.choices[i]]))
                       for i in changed)
        assert summary["derive_log_prob_given_up"] == pytest.approx(given_up, rel=1e-5)
        assert summary["derive_log_prob_given_up"] > 0  # the argmax is the most probable architecture


def test_a_checkpoint_config_with_flat_data_fields_still_loads() -> None:
    config = SearchConfig(targets_ms=[1.0], data=DataOptions("synthetic:160:10", valid_per_class=2, workers=1))
    assert SearchConfig.from_dict(config.to_dict()) == config
    flat = {k: v for k, v in config.to_dict().items() if k != "data"}
    flat.update(data="synthetic:160:10", valid_fraction=0.2, valid_per_class=2, val_folder=False, workers=1,
                color_jitter=0.0)  # as written before the data options were one object
    assert SearchConfig.from_dict(flat) == config
    with pytest.raises(ValueError, match="'data.nope': unknown"):
        SearchConfig.from_dict({**config.to_dict(), "data": {"source": "digits", "nope": 1}})
