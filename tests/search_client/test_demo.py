"""The demo (README's first command) in its reduced-size mode: every step runs and the summary is consistent."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from nas_ops.arch_files import load_architecture
from nas_ops.space import load_space
from search_client.table.latency_table import LatencyTable

pytestmark = pytest.mark.live


@pytest.mark.timeout(900)  # two whole demo runs as subprocesses; on a loaded 2-core machine they take minutes
def test_quick_demo_writes_a_consistent_summary_and_leaves_no_process(tmp_path) -> None:
    out = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "search_client.cli.demo", "--quick", "--out", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "proxyless-hw demo: summary" in result.stdout

    summary = json.loads((out / "summary.json").read_text())
    for key in ("table", "heatmap", "search", "architecture"):
        assert (tmp_path / summary["files"][key]).exists() or (out / summary["files"][key]).exists(), key
    table = LatencyTable.load(out / "table.json")
    space = load_space(summary["space"])
    assert summary["table_ops"] == len(table.stats)
    assert summary["space_min_ms"] == pytest.approx(table.min_latency()[0], abs=1e-4)
    assert summary["space_max_ms"] == pytest.approx(table.max_latency()[0], abs=1e-4)
    assert summary["space_min_ms"] < summary["target_ms"] < summary["space_max_ms"]
    assert summary["predicted_ms"] == pytest.approx(table.latency_of(summary["choices"]), abs=1e-4)
    assert summary["architecture"] == [cell.candidate_names[c] for cell, c in zip(space.cells(), summary["choices"])]
    assert summary["measured_ms"] > 0
    error = (summary["predicted_ms"] - summary["measured_ms"]) / summary["measured_ms"]
    assert summary["prediction_error"] == pytest.approx(error, abs=1e-3)
    assert 0.0 <= summary["retrained_top1"] <= 1.0
    arch = load_architecture(summary["files"]["architecture"])
    assert arch.metadata["choices"] == summary["choices"]

    leftover = subprocess.run(["pgrep", "-f", f"sqlite:///{out.resolve()}"], capture_output=True, text=True)
    assert leftover.stdout.strip() == ""  # the profiler was stopped

    # `make demo` again on the same directory: the previous search is replaced, the stored table reused
    again = subprocess.run([sys.executable, "-m", "search_client.cli.demo", "--quick", "--out", str(out)],
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"replacing the previous demo run's {out / 'search'}" in again.stderr
    second = json.loads((out / "summary.json").read_text())
    # the stored ops are reused; the anchors are networks measured again for real, so the anchored table (and
    # the architecture searched on it) may differ by their noise: no equal choices asserted
    assert second["table_ops"] == summary["table_ops"] and len(second["choices"]) == len(summary["choices"])
