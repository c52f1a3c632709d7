"""Retrain a derived architecture from scratch and report its top-1 accuracy on the held-out split.

The network is ``build_network(arch)`` with fresh weights (initialised under a forked global generator seeded
with ``seed``); SGD Nesterov with cosine lr over every step, label smoothing; the data comes from the same
pipeline, split rule and seed as the search (:func:`search_client.training.datasets.open_search_data`), so the
held-out split is the search's validation split.

On a GPU (``device``) the step runs with :class:`search_client.training.cuda.DeviceTraining` (mixed precision
with ``amp``, channels_last, pinned memory). Under torchrun (``dist``) each rank trains on its share of the
training stream with the gradients averaged over the ranks before every step (the global batch is
``batch_size`` x world size), the batch-norm statistics are averaged before each evaluation, every rank
evaluates its share of the held-out split and the sums are added up (:func:`evaluate`), so every rank reports the
same figures; only rank 0 prints.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nas_ops.arch import Architecture
from nas_ops.network import Network, build_network
from search_client.training.cuda import FULL_PRECISION, DeviceTraining, MixedPrecision
from search_client.training.datasets import (
    DataOptions,
    SearchData,
    check_class_count,
    open_search_data,
)
from search_client.training.distributed import (
    SINGLE,
    DistContext,
    align_module,
    all_reduce_sum,
    average_batchnorm_stats,
    average_gradients_on_step,
)
from search_client.training.streams import BatchStream


@dataclass
class TrainConfig:
    """Retraining settings (the search's weight-step defaults, with a higher starting lr for short runs); ``data``
    holds the data options a search has too (its split rule and, with the same ``seed``, its split)."""

    data: DataOptions = field(default_factory=DataOptions)
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 4e-5
    label_smoothing: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.data, DataOptions):
            raise ValueError(f"train config field 'data': expected DataOptions, got {type(self.data).__name__}")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"train config field '{name}': must be a positive integer, got {value!r}")
        for name in ("lr", "momentum", "weight_decay", "label_smoothing"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"train config field '{name}': must be a finite number >= 0, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"train config field 'seed': must be an integer >= 0, got {self.seed!r}")

    def open_data(self, input_size: tuple[int, int], in_chs: int) -> SearchData:
        """The data for a network of this input: the search's pipeline, split rule and seed."""
        return open_search_data(self.data, input_size, in_chs, self.batch_size, self.seed)


@dataclass
class TrainResult:
    """The trained network, its final held-out top-1 and loss, one log row per epoch, the data's description
    (:attr:`search_client.training.datasets.SearchData.info`) and how it ran (device, amp, channels_last,
    pinned memory, deterministic kernels, world size, distributed backend)."""

    network: Network
    top1: float
    valid_loss: float
    history: list[dict[str, Any]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    runtime: dict[str, Any] = field(default_factory=dict)


def train_step(net: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], optimizer: torch.optim.Optimizer, *,
               label_smoothing: float, precision: MixedPrecision | None = None) -> tuple[float, float]:
    """One training step of a plain network (forward, label-smoothed CE, backward, optimizer step), the forward
    under ``precision``'s autocast and the backward through its scaler (default: full precision); returns (loss,
    accuracy) of the batch."""
    x, y = batch
    precision = precision or FULL_PRECISION
    with precision.autocast():
        logits = net(x)
        loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    precision.backward_step(loss, optimizer)
    return float(loss.item()), float((logits.argmax(dim=1) == y).float().mean().item())


def held_out_batches(data: SearchData, batch_size: int, dist: DistContext = SINGLE
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The held-out split in a fixed order for :func:`evaluate`: all of it in one process, this rank's share
    (every ``world_size``-th image from its rank on) under torchrun, so that the ranks together cover it once."""
    if dist.world_size == 1:
        yield from data.eval_batches(batch_size)
        return
    stream = BatchStream(data.valid.images, batch_size, indices=data.valid.indices[dist.rank::dist.world_size],
                         shuffle=False, workers=data.valid.workers)
    try:
        yield from stream.epoch()
    finally:
        stream.close()


@torch.no_grad()
def evaluate(net: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *,
             dist: DistContext = SINGLE) -> tuple[float, float]:
    """(mean cross-entropy, top-1) of ``net`` in eval mode over every sample of ``batches`` (summed over the
    ranks under ``dist``: each rank passes its share); the net's mode is restored. Each batch is moved to the
    device of the net's first parameter. ValueError when there are no samples."""
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    loss, correct, count = 0.0, 0, 0
    try:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            logits = net(x)
            loss += float(F.cross_entropy(logits, y, reduction="sum").item())
            correct += int((logits.argmax(dim=1) == y).sum().item())
            count += int(y.shape[0])
    finally:
        net.train(was_training)
    loss, correct, count = all_reduce_sum([loss, correct, count], dist, "the evaluation's sums")
    if count == 0:
        raise ValueError("evaluate: no samples in the batches")
    return loss / count, correct / count


def train_architecture(arch: Architecture, config: TrainConfig, *, progress: bool = False,
                       device: str = "cpu", amp: bool = False, dist: DistContext = SINGLE) -> TrainResult:
    """Train ``build_network(arch)`` from scratch on ``config.data`` on ``device`` (mixed precision with
    ``amp``), across the ranks of ``dist``; top-1 on the held-out split."""
    placement = DeviceTraining(device, amp=amp)
    data = config.open_data(arch.input_size, arch.in_chs)
    space = arch.metadata.get("space")
    head = f"the architecture's head (space {space})" if space else "the architecture's head"
    check_class_count(data.num_classes, arch.num_classes, head, config.data.source)
    data.train.set_shard(dist.shard())
    placement.prepare_streams(data.train, data.valid)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        net = placement.prepare_model(build_network(arch))
    align_module(net, dist, "the network's initial weights")
    try:
        history = _fit(net, data, config, progress=progress and dist.is_main, placement=placement, dist=dist)
    finally:
        data.close()
    runtime = {**placement.describe(), "world_size": dist.world_size, "distributed_backend": dist.backend}
    return TrainResult(net, history[-1]["valid_top1"], history[-1]["valid_loss"], history, dict(data.info), runtime)


def _fit(net: Network, data: SearchData, config: TrainConfig, *, progress: bool, placement: DeviceTraining,
         dist: DistContext) -> list[dict[str, Any]]:
    """The training loop: SGD with a cosine lr over every step, the held-out evaluation after each epoch."""
    stream = data.train
    optimizer = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum,
                                nesterov=config.nesterov and config.momentum > 0, weight_decay=config.weight_decay)
    average_gradients_on_step(optimizer, dist, "the training's weights")
    total_steps = config.epochs * len(stream)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps)))
    history: list[dict[str, Any]] = []
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        losses, hits = [], []
        net.train()
        for batch in stream.epoch():
            loss, acc = train_step(net, placement.to_device(batch), optimizer, label_smoothing=config.label_smoothing,
                                   precision=placement.precision)
            scheduler.step()
            losses.append(loss)
            hits.append(acc)
        average_batchnorm_stats([net], dist)
        valid_loss, top1 = evaluate(net, held_out_batches(data, config.batch_size, dist), dist=dist)
        train_loss, train_acc = (v / dist.world_size for v in all_reduce_sum(
            [sum(losses) / len(losses), sum(hits) / len(hits)], dist, "the epoch's training figures"))
        row = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
               "valid_loss": valid_loss, "valid_top1": top1, "seconds": time.perf_counter() - start}
        history.append(row)
        if progress:
            print(f"epoch {epoch}/{config.epochs}: train loss {row['train_loss']:.3f} acc {row['train_acc']:.3f}, "
                  f"valid top-1 {top1:.4f}", flush=True)
    return history


def save_train_result(result: TrainResult, arch: Architecture, config: TrainConfig, out_dir: str | Path
                      ) -> dict[str, Path]:
    """Write ``weights.pt``, ``train_log.jsonl`` and ``train_summary.json`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"weights": out / "weights.pt", "log": out / "train_log.jsonl", "summary": out / "train_summary.json"}
    torch.save(result.network.state_dict(), files["weights"])
    files["log"].write_text("".join(json.dumps(row) + "\n" for row in result.history), encoding="utf-8")
    summary = {"top1": result.top1, "valid_loss": result.valid_loss, "config": asdict(config), "data": result.data,
               "runtime": result.runtime, "architecture": arch.to_dict()}
    files["summary"].write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return files
