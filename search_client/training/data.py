"""Datasets for the search and the retraining: held in memory, never downloaded, split and shuffled with fixed seeds.

Data sources (the ``--data`` argument of the command line)::

    digits                  scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes, grey)
    synthetic[:N[:K]]       N generated images of K classes (default 1024 and 10): each class is a smooth random
                            pattern, each image its pattern with a random contrast plus noise (learnable, seeded)
    PATH/                   an image folder: one sub-folder per class (class index = position of the sorted
                            sub-folder names), each holding images that PIL can read (png, jpg, bmp, gif, ...)
    PATH.npz                numpy archive with arrays ``x`` (N,H,W | N,H,W,C | N,C,H,W with C in {1, 3};
                            uint8 in 0..255 or floats) and ``y`` (N,) integer labels in 0..K-1

Every image is resized (bilinear) to the search space's input size, given ``in_chs`` channels (grey repeated,
RGB averaged to grey when ``in_chs == 1``) and normalised per channel to zero mean and unit variance, with the
statistics of the whole set.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
SYNTHETIC_DEFAULT_SAMPLES = 1024
SYNTHETIC_DEFAULT_CLASSES = 10
MAX_SYNTHETIC_SAMPLES = 200_000


@dataclass
class ImageDataset:
    """Images ``x`` (float32, N x C x H x W, normalised) and labels ``y`` (int64, N) of ``num_classes`` classes."""

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    name: str

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, indices: torch.Tensor, name: str | None = None) -> ImageDataset:
        """The samples at ``indices`` (a 1-D int64 tensor), in that order."""
        return ImageDataset(self.x[indices], self.y[indices], self.num_classes, name or self.name)


# --- sources -----------------------------------------------------------------------------------------------------
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)  # N,1,8,8 in [0, 1]
    return x, torch.from_numpy(digits.target.astype(np.int64))


def _parse_synthetic(source: str) -> tuple[int, int]:
    parts = source.split(":")
    if len(parts) > 3:
        raise ValueError(f"data: expected synthetic[:SAMPLES[:CLASSES]], got {source!r}")
    values = [SYNTHETIC_DEFAULT_SAMPLES, SYNTHETIC_DEFAULT_CLASSES]
    for k, (text, label) in enumerate(zip(parts[1:], ("SAMPLES", "CLASSES"))):
        if not text.isdigit():
            raise ValueError(f"data: {label} of {source!r} must be a positive integer, got {text!r}")
        values[k] = int(text)
    samples, classes = values
    if not 2 <= classes <= 1000:
        raise ValueError(f"data: CLASSES of {source!r} must be in [2, 1000], got {classes}")
    if not classes <= samples <= MAX_SYNTHETIC_SAMPLES:
        raise ValueError(f"data: SAMPLES of {source!r} must be in [{classes}, {MAX_SYNTHETIC_SAMPLES}], got {samples}")
    return samples, classes


def _synthetic(samples: int, classes: int, size: tuple[int, int], chans: int, seed: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Class patterns drawn at 4x4 and upsampled (smooth), then per image: contrast in [0.5, 1.5] and noise 0.6."""
    gen = torch.Generator().manual_seed(seed)
    patterns = F.interpolate(torch.randn(classes, chans, 4, 4, generator=gen), size=size, mode="bilinear",
                             align_corners=False)
    y = torch.arange(samples) % classes
    y = y[torch.randperm(samples, generator=gen)]
    contrast = 0.5 + torch.rand(samples, 1, 1, 1, generator=gen)
    x = patterns[y] * contrast + 0.6 * torch.randn(samples, chans, *size, generator=gen)
    return x, y


def _image_folder(root: Path) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Each image as a 3 x H x W tensor in [0, 1] (sizes may differ) and its label."""
    from PIL import Image

    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"data: {root} has no class sub-folders")
    images: list[torch.Tensor] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for path in files:
            try:
                with Image.open(path) as img:
                    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
            except OSError as exc:
                raise ValueError(f"data: cannot read image {path}: {exc}") from exc
            images.append(torch.from_numpy(arr).permute(2, 0, 1))
            labels.append(label)
    if not images:
        raise ValueError(f"data: no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    return images, torch.tensor(labels, dtype=torch.int64)


def _npz(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"data: cannot read {path} as a .npz archive: {exc}") from exc
    for key in ("x", "y"):
        if key not in archive:
            raise ValueError(f"data: {path} has no array {key!r} (it has {', '.join(archive.files) or 'none'})")
    x, y = archive["x"], archive["y"]
    if x.ndim not in (3, 4) or x.shape[0] == 0:
        raise ValueError(f"data: array 'x' of {path} must be N,H,W or N,H,W,C or N,C,H,W; got shape {x.shape}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"data: array 'y' of {path} must have shape ({x.shape[0]},), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise ValueError(f"data: array 'y' of {path} must hold integer labels >= 0")
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    elif np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer):
        x = x.astype(np.float32)
    else:
        raise ValueError(f"data: array 'x' of {path} must be numeric, got {x.dtype}")
    if not np.isfinite(x).all():
        raise ValueError(f"data: array 'x' of {path} holds NaN or infinite values")
    t = torch.from_numpy(np.ascontiguousarray(x))
    if t.ndim == 3:
        t = t.unsqueeze(1)
    elif t.shape[-1] in (1, 3) and t.shape[1] not in (1, 3):
        t = t.permute(0, 3, 1, 2)
    if t.shape[1] not in (1, 3):
        raise ValueError(f"data: array 'x' of {path} must have 1 or 3 channels, got shape {tuple(x.shape)}")
    return t, torch.from_numpy(y.astype(np.int64))


# --- shaping -----------------------------------------------------------------------------------------------------
def _to_shape(x: torch.Tensor, size: tuple[int, int], chans: int) -> torch.Tensor:
    """Resize a N,C,H,W batch (C in {1, 3}) to ``size`` and ``chans`` channels."""
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    if x.shape[1] == chans:
        return x
    if x.shape[1] == 1:
        return x.repeat(1, chans, 1, 1)
    if chans == 1:
        return x.mean(dim=1, keepdim=True)
    raise ValueError(f"data: cannot turn {x.shape[1]}-channel images into {chans} channels")


def _normalise(x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    std = x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return ((x - mean) / std).contiguous()


def load_dataset(source: str, input_size: tuple[int, int], in_chs: int = 3, *, seed: int = 0) -> ImageDataset:
    """The dataset named by ``source`` (grammar in the module docstring), shaped for a (in_chs, H, W) input.

    ``seed`` only matters for ``synthetic``. Raises ValueError naming the problem for an unknown name, a missing
    path, an unreadable file or malformed arrays.
    """
    if not isinstance(source, str) or not source:
        raise ValueError("data: expected 'digits', 'synthetic[:N[:K]]', an image folder or a .npz file")
    height, width = input_size
    if in_chs not in (1, 3):
        raise ValueError(f"data: in_chs must be 1 or 3, got {in_chs}")
    if source == "digits":
        x, y = _digits()
        x = _to_shape(x, (height, width), in_chs)
    elif source == "synthetic" or source.startswith("synthetic:"):
        samples, classes = _parse_synthetic(source)
        x, y = _synthetic(samples, classes, (height, width), in_chs, seed)
    else:
        path = Path(source)
        if path.is_dir():
            images, y = _image_folder(path)
            x = torch.cat([_to_shape(img.unsqueeze(0), (height, width), in_chs) for img in images])
        elif path.suffix == ".npz" and path.is_file():
            x, y = _npz(path)
            x = _to_shape(x, (height, width), in_chs)
        elif path.suffix == ".npz":
            raise ValueError(f"data: file {path} does not exist")
        else:
            raise ValueError(f"data: unknown source {source!r}: expected 'digits', 'synthetic[:N[:K]]', an existing "
                             "image folder or a .npz file")
    num_classes = int(y.max().item()) + 1
    return ImageDataset(_normalise(x.float()), y, num_classes, source)


def train_valid_split(
    dataset: ImageDataset, valid_fraction: float = 0.2, *, seed: int = 0
) -> tuple[ImageDataset, ImageDataset]:
    """Stratified split: ``valid_fraction`` of each class (at least one image, fixed ``seed``) held out."""
    if isinstance(valid_fraction, bool) or not 0.0 < valid_fraction < 1.0:
        raise ValueError(f"valid_fraction: must be in (0, 1), got {valid_fraction!r}")
    gen = torch.Generator().manual_seed(seed)
    train_idx, valid_idx = [], []
    for label in range(dataset.num_classes):
        members = torch.nonzero(dataset.y == label).flatten()
        if len(members) == 0:
            continue
        if len(members) < 2:
            raise ValueError(f"data: class {label} of {dataset.name} has 1 image; a split needs at least 2 per class")
        members = members[torch.randperm(len(members), generator=gen)]
        n_valid = min(len(members) - 1, max(1, round(len(members) * valid_fraction)))
        valid_idx.append(members[:n_valid])
        train_idx.append(members[n_valid:])
    train = torch.sort(torch.cat(train_idx)).values
    valid = torch.sort(torch.cat(valid_idx)).values
    return dataset.subset(train, f"{dataset.name}[train]"), dataset.subset(valid, f"{dataset.name}[valid]")


class BatchStream:
    """Mini-batches of an in-memory dataset with seeded shuffling, resumable mid-epoch.

    :meth:`epoch` yields one pass (a fresh permutation per pass when ``shuffle``); :meth:`next_batch` draws from an
    endless sequence of passes. :meth:`state_dict` holds the generator state and the position in the current
    pass, so a restored stream yields exactly the batches the original would have.
    """

    def __init__(self, dataset: ImageDataset, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: must be a positive integer, got {batch_size!r}")
        if drop_last and len(dataset) < batch_size:
            raise ValueError(f"batch_size: {batch_size} is larger than the {len(dataset)} samples of {dataset.name}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self._gen = torch.Generator().manual_seed(seed)
        self._order: torch.Tensor | None = None
        self._pos = 0

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _new_order(self) -> torch.Tensor:
        n = len(self.dataset)
        return torch.randperm(n, generator=self._gen) if self.shuffle else torch.arange(n)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch, starting a new pass when the current one is used up."""
        if self._order is None or self._pos >= len(self):
            self._order, self._pos = self._new_order(), 0
        start = self._pos * self.batch_size
        idx = self._order[start:start + self.batch_size]
        self._pos += 1
        return self.dataset.x[idx], self.dataset.y[idx]

    def epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The rest of the current pass, or one whole new pass when none is under way."""
        if self._order is None or self._pos >= len(self):
            self._order, self._pos = self._new_order(), 0
        while self._pos < len(self):
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self._gen.get_state(), "order": self._order, "pos": self._pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._gen.set_state(state["generator"])
        self._order = state["order"]
        self._pos = int(state["pos"])
