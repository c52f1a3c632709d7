"""Heatmap of a latency table: cells (rows) x candidates (columns), ms, every value written in its square."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from search_client.table.latency_table import LatencyTable


def table_matrix(table: LatencyTable) -> tuple[np.ma.MaskedArray, list[str]]:
    """F as a [cells, candidate names] masked array; a candidate a cell does not have (e.g. Zero) is masked.

    Columns are the candidate names in first-seen order over the cells.
    """
    cells = table.space.cells()
    names = list(dict.fromkeys(name for cell in cells for name in cell.candidate_names))
    data = np.zeros((len(cells), len(names)))
    mask = np.ones_like(data, dtype=bool)
    for i, (cell, row) in enumerate(zip(cells, table.entries)):
        for name, value in zip(cell.candidate_names, row):
            data[i, names.index(name)] = value
            mask[i, names.index(name)] = False
    return np.ma.masked_array(data, mask=mask), names


def plot_table_heatmap(table: LatencyTable, path: str | Path, title: str | None = None) -> Path:
    """Draw ``table`` as an annotated heatmap into the PNG ``path``; return the path."""
    matrix, names = table_matrix(table)
    n_cells = matrix.shape[0]
    fig = Figure(figsize=(1.2 * len(names) + 2.5, 0.4 * n_cells + 1.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")  # masked: no such candidate
    image = ax.imshow(matrix, cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(names)), labels=names, rotation=30, ha="right")
    ax.set_yticks(range(n_cells), labels=[f"cell {c.index} ({c.in_chs}->{c.out_chs}, s{c.stride})"
                                          for c in table.space.cells()])
    threshold = float(matrix.max()) / 2 if matrix.count() else 0.0
    for i in range(n_cells):
        for j in range(len(names)):
            if matrix.mask[i, j]:
                ax.text(j, i, "n/a", ha="center", va="center", fontsize=7, color="dimgrey")
            else:
                value = float(matrix[i, j])
                ax.text(j, i, f"{value:.3g}", ha="center", va="center", fontsize=7,
                        color="black" if value > threshold else "white")
    fig.colorbar(image, ax=ax, label="latency (ms)")
    ax.set_title(title or f"{table.space.name} on {table.device['name']} / {table.backend} "
                          f"(batch {table.batch}, fixed {table.fixed_ms:.3g} ms)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    return path
