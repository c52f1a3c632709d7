"""Resumable mini-batch streams over an :class:`~search_client.training.image_sets.ImageSet`, read through a
``torch.utils.data.DataLoader`` with worker processes.

A stream covers a view of a set (``indices``) and yields passes over it: each pass a fresh permutation from the
stream's own ``torch.Generator`` (or the view's order when not shuffled). Batches are made by the DataLoader:
each batch is one task for one worker (or the main process with ``workers=0``).

Determinism. An augmented item's randomness is a ``numpy.random.Generator`` seeded with (pass seed, position of
the item in the pass), the pass seed drawn from the stream's generator when the pass starts. So a batch is a
function of the stream's seed and its place in the sequence only: the same for any number of workers and any
scheduling of them (tested with 0 and 2 workers), and the DataLoader's own worker seeds (drawn from a private
generator, never the global one) are not used. :meth:`BatchStream.state_dict` holds the generator state, the
pass's order and seed and the number of batches taken, so a restored stream yields exactly the batches the
original would have, with or without workers (batches a worker had prefetched are simply read again).

Sharding across processes (:meth:`BatchStream.set_shard`): every rank's stream draws the same pass order, and
takes its share of the pass positions (:class:`search_client.training.distributed.StreamShard`); an item's
augmentation seed is its position in the whole pass, so the ranks' batches together hold the very items (and
augmentations) of one stream's pass. ``pin_memory`` (:meth:`BatchStream.set_pin_memory`) has the DataLoader put
batches in page-locked memory, for non-blocking copies to a GPU.

Workers are started when the first batch is asked for and kept for the stream's life (``persistent_workers``);
each runs ``torch.set_num_threads(1)`` (torch's worker loop does too; the init function makes it explicit) so N
workers do not start N thread pools.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from search_client.training.distributed import StreamShard
from search_client.training.image_sets import ImageReadError, ImageSet

Batch = tuple[torch.Tensor, torch.Tensor]
PASS_SEED_HIGH = 2**62


@dataclass(frozen=True)
class _BatchTask:
    """One batch to read: dataset indices, the pass seed when augmented, and the items' positions in the pass."""

    indices: np.ndarray
    pass_seed: int | None
    positions: np.ndarray


@dataclass(frozen=True)
class _ReadFailure:
    """An unreadable image, carried back from a worker as a value so the message stays one line."""

    message: str


class _BatchReader(Dataset):
    """The DataLoader's dataset: a task in, a batch (or a :class:`_ReadFailure`) out."""

    def __init__(self, images: ImageSet) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, task: _BatchTask) -> Batch | _ReadFailure:
        seeds = None
        if task.pass_seed is not None:
            seeds = [(task.pass_seed, int(position)) for position in task.positions]
        try:
            return self.images.batch(task.indices, seeds)
        except ImageReadError as exc:
            return _ReadFailure(str(exc))


class _PassSampler:
    """The tasks of the rest of the current pass (set by the stream before each new DataLoader iteration)."""

    def __init__(self) -> None:
        self.tasks: list[_BatchTask] = []

    def __iter__(self) -> Iterator[_BatchTask]:
        return iter(self.tasks)

    def __len__(self) -> int:
        return len(self.tasks)


def _worker_init(worker_id: int) -> None:
    """One intra-op thread per worker process."""
    torch.set_num_threads(1)


class BatchStream:
    """Mini-batches of ``images`` (restricted to ``indices``), seeded, resumable mid-pass.

    :meth:`epoch` yields the rest of the current pass, or one whole new pass when none is under way;
    :meth:`next_batch` draws from an endless sequence of passes. ``augment`` gives each item its own seed (the
    train transform of image folders; in-memory sets ignore it). ``workers`` DataLoader worker processes read the
    batches (0: the calling process).
    """

    def __init__(self, images: ImageSet, batch_size: int, *, indices: np.ndarray | None = None, shuffle: bool = True,
                 augment: bool = False, seed: int = 0, drop_last: bool = False, workers: int = 0) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: must be a positive integer, got {batch_size!r}")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ValueError(f"workers: must be an integer >= 0, got {workers!r}")
        self.images = images
        self.indices = np.arange(len(images), dtype=np.int64) if indices is None else np.asarray(indices, np.int64)
        if len(self.indices) == 0:
            raise ValueError(f"data: no samples in this split of {images.name}")
        if drop_last and len(self.indices) < batch_size:
            raise ValueError(f"batch_size: {batch_size} is larger than the {len(self.indices)} samples of "
                             f"{images.name}")
        self.batch_size = batch_size
        self.shuffle, self.augment, self.drop_last, self.workers = shuffle, augment, drop_last, workers
        self._seed = seed
        self._gen = torch.Generator().manual_seed(seed)
        self._order: torch.Tensor | None = None
        self._pass_seed: int | None = None
        self._pos = 0
        self._sampler = _PassSampler()
        self._loader: DataLoader | None = None
        self._iter: Iterator[Batch | _ReadFailure] | None = None
        self.shard: StreamShard | None = None
        self.pin_memory = False

    def __len__(self) -> int:
        n = self._share()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _share(self) -> int:
        """Items of a pass this stream yields (all of them, or this rank's share)."""
        return len(self.indices) if self.shard is None else self.shard.count(len(self.indices))

    def set_shard(self, shard: StreamShard | None) -> None:
        """Yield only ``shard``'s share of every pass (before the first batch). ValueError when a share is too
        small for one batch."""
        if self._order is not None:
            raise ValueError("data stream: set the shard before the first batch")
        self.shard = shard
        share = self._share()
        if share == 0 or (self.drop_last and share < self.batch_size):
            world = shard.world_size if shard is not None else 1
            raise ValueError(f"data: the {len(self.indices)} samples of this split of {self.images.name} give each "
                             f"of {world} processes {share}, fewer than a batch of {self.batch_size}; use fewer "
                             "processes or a smaller batch")

    def set_pin_memory(self, pin: bool) -> None:
        """Have the DataLoader return batches in page-locked memory (for non-blocking copies to a GPU)."""
        self.pin_memory = bool(pin)
        self.close()

    # --- passes -------------------------------------------------------------------------------------------------
    def _start_pass_if_done(self) -> torch.Tensor:
        """The current pass's order, after drawing a new pass when there is none or it is used up."""
        if self._order is not None and self._pos < len(self):
            return self._order
        n = len(self.indices)
        self._order = torch.randperm(n, generator=self._gen) if self.shuffle else torch.arange(n)
        self._pass_seed = (int(torch.randint(PASS_SEED_HIGH, (1,), generator=self._gen).item())
                           if self.augment else None)
        self._pos = 0
        self._iter = None
        return self._order

    def _tasks_from(self, order_tensor: torch.Tensor, pos: int) -> list[_BatchTask]:
        order = order_tensor.numpy()
        n = len(self.indices)
        positions = np.arange(n, dtype=np.int64) if self.shard is None else self.shard.positions(n)
        tasks = []
        for b in range(pos, len(self)):
            mine = positions[b * self.batch_size:(b + 1) * self.batch_size]
            tasks.append(_BatchTask(self.indices[order[mine]], self._pass_seed, mine))
        return tasks

    def _open_iterator(self, order: torch.Tensor) -> Iterator[Batch | _ReadFailure]:
        if self._loader is None:
            self._loader = DataLoader(
                _BatchReader(self.images), batch_size=None, sampler=self._sampler, num_workers=self.workers,
                persistent_workers=self.workers > 0, worker_init_fn=_worker_init if self.workers else None,
                generator=torch.Generator().manual_seed(self._seed), pin_memory=self.pin_memory)
        self._sampler.tasks = self._tasks_from(order, self._pos)
        return iter(self._loader)

    def next_batch(self) -> Batch:
        """The next batch, starting a new pass when the current one is used up. ValueError naming the file when
        an image cannot be read."""
        order = self._start_pass_if_done()
        if self._iter is None:
            self._iter = self._open_iterator(order)
        out = next(self._iter)
        self._pos += 1
        if isinstance(out, _ReadFailure):
            raise ValueError(out.message)
        return out

    def epoch(self) -> Iterator[Batch]:
        """The rest of the current pass, or one whole new pass when none is under way."""
        self._start_pass_if_done()
        while self._pos < len(self):
            yield self.next_batch()

    def close(self) -> None:
        """Stop the worker processes (they start again when a batch is asked for)."""
        self._iter = None
        self._loader = None

    # --- resume -------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The generator state, the current pass (order, seed) and the batches taken from it."""
        return {"generator": self._gen.get_state(), "order": self._order, "pass_seed": self._pass_seed,
                "pos": self._pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s output (batches prefetched before are read again)."""
        order = state["order"]
        if order is not None and len(order) != len(self.indices):
            raise ValueError(f"data stream state: a pass over {len(order)} samples, this stream has "
                             f"{len(self.indices)}")
        self._gen.set_state(state["generator"])
        self._order = order
        self._pass_seed = state["pass_seed"]
        self._pos = int(state["pos"])
        self._iter = None
