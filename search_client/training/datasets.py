"""The data of a search or a retraining: one entry point, :func:`open_search_data`, over every source.

``DataOptions`` names the source and how to read it; ``open_search_data`` returns a :class:`SearchData` with the
weight-step stream (``train``), the architecture-step stream (``valid``), the deterministic held-out batches for
evaluation (``eval_batches``), the number of classes and the source's name.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from search_client.training.data import BatchStream, ImageDataset, load_dataset, train_valid_split

DEFAULT_VALID_FRACTION = 0.2


@dataclass(frozen=True)
class DataOptions:
    """What to read and how.

    ``source``: ``digits``, ``synthetic[:N[:K]]``, an image folder or a ``.npz`` file. ``input_size`` (H, W) and
    ``in_chs`` (1 or 3) shape every image. ``seed`` fixes the split, the shuffling and the augmentation.
    The architecture-step split holds out ``valid_per_class`` images of each class when given, else
    ``valid_fraction`` of each class, or (``use_val_folder``) is the folder's ``val/``. ``workers`` DataLoader
    worker processes decode images; ``color_jitter`` (0: off) is the strength of the weight steps' colour jitter.
    """

    source: str
    input_size: tuple[int, int]
    in_chs: int
    batch_size: int
    seed: int = 0
    valid_per_class: int | None = None
    valid_fraction: float = DEFAULT_VALID_FRACTION
    use_val_folder: bool = False
    workers: int = 0
    color_jitter: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source:
            raise ValueError("data: expected 'digits', 'synthetic[:N[:K]]', an image folder or a .npz file")
        size = tuple(self.input_size)
        if len(size) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in size):
            raise ValueError(f"data option 'input_size': expected two positive integers (H, W), got "
                             f"{self.input_size!r}")
        object.__setattr__(self, "input_size", size)
        if self.in_chs not in (1, 3) or isinstance(self.in_chs, bool):
            raise ValueError(f"data option 'in_chs': must be 1 or 3, got {self.in_chs!r}")
        for name, low in (("batch_size", 1), ("seed", 0), ("workers", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"data option '{name}': must be an integer >= {low}, got {value!r}")
        if self.valid_per_class is not None and (isinstance(self.valid_per_class, bool)
                                                 or not isinstance(self.valid_per_class, int)
                                                 or self.valid_per_class < 1):
            raise ValueError(f"data option 'valid_per_class': must be a positive integer or None, got "
                             f"{self.valid_per_class!r}")
        vf = self.valid_fraction
        if isinstance(vf, bool) or not isinstance(vf, (int, float)) or not 0.0 < vf < 1.0:
            raise ValueError(f"data option 'valid_fraction': must be in (0, 1), got {vf!r}")
        if self.use_val_folder and self.valid_per_class is not None:
            raise ValueError("data options 'use_val_folder' and 'valid_per_class' exclude each other: the "
                             "architecture-step split is either the folder's val/ or held out of train/")
        cj = self.color_jitter
        if isinstance(cj, bool) or not isinstance(cj, (int, float)) or not math.isfinite(cj) or not 0.0 <= cj < 1.0:
            raise ValueError(f"data option 'color_jitter': must be in [0, 1), got {cj!r}")


@dataclass
class SearchData:
    """The streams of one job: ``train`` (weight steps), ``valid`` (architecture steps), and the held-out split
    for evaluation (:meth:`eval_batches`)."""

    train: BatchStream
    valid: BatchStream
    num_classes: int
    name: str
    _held_out: ImageDataset

    def eval_batches(self, batch_size: int = 256) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The held-out split in a fixed order, without augmentation."""
        for start in range(0, len(self._held_out), batch_size):
            yield self._held_out.x[start:start + batch_size], self._held_out.y[start:start + batch_size]

    def calibration_batches(self, images: int, batch_size: int = 256) -> Iterator[torch.Tensor]:
        """The first ``images`` training images (fixed order, no augmentation), inputs only: for re-estimating
        batch-norm statistics of one architecture before it is evaluated."""
        x = self.train.dataset.x[:images]
        yield from x.split(batch_size)


def open_search_data(options: DataOptions) -> SearchData:
    """Open ``options.source`` and split it; ValueError with a clear message for bad input."""
    if options.use_val_folder or options.valid_per_class is not None or options.workers or options.color_jitter:
        raise ValueError("data: use_val_folder, valid_per_class, workers and color_jitter need the streamed "
                         "image-folder pipeline, which this version does not have yet")
    dataset = load_dataset(options.source, options.input_size, options.in_chs, seed=options.seed)
    train_set, valid_set = train_valid_split(dataset, options.valid_fraction, seed=options.seed)
    train = BatchStream(train_set, options.batch_size, seed=options.seed + 1,
                        drop_last=len(train_set) >= options.batch_size)
    valid = BatchStream(valid_set, min(options.batch_size, len(valid_set)), seed=options.seed + 2, drop_last=True)
    return SearchData(train, valid, dataset.num_classes, dataset.name, valid_set)
