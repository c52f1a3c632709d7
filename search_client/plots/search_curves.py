"""Figures of a search: latency per epoch against the targets, and the path weights p of every cell (heatmap)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def plot_latency_curves(history: Sequence[dict[str, Any]], path: str | Path,
                        device_names: Sequence[str] | None = None) -> Path:
    """Expected latency (E[LAT]) and the argmax architecture's table latency per epoch, one colour per device,
    with each device's target as a dashed line; plus the validation accuracy of the argmax net below."""
    if not history:
        raise ValueError("history: no epochs to plot")
    epochs = [row["epoch"] for row in history]
    n_devices = len(history[0]["targets_ms"])
    names = list(device_names) if device_names else [f"device {d}" for d in range(n_devices)]
    fig = Figure(figsize=(7, 6), dpi=100)
    FigureCanvasAgg(fig)
    ax, ax_acc = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    for d in range(n_devices):
        colour = f"C{d}"
        ax.plot(epochs, [row["expected_ms"][d] for row in history], color=colour, label=f"{names[d]} E[LAT]")
        ax.plot(epochs, [row["argmax_ms"][d] for row in history], color=colour, marker="o", linestyle=":",
                label=f"{names[d]} argmax")
        ax.axhline(history[0]["targets_ms"][d], color=colour, linestyle="--", linewidth=1,
                   label=f"{names[d]} target")
    ax.set_ylabel("latency (ms)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax_acc.plot(epochs, [row["valid_acc"] for row in history], color="black", marker=".")
    ax_acc.set_ylabel("valid top-1 (argmax)")
    ax_acc.set_xlabel("epoch")
    ax_acc.grid(alpha=0.3)
    fig.tight_layout()
    target = Path(path)
    fig.savefig(target, format="png")
    return target


def plot_probabilities(probs: Sequence[Sequence[float]], candidate_names: Sequence[Sequence[str]],
                       path: str | Path, title: str = "path weights p per cell") -> Path:
    """Heatmap of p: cells (rows) x candidate names (columns); a candidate a cell lacks is blank."""
    if len(probs) != len(candidate_names) or not probs:
        raise ValueError("probs: one row of probabilities per cell, matching candidate_names, is needed")
    names = list(dict.fromkeys(name for row in candidate_names for name in row))
    data = np.full((len(probs), len(names)), np.nan)
    for i, (row, cell_names) in enumerate(zip(probs, candidate_names)):
        if len(row) != len(cell_names):
            raise ValueError(f"probs[{i}]: {len(row)} values for {len(cell_names)} candidates")
        for name, value in zip(cell_names, row):
            data[i, names.index(name)] = value
    fig = Figure(figsize=(1.1 * len(names) + 2, 0.4 * len(probs) + 1.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(data), cmap="magma", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(names)), labels=names, rotation=30, ha="right")
    ax.set_yticks(range(len(probs)), labels=[f"cell {i}" for i in range(len(probs))])
    for i in range(len(probs)):
        for j in range(len(names)):
            if not np.isnan(data[i, j]):
                ax.text(j, i, f"{data[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if data[i, j] > 0.5 else "white")
    fig.colorbar(image, ax=ax, label="p")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    target = Path(path)
    fig.savefig(target, format="png")
    return target
