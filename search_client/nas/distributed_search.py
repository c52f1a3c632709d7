"""One search across the processes of a torchrun run: what each rank does so that all of them train, and derive,
the same architecture.

- Tables (:func:`broadcast_tables`): rank 0 alone loads them (reads the files or asks the devices) and sends
  them; every rank rebuilds them, checks each one's content hash against rank 0's, and all ranks compare their
  hashes before training.
- Data (:func:`shard_search_data`): every rank opens the same data (checked by its content hash) and streams
  its share of each pass of the train and valid splits
  (:class:`search_client.training.distributed.StreamShard`). A rank's batch is ``batch_size`` images: the global
  batch is ``batch_size`` x world size, and an epoch has ``1 / world size`` of the steps of a single process.
- Paths: the path-sampling generator is seeded alike on every rank and advanced identically (the same draws, in
  the same order), so every rank runs the same sub-network at each step.
- Gradients (:func:`average_search_gradients`): before each weight step the gradients of the parameters that ran
  are averaged over the ranks (the others have none, on every rank alike); before each architecture step the
  alphas' gradients are. Every rank then takes the same optimizer step, so the alphas (and the weights) stay bit
  for bit the same; :func:`check_replicas` compares their digests after every epoch and stops the run if they
  ever differ. REINFORCE (:class:`DistributedReinforce`) averages each sampled architecture's accuracy over the
  ranks, so the rewards and the baseline are the same everywhere.
- Outputs: rank 0 alone reads and writes the checkpoint, logs, plots and exports; a resumed run hands rank 0's
  checkpoint to every rank (:func:`load_checkpoint_on_main`). Every rank derives the architecture and
  :func:`check_same_architecture` compares them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from search_client.nas.checkpoint import checkpoint_path, load_checkpoint
from search_client.nas.gradients import Reinforce
from search_client.nas.supernet import Supernet
from search_client.table.latency_table import LatencyTable
from search_client.training.datasets import SearchData
from search_client.training.distributed import (
    DistContext,
    all_reduce_sum,
    average_gradients_on_step,
    check_same,
    on_main_rank,
    restart_count,
    tensors_digest,
)


def broadcast_tables(load: Callable[[], Sequence[LatencyTable]], ctx: DistContext) -> list[LatencyTable]:
    """The latency tables ``load`` gives on rank 0, on every rank (its error, raised on every rank); ValueError
    when a rank's copy does not have rank 0's content hash."""
    if not ctx.active:
        return list(load())
    loaded: list[LatencyTable] = []

    def payload() -> list[tuple[dict[str, Any], str]]:
        loaded.extend(load())
        return [(t.to_dict(), t.content_hash()) for t in loaded]

    sent = on_main_rank(payload, ctx, "the latency tables")
    received = loaded
    if not ctx.is_main:
        for d, (data, digest) in enumerate(sent):
            table = LatencyTable.from_dict(data, source=f"latency table {d} from rank 0")
            if table.content_hash() != digest:
                raise ValueError(f"latency table {d}: rank {ctx.rank}'s copy has content hash "
                                 f"{table.content_hash()[:12]}..., rank 0's is {digest[:12]}...")
            received.append(table)
    check_same([t.content_hash() for t in received], ctx, "the latency tables' content hashes")
    return received


def shard_search_data(data: SearchData, ctx: DistContext) -> None:
    """Each rank streams its share of the train and valid splits; RanksDisagree when the ranks opened different
    data (content hash), ValueError when a share is smaller than a batch."""
    if not ctx.active:
        return
    check_same(data.info.get("content_hash"), ctx, f"the content hash of the data {data.name!r}")
    data.train.set_shard(ctx.shard())
    data.valid.set_shard(ctx.shard())


def average_search_gradients(weight_optimizer: torch.optim.Optimizer, arch_optimizer: torch.optim.Optimizer,
                             ctx: DistContext) -> None:
    """Average the weights' and the alphas' gradients over the ranks before each step of their optimizers."""
    average_gradients_on_step(weight_optimizer, ctx, "the supernet's weights")
    average_gradients_on_step(arch_optimizer, ctx, "the architecture parameters")


def mean_over_ranks(values: Sequence[float | None], ctx: DistContext, what: str) -> list[float | None]:
    """The mean over the ranks of each value (None where every rank has None: no step of that kind)."""
    present = [v for v in values if v is not None]
    sums = iter(all_reduce_sum(present, ctx, what))
    return [None if v is None else next(sums) / ctx.world_size for v in values]


class DistributedReinforce(Reinforce):
    """REINFORCE whose reward uses the accuracy averaged over the ranks (each scored its own valid batch)."""

    def __init__(self, ctx: DistContext, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ctx = ctx

    def reward(self, accuracy: float, latency_ratio: float | None) -> float:
        mean = all_reduce_sum([accuracy], self.ctx, "a sampled architecture's accuracy")[0] / self.ctx.world_size
        return super().reward(mean, latency_ratio)


def make_reinforce(ctx: DistContext, **kwargs: Any) -> Reinforce:
    """The REINFORCE update of a run: :class:`DistributedReinforce` with several ranks."""
    return DistributedReinforce(ctx, **kwargs) if ctx.world_size > 1 else Reinforce(**kwargs)


def check_replicas(supernet: Supernet, ctx: DistContext, epoch: int) -> None:
    """RanksDisagree when the ranks' alphas or weights differ (by digest) after ``epoch``."""
    if not ctx.active:
        return
    arch = tensors_digest(supernet.arch_parameters())
    weights = tensors_digest(supernet.weight_parameters())
    check_same((arch, weights), ctx, f"the supernet's alphas and weights after epoch {epoch}")


def check_same_architecture(choices: Sequence[int], ctx: DistContext) -> None:
    """RanksDisagree when the ranks derived different architectures."""
    check_same([int(c) for c in choices], ctx, "the derived architecture")


def checkpoint_on_main(out_dir: str | Path, ctx: DistContext) -> bool:
    """Whether rank 0 sees a checkpoint in ``out_dir`` (told to every rank)."""
    return on_main_rank(lambda: checkpoint_path(out_dir).exists(), ctx, "whether a checkpoint exists")


def load_checkpoint_on_main(out_dir: str | Path, ctx: DistContext) -> dict[str, Any]:
    """Rank 0's checkpoint of ``out_dir``, on every rank (its ValueError on every rank)."""
    return on_main_rank(lambda: load_checkpoint(out_dir), ctx, "the checkpoint")


def resumes_after_restart(out_dir: str | Path, ctx: DistContext, environ: Mapping[str, str] | None = None) -> bool:
    """Whether this run continues from its checkpoint because torchrun restarted it (``--max-restarts``): after
    a restart, when rank 0 has a checkpoint in ``out_dir``."""
    return restart_count(environ) > 0 and checkpoint_on_main(out_dir, ctx)
