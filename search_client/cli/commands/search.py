"""``proxyless-search search`` (the device-specific search job), ``verify`` (measure a derived net on the
device) and ``train`` (retrain a derived net from scratch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import torch
import typer

from nas_ops.arch import Architecture, load_architecture
from nas_ops.space import SearchSpace, load_space
from search_client.cli.app import app
from search_client.device.client import LatencyClient
from search_client.nas.derive import device_keys
from search_client.errors import exit_on_error
from search_client.table.latency_table import LatencyTable, build_table
from search_client.nas.search_loop import SearchConfig, run_search
from search_client.training.train import TrainConfig, save_train_result, train_architecture
from search_client.nas.within_target import Derived


def make_client(url: str, token: str | None) -> LatencyClient:
    """The client of one device (a module-level function so tests can route it to a fake device)."""
    return LatencyClient(url, token)


def _device_backend(client: LatencyClient, backend: str | None) -> str:
    if backend:
        return backend
    names = [b["name"] for b in client.device_info().get("backends", [])]
    if not names:
        raise ValueError(f"--backend: device {client.base_url} advertises no backend")
    return names[0]


def _tables(space: str | None, devices: list[str], table_files: list[Path], *, backend: str | None, batch: int,
            threads: int | None, token: str | None, out: Path) -> list[LatencyTable]:
    """The latency tables: loaded from files, or built on each device (and saved into ``out``)."""
    if bool(devices) == bool(table_files):
        raise ValueError("give either --device URL (one or more) or --table FILE (one or more), not both/neither")
    if table_files:
        tables = [LatencyTable.load(path) for path in table_files]
        if space is not None:
            wanted = load_space(space)
            for path, table in zip(table_files, tables):
                if table.space != wanted:
                    raise ValueError(f"--table {path}: its space {table.space.name!r} is not the --space {space!r}")
        return tables
    if space is None:
        raise ValueError("--space: required with --device (the space whose table the device measures)")
    search_space: SearchSpace = load_space(space)
    out.mkdir(parents=True, exist_ok=True)
    tables = []
    for d, url in enumerate(devices):
        with make_client(url, token) as client:
            table = build_table(client, search_space, backend=_device_backend(client, backend), batch=batch,
                                threads=threads)
        table.save(out / f"table_{d}.json")
        tables.append(table)
    return tables


def _set_threads(threads: int | None) -> None:
    """Fix torch's CPU thread count (more threads than free cores slows training down by far more than 2x)."""
    if threads is not None:
        torch.set_num_threads(threads)


def _targets(targets: list[float], n_tables: int) -> list[float]:
    if len(targets) == 1:
        return targets * n_tables
    if len(targets) != n_tables:
        raise ValueError(f"--target-ms: give one target, or one per device ({n_tables}); got {len(targets)}")
    return targets


@app.command("search")
def search(
    out: Annotated[Path, typer.Option("--out", help="output directory (logs, plots, checkpoint, exports)")],
    target_ms: Annotated[list[float], typer.Option("--target-ms", help="latency target (ms); once, or per device")],
    epochs: Annotated[int, typer.Option(help="joint search epochs (after the warm-up)")],
    data: Annotated[str, typer.Option(help="digits | synthetic[:N[:K]] | image folder | .npz file")] = "digits",
    space: Annotated[Optional[str], typer.Option(help="preset or space file; default: the tables' space")] = None,
    device: Annotated[Optional[list[str]], typer.Option("--device", help="profiler URL (repeat per device)")] = None,
    table: Annotated[Optional[list[Path]], typer.Option("--table", help="latency table file (repeat)")] = None,
    warmup_epochs: Annotated[int, typer.Option(min=0, help="weight-only epochs before the search")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="continue from OUT/checkpoint.pt")] = False,
    mode: Annotated[str, typer.Option(help="full_v2 (the release default) | full | two | darts")] = "full_v2",
    grad_estimator: Annotated[str, typer.Option(help="binary | reinforce")] = "binary",
    loss: Annotated[str, typer.Option(help="mul#log | add#linear | hinge")] = "mul#log",
    strength: Annotated[Optional[float], typer.Option(help="latency weight (beta of mul#log, lambda otherwise; "
                                                           "0 = off); default: the loss's")] = None,
    adaptive: Annotated[bool, typer.Option("--adaptive", help="adapt the latency weight until the target is met")
                        ] = False,
    log_unit_ms: Annotated[float, typer.Option(help="mul#log: latencies in units of this many ms inside log()")
                           ] = 1.0,
    target_band: Annotated[float, typer.Option(help="tolerance around the target (0.1: within +-10%)")] = 0.1,
    derive: Annotated[str, typer.Option(help="within-target (the argmax if it meets the target, else the most "
                                             "probable architecture that does) | argmax")] = "within-target",
    seed: Annotated[int, typer.Option(min=0)] = 0,
    batch_size: Annotated[int, typer.Option(min=1, help="training batch size")] = 64,
    lr: Annotated[float, typer.Option(help="weight lr of the joint phase (cosine)")] = 0.025,
    warmup_lr: Annotated[float, typer.Option(help="weight lr of the warm-up (cosine)")] = 0.05,
    arch_lr: Annotated[float, typer.Option(help="Adam lr of the architecture parameters")] = 1e-3,
    arch_every: Annotated[int, typer.Option(min=1, help="weight steps per architecture step")] = 5,
    device_mode: Annotated[str, typer.Option(help="several devices: weighted | max")] = "weighted",
    device_weight: Annotated[Optional[list[float]], typer.Option(help="per-device weight (repeat)")] = None,
    token: Annotated[Optional[str], typer.Option(envvar="PROXYLESS_TOKEN", help="bearer token of the devices")
                     ] = None,
    backend: Annotated[Optional[str], typer.Option(help="backend on the devices; default: each one's first")
                       ] = None,
    batch: Annotated[int, typer.Option(min=1, help="batch size of the latency measurements")] = 1,
    threads: Annotated[Optional[int], typer.Option(min=1, help="measurement threads; default: the device's")
                       ] = None,
    train_device: Annotated[str, typer.Option(help="torch device that trains the supernet: cpu | cuda[:N]")
                            ] = "cpu",
    train_threads: Annotated[Optional[int], typer.Option(min=1, help="torch CPU threads of the training; "
                                                                      "default: torch's")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="show progress bars")] = True,
) -> None:
    """Search an architecture for the target latency on the given device(s) or latency table(s)."""
    with exit_on_error():
        _set_threads(train_threads)
        tables = _tables(space, device or [], table or [], backend=backend, batch=batch, threads=threads,
                         token=token, out=out)
        config = SearchConfig(
            targets_ms=_targets(target_ms, len(tables)), data=data, epochs=epochs, warmup_epochs=warmup_epochs,
            seed=seed, batch_size=batch_size, mode=mode, grad_estimator=grad_estimator, loss=loss,
            strength=strength, log_unit_ms=log_unit_ms, adaptive=adaptive, device_weights=device_weight,
            device_mode=device_mode, warmup_lr=warmup_lr, lr=lr, arch_lr=arch_lr, arch_every=arch_every,
            target_band=target_band, derive=derive,
        )
        result = run_search(config, tables, out, resume=resume, progress=progress, device=train_device)
        arch_names = [cell.cell.candidate_names[c] for cell, c in zip(result.supernet.cells, result.choices)]
        typer.echo(f"architecture: {' '.join(arch_names)}")
        if result.derived is not None:
            typer.echo(_derive_line(result.derived))
        for key, target, ms in zip(device_keys(tables), config.targets_ms,
                                   result.objective.latency_of(result.choices)):
            typer.echo(f"{key}: predicted {ms:.4f} ms, target {target:.4f} ms "
                       f"({100 * (ms / target - 1):+.1f}%)")
        for name, path in result.files.items():
            typer.echo(f"{name}: {path}")


def _derive_line(derived: Derived) -> str:
    """How the exported architecture was chosen, in one line."""
    if derived.from_argmax:
        how = "the argmax architecture"
    else:
        how = f"the most probable architecture within the target (the argmax's ratio was {derived.argmax_ratio:.3f})"
    met = "meets" if derived.target_met else "MISSES"
    return f"derive ({derived.rule}): {how}; latency ratio {derived.ratio:.3f}, {met} the target"


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
) -> None:
    """Measure the derived network end to end on the device; print predicted vs measured latency."""
    with exit_on_error():
        arch = load_architecture(arch_file)
        with make_client(device, token) as client:
            chosen = backend or arch.metadata.get("backend") or _device_backend(client, None)
            predicted, source = _predicted(arch, table, client.base_url, chosen)
            stats = client.measure_architecture(arch, chosen, batch, threads=threads, timeout_s=timeout,
                                                progress=False)
        measured = float(stats["median_ms"])
        error = (predicted - measured) / measured
        typer.echo(f"device {device} / {chosen}, batch {batch}")
        typer.echo(f"predicted {predicted:.4f} ms ({source})")
        typer.echo(f"measured  {measured:.4f} ms (median of {stats.get('samples')} runs, IQR {stats.get('iqr_ms')})")
        typer.echo(f"relative error {100 * error:+.2f}%")
        typer.echo(json.dumps({"predicted_ms": predicted, "measured_ms": measured, "relative_error": error}))


@app.command("train")
def train(
    arch_file: Annotated[Path, typer.Argument(metavar="ARCH", help="architecture file")],
    out: Annotated[Path, typer.Option("--out", help="output directory")],
    epochs: Annotated[int, typer.Option(min=1)],
    data: Annotated[str, typer.Option(help="digits | synthetic[:N[:K]] | image folder | .npz file")] = "digits",
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    lr: Annotated[float, typer.Option(help="initial lr (cosine)")] = 0.05,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    train_threads: Annotated[Optional[int], typer.Option(min=1, help="torch CPU threads; default: torch's")
                             ] = None,
) -> None:
    """Train a derived architecture from scratch; report top-1 on the held-out split."""
    with exit_on_error():
        _set_threads(train_threads)
        arch = load_architecture(arch_file)
        config = TrainConfig(data=data, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
        result = train_architecture(arch, config, progress=True)
        files: dict[str, Any] = save_train_result(result, arch, config, out)
        typer.echo(f"top-1 {result.top1:.4f} on the held-out split of {data} ({epochs} epochs)")
        for name, path in files.items():
            typer.echo(f"{name}: {path}")
