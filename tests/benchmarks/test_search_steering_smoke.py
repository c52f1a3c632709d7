"""Smoke run of benchmarks/search_steering.py on a tiny budget: every mechanism trains as many epochs, each run's
figures are read from the search's log and the report holds them; unknown mechanisms are refused."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import search_steering

MODULE = "benchmarks.search_steering"


@pytest.mark.parametrize("mechanism", list(search_steering.MECHANISMS))
def test_every_mechanism_trains_the_same_epochs(mechanism: str) -> None:
    options = search_steering.search_options(mechanism, 10)
    assert options["warmup_epochs"] + options["epochs"] == 10 and "warmup_share" not in options


def test_a_tiny_run_reports_each_runs_steering(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", MODULE, "--epochs", "2", "--data", "synthetic:200:10", "--targets",
                           "0.3,0.7", "--mechanisms", "default,warmup+sq#log+adaptive", "--jobs", "1", "--out-dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.fullmatch(r"search_steering best=\S+ within10=\d+/2", done.stdout.strip().splitlines()[-1])
    report = json.loads((tmp_path / "search_steering.json").read_text())
    assert [(r["mechanism"], r["share"]) for r in report["runs"]] == [
        ("default", 0.3), ("default", 0.7), ("warmup+sq#log+adaptive", 0.3), ("warmup+sq#log+adaptive", 0.7)]
    for run in report["runs"]:
        assert run["argmax_ratio"] > 0 and 0 <= run["early_zero_cells"] <= 7 and len(run["argmax_choices"]) == 7
    assert [s["runs"] for s in report["summary"]] == [2, 2]
    assert "- Date:" in (tmp_path / "search_steering.md").read_text()


def test_an_unknown_mechanism_is_refused() -> None:
    done = subprocess.run([sys.executable, "-m", MODULE, "--mechanisms", "magic"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2 and "unknown mechanism(s) magic" in done.stderr
