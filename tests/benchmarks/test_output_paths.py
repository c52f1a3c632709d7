"""Running a benchmark with its defaults never changes the git tree: every report goes to an ignored folder."""

from __future__ import annotations

import importlib
import subprocess

import pytest

from benchmarks.common import OUT_DIR, ROOT

BENCHMARKS = ("data_pipeline", "duet_probes", "fidelity", "memory", "readme_path", "search_cost", "service_load",
              "task_spread")


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_default_output_folder_is_the_ignored_one(name: str) -> None:
    module = importlib.import_module(f"benchmarks.{name}")
    assert module.parse_args([]).out_dir == OUT_DIR


def test_the_output_folder_is_ignored_and_holds_nothing_tracked() -> None:
    if _git("rev-parse", "--is-inside-work-tree").returncode != 0:
        pytest.skip("not a git checkout")
    probe = OUT_DIR / "fidelity_probe.json"
    assert _git("check-ignore", "-q", str(probe)).returncode == 0, f"{OUT_DIR} is not ignored by .gitignore"
    assert _git("ls-files", "--", str(OUT_DIR.relative_to(ROOT))).stdout == ""


def test_results_hold_only_curated_markdown_and_few_plots() -> None:
    """benchmarks/results/ keeps dated reports (markdown, at most one plot each), never raw JSON or logs."""
    results = ROOT / "benchmarks" / "results"
    files = [p for p in results.iterdir() if p.is_file()]
    reports = [p for p in files if p.suffix == ".md"]
    assert reports and {p.suffix for p in files} <= {".md", ".png"}
    assert len([p for p in files if p.suffix == ".png"]) <= len(reports)
    assert sum(p.stat().st_size for p in files) < 3 * 2**20
    for report in reports:
        head = "\n".join(report.read_text(encoding="utf-8").splitlines()[:12])
        assert "Date:" in head and "Command:" in head and "Machine:" in head, report.name
