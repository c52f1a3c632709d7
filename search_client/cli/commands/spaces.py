"""``proxyless-search spaces``: the named search spaces (or one space's cells) and their sizes."""

from __future__ import annotations

import math
from typing import Annotated

import typer

from nas_ops.space import SPACES, SearchSpace, load_space
from search_client.cli.app import app
from search_client.cli.errors import exit_on_error


def space_summary(space: SearchSpace) -> dict[str, object]:
    """Name, input size, cell count, candidates per cell (min..max), Zero cells and log10 of the space size."""
    cells = space.cells()
    counts = [len(cell.candidates) for cell in cells]
    return {
        "name": space.name,
        "input": f"{space.input_size[0]}x{space.input_size[1]}",
        "cells": len(cells),
        "candidates": f"{min(counts)}" if min(counts) == max(counts) else f"{min(counts)}-{max(counts)}",
        "zero_cells": sum(cell.zero_index is not None for cell in cells),
        "log10_size": math.log10(space.size()),
    }


def _list_spaces() -> None:
    header = f"{'name':<20} {'input':>9} {'cells':>5} {'cands/cell':>10} {'zero cells':>10} {'size':>9}"
    typer.echo(header)
    typer.echo("-" * len(header))
    for space in SPACES.values():
        s = space_summary(space)
        typer.echo(f"{s['name']:<20} {s['input']:>9} {s['cells']:>5} {s['candidates']:>10} "
                   f"{s['zero_cells']:>10} {'10^' + format(s['log10_size'], '.1f'):>9}")


def _show_space(space: SearchSpace) -> None:
    s = space_summary(space)
    typer.echo(f"{s['name']}: input {s['input']}, {s['cells']} cells, size 10^{s['log10_size']:.1f}")
    for cell in space.cells():
        typer.echo(f"  cell {cell.index:>2} stage {cell.stage}: {cell.in_chs}->{cell.out_chs} "
                   f"{cell.height}x{cell.width} s{cell.stride}: {', '.join(cell.candidate_names)}")


@app.command("spaces")
def spaces(
    space: Annotated[str | None, typer.Argument(metavar="[NAME|FILE]", help="show this space's cells")] = None,
) -> None:
    """List the named search spaces with their cells, candidates per cell and size; or show one space's cells."""
    with exit_on_error():
        if space is None:
            _list_spaces()
        else:
            _show_space(load_space(space))
