"""``proxyless-search lut`` (build and save a latency table from a device) and ``lut-plot`` (draw one).

``lut`` reports on stderr, one line each, what stays noisy or implausible in the table (``--strict``: exit 1 when
anything does) and a fixed cost the anchors' intercept brings near 0. Interrupted (Ctrl-C) while the device
measures, it cancels its job there and exits 130.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from nas_ops.space import load_space
from search_client.cli import devices
from search_client.cli.app import app
from search_client.cli.errors import EXIT_INTERRUPTED, exit_on_error
from search_client.cli.progress import JobBars
from search_client.cli.table_report import table_warnings
from search_client.plots.table_heatmap import plot_table_heatmap
from search_client.table.latency_table import LatencyTable, build_table


def describe_table(table: LatencyTable) -> str:
    """Regime, fixed, min and max latency and the entry count of ``table``, as lines for the terminal (an anchored
    table's fixed cost with the device's own, unanchored, beside it)."""
    low, _ = table.min_latency()
    high, _ = table.max_latency()
    n_entries = sum(len(row) for row in table.entries)
    header = (f"table: {table.space.name} on {table.device['name']} ({table.device['url']}) / {table.backend}, "
              f"batch {table.batch}, {table.dtype}, threads {table.threads}")
    working_set = ("" if table.working_set_bytes is None
                   else f", working set {table.working_set_bytes / 2**20:.2f} MiB")
    unanchored = "" if table.anchor is None else f" (fixed unanchored {table.unanchored_fixed_ms:.4f} ms)"
    return "\n".join([
        header,
        f"regime: {table.regime} (protocol {table.protocol_version}{working_set})",
        f"entries: {table.n_cells} cells, {n_entries} candidate entries, {len(table.stats)} measured ops",
        f"latency: fixed {table.fixed_ms:.4f} ms, min {low:.4f} ms, max {high:.4f} ms{unanchored}",
        *([] if table.anchor is None else [
            f"anchored on {len(table.anchor.networks)} networks: measured = {table.anchor.a_ms:+.4f} ms + "
            f"{table.anchor.b:.4f} x sum of the device's medians + {table.anchor.c_ms_per_mb:.4f} ms x weight MB"]),
    ])


@app.command("lut")
def lut(
    space: Annotated[str, typer.Option("--space", help="space name or a space file (.json/.yaml)")],
    device: Annotated[str, typer.Option("--device", help="profiler service URL, e.g. http://127.0.0.1:8000")],
    out: Annotated[Path, typer.Option("--out", help="table file to write (JSON)")],
    backend: Annotated[str | None, typer.Option(help="backend on the device; default: its first")] = None,
    batch: Annotated[int, typer.Option(min=1, help="batch size of the measurements")] = 1,
    dtype: Annotated[str, typer.Option(help="float32 (or float16 on CUDA backends)")] = "float32",
    threads: Annotated[int | None, typer.Option(min=1, help="thread count; default: the device's")] = None,
    token: Annotated[str | None, typer.Option(envvar="PROXYLESS_TOKEN", help="bearer token of the device")
                     ] = None,
    no_measure: Annotated[bool, typer.Option("--no-measure", help="fail on missing entries, measure none")
                          ] = False,
    plot: Annotated[Path | None, typer.Option(help="also draw the table's heatmap into this PNG")] = None,
    timeout: Annotated[float, typer.Option(min=1.0, help="seconds to wait for the measurement jobs")] = 3600.0,
    allow_flagged: Annotated[bool, typer.Option("--allow-flagged", help="use entries the device flagged (upper "
                                                "bounds, e.g. ops below its timer's resolution) instead of failing")
                             ] = False,
    anchors: Annotated[int | None, typer.Option(min=0, help="networks measured end to end to anchor the table's "
                                                "sum on (0: the plain sum; from 6 on, 4 of them "
                                                "contrast weights); default: 6")
                       ] = None,
    strict: Annotated[bool, typer.Option("--strict", help="exit 1 (after saving) when entries stay noisy or in "
                                         "an implausible ordering after re-measuring them")] = False,
) -> None:
    """Build the latency table of a search space on a device and save it (missing ops are measured there)."""
    with exit_on_error():
        started = time.perf_counter()
        search_space = load_space(space)
        with devices.make_client(device, token) as client, JobBars() as bars:
            chosen = devices.pick_backend(client, backend, announce=typer.echo)
            try:
                table = build_table(client, search_space, backend=chosen, batch=batch, dtype=dtype,
                                    threads=threads, measure_missing=not no_measure, timeout_s=timeout,
                                    progress=bars, allow_flagged=allow_flagged, anchors=anchors)
            except KeyboardInterrupt:
                bars.__exit__()
                typer.echo(devices.cancel_interrupted(client, token), err=True)
                raise SystemExit(EXIT_INTERRUPTED) from None
        table.save(out)
        typer.echo(describe_table(table))
        for line in table_warnings(table):
            typer.echo(line, err=True)
        typer.echo(f"saved {out} (content hash {table.content_hash()[:12]}) in {time.perf_counter() - started:.1f} s")
        if plot is not None:
            typer.echo(f"heatmap: {plot_table_heatmap(table, plot)}")
        if strict and table.quality is not None and not table.quality.ok:
            typer.echo(f"error: --strict: {table.quality.summary()}", err=True)
            raise SystemExit(1)


@app.command("lut-plot")
def lut_plot(
    table_file: Annotated[Path, typer.Argument(metavar="TABLE", help="a table file written by 'lut'")],
    out: Annotated[Path, typer.Option("--out", help="PNG to write")],
    title: Annotated[str | None, typer.Option(help="figure title; default: space, device and backend")] = None,
) -> None:
    """Draw a latency table as a heatmap (cells x candidates, ms; a candidate a cell lacks is grey)."""
    with exit_on_error():
        table = LatencyTable.load(table_file)
        typer.echo(describe_table(table))
        typer.echo(f"heatmap: {plot_table_heatmap(table, out, title=title)}")
