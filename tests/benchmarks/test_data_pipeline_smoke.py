"""Smoke run of benchmarks/data_pipeline.py --quick: the reports' fields and the last line's format (not speed)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULE = "benchmarks.data_pipeline"


def test_quick_run_writes_complete_reports(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", MODULE, "--quick", "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=280, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "data_pipeline_quick.json").read_text())
    assert report["quick"] is True and report["sizes"] == [120, 400] and report["input_size"] == 56
    assert [g["images"] for g in report["generated"]] == [120, 400]
    assert [t["workers"] for t in report["throughput"]] == [0, 2]
    for run in report["throughput"]:
        assert run["images"] > 0 and run["images_per_s"] > 0 and run["cores_obtained"] > 0
        assert run["main_cpu_s"] >= 0 and run["workers_cpu_s"] >= 0
    assert report["throughput"][1]["workers_cpu_s"] > 0  # the two workers' decoding is counted
    for run, size in zip(report["epochs"], (120, 400)):
        assert run["images"] == size and run["workers"] == 2
        # every train batch of the epoch was read (10 classes, 5 images each held out), a valid batch every 5
        assert run["train_batches"] == (size - 50) // 16 and run["valid_batches"] == run["train_batches"] // 5
        assert run["main_peak_rss_mb"] >= run["base_rss_mb"] > 0
        assert run["worker_peak_rss_mb"] > 0 and run["tree_peak_pss_mb"] > 0
        assert 0 < run["file_list_bytes"] < 64 * size  # paths and labels only
    targets = report["targets"]
    assert set(targets) >= {"rss_ratio", "rss_met", "speedup", "speedup_met", "tree_pss_ratio"}
    assert targets["rss_ratio"] == report["epochs"][1]["main_peak_rss_mb"] / report["epochs"][0]["main_peak_rss_mb"]
    assert {"cpu", "cores", "sched_autogroup", "load_before", "load_after"} <= set(report["machine"])
    last = done.stdout.strip().splitlines()[-1]
    pattern = (r"data_pipeline w0_img_s=[\d.]+ w2_img_s=[\d.]+ speedup=[\d.]+ \(target >= 1\.6: (met|NOT met)\) "
               r"rss_120=[\d.]+MB rss_400=[\d.]+MB rss_ratio=[\d.]+ \(target <= 1\.2: (met|NOT met)\) "
               r"tree_pss_ratio=[\d.]+ load1=[\d.]+")
    assert re.fullmatch(pattern, last), last
    markdown = (tmp_path / "data_pipeline_quick.md").read_text()
    assert "## Targets" in markdown and last in markdown


def test_bad_arguments_are_refused() -> None:
    done = subprocess.run([sys.executable, "-m", MODULE, "--sizes", "10,20000"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2 and "--sizes: each folder needs at least 100 images" in done.stderr
