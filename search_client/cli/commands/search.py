"""``proxyless-search search``: the device-specific search job (tables from devices or files, search, plots).

Every option that is a :class:`search_client.nas.config.SearchConfig` field takes its default from there.
Ctrl-C stops the search with exit code 130 and prints where the checkpoint is and the command that resumes it
(:func:`search_client.cli.command_line.program_command`: it runs without an activated virtualenv).
``--nproc N`` runs the search in N processes under torchrun (:mod:`search_client.cli.distributed`); under torchrun
rank 0 alone reads the tables (or asks the devices), prints and writes, and a run restarted by torchrun
(``--max-restarts``) continues from its checkpoint.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer

from nas_ops.space import SearchSpace, load_space
from search_client.cli import devices
from search_client.cli.app import app
from search_client.cli.command_line import given_arguments, given_on_command_line, join, program_command
from search_client.cli.data_options import (
    DATA,
    ColorJitter,
    DataSource,
    ValFolder,
    ValidPerClass,
    Workers,
    data_options,
)
from search_client.cli.distributed import (
    QuietCallbacks,
    check_nproc,
    exit_on_distributed_error,
    relaunch_under_torchrun,
)
from search_client.cli.errors import EXIT_INTERRUPTED, exit_on_error
from search_client.cli.progress import JobBars, SearchBars
from search_client.cli.table_report import table_warnings
from search_client.cli.threads import set_threads
from search_client.nas.checkpoint import checkpoint_epoch, checkpoint_path
from search_client.nas.config import SearchConfig
from search_client.nas.derive import device_keys
from search_client.nas.distributed_search import broadcast_tables, resumes_after_restart
from search_client.nas.schedule import PAPER_ARCH_EVERY, PAPER_ARCH_LR
from search_client.nas.search_log import derive_lines
from search_client.nas.search_loop import run_search
from search_client.nas.target import target_bounds
from search_client.plots.search_curves import plot_search_result
from search_client.table.latency_table import LatencyTable, build_table
from search_client.training.cuda import configure_kernels
from search_client.training.distributed import (
    DEFAULT_TIMEOUT_S,
    distributed_session,
    exit_at_end_under_torchrun,
    rank_device,
)

D = SearchConfig.defaults()
DEVICE_PARAMS = ("device", "space", "backend", "batch", "threads", "token", "allow_flagged")


def _tables(space: str | None, urls: list[str], table_files: list[Path], *, backend: str | None, batch: int,
            threads: int | None, token: str | None, out: Path, progress: bool,
            allow_flagged: bool = False) -> list[LatencyTable]:
    """The latency tables: loaded from files, or built on each device (and saved as ``out/table_<d>.json``);
    a device table with flagged entries fails unless ``allow_flagged`` (see ``build_table``)."""
    if bool(urls) == bool(table_files):
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
    for d, url in enumerate(urls):
        with devices.make_client(url, token) as client, JobBars(progress) as bars:
            table = build_table(client, search_space, backend=devices.pick_backend(client, backend), batch=batch,
                                threads=threads, progress=bars, allow_flagged=allow_flagged)
        for line in table_warnings(table, f"{url}: "):
            typer.echo(line, err=True)
        table.save(_saved_table(out, d))
        tables.append(table)
    return tables


def _saved_table(out: Path, d: int) -> Path:
    """Where a search on devices saves the table of device ``d``."""
    return out / f"table_{d}.json"


def _targets(targets: list[float], n_tables: int) -> list[float]:
    if len(targets) == 1:
        return targets * n_tables
    if len(targets) != n_tables:
        raise ValueError(f"--target-ms: give one target, or one per device ({n_tables}); got {len(targets)}")
    return targets


def _arch_schedule(ctx: typer.Context, paper: bool, arch_lr: float | None, arch_every: int
                   ) -> tuple[float | None, int]:
    """The architecture lr and period: as given, or the paper's with ``--paper-schedule`` (then not both)."""
    if not paper:
        return arch_lr, arch_every
    if arch_lr is not None or given_on_command_line(ctx, "arch_every"):
        raise ValueError(f"--paper-schedule: it sets --arch-lr {PAPER_ARCH_LR:g} --arch-every {PAPER_ARCH_EVERY}; "
                         "give either it or those options")
    return PAPER_ARCH_LR, PAPER_ARCH_EVERY


def _resume_command(ctx: typer.Context, out: Path, n_devices: int) -> list[str]:
    """The arguments that continue this search: the given ones plus ``--resume``; a search on devices continues
    from the tables it saved (offline, so no device or token is needed)."""
    if n_devices:
        args = given_arguments(ctx, skip=(*DEVICE_PARAMS, "resume"))
        tables = [arg for d in range(n_devices) for arg in ("--table", str(_saved_table(out, d)))]
        return [*tables, *args, "--resume"]
    return [*given_arguments(ctx, skip=("resume",)), "--resume"]


def _report_interrupt(ctx: typer.Context, out: Path, n_devices: int) -> None:
    """Say where the checkpoint is and how to continue (or that there is none yet)."""
    epoch = checkpoint_epoch(out)
    if epoch is None:
        typer.echo("interrupted before the first epoch finished: there is no checkpoint yet; start again with: "
                   f"{join(program_command(), ['search', *given_arguments(ctx)])}", err=True)
        return
    typer.echo(f"interrupted: the checkpoint {checkpoint_path(out)} holds {epoch} finished epoch(s); the epoch "
               "that was running starts again on resume", err=True)
    typer.echo(f"resume with: {join(program_command(), ['search', *_resume_command(ctx, out, n_devices)])}", err=True)


@app.command("search")
def search(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", help="output directory (logs, plots, checkpoint, exports)")],
    target_ms: Annotated[list[float], typer.Option("--target-ms", help="latency target (ms); once, or per device")],
    epochs: Annotated[int, typer.Option(help="joint search epochs (after the warm-up)")] = D["epochs"],
    data: DataSource = DATA.source,
    space: Annotated[Optional[str], typer.Option(help="space name or file; default: the tables' space")] = None,
    device: Annotated[Optional[list[str]], typer.Option("--device", help="profiler URL (repeat per device)")] = None,
    table: Annotated[Optional[list[Path]], typer.Option("--table", help="latency table file (repeat)")] = None,
    warmup_epochs: Annotated[int, typer.Option(min=0, help="weight-only epochs before the search")
                             ] = D["warmup_epochs"],
    resume: Annotated[bool, typer.Option("--resume", help="continue from OUT/checkpoint.pt")] = False,
    mode: Annotated[str, typer.Option(help="full_v2 (the release default) | full | two | darts")] = D["mode"],
    grad_estimator: Annotated[str, typer.Option(help="binary | reinforce")] = D["grad_estimator"],
    loss: Annotated[str, typer.Option(help="sq#log (two-sided, unit-free) | mul#ratio (unit-free, any target) | "
                                           "mul#log (the paper's; needs latencies above --log-unit-ms) | add#linear "
                                           "| hinge")] = D["loss"],
    strength: Annotated[Optional[float], typer.Option(help="latency weight (the exponent of mul#ratio and mul#log, "
                                                           "lambda otherwise; 0 = off); default: the loss's")
                        ] = D["strength"],
    adaptive: Annotated[Optional[bool], typer.Option("--adaptive/--no-adaptive", help="adapt the latency weight "
                                                     "(and sq#log's aim) until the argmax meets the target; default: "
                                                     "on, off with --grad-estimator reinforce")] = D["adaptive"],
    log_unit_ms: Annotated[float, typer.Option(help="mul#log: latencies in units of this many ms inside log()")
                           ] = D["log_unit_ms"],
    target_band: Annotated[float, typer.Option(help="tolerance around the target (0.1: within +-10%)")
                           ] = D["target_band"],
    derive: Annotated[str, typer.Option(help="within-target (the argmax if it meets the target, else the most "
                                             "probable architecture that does) | argmax")] = D["derive"],
    seed: Annotated[int, typer.Option(min=0)] = D["seed"],
    batch_size: Annotated[int, typer.Option(min=1, help="training batch size")] = D["batch_size"],
    workers: Workers = DATA.workers,
    valid_per_class: ValidPerClass = DATA.valid_per_class,
    val_folder: ValFolder = DATA.val_folder,
    color_jitter: ColorJitter = DATA.color_jitter,
    lr: Annotated[float, typer.Option(help="weight lr of the joint phase (cosine)")] = D["lr"],
    warmup_lr: Annotated[float, typer.Option(help="weight lr of the warm-up (cosine)")] = D["warmup_lr"],
    arch_lr: Annotated[Optional[float], typer.Option(help="Adam lr of the architecture parameters; default: "
                                                          "scaled to the run's number of architecture steps")
                       ] = D["arch_lr"],
    arch_every: Annotated[int, typer.Option(min=1, help="weight steps per architecture step")] = D["arch_every"],
    paper_schedule: Annotated[bool, typer.Option(
        "--paper-schedule", help=f"the paper's architecture schedule (--arch-lr {PAPER_ARCH_LR:g} --arch-every "
                                 f"{PAPER_ARCH_EVERY}), made for ~100,000 architecture steps")] = False,
    device_mode: Annotated[str, typer.Option(help="several devices: weighted | max")] = D["device_mode"],
    device_weight: Annotated[Optional[list[float]], typer.Option(help="per-device weight (repeat; weighted mode)")
                             ] = D["device_weights"],
    token: Annotated[Optional[str], typer.Option(envvar="PROXYLESS_TOKEN", help="bearer token of the devices")
                     ] = None,
    backend: Annotated[Optional[str], typer.Option(help="backend on the devices; default: each one's first")
                       ] = None,
    batch: Annotated[int, typer.Option(min=1, help="batch size of the latency measurements")] = 1,
    threads: Annotated[Optional[int], typer.Option(min=1, help="measurement threads; default: the device's")
                       ] = None,
    allow_flagged: Annotated[bool, typer.Option("--allow-flagged", help="--device: use entries a device flagged "
                                                "(upper bounds, e.g. ops below its timer's resolution) instead of "
                                                "failing")] = False,
    train_device: Annotated[str, typer.Option(help="torch device that trains the supernet: cpu | cuda[:N]")
                            ] = "cpu",
    train_threads: Annotated[Optional[int], typer.Option(min=1, help="torch CPU threads of the training; "
                                                                      "default: torch's")] = None,
    amp: Annotated[bool, typer.Option("--amp", help="CUDA: weight steps in mixed precision (bf16 where the GPU "
                                                    "supports it, else fp16 with a gradient scaler)")] = False,
    deterministic: Annotated[bool, typer.Option("--deterministic", help="deterministic kernels (CUDA: slower; "
                                                                        "default: cuDNN's fastest)")] = False,
    nproc: Annotated[int, typer.Option(min=1, help="processes (one per GPU with --train-device cuda); above 1 the "
                                                   "search runs under torchrun")] = 1,
    dist_timeout: Annotated[float, typer.Option(min=1.0, help="seconds a process waits for the others before the "
                                                              "run stops with an error")] = DEFAULT_TIMEOUT_S,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="show progress bars")] = True,
) -> None:
    """Search an architecture for the target latency on the given device(s) or latency table(s)."""
    with exit_at_end_under_torchrun(), exit_on_error(), exit_on_distributed_error():
        check_nproc(nproc)
        if nproc > 1:
            relaunch_under_torchrun("search", given_arguments(ctx, skip=("nproc",)), nproc)
        set_threads(train_threads)
        configure_kernels(deterministic=deterministic)
        lr_arch, every = _arch_schedule(ctx, paper_schedule, arch_lr, arch_every)
        config = SearchConfig(
            targets_ms=list(target_ms), data=data_options(data, workers, valid_per_class, val_folder, color_jitter),
            epochs=epochs, warmup_epochs=warmup_epochs, seed=seed, batch_size=batch_size, mode=mode,
            grad_estimator=grad_estimator, loss=loss, strength=strength,
            log_unit_ms=log_unit_ms, adaptive=adaptive, device_weights=device_weight, device_mode=device_mode,
            warmup_lr=warmup_lr, lr=lr, arch_lr=lr_arch, arch_every=every, target_band=target_band, derive=derive,
        )
        urls = device or []
        with distributed_session(train_device, timeout_s=dist_timeout) as dist:
            try:
                tables = broadcast_tables(lambda: _tables(space, urls, table or [], backend=backend, batch=batch,
                                                          threads=threads, token=token, out=out, progress=progress,
                                                          allow_flagged=allow_flagged),
                                          dist)
                config = replace(config, targets_ms=_targets(config.targets_ms, len(tables)))
                resume = resume or resumes_after_restart(out, dist)
                with SearchBars(progress) if dist.is_main else nullcontext(QuietCallbacks()) as bars:
                    result = run_search(config, tables, out, resume=resume, callbacks=bars,
                                        device=rank_device(train_device, dist), amp=amp, dist=dist)
            except KeyboardInterrupt:
                if dist.is_main:
                    _report_interrupt(ctx, out, len(urls))
                raise SystemExit(EXIT_INTERRUPTED) from None
        if not dist.is_main:
            return
        result.files.update(plot_search_result(result))
        arch_names = [cell.cell.candidate_names[c] for cell, c in zip(result.supernet.cells, result.choices)]
        typer.echo(f"architecture: {' '.join(arch_names)}")
        for name, path in result.files.items():
            typer.echo(f"{name}: {path}")
        if result.derived is not None:  # the verdict ends the run's output
            lines = derive_lines(result.derived, [cell.cell.candidate_names for cell in result.supernet.cells],
                                 device_keys(tables), config.targets_ms,
                                 target_bounds(config.target_band, config.loss))
            for line in lines:
                typer.echo(line)
