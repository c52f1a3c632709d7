"""benchmarks/cuda_checks.sh on a machine without a GPU: it parses, runs only the chosen steps, logs each one with
its exit code, and exits with the number of steps that failed (CI has no GPU; the script's CUDA figures come from a
GPU machine, benchmarks/results/cuda_h200.md)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "cuda_checks.sh"


def run(out: Path, steps: str, python: str = sys.executable) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), str(out), python], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "CUDA_CHECKS_STEPS": steps})


def test_the_script_parses() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU machine: the env step would pass")
def test_a_failed_step_is_logged_and_counted_in_the_exit_status(tmp_path: Path) -> None:
    result = run(tmp_path, "env", python="false")  # no nvidia-smi here, and a Python that fails
    assert result.returncode == 1, result.stdout + result.stderr
    log = (tmp_path / "cuda_checks.log").read_text()
    assert "===== env (limit 30 s)" in log
    assert "===== env: exit 1 in" in log and "===== env: exit 1 in" in result.stdout
    assert "===== tests" not in log and "===== e2e" not in log  # only the chosen step ran


def test_no_chosen_step_runs_nothing_and_passes(tmp_path: Path) -> None:
    result = run(tmp_path, "none")
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (tmp_path / "cuda_checks.log").exists()
