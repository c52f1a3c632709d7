"""The ProxylessNAS search loop: warm-up, then weight steps alternating with architecture steps.

Phases (epochs counted over both): ``warmup_epochs`` of weight steps only (cosine lr from ``warmup_lr``), then
``epochs`` joint epochs (cosine lr from ``lr``) with one architecture step on a held-out batch after every
``arch_every`` weight steps. Weight steps train the sampled path (or the DARTS mixture); the train and
architecture splits come from :func:`search_client.training.datasets.open_search_data` with the config's seed.

Determinism: every random draw comes from a seeded ``torch.Generator`` held by the run (gate sampling, the data
streams, alpha initialisation); the supernet's weights are initialised under a forked global generator seeded with
the config's seed. A checkpoint (:mod:`search_client.nas.checkpoint`) is written after every epoch; resuming from it
gives the same result as not stopping.

Output directory: ``log.jsonl``, ``log.csv`` (:mod:`search_client.nas.search_log`), ``checkpoint.pt``, and once
finished (:func:`search_client.nas.derive.export_search_result`) ``arch.json``, ``weights.pt``, ``model.onnx`` and
``summary.json``. The loop draws nothing: progress and warnings go to :class:`SearchCallbacks`, and the figures are
drawn from the result by :mod:`search_client.plots.search_curves`.

On a GPU the steps run as :class:`search_client.training.cuda.DeviceTraining` says (weight steps under mixed
precision with ``amp``; architecture steps in float32). Across the processes of a torchrun run (``dist``) the
ranks shard the data, sample the same paths and average their gradients, rank 0 alone reads the checkpoint and
writes every file, and the ranks check after each epoch that they hold the same supernet
(:mod:`search_client.nas.distributed_search`).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from search_client.nas.callbacks import SearchCallbacks
from search_client.nas.checkpoint import check_checkpoint, save_checkpoint
from search_client.nas.config import SearchConfig
from search_client.nas.derive import device_keys, export_search_result
from search_client.nas.distributed_search import (
    average_search_gradients,
    check_replicas,
    check_same_architecture,
    checkpoint_on_main,
    load_checkpoint_on_main,
    make_reinforce,
    mean_over_ranks,
    shard_search_data,
)
from search_client.nas.gradients import gradient_arch_step
from search_client.nas.losses import AdaptiveStrength, LatencyLoss
from search_client.nas.schedule import (
    PhasedCosineLR,
    arch_schedule_warning,
    arch_step_count,
    scaled_arch_lr,
)
from search_client.nas.search_log import entropy, mean_or_none, search_summary, uniform_entropy, write_logs
from search_client.nas.supernet import Supernet
from search_client.nas.target import check_targets
from search_client.nas.weight_step import weight_step
from search_client.nas.within_target import Derived, derive_choices
from search_client.table.latency_table import LatencyTable
from search_client.table.objective import MultiDeviceLatency
from search_client.training.cuda import DeviceTraining
from search_client.training.datasets import check_class_count
from search_client.training.distributed import SINGLE, DistContext, align_module, average_batchnorm_stats
from search_client.training.train import evaluate, held_out_batches

BN_CALIBRATION_IMAGES = 512
EVAL_BATCH = 256


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


class SearchRun:
    """One search: data, supernet, optimizers, generators and log; :meth:`run` trains, checkpoints and stops.

    ``arch_lr`` is the architecture lr in use (the config's, or scaled to the run's ``arch_steps_total``);
    ``schedule_warning`` says, before any training, when that schedule cannot move the architecture.
    ``device`` trains the supernet (``amp``: weight steps in mixed precision there); ``dist`` is this process's
    place in a torchrun run.
    """

    def __init__(self, config: SearchConfig, tables: Sequence[LatencyTable], out_dir: str | Path, *,
                 callbacks: SearchCallbacks | None = None, device: str = "cpu", amp: bool = False,
                 dist: DistContext = SINGLE) -> None:
        if not tables:
            raise ValueError("tables: at least one latency table is needed")
        self.device = _torch_device(device)
        self.placement = DeviceTraining(self.device, amp=amp)
        self.dist = dist
        self.config = config
        self.tables = list(tables)
        self.out_dir = Path(out_dir)
        self.callbacks = callbacks or SearchCallbacks()
        self.space = self.tables[0].space
        if len(config.targets_ms) != len(self.tables):
            raise ValueError(f"targets_ms: {len(config.targets_ms)} target(s) for {len(self.tables)} latency table(s)")
        self.objective = MultiDeviceLatency(self.tables, config.targets_ms, config.device_weights, config.device_mode)
        self.loss_fn = LatencyLoss(config.loss, config.strength, config.loss_scale, config.log_unit_ms)
        check_targets(self.objective)
        if config.grad_estimator == "binary":
            self.loss_fn.check_units(self.objective)
        self.adaptive = AdaptiveStrength(config.adaptive_rate, config.target_band) if config.adaptive else None
        self._open_data()
        self._build_model()
        self.epoch = 0
        self.joint_steps = 0
        self.arch_steps = 0
        self.history: list[dict[str, Any]] = []

    def _open_data(self) -> None:
        """The weight-step and architecture-step streams and the held-out batches (the config's seed)."""
        config = self.config
        self.data = config.open_data(self.space.input_size, self.space.in_chs)
        check_class_count(self.data.num_classes, self.space.num_classes, f"space {self.space.name}'s head",
                          config.data.source)
        shard_search_data(self.data, self.dist)
        self.placement.prepare_streams(self.data.train, self.data.valid)

    def _build_model(self) -> None:
        """Supernet (weights under a forked global generator, alphas from their own), optimizers, lr schedules."""
        config = self.config
        self.sample_gen = torch.Generator().manual_seed(config.seed + 3)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.supernet = self.placement.prepare_model(Supernet(
                self.space, init_std=config.init_std, generator=torch.Generator().manual_seed(config.seed + 4)))
        per_epoch = len(self.data.train)
        self.arch_steps_total = arch_step_count(config.epochs, per_epoch, config.arch_every)
        self.arch_lr = config.arch_lr if config.arch_lr is not None else scaled_arch_lr(self.arch_steps_total)
        n_candidates = max(cell.n_paths for cell in self.supernet.cells)
        self.schedule_warning = arch_schedule_warning(self.arch_steps_total, self.arch_lr, n_candidates,
                                                      scaled=config.arch_lr is None)
        self.weight_opt = torch.optim.SGD(self.supernet.weight_parameters(), lr=config.warmup_lr,
                                          momentum=config.momentum, nesterov=config.nesterov and config.momentum > 0,
                                          weight_decay=config.weight_decay)
        self.arch_opt = torch.optim.Adam(self.supernet.arch_parameters(), lr=self.arch_lr, betas=config.arch_betas,
                                         eps=config.arch_eps, weight_decay=0.0)
        self.schedule = PhasedCosineLR(self.weight_opt, warmup_steps=config.warmup_epochs * per_epoch,
                                       joint_steps=config.epochs * per_epoch, warmup_lr=config.warmup_lr,
                                       lr=config.lr)
        align_module(self.supernet, self.dist, "the supernet's initial weights and alphas")
        average_search_gradients(self.weight_opt, self.arch_opt, self.dist)
        self.reinforce = make_reinforce(self.dist, samples=config.reinforce_samples,
                                        tradeoff=config.reinforce_tradeoff, baseline_decay=config.baseline_decay)

    # --- steps ------------------------------------------------------------------------------------------------
    def _to_device(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.placement.to_device(batch)

    def arch_step(self) -> tuple[float, float]:
        """One architecture step on the next held-out batch; returns (loss, expected-latency ratio or reward)."""
        batch = self._to_device(self.data.valid.next_batch())
        if self.config.grad_estimator == "reinforce":
            result = self.reinforce.step(self.supernet, batch, objective=self.objective, optimizer=self.arch_opt,
                                         generator=self.sample_gen)
        else:
            result = gradient_arch_step(self.supernet, batch, mode=self.config.mode, objective=self.objective,
                                        loss_fn=self.loss_fn, optimizer=self.arch_opt, generator=self.sample_gen)
        self.arch_steps += 1
        if self.adaptive is not None:
            self.adaptive.update(self.loss_fn, self.objective.ratio_of(self.supernet.argmax_choices()))
        return result.loss, result.value

    # --- evaluation -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate_argmax(self) -> tuple[float, float]:
        """Loss and top-1 of the argmax architecture on the held-out split: inherited weights, eval-mode BN with
        statistics re-estimated on :data:`BN_CALIBRATION_IMAGES` training images (the train stream's next ones,
        drawn without moving it; across ranks, each rank's next ones and the statistics averaged, each rank
        evaluating its share of the split)."""
        self.supernet.use_argmax()
        self.supernet.recalibrate_batchnorm(self.placement.inputs(iter(self._calibration_batches())))
        average_batchnorm_stats(self.supernet.active_modules(), self.dist)
        return evaluate(self.supernet, held_out_batches(self.data, EVAL_BATCH, self.dist), dist=self.dist)

    def _calibration_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        stream = self.data.train
        per_step = self.config.batch_size * self.dist.world_size
        count = min(len(stream), math.ceil(BN_CALIBRATION_IMAGES / per_step))
        with _position_kept(stream):
            return [stream.next_batch() for _ in range(count)]

    def _epoch_row(self, phase: str, train: list[tuple[float, float]], arch: list[tuple[float, float]],
                   seconds: float) -> dict[str, Any]:
        """The log row of the epoch just finished (fields in :mod:`search_client.nas.search_log`)."""
        with torch.no_grad():
            probs = self.supernet.probs()
            expected = [float(v.item()) for v in self.objective.per_device(probs)]
        choices = self.supernet.argmax_choices()
        valid_loss, valid_acc = self.evaluate_argmax()
        train_loss, train_acc, arch_loss = mean_over_ranks(
            [mean_or_none([t[0] for t in train]), mean_or_none([t[1] for t in train]),
             mean_or_none([a[0] for a in arch])], self.dist, "the epoch's losses")
        return {
            "epoch": self.epoch, "phase": phase, "lr": self.schedule.current(),
            "train_loss": train_loss, "train_acc": train_acc,
            "arch_loss": arch_loss, "arch_steps": self.arch_steps,
            "valid_loss": valid_loss, "valid_acc": valid_acc,
            "expected_ms": expected, "argmax_ms": self.objective.latency_of(choices),
            "argmax_ratio": self.objective.ratio_of(choices), "targets_ms": list(self.objective.targets_ms),
            "entropy": entropy(probs), "strength": float(self.loss_fn.strength or 0.0), "aim": self.loss_fn.aim,
            "choices": choices, "seconds": seconds,
        }

    # --- the loop ---------------------------------------------------------------------------------------------
    def run(self, *, stop_after_epochs: int | None = None) -> SearchResult:
        """Train until the last epoch (or ``stop_after_epochs`` more epochs), checkpointing after each epoch."""
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        config, callbacks = self.config, self.callbacks
        last = config.total_epochs
        if stop_after_epochs is not None:
            last = min(last, self.epoch + stop_after_epochs)
        while self.epoch < last:
            phase = "warmup" if self.epoch < config.warmup_epochs else "search"
            callbacks.epoch_start(self.epoch + 1, config.total_epochs, phase, len(self.data.train))
            start = time.perf_counter()
            train_stats, arch_stats = [], []
            for batch in self.data.train.epoch():
                # weight step on the train split
                train_stats.append(weight_step(self.supernet, self._to_device(batch), self.weight_opt,
                                               mode=config.mode, label_smoothing=config.label_smoothing,
                                               generator=self.sample_gen, precision=self.placement.precision))
                self.schedule.step()
                # architecture step on the held-out split, every arch_every weight steps (joint phase only)
                if phase == "search":
                    self.joint_steps += 1
                    if self.joint_steps % config.arch_every == 0:
                        arch_stats.append(self.arch_step())
                callbacks.step()
            # end of epoch: log row, logs, checkpoint
            self.epoch += 1
            row = self._epoch_row(phase, train_stats, arch_stats, time.perf_counter() - start)
            self.history.append(row)
            if self.dist.is_main:
                write_logs(self.history, self.out_dir)
                save_checkpoint(self.state_dict(), self.out_dir)
            check_replicas(self.supernet, self.dist, self.epoch)  # and the others wait for the checkpoint
            callbacks.epoch_end(row)
        return SearchResult(self.supernet, self.objective, self.supernet.argmax_choices(), self.history,
                            self.epoch >= config.total_epochs, self.out_dir)

    # --- checkpoints ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where this run is (see :mod:`search_client.nas.checkpoint`)."""
        return {
            "config": self.config.to_dict(),
            "table_hashes": [t.content_hash() for t in self.tables],
            "epoch": self.epoch, "joint_steps": self.joint_steps, "arch_steps": self.arch_steps,
            "supernet": self.supernet.state_dict(),
            "weight_optimizer": self.weight_opt.state_dict(), "arch_optimizer": self.arch_opt.state_dict(),
            "schedule": self.schedule.state_dict(),
            "sample_generator": self.sample_gen.get_state(),
            "train_stream": self.data.train.state_dict(), "valid_stream": self.data.valid.state_dict(),
            "loss_strength": self.loss_fn.strength, "loss_aim": self.loss_fn.aim, "reinforce": self.reinforce.state_dict(),
            "history": self.history, "world_size": self.dist.world_size,
            "grad_scaler": self.placement.precision.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's state; ValueError when it belongs to another config or other tables."""
        check_checkpoint(state, self.config, [t.content_hash() for t in self.tables], self.dist.world_size)
        self.epoch, self.joint_steps, self.arch_steps = state["epoch"], state["joint_steps"], state["arch_steps"]
        self.supernet.load_state_dict(state["supernet"])
        self.weight_opt.load_state_dict(state["weight_optimizer"])
        self.arch_opt.load_state_dict(state["arch_optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.sample_gen.set_state(state["sample_generator"])
        self.data.train.load_state_dict(state["train_stream"])
        self.data.valid.load_state_dict(state["valid_stream"])
        self.loss_fn.strength = state["loss_strength"]
        self.loss_fn.aim = state.get("loss_aim", 1.0)  # absent from checkpoints before the aim
        self.reinforce.load_state_dict(state["reinforce"])
        self.history = list(state["history"])
        self.placement.precision.load_state_dict(state.get("grad_scaler"))  # absent from checkpoints of version 3

    def resume(self) -> None:
        """Load the checkpoint of the output directory (rank 0's, on every rank; ValueError when there is none)."""
        self.load_state_dict(load_checkpoint_on_main(self.out_dir, self.dist))


@contextlib.contextmanager
def _position_kept(stream: Any) -> Iterator[None]:
    """Draw from a data stream inside the block and put it back where it was afterwards."""
    state = stream.state_dict()
    try:
        yield
    finally:
        stream.load_state_dict(state)


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


def run_search(config: SearchConfig, tables: Sequence[LatencyTable], out_dir: str | Path, *, resume: bool = False,
               callbacks: SearchCallbacks | None = None, stop_after_epochs: int | None = None,
               device: str = "cpu", amp: bool = False, dist: DistContext = SINGLE) -> SearchResult:
    """The whole search job: warn about the schedule, train (or continue with ``resume``), and when finished derive
    and export.

    ``device`` is the torch device that trains the supernet ("cpu", "cuda", "cuda:1"; ``amp``: weight steps in
    mixed precision there); neither is part of the config, so a search may continue on another device. ``dist``:
    this process's place in a torchrun run (every rank calls this with the same arguments; rank 0 alone writes).
    A directory that already holds a checkpoint is refused unless ``resume`` (nothing is overwritten by mistake).
    ``stop_after_epochs`` ends the run early after that many epochs (as if it were stopped), leaving a checkpoint
    to resume from. ``summary.json`` is described in :mod:`search_client.nas.search_log`; it adds how the run
    trained: ``world_size``, ``distributed_backend`` (gloo, nccl, or null for one process), ``train_device``,
    ``amp``, ``channels_last``, ``pin_memory``, ``deterministic``.
    """
    run = SearchRun(config, tables, out_dir, callbacks=callbacks, device=device, amp=amp, dist=dist)
    if resume:
        run.resume()
    elif checkpoint_on_main(run.out_dir, dist):
        raise ValueError(f"out: {run.out_dir} already holds a search checkpoint; pass --resume to continue it or "
                         "choose another directory")
    if run.schedule_warning:
        run.callbacks.warning(run.schedule_warning)
    start = time.perf_counter()
    result = run.run(stop_after_epochs=stop_after_epochs)
    if result.finished:
        with torch.no_grad():
            derived = derive_choices(run.supernet.probs(), run.objective, rule=config.derive,
                                     band=config.target_band, loss_kind=config.loss)
        result.choices, result.derived = derived.choices, derived
        check_same_architecture(derived.choices, dist)
        summary = search_summary(
            config, derived, devices=device_keys(run.tables),
            candidate_names=[cell.candidate_names for cell in run.space.cells()],
            final_strength=run.loss_fn.strength, arch_lr=run.arch_lr, arch_steps=run.arch_steps,
            entropy_start=uniform_entropy([cell.n_paths for cell in run.supernet.cells]),
            final_row=run.history[-1] if run.history else {}, seconds=time.perf_counter() - start)
        summary.update(world_size=dist.world_size, distributed_backend=dist.backend, **run.placement.describe())
        if dist.is_main:
            result.files.update(export_search_result(run.supernet, run.objective, run.out_dir, summary=summary,
                                                     choices=derived.choices))
    return result
