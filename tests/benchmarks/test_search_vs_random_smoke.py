"""The plumbing of benchmarks/search_vs_random.py on a tiny budget: the random networks are distinct, other than
the searched one and within the latency window of it; every network is trained with the same budget and seed; the
report and plot are written."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import search_vs_random
from search_client.table.latency_table import LatencyTable

MODULE = "benchmarks.search_vs_random"


def test_random_networks_are_drawn_within_the_window() -> None:
    table = LatencyTable.load(search_vs_random.DEFAULT_TABLE)
    searched = table.space.random_choices(random.Random(1))
    latency = table.latency_of(searched)
    drawn = search_vs_random.random_within(table, latency, 0.03, 12, random.Random(2), searched)
    assert len({tuple(c) for c in drawn}) == 12 and searched not in drawn
    assert all(abs(table.latency_of(c) / latency - 1) <= 0.03 for c in drawn)
    with pytest.raises(ValueError, match="within"):
        search_vs_random.random_within(table, table.min_latency()[0] * 0.5, 0.01, 1, random.Random(0), [])


def test_percentile_counts_ties_half() -> None:
    assert search_vs_random.percentile(0.5, [0.4, 0.5, 0.6, 0.7]) == pytest.approx(37.5)


def test_a_tiny_run_trains_every_network_alike(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", MODULE, "--data", "synthetic:200:10", "--search-epochs", "1",
                           "--train-epochs", "1", "--targets", "0.5", "--seeds", "3", "--estimators", "binary",
                           "--random", "2", "--jobs", "1", "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.fullmatch(r"search_vs_random wins=\d/1 median_percentile=\d+", done.stdout.strip().splitlines()[-1])
    report = json.loads((tmp_path / "search_vs_random.json").read_text())
    (row,) = report["searches"]
    assert row["trained"] == {"epochs": 1, "seed": 3}
    assert [(r["epochs"], r["seed"]) for r in row["random"]] == [(1, 3), (1, 3)]
    assert all(abs(r["latency_ms"] / row["latency_ms"] - 1) <= 0.03 for r in row["random"])
    assert 0 <= row["percentile"] <= 100 and (tmp_path / "search_vs_random.png").stat().st_size > 0
