"""The Dataset interface every source goes through, and its two kinds: tensors in memory and image files on disk.

An :class:`ImageSet` is a map-style ``torch.utils.data.Dataset`` of (image C x H x W float32, label) that also
reads a whole batch at once (:meth:`ImageSet.batch`), given the items' indices and, for augmented batches, one
seed per item (a sequence of ints that seeds a ``numpy.random.Generator``). ``labels`` (N,) is known without
reading an image, for the stratified split.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from search_client.training.folders import FileList
from search_client.training.transforms import EvalTransform, Normalize, TrainTransform

ItemSeed = Sequence[int]


class ImageReadError(ValueError):
    """An image file that PIL cannot open or decode (the message names the file)."""


class ImageSet(torch.utils.data.Dataset, ABC):
    """Base of the sources: ``labels`` (int64 numpy array), ``num_classes``, ``name``, and :meth:`batch`."""

    labels: np.ndarray
    num_classes: int
    name: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """Item ``index`` as evaluation sees it (no augmentation)."""
        x, y = self.batch(np.array([index], dtype=np.int64), None)
        return x[0], int(y[0])

    @abstractmethod
    def content_hash(self) -> str:
        """A SHA-256 hex digest of what identifies the set's content (a checkpoint made on other data refuses
        to resume)."""

    @abstractmethod
    def batch(self, indices: np.ndarray, seeds: Sequence[ItemSeed] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Items ``indices`` as an N x C x H x W float32 batch and N int64 labels; augmented with one seed per
        item when ``seeds`` is given, as evaluation sees them when it is None."""


class TensorImages(ImageSet):
    """Images already shaped and normalised in memory (``x``: N x C x H x W float32, ``y``: N int64).

    Not augmented: ``seeds`` are accepted and unused, so in-memory batches are a function of the indices only.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, num_classes: int, name: str) -> None:
        if x.ndim != 4 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise ValueError(f"data: images N x C x H x W and N labels expected, got {tuple(x.shape)} and "
                             f"{tuple(y.shape)}")
        self.x, self.y = x, y
        self.labels = y.numpy()
        self.num_classes, self.name = num_classes, name

    def batch(self, indices: np.ndarray, seeds: Sequence[ItemSeed] | None) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.from_numpy(np.asarray(indices, dtype=np.int64))
        return self.x[idx], self.y[idx]

    def content_hash(self) -> str:
        """Digest of the images' values and the labels."""
        digest = hashlib.sha256(self.x.contiguous().numpy().tobytes())
        digest.update(self.y.numpy().tobytes())
        return digest.hexdigest()

    def subset(self, indices: np.ndarray | torch.Tensor, name: str | None = None) -> TensorImages:
        """The samples at ``indices`` (1-D int64), in that order."""
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return TensorImages(self.x[idx], self.y[idx], self.num_classes, name or self.name)


@dataclass(frozen=True)
class FolderTransforms:
    """What a folder image goes through: the train and eval transforms and the normalisation (None: batches
    stay uint8 in 0..255, for computing statistics)."""

    train: TrainTransform
    eval: EvalTransform
    normalize: Normalize | None


class FolderImages(ImageSet):
    """Image files decoded with PIL when a batch is read; only the compact file list is held."""

    def __init__(self, files: FileList, num_classes: int, name: str, transforms: FolderTransforms) -> None:
        self.files = files
        self.labels = files.labels
        self.num_classes, self.name = num_classes, name
        self.transforms = transforms

    def with_normalize(self, normalize: Normalize) -> FolderImages:
        """The same files and transforms with ``normalize``."""
        t = self.transforms
        return FolderImages(self.files, self.num_classes, self.name, FolderTransforms(t.train, t.eval, normalize))

    def content_hash(self) -> str:
        """Digest of the file list (relative paths and labels; the pixels are not read)."""
        digest = hashlib.sha256(self.files.buffer.tobytes())
        digest.update(self.files.offsets.tobytes())
        digest.update(self.labels.tobytes())
        return digest.hexdigest()

    def read(self, index: int, seed: ItemSeed | None) -> torch.Tensor:
        """Image ``index`` decoded and transformed (uint8 C x H x W); ImageReadError for an unreadable file."""
        path = self.files.path(index)
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise ImageReadError(f"data: cannot read image {path}: {exc}") from None
        if seed is None:
            return self.transforms.eval(img)
        return self.transforms.train(img, np.random.default_rng(list(seed)))

    def batch(self, indices: np.ndarray, seeds: Sequence[ItemSeed] | None) -> tuple[torch.Tensor, torch.Tensor]:
        images = [self.read(int(i), None if seeds is None else seeds[k]) for k, i in enumerate(indices)]
        x = torch.stack(images)
        if self.transforms.normalize is not None:
            x = self.transforms.normalize(x)
        return x, torch.from_numpy(self.labels[np.asarray(indices, dtype=np.int64)])
