"""The cells x candidates matrix both heatmaps draw (latency table, path weights), and how it is drawn.

Columns are the candidate names in first-seen order over the cells; a candidate a cell does not have (e.g. Zero
in a cell whose stride or channels change) is masked, drawn light grey and written ``n/a``.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.image import AxesImage

MISSING_COLOUR = "lightgrey"
MISSING_TEXT = "n/a"


def candidate_matrix(rows: Sequence[Sequence[float]], candidate_names: Sequence[Sequence[str]]
                     ) -> tuple[np.ma.MaskedArray, list[str]]:
    """``rows[i][j]`` (cell i, its j-th candidate) as a [cells, candidate names] masked array, and the names."""
    if len(rows) != len(candidate_names) or not rows:
        raise ValueError("rows: one row of values per cell, matching candidate_names, is needed")
    names = list(dict.fromkeys(name for cell_names in candidate_names for name in cell_names))
    data = np.zeros((len(rows), len(names)))
    mask = np.ones_like(data, dtype=bool)
    for i, (row, cell_names) in enumerate(zip(rows, candidate_names)):
        if len(row) != len(cell_names):
            raise ValueError(f"rows[{i}]: {len(row)} values for {len(cell_names)} candidates")
        for name, value in zip(cell_names, row):
            data[i, names.index(name)] = value
            mask[i, names.index(name)] = False
    return np.ma.masked_array(data, mask=mask), names


def draw_candidate_matrix(ax: Axes, matrix: np.ma.MaskedArray, names: Sequence[str], row_labels: Sequence[str], *,
                          cmap: str, value_format: str, vmin: float | None = None, vmax: float | None = None
                          ) -> AxesImage:
    """Draw ``matrix`` on ``ax`` with every value written in its square and the missing ones marked."""
    colours = matplotlib.colormaps[cmap].with_extremes(bad=MISSING_COLOUR)
    image = ax.imshow(matrix, cmap=colours, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(names)), labels=list(names), rotation=30, ha="right")
    ax.set_yticks(range(len(row_labels)), labels=list(row_labels))
    low = float(matrix.min()) if vmin is None and matrix.count() else (vmin or 0.0)
    high = float(matrix.max()) if vmax is None and matrix.count() else (vmax or 0.0)
    threshold = (low + high) / 2
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            if matrix.mask[i, j]:
                ax.text(j, i, MISSING_TEXT, ha="center", va="center", fontsize=7, color="dimgrey")
            else:
                value = float(matrix[i, j])
                ax.text(j, i, format(value, value_format), ha="center", va="center", fontsize=7,
                        color="black" if value > threshold else "white")
    return image
