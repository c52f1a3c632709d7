"""The data of a search or a retraining: one entry point, :func:`open_search_data`, over every source.

``DataOptions`` names the source and how to read it (the data options a search and a retraining share, one field
per command-line option); ``open_search_data`` reads it for a network's input size, a batch size and a seed, and
returns a :class:`SearchData` with the
weight-step stream (``train``: augmented), the architecture-step stream (``valid``: resize and centre crop,
shuffled), the deterministic held-out batches for evaluation (:meth:`SearchData.eval_batches`), the first
training images for batch-norm re-estimation (:meth:`SearchData.calibration_batches`), the number of classes and
the source's name. :func:`check_class_count` is the one rule on the number of classes: the data's must be the
number of outputs of the network's head (every command that trains checks it, before training).

Sources: ``digits``, ``synthetic[:N[:K]]``, ``synthetic:NAME[:N]`` (a named generated task) and ``FILE.npz`` are
small and held in memory
(:mod:`search_client.training.memory_sources`); any directory is an image folder in the ImageNet or the flat
layout (:mod:`search_client.training.folders`), read lazily (only paths and labels are held) and decoded per
batch by DataLoader workers (:mod:`search_client.training.streams`) with the transforms of
:mod:`search_client.training.transforms`.

The architecture-step split (also the held-out split that evaluation reports on): the folder's ``val/`` with
``val_folder``; else ``valid_per_class`` images of each class, or ``valid_fraction`` of each class, held out
of the training images with the seed (:mod:`search_client.training.split`).

Normalisation (``normalize``) of image folders: ``imagenet`` (ImageNet's RGB statistics), ``sample`` (per-channel
statistics of ``NORMALIZATION_SAMPLE_IMAGES`` training images chosen with the seed, eval transform), or ``auto``:
``imagenet`` for 3 input channels, ``sample`` for grey. In-memory sources are normalised with the statistics of
their whole set (``auto`` and ``sample``); ``imagenet`` is refused for them.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from search_client.training.folders import scan_image_folder
from search_client.training.image_sets import FolderImages, FolderTransforms, ImageSet
from search_client.training.memory_sources import is_memory_source, load_memory_source
from search_client.training.split import stratified_split
from search_client.training.streams import BatchStream
from search_client.training.transforms import EvalTransform, Normalize, TrainTransform

DEFAULT_VALID_FRACTION = 0.2
NORMALIZATIONS = ("auto", "imagenet", "sample")
NORMALIZATION_SAMPLE_IMAGES = 500
_SAMPLE_BATCH = 50


def _int_at_least(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"data option '{name}': must be an integer >= {low}, got {value!r}")


@dataclass(frozen=True)
class DataOptions:
    """What to read and how: the data options of a search and of a retraining (the fields are described in the
    module docstring; each one with a command-line option has that option's name: ``source`` is ``--data``).

    ``source``: ``digits``, ``synthetic[:N[:K]]``, ``synthetic:NAME[:N]``, a ``.npz`` file or an image folder.
    ``workers``: DataLoader worker processes (0: read in the calling process). ``color_jitter`` (0: off) is the
    strength of the weight steps' colour jitter. ValueError with the field's name for a bad value.
    """

    source: str = "digits"
    valid_per_class: int | None = None
    valid_fraction: float = DEFAULT_VALID_FRACTION
    val_folder: bool = False
    workers: int = 0
    color_jitter: float = 0.0
    normalize: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source:
            raise ValueError("data: expected 'digits', 'synthetic[:N[:K]]', 'synthetic:NAME[:N]', an image folder or "
                             "a .npz file")
        _int_at_least("workers", self.workers, 0)
        if self.valid_per_class is not None:
            _int_at_least("valid_per_class", self.valid_per_class, 1)
        vf = self.valid_fraction
        if isinstance(vf, bool) or not isinstance(vf, (int, float)) or not 0.0 < vf < 1.0:
            raise ValueError(f"data option 'valid_fraction': must be in (0, 1), got {vf!r}")
        if not isinstance(self.val_folder, bool):
            raise ValueError(f"data option 'val_folder': must be a bool, got {self.val_folder!r}")
        if self.val_folder and self.valid_per_class is not None:
            raise ValueError("data options 'val_folder' and 'valid_per_class' exclude each other: the "
                             "architecture-step split is either the folder's val/ or held out of train/")
        cj = self.color_jitter
        if isinstance(cj, bool) or not isinstance(cj, (int, float)) or not math.isfinite(cj) or not 0.0 <= cj < 1.0:
            raise ValueError(f"data option 'color_jitter': must be in [0, 1), got {cj!r}")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"data option 'normalize': expected one of {', '.join(NORMALIZATIONS)}, got "
                             f"{self.normalize!r}")


class ClassCountMismatch(ValueError):
    """The data's number of classes is not the number of outputs of the network's head (a ValueError: bad input,
    exit code 2 on the command line). ``data_classes``, ``head_classes`` and ``head`` (which head) are kept."""

    def __init__(self, data_classes: int, head_classes: int, head: str, source: str) -> None:
        super().__init__(
            f"data: {source!r} has {data_classes} classes but {head} has {head_classes} outputs; give data "
            f"of {head_classes} classes, or a network whose head has {data_classes} outputs")
        self.data_classes, self.head_classes, self.head = data_classes, head_classes, head


def check_class_count(data_classes: int, head_classes: int, head: str, source: str) -> None:
    """Refuse data of ``data_classes`` classes (read from ``source``) for a network head (``head`` says which,
    e.g. ``"space tiny-32's head"``) of ``head_classes`` outputs unless the two are equal: with fewer classes some
    outputs are never a label, so the network is trained and scored on another task than its head's; with more,
    some labels have no output. Raises :class:`ClassCountMismatch`."""
    if data_classes != head_classes:
        raise ClassCountMismatch(data_classes, head_classes, head, source)


@dataclass
class SearchData:
    """The streams of one job and the held-out split (see the module docstring).

    ``info`` describes the data for logs and summaries: source, layout, classes, ``content_hash`` (SHA-256 of
    the images and labels in memory, of the file list of a folder; a resumed search can check it), train and
    valid image counts, where the valid split comes from, the normalisation (and its mean and std for folders),
    workers, colour jitter.
    """

    train: BatchStream
    valid: BatchStream
    num_classes: int
    name: str
    info: dict[str, Any] = field(default_factory=dict)

    def eval_batches(self, batch_size: int = 256) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every image of the held-out split once, in a fixed order, without augmentation (resize and centre
        crop for image folders), with the same number of workers as the streams."""
        stream = BatchStream(self.valid.images, batch_size, indices=self.valid.indices, shuffle=False,
                             workers=self.valid.workers)
        try:
            yield from stream.epoch()
        finally:
            stream.close()

    def calibration_batches(self, images: int, batch_size: int = 256) -> Iterator[torch.Tensor]:
        """The inputs of the first ``images`` training images (in index order, without augmentation), for
        re-estimating batch-norm statistics of one architecture before it is evaluated."""
        _int_at_least("images", images, 1)
        stream = BatchStream(self.train.images, batch_size, indices=self.train.indices[:images], shuffle=False,
                             workers=self.train.workers)
        try:
            for x, _ in stream.epoch():
                yield x
        finally:
            stream.close()

    def close(self) -> None:
        """Stop the streams' worker processes."""
        self.train.close()
        self.valid.close()


def _sample_statistics(images: FolderImages, train_idx: np.ndarray, seed: int, workers: int) -> Normalize:
    """Per-channel statistics of up to NORMALIZATION_SAMPLE_IMAGES training images (eval transform)."""
    gen = torch.Generator().manual_seed(seed)
    count = min(NORMALIZATION_SAMPLE_IMAGES, len(train_idx))
    chosen = np.sort(train_idx[torch.randperm(len(train_idx), generator=gen)[:count].numpy()])
    stream = BatchStream(images, _SAMPLE_BATCH, indices=chosen, shuffle=False, workers=workers)
    try:
        return Normalize.from_batches(x for x, _ in stream.epoch())
    finally:
        stream.close()


@dataclass(frozen=True)
class _Read:
    """How a network reads the data: ``size`` (H, W) and ``chans`` (1 or 3) shape every image; ``seed`` fixes the
    split, the shuffling and the augmentation."""

    size: tuple[int, int]
    chans: int
    batch_size: int
    seed: int

    def __post_init__(self) -> None:
        size = tuple(self.size)
        if len(size) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in size):
            raise ValueError(f"data option 'input_size': expected two positive integers (H, W), got {self.size!r}")
        object.__setattr__(self, "size", size)
        if isinstance(self.chans, bool) or self.chans not in (1, 3):
            raise ValueError(f"data option 'in_chs': must be 1 or 3, got {self.chans!r}")
        _int_at_least("batch_size", self.batch_size, 1)
        _int_at_least("seed", self.seed, 0)


def _open_folder(options: DataOptions, read: _Read
                 ) -> tuple[ImageSet, np.ndarray, ImageSet, np.ndarray, dict[str, Any]]:
    """The train and valid sets and indices of an image folder, and its info."""
    folder = scan_image_folder(options.source)
    size, chans = read.size, read.chans
    raw = FolderTransforms(TrainTransform(size, chans, float(options.color_jitter)), EvalTransform(size, chans), None)
    train_raw = FolderImages(folder.train, len(folder.classes), options.source, raw)
    if options.val_folder:
        if folder.val is None:
            raise ValueError(f"data: val_folder asks for {Path(options.source) / 'val'}/CLASS/IMAGE, which "
                             f"{options.source} does not have (layout: {folder.layout})")
        valid_raw = FolderImages(folder.val, len(folder.classes), options.source + "[val]", raw)
        train_idx, valid_idx = np.arange(len(train_raw), dtype=np.int64), np.arange(len(valid_raw), dtype=np.int64)
    else:
        valid_raw = train_raw
        train_idx, valid_idx = stratified_split(train_raw.labels, valid_per_class=options.valid_per_class,
                                                valid_fraction=options.valid_fraction, seed=read.seed,
                                                name=options.source)
    kind = options.normalize if options.normalize != "auto" else ("imagenet" if chans == 3 else "sample")
    if kind == "imagenet":
        normalize = Normalize.imagenet(chans)
        train_raw.read(int(train_idx[0]), None)  # an unreadable folder fails here, not in the first step
    else:
        normalize = _sample_statistics(train_raw, train_idx, read.seed, options.workers)
    info = {"layout": folder.layout, "classes": len(folder.classes), "normalize": kind,
            "mean": list(normalize.mean), "std": list(normalize.std)}
    return train_raw.with_normalize(normalize), train_idx, valid_raw.with_normalize(normalize), valid_idx, info


def _open_memory(options: DataOptions, read: _Read
                 ) -> tuple[ImageSet, np.ndarray, ImageSet, np.ndarray, dict[str, Any]]:
    """The in-memory set, its split and its info."""
    if options.val_folder:
        raise ValueError(f"data: val_folder needs an image folder with val/; {options.source!r} is an "
                         "in-memory source")
    if options.normalize == "imagenet":
        raise ValueError(f"data option 'normalize': imagenet statistics are for image folders; {options.source!r} "
                         "is normalised with its own statistics (auto or sample)")
    images = load_memory_source(options.source, read.size, read.chans, seed=read.seed)
    train_idx, valid_idx = stratified_split(images.labels, valid_per_class=options.valid_per_class,
                                            valid_fraction=options.valid_fraction, seed=read.seed,
                                            name=options.source)
    info = {"layout": "memory", "classes": images.num_classes, "normalize": "whole set"}
    return images, train_idx, images, valid_idx, info


def open_search_data(options: DataOptions, input_size: tuple[int, int], in_chs: int, batch_size: int,
                     seed: int = 0) -> SearchData:
    """Open ``options.source`` for a network of ``input_size`` (H, W) and ``in_chs`` (1 or 3) in batches of
    ``batch_size``, split it and make its streams (``seed`` fixes the split, the shuffling and the augmentation);
    ValueError with a clear message for a bad value, an unknown source, a missing or malformed folder or file, or
    a split that a class is too small for."""
    read = _Read(input_size, in_chs, batch_size, seed)
    if is_memory_source(options.source):
        train_set, train_idx, valid_set, valid_idx, info = _open_memory(options, read)
    elif Path(options.source).is_dir():
        train_set, train_idx, valid_set, valid_idx, info = _open_folder(options, read)
    else:
        raise ValueError(f"data: unknown source {options.source!r}: expected 'digits', 'synthetic[:N[:K]]', "
                         "'synthetic:NAME[:N]', an existing image folder or a .npz file")
    bs = read.batch_size
    train = BatchStream(train_set, bs, indices=train_idx, augment=True, seed=read.seed + 1,
                        drop_last=len(train_idx) >= bs, workers=options.workers)
    valid = BatchStream(valid_set, min(bs, len(valid_idx)), indices=valid_idx, seed=read.seed + 2,
                        drop_last=True, workers=options.workers)
    if options.val_folder:
        valid_from = "val folder"
    elif options.valid_per_class is not None:
        valid_from = f"{options.valid_per_class} per class held out of train"
    else:
        valid_from = f"{options.valid_fraction:g} of each class held out of train"
    content = train_set.content_hash() if valid_set is train_set else hashlib.sha256(
        (train_set.content_hash() + valid_set.content_hash()).encode()).hexdigest()
    info = {"source": options.source, **info, "content_hash": content,
            "train_images": len(train_idx), "valid_images": len(valid_idx),
            "valid_from": valid_from, "workers": options.workers, "color_jitter": options.color_jitter}
    return SearchData(train, valid, train_set.num_classes, options.source, info)
