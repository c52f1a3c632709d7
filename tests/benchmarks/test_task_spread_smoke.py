"""Plumbing of benchmarks/task_spread.py on a tiny budget: the report's fields, the summary's arithmetic and the
last line's format; bad arguments are refused."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from benchmarks import task_spread
from nas_ops.space import load_space

LAST_LINE = (r"task_spread task=glass seed=3 networks=2 best=([\d.]+) worst=([\d.]+) spread=([\d.]+) "
             r"spearman=(-?[\d.]+|nan) kendall=(-?[\d.]+|nan) wall_s=([\d.]+) cpu_s=([\d.]+) targets=(met|NOT met)")


def test_tiny_run_reports_every_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = task_spread.main(["--task", "glass", "--networks", "2", "--epochs", "1", "--images", "60",
                             "--seed", "3", "--out-dir", str(tmp_path)])
    assert code == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(LAST_LINE, last), last
    report = json.loads((tmp_path / "task_spread_glass_s3.json").read_text())
    assert report["summary_line"] == last and report["source"] == "synthetic:glass:60"
    assert report["space"] == "tiny-32" and report["seed"] == 3
    budget = report["budget"]
    assert budget["epochs"] == 1 and budget["train_images"] + budget["valid_images"] == 60
    rows = report["networks"]
    expected = task_spread.draw_architectures(load_space("tiny-32"), 2, 3)
    assert [r["choices"] for r in rows] == expected
    for r in rows:
        assert 0.0 <= r["top1"] <= 1.0 and r["latency_ms"] > 0 and r["seconds"] > 0 and r["cpu_s"] > 0
        assert len(r["choice_names"]) == len(r["choices"])
    s = report["summary"]
    accs = [r["top1"] for r in rows]
    assert s["best"] == max(accs) and s["worst"] == min(accs) and s["spread"] == pytest.approx(max(accs) - min(accs))
    assert s["chance"] == pytest.approx(0.1) and s["classes"] == 10
    assert set(s["targets"]) == {"spread", "worst", "best", "spearman"}
    assert s["all_met"] == all(t["met"] for t in s["targets"].values())
    assert report["wall_s"] > 0 and report["cpu_s"] == pytest.approx(sum(r["cpu_s"] for r in rows))
    assert len(report["machine"]["load_before"]) == 3
    assert "| # | choices | latency ms |" in (tmp_path / "task_spread_glass_s3.md").read_text()


def test_summary_of_known_figures() -> None:
    rows = [{"top1": a, "latency_ms": lat} for a, lat in [(0.3, 1.0), (0.5, 2.0), (0.45, 3.0), (0.7, 4.0)]]
    s = task_spread.summarise(rows, 10)
    assert s["spread"] == pytest.approx(0.4) and s["worst"] == 0.3 and s["best"] == 0.7
    assert s["spearman"] == pytest.approx(0.8) and s["kendall"] == pytest.approx(4 / 6)
    assert s["all_met"]
    flat = task_spread.summarise([{"top1": 0.1, "latency_ms": 1.0}, {"top1": 0.1, "latency_ms": 2.0}], 10)
    assert flat["spearman"] is None and not flat["targets"]["spearman"]["met"] and not flat["all_met"]


def test_sources_of_tasks() -> None:
    assert task_spread.data_source("glass", 500) == "synthetic:glass:500"
    assert task_spread.data_source("digits", 500) == "digits"


@pytest.mark.parametrize("args, message", [
    (["--networks", "0"], "--networks: must be >= 1"),
    (["--lr", "-1"], "--lr: must be a positive number"),
    (["--table", "/nonexistent.json"], "--table: /nonexistent.json does not exist"),
])
def test_bad_arguments_are_refused(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        task_spread.parse_args(args)
    assert info.value.code == 2 and message in capsys.readouterr().err
