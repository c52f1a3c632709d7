"""Smoke run of benchmarks/fidelity.py on the micro space, and its statistics helpers."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nas_ops.space import load_space

ROOT = Path(__file__).resolve().parents[2]
_SPEC = importlib.util.spec_from_file_location("benchmarks_fidelity", ROOT / "benchmarks" / "fidelity.py")
assert _SPEC is not None and _SPEC.loader is not None
fidelity = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = fidelity  # its dataclasses look their module up there
_SPEC.loader.exec_module(fidelity)

LAST_LINE = re.compile(r"fidelity backend=(\S+) space=(\S+) archs=(\d+) within5=([\d.]+) within10=([\d.]+) "
                       r"tau=(-?[\d.]+) mape=([\d.]+)")


def test_fidelity_smoke_run_writes_reports_and_ends_with_the_summary_line(tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "fidelity.py"), "--backend", "ort-cpu", "--space", "micro-16",
           "--resolution", "12", "--archs", "2", "--quick", "--out-dir", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    match = LAST_LINE.fullmatch(lines[-1])
    assert match, lines[-1]
    assert match.group(1, 2, 3) == ("ort-cpu", "micro-16", "2")
    assert 0 <= float(match.group(5)) <= 1 and 0 <= float(match.group(4)) <= float(match.group(5))
    assert any(line.startswith("table: ") and " ops measured in " in line for line in lines)
    stem = tmp_path / "fidelity_ort-cpu_micro-16_r12"
    report = json.loads(stem.with_suffix(".json").read_text())
    assert report["config"]["resolution"] == 12 and len(report["architectures"]) == 2
    assert report["table"]["ops"] == len(fidelity.table_specs(load_space("micro-16").with_resolution(12, 12)))
    assert report["metrics"]["within10"] == pytest.approx(float(match.group(5)), abs=1e-3)
    assert stem.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| within +-10% |" in stem.with_suffix(".md").read_text()
    assert any(line.startswith("ground truth: round-to-round tau ") for line in lines)


def test_unknown_backend_exits_with_a_message(tmp_path: Path) -> None:
    assert fidelity.main(["--backend", "ort-nothing", "--out-dir", str(tmp_path)]) == 2
    assert not list(tmp_path.iterdir())


def test_kendall_tau_b() -> None:
    assert fidelity.kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert fidelity.kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # one discordant pair of six: (5 - 1) / 6
    assert fidelity.kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    # tau-b with a tie in y (scipy.stats.kendalltau gives 0.9128709...)
    assert fidelity.kendall_tau([1, 2, 3, 4], [1, 2, 2, 3]) == pytest.approx(0.9128709291752769)
    with pytest.raises(ValueError, match="same length"):
        fidelity.kendall_tau([1, 2], [1])


def test_table_specs_hold_fixed_ops_candidates_and_identity_blocks() -> None:
    space = load_space("micro-16")
    specs = fidelity.table_specs(space)
    assert len(specs) == len(set(specs))
    assert set(space.fixed_specs()) <= set(specs)
    assert not any(spec.kind == "zero" for spec in specs)
    for cell in space.cells():
        for index, spec in enumerate(cell.candidates):
            assert (spec in specs) == (index != cell.zero_index)
    rows = [fidelity.Row([0], 10.8, [fidelity.Stats.from_samples([9.0]), fidelity.Stats.from_samples([11.0])]),
            fidelity.Row([1], 18.6, [fidelity.Stats.from_samples([20.0])])]
    assert rows[0].measured_ms == 10.0
    summary = fidelity.summarize(rows)
    assert summary["within10"] == 1.0 and summary["within5"] == 0.0
    assert summary["mape"] == pytest.approx(0.075) and summary["mean_error"] == pytest.approx(0.005)


def _stats(median_ms: float) -> "fidelity.Stats":
    return fidelity.Stats.from_samples([median_ms])


def test_round_agreement_is_the_noise_ceiling() -> None:
    # three networks, two rounds: round 2 swaps the ranks of the first two networks
    rows = [fidelity.Row([0], 1.0, [_stats(1.0), _stats(1.2)]),
            fidelity.Row([1], 1.0, [_stats(1.1), _stats(1.0)]),
            fidelity.Row([2], 1.0, [_stats(2.0), _stats(2.0)])]
    agreement = fidelity.round_agreement(rows)
    assert agreement["round_tau"] == pytest.approx(1 / 3)
    # spreads 0.2/1.1, 0.1/1.05, 0: the median is 0.1/1.05
    assert agreement["round_spread"] == pytest.approx(0.1 / 1.05)
    assert fidelity.summarize(rows)["round_tau"] == pytest.approx(1 / 3)
