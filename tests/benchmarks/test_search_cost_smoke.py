"""Smoke run of benchmarks/search_cost.py --quick (micro-16): every section runs, the report holds its fields, the
last line is in the agreed format; bad arguments are refused."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE = "benchmarks.search_cost"
from benchmarks import search_cost
LAST_LINE = (r"search_cost device=cpu weight_ratio=([\d.]+) arch_two_ratio=([\d.]+) arch_full_v2_ratio=([\d.]+) "
             r"epoch_ratio=([\d.]+) speedup_2proc=([\d.]+)")


def test_search_cost_quick_run_reports_every_section(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", MODULE, "--quick", "--out-dir", str(tmp_path)], capture_output=True,
                          text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    match = re.fullmatch(LAST_LINE, last)
    assert match, last
    assert all(float(v) > 0 for v in match.groups())
    report = json.loads((tmp_path / "search_cost_cpu.json").read_text())
    assert report["summary"] == last and report["space"] == "micro-16" and report["quick"] is True
    for case in ("compact", "weight", "arch_two", "arch_full_v2"):
        assert len(report["steps"][case]) == report["steps"]["rounds"] and min(report["steps"][case]) > 0
    assert report["epoch"]["arch_every"] == 5 and report["epoch"]["mode"] == "full_v2"
    assert report["epoch"]["search_images_s"] and report["epoch"]["compact_images_s"]
    assert set(report["processes"]["images_s"]) == {"1", "2"} == set(report["processes"]["cpu_share"])
    assert report["processes"]["threads_per_process"] == 1
    assert set(report["load_average"]) == {"steps", "epoch", "processes", "end"}
    assert len(report["choices"]) == len(report["choice_names"]) == 3
    ratios = report["ratios"]
    assert math.isclose(ratios["epoch_ratio"], float(match.group(4)), abs_tol=0.005)
    assert report["targets"]["weight_ratio"]["max"] == 1.3 and report["targets"]["speedup_2proc"]["min"] == 1.6
    assert report["targets"]["epoch_ratio"]["met"] == (ratios["epoch_ratio"] <= 1.6)
    assert "| arch_full_v2 |" in (tmp_path / "search_cost_cpu.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--procs", "1,x"], "--procs: expected comma-separated integers"),
    (["--amp"], "--amp: mixed precision is for --device cuda"),
    (["--epoch-steps", "3"], "--epoch-steps: at least 5"),
])
def test_bad_arguments_are_refused(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        search_cost.parse_args(args)
    assert info.value.code == 2 and message in capsys.readouterr().err
