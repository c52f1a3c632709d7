"""``proxyless-search inspect``: per-op shapes, parameters and FLOPs of an architecture file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from nas_ops.arch import Architecture
from nas_ops.arch_files import load_architecture
from nas_ops.counting import count_flops, count_params
from nas_ops.spec import MAX_RESOLUTION, format_spec
from search_client.cli.app import app
from search_client.cli.errors import exit_on_error


def _load(path: Path, resolution: int | None) -> Architecture:
    """Our architecture JSON or an official net.config, rebuilt at ``resolution`` when given.

    A net.config has no resolution: it is imported at 224, and rescaling that import gives the same ops as
    importing at ``resolution`` (every op's shape follows from the input size).
    """
    arch = load_architecture(path)
    return arch if resolution is None else arch.with_resolution(resolution, resolution)


def _rows(arch: Architecture) -> list[dict[str, Any]]:
    roles = ["stem", *["block"] * len(arch.blocks), *(["mix"] if arch.mix else []), "head"]
    return [
        {"role": role, "spec": format_spec(spec), "output_shape": list(spec.output_shape),
         "params": count_params(spec), "flops": count_flops(spec)}
        for role, spec in zip(roles, arch.specs())
    ]


def _print_table(path: Path, arch: Architecture, rows: list[dict[str, Any]]) -> None:
    h, w = arch.input_size
    table = Table(title=f"{path.name}: input {arch.in_chs}x{h}x{w}, {arch.num_classes} classes")
    for name, justify in (("#", "right"), ("role", "left"), ("op spec", "left"), ("output", "left"),
                          ("params", "right"), ("FLOPs (MACs)", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for i, row in enumerate(rows):
        shape = "x".join(str(d) for d in row["output_shape"])
        table.add_row(str(i), row["role"], row["spec"], shape, f"{row['params']:,}", f"{row['flops']:,}")
    table.add_section()
    table.add_row("", "total", "", "", f"{count_params(arch):,}", f"{count_flops(arch):,}")
    console = Console()
    if not console.is_terminal:  # piped or captured: keep every row on one line instead of wrapping at 80 columns
        console = Console(width=200)
    console.print(table)


@app.command("inspect")
def inspect_command(
    arch_file: Annotated[Path, typer.Argument(help="Architecture JSON (ours) or an official ProxylessNAS net.config.")],
    resolution: Annotated[
        int | None,
        typer.Option(help="Rebuild the network at this square input size (net.config: the import resolution, "
                          "default 224)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
) -> None:
    """Show every op of an architecture with its output shape, parameters and FLOPs (multiply-adds)."""
    with exit_on_error():  # ValueError / OSError -> one line on stderr, exit code 2
        if resolution is not None and not 1 <= resolution <= MAX_RESOLUTION:
            raise ValueError(f"--resolution: must be in [1, {MAX_RESOLUTION}], got {resolution}")
        arch = _load(arch_file, resolution)
    rows = _rows(arch)
    if as_json:
        typer.echo(json.dumps({
            "file": str(arch_file), "input_size": list(arch.input_size), "num_classes": arch.num_classes,
            "params": count_params(arch), "flops": count_flops(arch), "blocks": rows,
        }))
    else:
        _print_table(arch_file, arch, rows)
