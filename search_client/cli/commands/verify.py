"""``proxyless-search verify``: measure a derived network end to end on the device; predicted vs measured."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from nas_ops.arch import Architecture
from nas_ops.arch_files import load_architecture
from nas_ops.counting import network_memory_bytes
from search_client.cli import devices
from search_client.cli.app import app
from search_client.cli.errors import exit_on_error
from search_client.cli.progress import JobBars
from search_client.table.latency_table import LatencyTable


def _predicted(arch: Architecture, table_file: Path | None, url: str, backend: str) -> tuple[float, str]:
    """Predicted latency: from a table file when given, else from the architecture's search metadata."""
    if table_file is not None:
        tbl = LatencyTable.load(table_file)
        choices = arch.metadata.get("choices")
        if not isinstance(choices, list) or tbl.space.architecture(choices).specs() != arch.specs():
            raise ValueError(f"--table {table_file}: the architecture is not one of its space {tbl.space.name!r}")
        return tbl.latency_of(choices), f"table {table_file}"
    for entry in arch.metadata.get("devices", []):
        if entry.get("url") == url.rstrip("/") and entry.get("backend") == backend:
            return float(entry["predicted_ms"]), "architecture metadata"
    raise ValueError(f"no prediction for {url} / {backend} in the architecture's metadata; give --table FILE")


def drift_warning(device_info: dict[str, Any], backend: str) -> str | None:
    """A one-line warning when the device's canaries say ``backend`` runs off the speed its numbers were stored at
    (``drift`` of ``GET /v1/device``, checked before every job); None when it does not, or when the device does not
    check canaries."""
    for entry in (device_info.get("drift") or {}).get("backends", []):
        if entry.get("backend") == backend and entry.get("drifting"):
            return (f"warning: the device reports drift on {backend}: its canary ops run at {entry['ratio']:.2f}x "
                    f"their stored latency (checked {entry['checked_at']}); this measurement and the table may "
                    "disagree by as much: verify again once the device is back to its speed")
    return None


@app.command("verify")
def verify(
    arch_file: Annotated[Path, typer.Argument(metavar="ARCH", help="architecture file written by 'search'")],
    device: Annotated[str, typer.Option("--device", help="profiler service URL")],
    backend: Annotated[Optional[str], typer.Option(help="default: the architecture's, else the device's first")
                       ] = None,
    table: Annotated[Optional[Path], typer.Option("--table", help="latency table file for the prediction")] = None,
    batch: Annotated[int, typer.Option(min=1)] = 1,
    threads: Annotated[Optional[int], typer.Option(min=1)] = None,
    token: Annotated[Optional[str], typer.Option(envvar="PROXYLESS_TOKEN")] = None,
    timeout: Annotated[float, typer.Option(min=1.0, help="seconds to wait for the measurement")] = 3600.0,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="show the job's progress bar")] = True,
) -> None:
    """Measure the derived network end to end on the device; print predicted vs measured latency."""
    with exit_on_error():
        arch = load_architecture(arch_file)
        with devices.make_client(device, token) as client:
            chosen = backend or arch.metadata.get("backend") or devices.pick_backend(client, None)
            predicted, source = _predicted(arch, table, client.base_url, chosen)
            with JobBars(progress) as bars:
                stats = client.measure_architecture(arch, chosen, batch, threads=threads, timeout_s=timeout,
                                                    progress=bars)
            warning = drift_warning(client.device_info(), chosen)
        measured = float(stats["median_ms"])
        error = (predicted - measured) / measured
        typer.echo(f"device {device} / {chosen}, batch {batch}")
        typer.echo(f"working set {network_memory_bytes(arch, batch, 'float32') / 2**20:.2f} MiB (weights + peak "
                   "activations: the device measures the network in the cache regime it picks for it)")
        typer.echo(f"predicted {predicted:.4f} ms ({source})")
        typer.echo(f"measured  {measured:.4f} ms (median of {stats.get('samples')} runs, IQR {stats['iqr_ms']:.4f} ms)")
        typer.echo(f"relative error {100 * error:+.2f}%")
        if warning is not None:
            typer.echo(warning, err=True)
        typer.echo(json.dumps({"predicted_ms": predicted, "measured_ms": measured, "relative_error": error}))
