"""Smoke run of benchmarks/duet_probes.py on the micro space: every candidate reference gets its figures."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE = "benchmarks.duet_probes"
CANDIDATES = {"canary_op", "mbconv_op", "memory_read", "matmul", "network"}
LAST_LINE = re.compile(r"duet_probes backend=ort-cpu space=micro-16 best=(\w+) raw_spread=([\d.]+) "
                       r"best_spread=([\d.]+)")


def test_smoke_reports_every_candidate_for_every_network(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", MODULE, "--space", "micro-16", "--resolution", "12", "--networks",
                           "2", "--seconds", "0.5", "--block-runs", "2", "--cache-flush-kib", "64", "--out-dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr
    match = LAST_LINE.fullmatch(done.stdout.strip().splitlines()[-1])
    assert match and match.group(1) in CANDIDATES
    report = json.loads((tmp_path / "duet_probes_ort-cpu_micro-16_r12.json").read_text())
    assert report["blocks"] >= 2 and len(report["networks"]) == 2 and report["best"] == match.group(1)
    for network, series in zip(report["networks"], report["series"]):
        assert set(network["candidates"]) == CANDIDATES
        assert all(len(values) == report["blocks"] for values in series.values())
        for figures in network["candidates"].values():
            assert -1 <= figures["correlation"] <= 1 and figures["ratio_spread"] >= 0
    assert "| network | ms | raw spread |" in (tmp_path / "duet_probes_ort-cpu_micro-16_r12.md").read_text()


@pytest.mark.parametrize("args", [["--backend", "nope"], ["--networks", "0"]])
def test_bad_arguments_exit_with_a_message(tmp_path: Path, args: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", MODULE, *args, "--out-dir", str(tmp_path)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 2 and done.stderr.strip()
