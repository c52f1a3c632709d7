"""Retrain a derived architecture from scratch and report its top-1 accuracy on the held-out split.

The network is ``build_network(arch)`` with fresh weights (initialised under a forked global generator seeded
with ``seed``); SGD Nesterov with cosine lr over every step, label smoothing; the data comes from the same
pipeline, split rule and seed as the search (:func:`search_client.training.datasets.open_search_data`), so the
held-out split is the search's validation split.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nas_ops.arch import Architecture
from nas_ops.network import Network, build_network
from search_client.training.datasets import DEFAULT_VALID_FRACTION, DataOptions, SearchData, open_search_data


@dataclass
class TrainConfig:
    """Retraining settings (the search's weight-step defaults, with a higher starting lr for short runs)."""

    data: str = "digits"
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 4e-5
    label_smoothing: float = 0.1
    valid_fraction: float = DEFAULT_VALID_FRACTION
    valid_per_class: int | None = None
    use_val_folder: bool = False
    workers: int = 0
    color_jitter: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"train config field '{name}': must be a positive integer, got {value!r}")
        for name in ("lr", "momentum", "weight_decay", "label_smoothing"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"train config field '{name}': must be a finite number >= 0, got {value!r}")
        try:  # the data fields are checked by DataOptions' own rules (the input size is the network's, later)
            self.data_options((1, 1), 1)
        except ValueError as exc:
            raise ValueError(f"train config: {exc}") from None

    def data_options(self, input_size: tuple[int, int], in_chs: int) -> DataOptions:
        """The data pipeline's options for a network of this input (the search's split rule and seed)."""
        return DataOptions(self.data, input_size, in_chs, self.batch_size, seed=self.seed,
                           valid_per_class=self.valid_per_class, valid_fraction=self.valid_fraction,
                           use_val_folder=self.use_val_folder, workers=self.workers, color_jitter=self.color_jitter)


@dataclass
class TrainResult:
    """The trained network, its final held-out top-1 and loss, one log row per epoch, and the data's
    description (:attr:`search_client.training.datasets.SearchData.info`)."""

    network: Network
    top1: float
    valid_loss: float
    history: list[dict[str, Any]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


def train_step(net: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], optimizer: torch.optim.Optimizer, *,
               label_smoothing: float) -> tuple[float, float]:
    """One training step of a plain network (forward, label-smoothed CE, backward, optimizer step);
    returns (loss, accuracy) of the batch."""
    x, y = batch
    logits = net(x)
    loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.item()), float((logits.argmax(dim=1) == y).float().mean().item())


@torch.no_grad()
def evaluate(net: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    """(mean cross-entropy, top-1) of ``net`` in eval mode over every sample of ``batches``; the net's mode is
    restored. Each batch is moved to the device of the net's first parameter. ValueError when ``batches`` is
    empty."""
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
    if count == 0:
        raise ValueError("evaluate: no samples in the batches")
    return loss / count, correct / count


def train_architecture(arch: Architecture, config: TrainConfig, *, progress: bool = False) -> TrainResult:
    """Train ``build_network(arch)`` from scratch on ``config.data``; top-1 on the held-out split."""
    data = open_search_data(config.data_options(arch.input_size, arch.in_chs))
    if data.num_classes > arch.num_classes:
        raise ValueError(f"data: {config.data} has {data.num_classes} classes but the architecture's head has "
                         f"{arch.num_classes}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        net = build_network(arch)
    try:
        history = _fit(net, data, config, progress=progress)
    finally:
        data.close()
    return TrainResult(net, history[-1]["valid_top1"], history[-1]["valid_loss"], history, dict(data.info))


def _fit(net: Network, data: SearchData, config: TrainConfig, *, progress: bool) -> list[dict[str, Any]]:
    """The training loop: SGD with a cosine lr over every step, the held-out evaluation after each epoch."""
    stream = data.train
    optimizer = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum,
                                nesterov=config.nesterov and config.momentum > 0, weight_decay=config.weight_decay)
    total_steps = config.epochs * len(stream)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps)))
    history: list[dict[str, Any]] = []
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        losses, hits = [], []
        net.train()
        for batch in stream.epoch():
            loss, acc = train_step(net, batch, optimizer, label_smoothing=config.label_smoothing)
            scheduler.step()
            losses.append(loss)
            hits.append(acc)
        valid_loss, top1 = evaluate(net, data.eval_batches(config.batch_size))
        row = {"epoch": epoch, "train_loss": sum(losses) / len(losses), "train_acc": sum(hits) / len(hits),
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
               "architecture": arch.to_dict()}
    files["summary"].write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return files
