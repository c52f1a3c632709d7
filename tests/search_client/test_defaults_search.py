"""Defaults that search: with no schedule option the architecture moves within a short run; the paper's schedule
on the same run is warned about before training and leaves p where it started.

(The issue's own case, tiny-32 on digits for 12 epochs, takes minutes on a shared CPU; this is the same check on
micro-16 with a small synthetic set: 4 epochs, 12 architecture steps.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from search_client.nas.callbacks import SearchCallbacks
from search_client.nas.config import SearchConfig
from search_client.nas.schedule import PAPER_ARCH_EVERY, PAPER_ARCH_LR, scaled_arch_lr
from search_client.nas.search_log import uniform_entropy
from search_client.nas.search_loop import run_search
from search_client.training.datasets import DataOptions
from tests.search_client.conftest import make_table

torch.set_num_threads(1)


class Recorder(SearchCallbacks):
    """Every call in order: ("warning", message), ("epoch", row)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def warning(self, message: str) -> None:
        self.events.append(("warning", message))

    def epoch_end(self, row: dict[str, Any]) -> None:
        self.events.append(("epoch", row))


def _search(tmp_path: Path, name: str, **schedule: Any) -> tuple[Recorder, dict[str, Any]]:
    table = make_table("micro-16")
    low, high = table.min_latency()[0], table.max_latency()[0]
    config = SearchConfig(targets_ms=[low + 0.4 * (high - low)], data=DataOptions("synthetic:320:10"), batch_size=16,
                          epochs=4, **schedule)
    recorder = Recorder()
    result = run_search(config, [table], tmp_path / name, callbacks=recorder)
    assert result.finished
    return recorder, json.loads((tmp_path / name / "summary.json").read_text())


def test_default_schedule_moves_and_the_paper_schedule_is_warned_and_flat(tmp_path: Path) -> None:
    uniform = uniform_entropy([7, 7, 6])  # micro-16's candidates per cell

    recorder, summary = _search(tmp_path, "defaults")
    assert [kind for kind, _ in recorder.events] == ["epoch"] * 4  # no warning
    assert summary["arch_steps"] == 12 and summary["arch_lr"] == scaled_arch_lr(12)
    assert summary["entropy_uniform"] == uniform
    assert summary["entropy_final"] <= 0.7 * uniform  # at least 30% below uniform
    assert summary["target_met"] and 0.9 <= summary["ratio"] <= 1.1

    recorder, summary = _search(tmp_path, "paper", arch_lr=PAPER_ARCH_LR, arch_every=PAPER_ARCH_EVERY)
    kinds = [kind for kind, _ in recorder.events]
    assert kinds == ["warning"] + ["epoch"] * 4  # said before the first epoch
    assert "12 architecture steps x Adam lr 0.001" in recorder.events[0][1]
    assert summary["arch_reach"] < 0.02
    assert summary["entropy_final"] >= 0.99 * uniform  # flat
