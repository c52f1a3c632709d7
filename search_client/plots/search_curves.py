"""Figures of a search: latency per epoch relative to each device's target, and the path weights p of every cell.

- ``latency.png``: per device, E[LAT] / target (line) and the argmax architecture's table latency / target
  (dotted, markers), on one axis with the target at 1.0, so devices of 0.05 ms and 1.5 ms read alike; below it the
  argmax's validation top-1. Epoch ticks are whole numbers.
- ``probabilities.png``: p of every cell and candidate; a candidate a cell lacks is grey and ``n/a``, as in the
  latency table's heatmap (:mod:`search_client.plots.table_heatmap`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from search_client.nas.derive import device_keys
from search_client.nas.search_loop import SearchResult
from search_client.plots.candidate_matrix import candidate_matrix, draw_candidate_matrix


def latency_figure(history: Sequence[dict[str, Any]], device_names: Sequence[str] | None = None) -> Figure:
    """The latency-ratio curves (top) and the argmax's validation top-1 (bottom) of the log rows ``history``."""
    if not history:
        raise ValueError("history: no epochs to plot")
    epochs = [row["epoch"] for row in history]
    targets = history[0]["targets_ms"]
    names = list(device_names) if device_names else [f"device {d}" for d in range(len(targets))]
    fig = Figure(figsize=(7, 6), dpi=100)
    FigureCanvasAgg(fig)
    ax, ax_acc = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label="target")
    for d, target in enumerate(targets):
        colour = f"C{d}"
        label = f"{names[d]} (target {target:.3g} ms)"
        ax.plot(epochs, [row["expected_ms"][d] / target for row in history], color=colour,
                label=f"{label} E[LAT]")
        ax.plot(epochs, [row["argmax_ms"][d] / target for row in history], color=colour, marker="o",
                linestyle=":", label=f"{label} argmax")
    ax.set_ylabel("latency / target")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax_acc.plot(epochs, [row["valid_acc"] for row in history], color="black", marker=".")
    ax_acc.set_ylabel("valid top-1 (argmax)")
    ax_acc.set_xlabel("epoch")
    ax_acc.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_acc.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_latency_curves(history: Sequence[dict[str, Any]], path: str | Path,
                        device_names: Sequence[str] | None = None) -> Path:
    """Draw :func:`latency_figure` into the PNG ``path``; return the path."""
    target = Path(path)
    latency_figure(history, device_names).savefig(target, format="png")
    return target


def probabilities_figure(probs: Sequence[Sequence[float]], candidate_names: Sequence[Sequence[str]],
                         title: str = "path weights p per cell") -> Figure:
    """Heatmap of p: cells (rows) x candidate names (columns), each value written in its square."""
    matrix, names = candidate_matrix(probs, candidate_names)
    fig = Figure(figsize=(1.1 * len(names) + 2, 0.4 * len(probs) + 1.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = draw_candidate_matrix(ax, matrix, names, [f"cell {i}" for i in range(len(probs))], cmap="magma",
                                  value_format=".2f", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="p")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_probabilities(probs: Sequence[Sequence[float]], candidate_names: Sequence[Sequence[str]],
                       path: str | Path, title: str = "path weights p per cell") -> Path:
    """Draw :func:`probabilities_figure` into the PNG ``path``; return the path."""
    target = Path(path)
    probabilities_figure(probs, candidate_names, title).savefig(target, format="png")
    return target


def plot_search_result(result: SearchResult) -> dict[str, Path]:
    """``latency.png`` and ``probabilities.png`` of a search (finished or not) in its output directory; returns
    them by name (nothing when no epoch has run)."""
    if not result.history:
        return {}
    with torch.no_grad():
        probs = [p.tolist() for p in result.supernet.probs()]
    names = [cell.cell.candidate_names for cell in result.supernet.cells]
    return {
        "latency_plot": plot_latency_curves(result.history, result.out_dir / "latency.png",
                                            device_keys(result.objective.tables)),
        "probabilities_plot": plot_probabilities(probs, names, result.out_dir / "probabilities.png"),
    }
