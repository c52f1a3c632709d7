"""``proxyless-search verify``: measure a derived network end to end on the device; predicted vs measured.

The network is measured in the regime of the table that predicts it: with ``--table`` the table's working set is
sent (or, without one, the working set and protocol version the architecture's metadata recorded for its table), so
the device measures the network under the table's protocol version. When the prediction's regime is unknown, or
the measurement comes back under another protocol version than the table's, one line on stderr says that the two
numbers are compared across regimes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
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
from search_client.device.api_schema import regime_of_version
from search_client.table.latency_table import LatencyTable


@dataclass(frozen=True)
class Prediction:
    """A predicted latency, where it comes from, and the regime of its table: the protocol version and the working
    set its requests carried (None: not known)."""

    ms: float
    source: str
    protocol_version: str | None
    working_set_bytes: int | None


def _predicted(arch: Architecture, table_file: Path | None, url: str, backend: str) -> Prediction:
    """Predicted latency: from a table file when given, else from the architecture's search metadata."""
    if table_file is not None:
        tbl = LatencyTable.load(table_file)
        choices = arch.metadata.get("choices")
        if not isinstance(choices, list) or tbl.space.architecture(choices).specs() != arch.specs():
            raise ValueError(f"--table {table_file}: the architecture is not one of its space {tbl.space.name!r}")
        return Prediction(tbl.latency_of(choices), f"table {table_file}", tbl.protocol_version,
                          tbl.request_working_set())
    for entry in arch.metadata.get("devices", []):
        if entry.get("url") == url.rstrip("/") and entry.get("backend") == backend:
            working_set = entry.get("working_set_bytes")
            return Prediction(float(entry["predicted_ms"]), "architecture metadata", entry.get("protocol_version"),
                              int(working_set) if isinstance(working_set, int) else None)
    raise ValueError(f"no prediction for {url} / {backend} in the architecture's metadata; give --table FILE")


def regime_note(prediction: Prediction, measured_version: str | None) -> str | None:
    """One line when the prediction and the measurement are compared across regimes (the prediction's protocol
    version unknown, or not the one the measurement came back under); None when they share it."""
    measured = (f"{measured_version} (regime {regime_of_version(measured_version)})" if measured_version
                else "a protocol version the device did not say")
    if prediction.protocol_version is None:
        return (f"compared across regimes: the prediction ({prediction.source}) does not say its table's regime; "
                f"the network was measured under {measured}; give --table FILE to measure it in the table's regime")
    if prediction.protocol_version != measured_version:
        return (f"compared across regimes: the prediction ({prediction.source}) is under "
                f"{prediction.protocol_version} (regime {regime_of_version(prediction.protocol_version)}), the "
                f"network was measured under {measured}; the relative error mixes the two")
    return None


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
            prediction = _predicted(arch, table, client.base_url, chosen)
            with JobBars(progress) as bars:
                result = client.measure_network(arch, chosen, batch, threads=threads, timeout_s=timeout,
                                                progress=bars, working_set_bytes=prediction.working_set_bytes)
            warning = drift_warning(client.device_info(), chosen)
        stats, predicted = result.stats, prediction.ms
        measured = float(stats["median_ms"])
        error = (predicted - measured) / measured
        own = network_memory_bytes(arch, batch, "float32")
        typer.echo(f"device {device} / {chosen}, batch {batch}")
        if prediction.working_set_bytes is None:
            typer.echo(f"working set {own / 2**20:.2f} MiB (the network's own: weights + peak activations)")
        else:
            typer.echo(f"working set {prediction.working_set_bytes / 2**20:.2f} MiB (the table's, so that the network "
                       f"is measured in its regime; the network's own is {own / 2**20:.2f} MiB)")
        typer.echo(f"regime {regime_of_version(result.protocol_version or '')} (protocol "
                   f"{result.protocol_version or 'not given by the device'})")
        typer.echo(f"predicted {predicted:.4f} ms ({prediction.source})")
        typer.echo(f"measured  {measured:.4f} ms (median of {stats.get('samples')} runs, IQR {stats['iqr_ms']:.4f} ms)")
        typer.echo(f"relative error {100 * error:+.2f}%")
        note = regime_note(prediction, result.protocol_version)
        if note is not None:
            typer.echo(note, err=True)
        if warning is not None:
            typer.echo(warning, err=True)
        typer.echo(json.dumps({"predicted_ms": predicted, "measured_ms": measured, "relative_error": error}))
