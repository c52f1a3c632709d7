"""``proxyless-search train``: retrain a derived architecture from scratch (defaults: :class:`TrainConfig`'s).

``--nproc N`` (or torchrun) trains in N processes, rank 0 printing and writing (:mod:`search_client.cli.distributed`).
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from nas_ops.arch_files import load_architecture
from search_client.cli.app import app
from search_client.cli.command_line import given_arguments
from search_client.cli.data_options import (
    DATA,
    ColorJitter,
    DataSource,
    ValFolder,
    ValidPerClass,
    Workers,
    data_options,
)
from search_client.cli.distributed import check_nproc, exit_on_distributed_error, relaunch_under_torchrun
from search_client.cli.errors import exit_on_error
from search_client.cli.threads import set_threads
from search_client.training.cuda import configure_kernels
from search_client.training.distributed import (
    DEFAULT_TIMEOUT_S,
    distributed_session,
    exit_at_end_under_torchrun,
    on_main_rank,
    rank_device,
)
from search_client.training.train import TrainConfig, save_train_result, train_architecture

T = {f.name: f.default for f in fields(TrainConfig)}


@app.command("train")
def train(
    ctx: typer.Context,
    arch_file: Annotated[Path, typer.Argument(metavar="ARCH", help="architecture file")],
    out: Annotated[Path, typer.Option("--out", help="output directory")],
    epochs: Annotated[int, typer.Option(min=1)] = T["epochs"],
    data: DataSource = DATA.source,
    batch_size: Annotated[int, typer.Option(min=1)] = T["batch_size"],
    lr: Annotated[float, typer.Option(help="initial lr (cosine)")] = T["lr"],
    seed: Annotated[int, typer.Option(min=0)] = T["seed"],
    workers: Workers = DATA.workers,
    valid_per_class: ValidPerClass = DATA.valid_per_class,
    val_folder: ValFolder = DATA.val_folder,
    color_jitter: ColorJitter = DATA.color_jitter,
    train_threads: Annotated[Optional[int], typer.Option(min=1, help="torch CPU threads; default: torch's")
                             ] = None,
    train_device: Annotated[str, typer.Option(help="torch device that trains: cpu | cuda[:N]")] = "cpu",
    amp: Annotated[bool, typer.Option("--amp", help="CUDA: mixed precision (bf16, else fp16 + scaler)")] = False,
    deterministic: Annotated[bool, typer.Option("--deterministic", help="deterministic kernels")] = False,
    nproc: Annotated[int, typer.Option(min=1, help="processes; above 1 the training runs under torchrun")] = 1,
    dist_timeout: Annotated[float, typer.Option(min=1.0, help="seconds a process waits for the others")
                            ] = DEFAULT_TIMEOUT_S,
) -> None:
    """Train a derived architecture from scratch; report top-1 on the held-out split."""
    with exit_at_end_under_torchrun(), exit_on_error(), exit_on_distributed_error():
        check_nproc(nproc)
        if nproc > 1:
            relaunch_under_torchrun("train", given_arguments(ctx, skip=("nproc",)), nproc)
        set_threads(train_threads)
        configure_kernels(deterministic=deterministic)
        config = TrainConfig(data=data_options(data, workers, valid_per_class, val_folder, color_jitter), epochs=epochs,
                             batch_size=batch_size, lr=lr, seed=seed)
        with distributed_session(train_device, timeout_s=dist_timeout) as dist:
            arch = on_main_rank(lambda: load_architecture(arch_file), dist, "the architecture file")
            result = train_architecture(arch, config, progress=True, device=rank_device(train_device, dist),
                                        amp=amp, dist=dist)
        if not dist.is_main:
            return
        files: dict[str, Any] = save_train_result(result, arch, config, out)
        typer.echo(f"top-1 {result.top1:.4f} on the held-out split of {data} ({epochs} epochs)")
        for name, path in files.items():
            typer.echo(f"{name}: {path}")
