"""Heatmap of a latency table: cells (rows) x candidates (columns), ms, every value written in its square."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from search_client.plots.candidate_matrix import candidate_matrix, draw_candidate_matrix
from search_client.table.latency_table import LatencyTable


def table_matrix(table: LatencyTable) -> tuple[np.ma.MaskedArray, list[str]]:
    """F as a [cells, candidate names] masked array; a candidate a cell does not have (e.g. Zero) is masked."""
    return candidate_matrix(table.entries, [cell.candidate_names for cell in table.space.cells()])


def table_figure(table: LatencyTable, title: str | None = None) -> Figure:
    """``table`` as an annotated heatmap (latency in ms per cell and candidate)."""
    matrix, names = table_matrix(table)
    cells = table.space.cells()
    fig = Figure(figsize=(1.2 * len(names) + 2.5, 0.4 * len(cells) + 1.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = draw_candidate_matrix(ax, matrix, names, [f"cell {c.index} ({c.in_chs}->{c.out_chs}, s{c.stride})"
                                                      for c in cells], cmap="viridis", value_format=".3g")
    fig.colorbar(image, ax=ax, label="latency (ms)")
    ax.set_title(title or f"{table.space.name} on {table.device['name']} / {table.backend} "
                          f"(batch {table.batch}, fixed {table.fixed_ms:.3g} ms)", fontsize=9)
    fig.tight_layout()
    return fig


def plot_table_heatmap(table: LatencyTable, path: str | Path, title: str | None = None) -> Path:
    """Draw :func:`table_figure` into the PNG ``path``; return the path."""
    path = Path(path)
    table_figure(table, title).savefig(path, format="png")
    return path
