"""Figures read at a glance: latency as a ratio to each device's target on one axis, whole epoch ticks, and the
candidates a cell lacks marked alike in both heatmaps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgba

from nas_ops.space import SPACES
from search_client.plots.candidate_matrix import MISSING_COLOUR, MISSING_TEXT
from search_client.plots.search_curves import latency_figure, plot_latency_curves, probabilities_figure
from search_client.plots.table_heatmap import plot_table_heatmap, table_figure
from tests.search_client.conftest import make_table


def _history(epochs: int) -> list[dict]:
    targets = [0.05, 1.5]  # a fast and a slow device
    return [{"epoch": e, "targets_ms": targets, "valid_acc": 0.5,
             "expected_ms": [0.05 * (1 + 0.1 * e), 1.5 * (1 - 0.05 * e)],
             "argmax_ms": [0.05 * 1.2, 1.5 * 0.9]} for e in range(1, epochs + 1)]


def test_devices_share_one_ratio_axis_with_the_target_at_one() -> None:
    history = _history(3)
    fig = latency_figure(history, ["fast/ort-cpu", "slow/ort-cpu"])
    ax = fig.axes[0]
    assert ax.get_ylabel() == "latency / target"
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["target"].get_ydata()) == [1.0, 1.0]
    fast = lines["fast/ort-cpu (target 0.05 ms) E[LAT]"].get_ydata()
    slow = lines["slow/ort-cpu (target 1.5 ms) E[LAT]"].get_ydata()
    assert fast == pytest.approx([1.1, 1.2, 1.3]) and slow == pytest.approx([0.95, 0.9, 0.85])
    assert lines["slow/ort-cpu (target 1.5 ms) argmax"].get_ydata() == pytest.approx([0.9] * 3)
    low, high = ax.get_ylim()
    assert low < 0.85 and high > 1.3  # both devices readable on the same axis


@pytest.mark.parametrize("epochs", [2, 3, 5, 40])
def test_epoch_ticks_are_whole_numbers(epochs: int) -> None:
    fig = latency_figure(_history(epochs))
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks


def _missing_marks(ax) -> list[tuple[int, int]]:
    return sorted((round(t.get_position()[1]), round(t.get_position()[0])) for t in ax.texts
                  if t.get_text() == MISSING_TEXT)


def test_probability_heatmap_marks_a_missing_zero_like_the_table_heatmap(tmp_path: Path) -> None:
    space = SPACES["micro-16"]
    names = [cell.candidate_names for cell in space.cells()]
    lacking = [i for i, cell_names in enumerate(names) if "Zero" not in cell_names]
    assert lacking  # micro-16 has a cell without Zero
    probs = [[1.0 / len(n)] * len(n) for n in names]
    fig = probabilities_figure(probs, names)
    ax = fig.axes[0]
    zero_column = [label.get_text() for label in ax.get_xticklabels()].index("Zero")
    assert _missing_marks(ax) == [(i, zero_column) for i in lacking]
    image = ax.get_images()[0]
    assert image.cmap.get_bad() == pytest.approx(np.array(to_rgba(MISSING_COLOUR)))

    table_ax = table_figure(make_table("micro-16")).axes[0]
    assert _missing_marks(table_ax) == _missing_marks(ax)
    assert table_ax.get_images()[0].cmap.get_bad() == pytest.approx(image.cmap.get_bad())


def test_figures_are_written(tmp_path: Path) -> None:
    assert plot_table_heatmap(make_table("micro-16"), tmp_path / "table.png").stat().st_size > 0
    assert plot_latency_curves(_history(2), tmp_path / "lat.png").stat().st_size > 0
