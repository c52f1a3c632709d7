"""The ProxylessNAS search loop: warm-up, then weight steps alternating with architecture steps; checkpoints.

Phases (epochs counted over both): ``warmup_epochs`` of weight steps only (cosine lr from ``warmup_lr``), then
``epochs`` joint epochs (cosine lr from ``lr``) with one architecture step on a held-out validation batch after
every ``arch_every`` weight steps. Weight steps train the sampled path (or the DARTS mixture); the train and
validation splits both come from the training data, split with the config's seed.

Determinism: every random draw comes from a seeded ``torch.Generator`` held by the run (gate sampling, the two
data streams, alpha initialisation); the supernet's weights are initialised under a forked global generator
seeded with the config's seed. A checkpoint (``checkpoint.pt``, written after every epoch) holds the config,
the tables' content hashes, the weights and alphas, both optimizers, the lr schedule, every generator's state,
the data streams' positions, the adaptive latency weight, the REINFORCE baseline and the log; resuming from it
gives the same result as not stopping.

Output directory: ``log.jsonl`` and ``log.csv`` (one row per epoch), ``checkpoint.pt``, the plots
``latency.png`` and ``probabilities.png``, and (see :func:`search_client.nas.derive.export_search_result`)
``arch.json``, ``weights.pt``, ``model.onnx`` and ``summary.json``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from search_client.training.data import BatchStream, ImageDataset, load_dataset, train_valid_split
from search_client.nas.derive import device_keys, export_search_result
from search_client.nas.gradients import ARCH_MODES, Reinforce, gradient_arch_step
from search_client.table.latency_table import LatencyTable
from search_client.nas.losses import LOSS_KINDS, AdaptiveStrength, LatencyLoss, argmax_ratio, check_targets
from search_client.table.objective import MODES as DEVICE_MODES
from search_client.table.objective import MultiDeviceLatency
from search_client.plots.search_curves import plot_latency_curves, plot_probabilities
from search_client.nas.supernet import Supernet
from search_client.training.train import train_step
from search_client.nas.within_target import DERIVE_RULES, Derived, derive_choices

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "proxyless-search-checkpoint"
CHECKPOINT_VERSION = 2
GRAD_ESTIMATORS = ("binary", "reinforce")
BN_CALIBRATION_IMAGES = 512


@dataclass
class SearchConfig:
    """Everything that determines a search (saved with every checkpoint; a resume must use the same).

    ``epochs`` counts the joint search epochs; ``warmup_epochs`` weight-only epochs run before them.
    ``targets_ms`` holds one target per latency table. ``strength`` is the latency weight (None: the loss's
    default, 0: no latency term). ``target_band`` is the tolerance around the target (a ratio of 1 +- band meets
    it): the adaptive weight aims inside it, and the ``within-target`` derive rule (see
    :mod:`search_client.nas.within_target`) exports the most probable architecture inside it when the argmax is not.
    The defaults are the paper's and the release's, except ``derive`` (the paper's rule is ``argmax``).
    """

    targets_ms: list[float]
    data: str = "digits"
    epochs: int = 10
    warmup_epochs: int = 0
    seed: int = 0
    batch_size: int = 64
    valid_fraction: float = 0.2
    mode: str = "full_v2"
    grad_estimator: str = "binary"
    loss: str = "mul#log"
    strength: float | None = None
    loss_scale: float = 0.2
    log_unit_ms: float = 1.0
    adaptive: bool = False
    adaptive_rate: float = 1.05
    target_band: float = 0.1
    derive: str = "within-target"
    device_weights: list[float] | None = None
    device_mode: str = "weighted"
    warmup_lr: float = 0.05
    lr: float = 0.025
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 4e-5
    label_smoothing: float = 0.1
    arch_lr: float = 1e-3
    arch_betas: tuple[float, float] = (0.0, 0.999)
    arch_eps: float = 1e-8
    arch_every: int = 5
    init_std: float = 1e-3
    reinforce_samples: int = 10
    reinforce_tradeoff: float = 0.1
    baseline_decay: float = 0.99

    def __post_init__(self) -> None:
        self.targets_ms = [float(t) for t in self.targets_ms]
        self.arch_betas = (float(self.arch_betas[0]), float(self.arch_betas[1]))
        for name in ("epochs", "warmup_epochs", "seed", "batch_size", "arch_every", "reinforce_samples"):
            value = getattr(self, name)
            low = 0 if name in ("warmup_epochs", "seed") else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"search config field '{name}': must be an integer >= {low}, got {value!r}")
        for name in ("warmup_lr", "lr", "momentum", "weight_decay", "label_smoothing", "arch_lr", "arch_eps",
                     "init_std", "loss_scale", "log_unit_ms", "reinforce_tradeoff", "target_band"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"search config field '{name}': must be a finite number >= 0, got {value!r}")
        if self.mode not in ARCH_MODES:
            raise ValueError(f"search config field 'mode': expected one of {', '.join(ARCH_MODES)}, got {self.mode!r}")
        if self.grad_estimator not in GRAD_ESTIMATORS:
            raise ValueError(f"search config field 'grad_estimator': expected one of {', '.join(GRAD_ESTIMATORS)}, "
                             f"got {self.grad_estimator!r}")
        if self.grad_estimator == "reinforce" and self.mode == "darts":
            raise ValueError("search config field 'mode': darts trains a mixture; REINFORCE needs a sampling mode")
        if self.grad_estimator == "reinforce" and self.adaptive:
            raise ValueError("search config field 'adaptive': it moves the latency loss's weight, which REINFORCE "
                             "does not use (its reward has the fixed exponent reinforce_tradeoff)")
        if self.loss not in LOSS_KINDS:
            raise ValueError(f"search config field 'loss': expected one of {', '.join(LOSS_KINDS)}, got {self.loss!r}")
        if self.device_mode not in DEVICE_MODES:
            raise ValueError(f"search config field 'device_mode': expected one of {', '.join(DEVICE_MODES)}, "
                             f"got {self.device_mode!r}")
        if not self.targets_ms:
            raise ValueError("search config field 'targets_ms': at least one latency target is needed")
        if not 0.0 < self.valid_fraction < 1.0:
            raise ValueError(f"search config field 'valid_fraction': must be in (0, 1), got {self.valid_fraction!r}")
        if self.derive not in DERIVE_RULES:
            raise ValueError(f"search config field 'derive': expected one of {', '.join(DERIVE_RULES)}, "
                             f"got {self.derive!r}")
        if not 0.0 <= self.target_band < 1.0:
            raise ValueError(f"search config field 'target_band': must be in [0, 1), got {self.target_band!r}")
        if not 0.0 <= self.baseline_decay < 1.0:
            raise ValueError(f"search config field 'baseline_decay': must be in [0, 1), got {self.baseline_decay!r}")

    @property
    def total_epochs(self) -> int:
        return self.warmup_epochs + self.epochs

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["arch_betas"] = list(self.arch_betas)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"search config field '{unknown[0]}': unknown")
        return cls(**data)


class PhasedCosineLR:
    """Per weight step: cosine from ``warmup_lr`` over the warm-up steps, then cosine from ``lr`` over the rest."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, warmup_steps: int, joint_steps: int,
                 warmup_lr: float, lr: float) -> None:
        self.optimizer = optimizer
        self.warmup_steps, self.joint_steps = warmup_steps, joint_steps
        self.warmup_lr, self.lr = warmup_lr, lr
        self.step_count = 0
        self._apply()

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return 0.5 * self.warmup_lr * (1 + math.cos(math.pi * step / self.warmup_steps))
        t = step - self.warmup_steps
        return 0.5 * self.lr * (1 + math.cos(math.pi * min(t, self.joint_steps) / max(1, self.joint_steps)))

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step_count)

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def current(self) -> float:
        return self.lr_at(self.step_count)

    def state_dict(self) -> dict[str, Any]:
        return {"step_count": self.step_count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = int(state["step_count"])
        self._apply()


@dataclass
class SearchResult:
    """The finished (or stopped) search: its supernet, choices and per-epoch log.

    ``choices`` is the argmax while the search is unfinished, and the derived (exported) architecture once it is
    finished; ``derived`` then says how it was derived (see :func:`search_client.nas.within_target.derive_choices`).
    """

    supernet: Supernet
    objective: MultiDeviceLatency
    choices: list[int]
    history: list[dict[str, Any]]
    finished: bool
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    derived: Derived | None = None


def weight_step(supernet: Supernet, batch: tuple[torch.Tensor, torch.Tensor], optimizer: torch.optim.Optimizer,
                *, mode: str, label_smoothing: float, generator: torch.Generator) -> tuple[float, float]:
    """One weight step: sample one path per cell by p (the mixture in ``darts`` mode), alphas frozen; returns
    (loss, accuracy) of the batch."""
    if mode == "darts":
        supernet.use_mixture()
    else:
        supernet.sample_single(generator)
    # train_step zeroes grads with set_to_none: the paths that did not run keep grad None, so SGD gives them no
    # weight decay and no momentum update
    with supernet.training_weights():
        return train_step(supernet, batch, optimizer, label_smoothing=label_smoothing)


def entropy(probs: Sequence[torch.Tensor]) -> float:
    """Mean over cells of the entropy of p (nats)."""
    values = [float(-(p * torch.log(p.clamp_min(1e-12))).sum().item()) for p in probs]
    return sum(values) / len(values)


class SearchRun:
    """One search: data, supernet, optimizers, generators and log; :meth:`run` trains, checkpoints and stops."""

    def __init__(self, config: SearchConfig, tables: Sequence[LatencyTable], out_dir: str | Path, *,
                 progress: bool = True, device: str = "cpu") -> None:
        if not tables:
            raise ValueError("tables: at least one latency table is needed")
        self.device = _torch_device(device)
        self.config = config
        self.tables = list(tables)
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.space = self.tables[0].space
        if len(config.targets_ms) != len(self.tables):
            raise ValueError(f"targets_ms: {len(config.targets_ms)} target(s) for {len(self.tables)} latency table(s)")
        self.objective = MultiDeviceLatency(self.tables, config.targets_ms, config.device_weights, config.device_mode)
        self.loss_fn = LatencyLoss(config.loss, config.strength, config.loss_scale, config.log_unit_ms)
        check_targets(self.objective)
        if config.grad_estimator == "binary":
            self.loss_fn.check_units(self.objective)
        self.adaptive = AdaptiveStrength(config.adaptive_rate, config.target_band) if config.adaptive else None
        self._load_data()
        self._build_model()
        self.epoch = 0
        self.joint_steps = 0
        self.arch_steps = 0
        self.history: list[dict[str, Any]] = []

    def _load_data(self) -> None:
        """The train/valid split (the config's seed) and their streams, each shuffled by its own generator."""
        config = self.config
        dataset = load_dataset(config.data, self.space.input_size, self.space.in_chs, seed=config.seed)
        if dataset.num_classes > self.space.num_classes:
            raise ValueError(f"data: {config.data} has {dataset.num_classes} classes but the space "
                             f"{self.space.name!r} has a {self.space.num_classes}-class head")
        self.train_set, self.valid_set = train_valid_split(dataset, config.valid_fraction, seed=config.seed)
        self.train_stream = BatchStream(self.train_set, config.batch_size, seed=config.seed + 1,
                                        drop_last=len(self.train_set) >= config.batch_size)
        self.valid_stream = BatchStream(self.valid_set, min(config.batch_size, len(self.valid_set)),
                                        seed=config.seed + 2, drop_last=True)

    def _build_model(self) -> None:
        """Supernet (weights under a forked global generator, alphas from their own), optimizers, lr schedule."""
        config = self.config
        self.sample_gen = torch.Generator().manual_seed(config.seed + 3)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.supernet = Supernet(self.space, init_std=config.init_std,
                                     generator=torch.Generator().manual_seed(config.seed + 4)).to(self.device)
        self.weight_opt = torch.optim.SGD(self.supernet.weight_parameters(), lr=config.warmup_lr,
                                          momentum=config.momentum, nesterov=config.nesterov and config.momentum > 0,
                                          weight_decay=config.weight_decay)
        self.arch_opt = torch.optim.Adam(self.supernet.arch_parameters(), lr=config.arch_lr, betas=config.arch_betas,
                                         eps=config.arch_eps, weight_decay=0.0)
        per_epoch = len(self.train_stream)
        self.schedule = PhasedCosineLR(self.weight_opt, warmup_steps=config.warmup_epochs * per_epoch,
                                       joint_steps=config.epochs * per_epoch, warmup_lr=config.warmup_lr,
                                       lr=config.lr)
        self.reinforce = Reinforce(samples=config.reinforce_samples, tradeoff=config.reinforce_tradeoff,
                                   baseline_decay=config.baseline_decay)

    # --- steps ------------------------------------------------------------------------------------------------
    def _to_device(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return batch[0].to(self.device), batch[1].to(self.device)

    def weight_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[float, float]:
        """Train the sampled path (the mixture in darts mode) on one batch; returns (loss, accuracy)."""
        result = weight_step(self.supernet, batch, self.weight_opt, mode=self.config.mode,
                             label_smoothing=self.config.label_smoothing, generator=self.sample_gen)
        self.schedule.step()
        return result

    def arch_step(self) -> tuple[float, float]:
        """One architecture step on the next validation batch; returns (loss, expected-latency ratio or reward)."""
        batch = self._to_device(self.valid_stream.next_batch())
        if self.config.grad_estimator == "reinforce":
            result = self.reinforce.step(self.supernet, batch, objective=self.objective, optimizer=self.arch_opt,
                                         generator=self.sample_gen)
        else:
            result = gradient_arch_step(self.supernet, batch, mode=self.config.mode, objective=self.objective,
                                        loss_fn=self.loss_fn, optimizer=self.arch_opt, generator=self.sample_gen)
        self.arch_steps += 1
        if self.adaptive is not None:
            self.adaptive.update(self.loss_fn, argmax_ratio(self.objective, self.supernet.argmax_choices()))
        return result.loss, result.value

    # --- evaluation -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate_argmax(self, dataset: ImageDataset, batch_size: int = 256) -> tuple[float, float]:
        """Loss and top-1 of the argmax architecture on ``dataset``: inherited weights, eval-mode BN with the
        statistics re-estimated on the first ``BN_CALIBRATION_IMAGES`` training images (fixed order)."""
        self.supernet.use_argmax()
        calibration = self.train_set.x[:BN_CALIBRATION_IMAGES].to(self.device)
        self.supernet.recalibrate_batchnorm(calibration.split(batch_size))
        was_training = self.supernet.training
        self.supernet.eval()
        total_loss, correct = 0.0, 0
        try:
            for start in range(0, len(dataset), batch_size):
                x, y = self._to_device((dataset.x[start:start + batch_size], dataset.y[start:start + batch_size]))
                logits = self.supernet(x)
                total_loss += float(F.cross_entropy(logits, y, reduction="sum").item())
                correct += int((logits.argmax(dim=1) == y).sum().item())
        finally:
            self.supernet.train(was_training)
        return total_loss / len(dataset), correct / len(dataset)

    def _epoch_row(self, phase: str, train: list[tuple[float, float]], arch: list[tuple[float, float]],
                   seconds: float) -> dict[str, Any]:
        with torch.no_grad():
            probs = self.supernet.probs()
            expected = [float(v.item()) for v in self.objective.per_device(probs)]
        choices = self.supernet.argmax_choices()
        valid_loss, valid_acc = self.evaluate_argmax(self.valid_set)
        argmax_ms = self.objective.latency_of(choices)
        return {
            "epoch": self.epoch, "phase": phase, "lr": self.schedule.current(),
            "train_loss": _mean([t[0] for t in train]), "train_acc": _mean([t[1] for t in train]),
            "arch_loss": _mean([a[0] for a in arch]), "arch_steps": self.arch_steps,
            "valid_loss": valid_loss, "valid_acc": valid_acc,
            "expected_ms": expected, "argmax_ms": argmax_ms,
            "argmax_ratio": argmax_ratio(self.objective, choices), "targets_ms": list(self.objective.targets_ms),
            "entropy": entropy(probs), "strength": float(self.loss_fn.strength or 0.0),
            "choices": choices, "seconds": seconds,
        }

    # --- the loop ---------------------------------------------------------------------------------------------
    def run(self, *, stop_after_epochs: int | None = None) -> SearchResult:
        """Train until the last epoch (or ``stop_after_epochs`` more epochs), checkpointing after each epoch."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        last = self.config.total_epochs
        if stop_after_epochs is not None:
            last = min(last, self.epoch + stop_after_epochs)
        with _Progress(self.progress) as bars:
            while self.epoch < last:
                phase = "warmup" if self.epoch < self.config.warmup_epochs else "search"
                bars.start(f"epoch {self.epoch + 1}/{self.config.total_epochs} ({phase})", len(self.train_stream))
                start = time.perf_counter()
                train_stats, arch_stats = [], []
                for batch in self.train_stream.epoch():
                    # weight step on the train split
                    train_stats.append(self.weight_step(self._to_device(batch)))
                    # architecture step on the validation split, every arch_every weight steps (joint phase only)
                    if phase == "search":
                        self.joint_steps += 1
                        if self.joint_steps % self.config.arch_every == 0:
                            arch_stats.append(self.arch_step())
                    bars.advance()
                self.epoch += 1
                row = self._epoch_row(phase, train_stats, arch_stats, time.perf_counter() - start)
                self.history.append(row)
                bars.log(_summary_line(row))
                self.write_logs()
                self.save_checkpoint()
        return SearchResult(self.supernet, self.objective, self.supernet.argmax_choices(), self.history,
                            self.epoch >= self.config.total_epochs, self.out_dir)

    # --- logs ---------------------------------------------------------------------------------------------------
    def write_logs(self) -> None:
        """Rewrite log.jsonl and log.csv from the history (one row per epoch; lists flattened per device)."""
        with open(self.out_dir / "log.jsonl", "w", encoding="utf-8") as fh:
            for row in self.history:
                fh.write(json.dumps(row) + "\n")
        rows = [_flat(row) for row in self.history]
        with open(self.out_dir / "log.csv", "w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    # --- checkpoints ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where this run is."""
        return {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
            "config": self.config.to_dict(),
            "table_hashes": [t.content_hash() for t in self.tables],
            "epoch": self.epoch, "joint_steps": self.joint_steps, "arch_steps": self.arch_steps,
            "supernet": self.supernet.state_dict(),
            "weight_optimizer": self.weight_opt.state_dict(), "arch_optimizer": self.arch_opt.state_dict(),
            "schedule": self.schedule.state_dict(),
            "sample_generator": self.sample_gen.get_state(),
            "train_stream": self.train_stream.state_dict(), "valid_stream": self.valid_stream.state_dict(),
            "loss_strength": self.loss_fn.strength, "reinforce": self.reinforce.state_dict(),
            "history": self.history,
        }

    def save_checkpoint(self) -> Path:
        """Write ``checkpoint.pt`` atomically (a temporary file renamed over the old one)."""
        path = self.out_dir / CHECKPOINT_NAME
        tmp = path.with_suffix(".pt.tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)
        return path

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint; ValueError when it belongs to another config or other tables."""
        if state.get("format") != CHECKPOINT_FORMAT or state.get("version") != CHECKPOINT_VERSION:
            raise ValueError("checkpoint: not a search checkpoint of this version")
        saved = SearchConfig.from_dict(state["config"]).to_dict()
        differ = [k for k, v in self.config.to_dict().items() if saved.get(k) != v]
        if differ:
            raise ValueError(f"checkpoint: config differs from the checkpoint's in {', '.join(differ)} "
                             f"(checkpoint: {', '.join(f'{k}={saved[k]!r}' for k in differ)})")
        hashes = [t.content_hash() for t in self.tables]
        if state["table_hashes"] != hashes:
            raise ValueError("checkpoint: the latency tables differ from the ones the search started with "
                             "(content hash mismatch)")
        self.epoch, self.joint_steps, self.arch_steps = state["epoch"], state["joint_steps"], state["arch_steps"]
        self.supernet.load_state_dict(state["supernet"])
        self.weight_opt.load_state_dict(state["weight_optimizer"])
        self.arch_opt.load_state_dict(state["arch_optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.sample_gen.set_state(state["sample_generator"])
        self.train_stream.load_state_dict(state["train_stream"])
        self.valid_stream.load_state_dict(state["valid_stream"])
        self.loss_fn.strength = state["loss_strength"]
        self.reinforce.load_state_dict(state["reinforce"])
        self.history = list(state["history"])

    def resume(self) -> None:
        """Load ``checkpoint.pt`` from the output directory (ValueError when there is none)."""
        path = self.out_dir / CHECKPOINT_NAME
        if not path.is_file():
            raise ValueError(f"resume: no checkpoint at {path}")
        self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def _torch_device(name: str) -> torch.device:
    """A torch device by name; ValueError for a malformed name or a CUDA device this machine does not have."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device: {name!r} is not a torch device ({exc})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} asked for, but CUDA is not available here")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device: {name!r}: only cpu and cuda are supported")
    return device


def _mean(values: list[float]) -> float | None:
    """The mean, or None (null in the logs) when there is nothing to average."""
    return sum(values) / len(values) if values else None


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key == "choices":
            out[key] = " ".join(str(c) for c in value)
        elif isinstance(value, list):
            out.update({f"{key}_{d}": v for d, v in enumerate(value)})
        else:
            out[key] = value
    return out


def _summary_line(row: dict[str, Any]) -> str:
    lat = ", ".join(f"{a:.3f}/{t:.3f}" for a, t in zip(row["argmax_ms"], row["targets_ms"]))
    return (f"epoch {row['epoch']} {row['phase']}: train loss {row['train_loss']:.3f} acc {row['train_acc']:.3f}, "
            f"valid acc {row['valid_acc']:.3f}, argmax/target ms {lat}, entropy {row['entropy']:.3f}, "
            f"strength {row['strength']:.3g}")


class _Progress:
    """rich progress bars (one per epoch) on stderr, or nothing when disabled."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bars: Any = None
        self._task: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), console=Console(stderr=True))
            self._bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bars is not None:
            self._bars.stop()

    def start(self, description: str, total: int) -> None:
        if self._bars is not None:
            self._task = self._bars.add_task(description, total=total)

    def advance(self) -> None:
        if self._bars is not None:
            self._bars.advance(self._task)

    def log(self, line: str) -> None:
        if self._bars is not None:
            self._bars.console.print(line)


def run_search(config: SearchConfig, tables: Sequence[LatencyTable], out_dir: str | Path, *, resume: bool = False,
               progress: bool = True, stop_after_epochs: int | None = None, device: str = "cpu") -> SearchResult:
    """The whole search job: train (or continue with ``resume``), plot, and when finished derive and export.

    ``device`` is the torch device that trains the supernet ("cpu", "cuda", "cuda:1"); it is not part of the
    config, so a search may continue on another device. A directory that already holds a checkpoint is
    refused unless ``resume`` (nothing is overwritten by
    mistake). ``stop_after_epochs`` ends the run early after that many epochs (as if it were stopped), leaving
    a checkpoint to resume from.

    ``summary.json`` of a finished search (besides what :func:`search_client.nas.derive.export_search_result` writes:
    space, choices, choice_names, predicted_latency_ms, targets_ms, min/max_latency_ms, files)::

        epochs, mode, grad_estimator, loss         the config's
        final_strength, adaptive                   the latency weight at the end, and whether it adapted
        derive, target_band                        the derive rule and the target's tolerance
        choices, ratio, target_met                 the exported architecture, its latency ratio to the target
                                                   (combined over devices), and whether it is inside the band
        argmax_choices, argmax_ratio               the argmax architecture at the end and its ratio
        valid_acc_inherited_argmax                 the argmax's validation top-1 with inherited weights
        search_seconds_this_run                    wall time of this process's part of the search
    """
    run = SearchRun(config, tables, out_dir, progress=progress, device=device)
    if resume:
        run.resume()
    elif (run.out_dir / CHECKPOINT_NAME).exists():
        raise ValueError(f"out: {run.out_dir} already holds a search checkpoint; pass --resume to continue it or "
                         "choose another directory")
    start = time.perf_counter()
    result = run.run(stop_after_epochs=stop_after_epochs)
    if run.history:
        result.files["latency_plot"] = plot_latency_curves(run.history, run.out_dir / "latency.png",
                                                           device_keys(run.tables))
        with torch.no_grad():
            probs = [p.tolist() for p in run.supernet.probs()]
        result.files["probabilities_plot"] = plot_probabilities(
            probs, [c.cell.candidate_names for c in run.supernet.cells], run.out_dir / "probabilities.png")
    if result.finished:
        final = run.history[-1] if run.history else {}
        with torch.no_grad():
            derived = derive_choices(run.supernet.probs(), run.objective, rule=config.derive,
                                     band=config.target_band, loss_kind=config.loss)
        result.choices, result.derived = derived.choices, derived
        summary = {
            "epochs": config.total_epochs, "mode": config.mode, "grad_estimator": config.grad_estimator,
            "loss": config.loss, "final_strength": run.loss_fn.strength, "adaptive": config.adaptive,
            "derive": derived.rule, "target_band": config.target_band, "target_met": derived.target_met,
            "ratio": derived.ratio, "argmax_choices": derived.argmax_choices, "argmax_ratio": derived.argmax_ratio,
            "valid_acc_inherited_argmax": final.get("valid_acc"),
            "search_seconds_this_run": time.perf_counter() - start,
        }
        result.files.update(export_search_result(run.supernet, run.objective, run.out_dir, summary=summary,
                                                 choices=derived.choices))
    return result
