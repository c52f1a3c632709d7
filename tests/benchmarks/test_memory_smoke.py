"""Smoke run of benchmarks/memory.py on the micro space: reports written, last line in the agreed format."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import torch

from nas_ops.space import SPACES

ROOT = Path(__file__).resolve().parents[2]
from benchmarks import memory


def test_memory_benchmark_smoke(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "benchmarks.memory", "--space", "micro-16", "--resolution", "0",
           "--batch", "8", "--device", "cpu", "--cases", "compact,two_arch,darts", "--out-dir", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    pattern = (r"memory device=cpu compact_mb=([\d.]+) two_mb=([\d.]+) full_mb=nan darts_mb=([\d.]+) "
               r"two_ratio=([\d.]+) darts_ratio=([\d.]+)")
    match = re.fullmatch(pattern, last)
    assert match, last
    compact, two, darts = (float(match.group(i)) for i in (1, 2, 3))
    assert compact > 0 and two > 0 and darts > two  # every path of the mixture lives in memory
    report = json.loads((tmp_path / "memory_cpu.json").read_text())
    assert [r["case"] for r in report["results"]] == ["compact", "two_arch", "darts"]
    assert report["results"][0]["ratio_to_compact"] == 1.0
    assert "| two_arch |" in (tmp_path / "memory_cpu.md").read_text()


def test_each_case_runs_its_step_in_process() -> None:
    torch.set_num_threads(1)
    space = SPACES["micro-16"]
    for case in memory.CASES:
        step = memory.build_step(case, space, 2, torch.device("cpu"))
        step()


def test_bad_arguments_are_refused() -> None:
    done = subprocess.run([sys.executable, "-m", "benchmarks.memory", "--cases", "compact,nope"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and "--cases: unknown nope" in done.stderr
