"""Smoke run of benchmarks/service_load.py (--quick, SQLite): the report's fields, never its speed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.live

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = {"lookup_100", "lookup_1000_1client", "lookup_1000", "lookup_during_measure", "burst_lookups",
             "burst_measure_posts"}
SUMMARY_FIELDS = {"requests", "errors", "error_examples", "p50_ms", "p95_ms", "p99_ms", "max_ms", "seconds"}
TARGETS = {"zero_errors", "health_within_1s", "lookup_1000_p50_ms", "lookup_1000_p99_ms"}
LAST_LINE = re.compile(r"targets \(0 errors, health < 1 s, 1000-spec lookup p50 < 20 ms and p99 < 100 ms with 8 "
                       r"clients\): sqlite: errors=\d+ (PASS|FAIL), health max=[\d.]+s (PASS|FAIL), "
                       r"p50=[\d.-]+ms (PASS|FAIL), p99=[\d.-]+ms (PASS|FAIL)")


def test_quick_run_on_sqlite_writes_a_complete_report(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "benchmarks.service_load", "--db", "sqlite", "--quick",
           "--out-dir", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode in (0, 1), done.stderr  # 1: a target failed; the run itself completed
    last = done.stdout.strip().splitlines()[-1]
    match = LAST_LINE.fullmatch(last)
    assert match, last
    report = json.loads((tmp_path / "service_load_sqlite.json").read_text())
    assert report["db"] == "sqlite" and report["clients"] == 8 and report["table_ops"] >= 100
    assert set(report["scenarios"]) == SCENARIOS and report["skipped"] == []
    for name, summary in report["scenarios"].items():
        assert SUMMARY_FIELDS <= set(summary), name
        assert summary["requests"] >= 1 and 0 <= summary["errors"] <= summary["requests"], (name, summary)
    assert report["scenarios"]["lookup_during_measure"]["job_ops"] >= 1
    assert set(report["scenarios"]["burst_measure_posts"]["jobs"]) <= {"queued", "running", "done", "failed",
                                                                       "cancelled", "unreachable"}
    health = report["health"]
    assert health["requests"] >= 1 and health["max_s"] >= 0 and SUMMARY_FIELDS <= set(health)
    assert set(report["targets"]) == TARGETS
    assert all(set(t) == {"value", "target", "pass"} for t in report["targets"].values())
    assert report["passed"] == all(t["pass"] for t in report["targets"].values())
    assert (done.returncode == 0) == report["passed"]
    verdicts = [m == "PASS" for m in match.groups()]
    assert verdicts == [report["targets"][t]["pass"] for t in
                        ("zero_errors", "health_within_1s", "lookup_1000_p50_ms", "lookup_1000_p99_ms")]
    markdown = (tmp_path / "service_load_sqlite.md").read_text()
    assert "| lookup_1000 |" in markdown and "| health_within_1s |" in markdown
    assert report["context"]["backend"] == "ort-cpu" and len(report["context"]["env_hash"]) == 64


def test_unreachable_postgres_is_a_one_line_error() -> None:
    cmd = [sys.executable, "-m", "benchmarks.service_load", "--db", "postgres", "--quick",
           "--postgres", "postgresql+psycopg://postgres@127.0.0.1:1/test"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert done.stderr.startswith("service_load: PostgreSQL server postgresql+psycopg://postgres@127.0.0.1:1/test "
                                  "unreachable: ") and len(done.stderr.strip().splitlines()) == 1
