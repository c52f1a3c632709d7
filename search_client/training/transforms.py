"""Image transforms on PIL, numpy and torch (no torchvision): the paper's training augmentation and evaluation crop.

Every random transform takes its randomness from a ``numpy.random.Generator`` passed in by the caller, so the
output is a function of (image, generator state) only: the data streams give each item its own generator,
seeded from the stream's seed, the pass and the item's position in the pass (see
:mod:`search_client.training.streams`), which makes an augmented batch independent of the worker that made it.

Pipelines (``PIL.Image`` in RGB -> ``uint8`` tensor C x H x W; normalisation is done per batch afterwards)::

    train  random-resized crop (area 8%-100% of the image, aspect ratio 3/4-4/3, bilinear) -> horizontal flip
           (p = 0.5) -> colour jitter (brightness, contrast, saturation, each by a factor in [1 - s, 1 + s], in a
           random order; only when s > 0) -> channels
    eval   resize so the image covers (H, W) / 0.875, then the centre (H, W) crop (done as one bilinear resize of
           the matching source box) -> channels

"channels": RGB kept for 3 input channels, averaged to grey for 1 (:func:`to_channels`, the rule the in-memory
sources use too).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageEnhance

CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
CROP_ATTEMPTS = 10
EVAL_CROP_FRACTION = 0.875
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Box = tuple[float, float, float, float]  # left, top, right, bottom in source pixels


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    height, width = size
    if height < 1 or width < 1:
        raise ValueError(f"transform size: expected positive (H, W), got {size!r}")
    return int(height), int(width)


@dataclass(frozen=True)
class RandomResizedCrop:
    """A random box of ``scale`` x the image's area and aspect ratio (w / h) in ``ratio`` (log-uniform), resized
    to ``size`` (H, W). After ``CROP_ATTEMPTS`` boxes that do not fit, the largest centred box whose ratio is
    clamped into ``ratio`` (the reference implementation's fallback)."""

    size: tuple[int, int]
    scale: tuple[float, float] = CROP_SCALE
    ratio: tuple[float, float] = CROP_RATIO

    def __post_init__(self) -> None:
        _check_size(self.size)
        if not 0.0 < self.scale[0] <= self.scale[1] <= 1.0:
            raise ValueError(f"random-resized crop: scale must satisfy 0 < low <= high <= 1, got {self.scale!r}")
        if not 0.0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"random-resized crop: ratio must satisfy 0 < low <= high, got {self.ratio!r}")

    def box(self, width: int, height: int, rng: np.random.Generator) -> Box:
        """The crop box for an image of ``width`` x ``height`` pixels."""
        area = float(width * height)
        log_low, log_high = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(CROP_ATTEMPTS):
            target = area * rng.uniform(self.scale[0], self.scale[1])
            aspect = math.exp(rng.uniform(log_low, log_high))
            w, h = math.sqrt(target * aspect), math.sqrt(target / aspect)
            if w <= width and h <= height:
                left, top = rng.uniform(0.0, width - w), rng.uniform(0.0, height - h)
                return left, top, left + w, top + h
        aspect = min(max(width / height, self.ratio[0]), self.ratio[1])
        w, h = (float(width), width / aspect) if width / height <= aspect else (height * aspect, float(height))
        left, top = (width - w) / 2.0, (height - h) / 2.0
        return left, top, left + w, top + h

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        height, width = self.size
        return img.resize((width, height), Image.Resampling.BILINEAR, box=self.box(img.width, img.height, rng))


@dataclass(frozen=True)
class HorizontalFlip:
    """Mirror left-right with probability ``p``."""

    p: float = 0.5

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < self.p else img


@dataclass(frozen=True)
class ColorJitter:
    """Brightness, contrast and saturation each scaled by a factor uniform in [1 - s, 1 + s] (s = ``strength``),
    applied in a random order (PIL's ImageEnhance: blends with black, the mean grey, and the grey image)."""

    strength: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.strength < 1.0:
            raise ValueError(f"colour jitter: strength must be in [0, 1), got {self.strength!r}")

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        if self.strength == 0.0:
            return img
        enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
        factors = rng.uniform(1.0 - self.strength, 1.0 + self.strength, size=3)
        for k in rng.permutation(3):
            img = enhancers[k](img).enhance(float(factors[k]))
        return img


@dataclass(frozen=True)
class ResizeCenterCrop:
    """Resize so the image covers ``size`` / ``crop_fraction`` (aspect kept), then take the centre ``size``
    (H, W) crop; computed as one bilinear resize of the source box that the crop covers. Deterministic."""

    size: tuple[int, int]
    crop_fraction: float = EVAL_CROP_FRACTION

    def __post_init__(self) -> None:
        _check_size(self.size)
        if not 0.0 < self.crop_fraction <= 1.0:
            raise ValueError(f"centre crop: crop_fraction must be in (0, 1], got {self.crop_fraction!r}")

    def box(self, width: int, height: int) -> Box:
        """The source box (in pixels of a ``width`` x ``height`` image) that becomes the output."""
        out_h, out_w = self.size
        scale = max(out_w / self.crop_fraction / width, out_h / self.crop_fraction / height)
        w, h = out_w / scale, out_h / scale
        left, top = (width - w) / 2.0, (height - h) / 2.0
        return left, top, left + w, top + h

    def __call__(self, img: Image.Image, rng: np.random.Generator | None = None) -> Image.Image:
        height, width = self.size
        return img.resize((width, height), Image.Resampling.BILINEAR, box=self.box(img.width, img.height))


def to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """An RGB ``PIL.Image`` as a 3 x H x W ``uint8`` tensor."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def to_channels(x: torch.Tensor, chans: int) -> torch.Tensor:
    """A (N,) C x H x W float batch with C in {1, 3} given ``chans`` channels: grey repeated to RGB, RGB averaged
    to grey. ValueError for any other combination."""
    have = x.shape[-3]
    if have == chans:
        return x
    if have == 1:
        return x.expand(*x.shape[:-3], chans, *x.shape[-2:]).contiguous()
    if have == 3 and chans == 1:
        return x.mean(dim=-3, keepdim=True)
    raise ValueError(f"data: cannot turn {have}-channel images into {chans} channels")


@dataclass(frozen=True)
class Normalize:
    """Per-channel ``(x / 255 - mean) / std`` of a uint8 (or [0, 255] float) N x C x H x W batch, as float32."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError(f"normalise: mean and std need one value per channel, got {self.mean!r}, {self.std!r}")
        if any(not math.isfinite(s) or s <= 0 for s in self.std):
            raise ValueError(f"normalise: every std must be > 0, got {self.std!r}")

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.shape[1] != len(self.mean):
            raise ValueError(f"normalise: {batch.shape[1]}-channel batch, statistics for {len(self.mean)}")
        std = torch.tensor(self.std, dtype=torch.float64).view(1, -1, 1, 1)
        scale = (1.0 / (255.0 * std)).float()
        shift = (-torch.tensor(self.mean, dtype=torch.float64).view(1, -1, 1, 1) / std).float()
        return batch.to(torch.float32, copy=True).mul_(scale).add_(shift)  # one float copy, then in place

    @classmethod
    def imagenet(cls, chans: int) -> Normalize:
        """ImageNet's RGB statistics (averaged over the channels for grey input)."""
        if chans == 3:
            return cls(IMAGENET_MEAN, IMAGENET_STD)
        return cls((sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,))

    @classmethod
    def from_batches(cls, batches: Iterable[torch.Tensor]) -> Normalize:
        """Per-channel mean and std (in [0, 1] units) of uint8 N x C x H x W batches."""
        total, total_sq, count = None, None, 0
        for batch in batches:
            x = batch.double() / 255.0
            s, sq = x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3))
            total, total_sq = (s, sq) if total is None else (total + s, total_sq + sq)
            count += x.shape[0] * x.shape[2] * x.shape[3]
        if total is None or count == 0:
            raise ValueError("normalise: no images to compute statistics from")
        mean = total / count
        std = (total_sq / count - mean * mean).clamp_min(0.0).sqrt().clamp_min(1e-3)
        return cls(tuple(float(v) for v in mean), tuple(float(v) for v in std))


@dataclass(frozen=True)
class TrainTransform:
    """The weight steps' augmentation: random-resized crop, horizontal flip, optional colour jitter."""

    size: tuple[int, int]
    chans: int
    color_jitter: float = 0.0

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        img = RandomResizedCrop(self.size)(img, rng)
        img = HorizontalFlip()(img, rng)
        img = ColorJitter(self.color_jitter)(img, rng)
        return _grey_if(to_uint8_tensor(img), self.chans)


@dataclass(frozen=True)
class EvalTransform:
    """Validation and evaluation: resize and centre crop, no randomness."""

    size: tuple[int, int]
    chans: int

    def __call__(self, img: Image.Image, rng: np.random.Generator | None = None) -> torch.Tensor:
        return _grey_if(to_uint8_tensor(ResizeCenterCrop(self.size)(img)), self.chans)


def _grey_if(x: torch.Tensor, chans: int) -> torch.Tensor:
    """uint8 RGB kept, or averaged to grey (rounded) by :func:`to_channels`' rule."""
    if chans == 3:
        return x
    return to_channels(x.float(), chans).round().to(torch.uint8)
