"""The small sources held in memory: scikit-learn's digits, generated images, and ``.npz`` archives.

Sources (the ``--data`` argument)::

    digits                  scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes, grey)
    synthetic[:N[:K]]       N generated images of K classes (default 1024 and 10): each class is a smooth random
                            pattern, each image its pattern with a random contrast plus noise (learnable, seeded)
    synthetic:NAME[:N]      N images (default 4000, rounded down to a multiple of 10) of the named generated task
                            NAME (not a number; ``glass``), 10 classes of N / 10 images each, seeded, built so
                            that the architecture decides the accuracy (:mod:`search_client.training.synthetic_tasks`)
    PATH.npz                numpy archive with arrays ``x`` (N,H,W | N,H,W,C | N,C,H,W with C in {1, 3};
                            uint8 in 0..255 or floats) and ``y`` (N,) integer labels in 0..K-1

Every image is resized (bilinear) to the input size, given ``in_chs`` channels
(:func:`search_client.training.transforms.to_channels`) and normalised per channel to zero mean and unit
variance with the statistics of the whole set. They are not augmented: they are already at the network's input
size, and the in-memory path keeps today's seeded results.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from search_client.training.image_sets import TensorImages
from search_client.training.synthetic_tasks import TASK_CLASSES, TASK_DEFAULT_SAMPLES, TASKS, generate_task
from search_client.training.transforms import to_channels

SYNTHETIC_DEFAULT_SAMPLES = 1024
SYNTHETIC_DEFAULT_CLASSES = 10
MAX_SYNTHETIC_SAMPLES = 200_000


def is_memory_source(source: str) -> bool:
    """Whether ``source`` names an in-memory source (digits, synthetic..., a .npz path)."""
    return source in ("digits", "synthetic") or source.startswith("synthetic:") or source.endswith(".npz")


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)  # N,1,8,8 in [0, 1]
    return x, torch.from_numpy(digits.target.astype(np.int64))


def _is_task_name(text: str) -> bool:
    """Whether the field after ``synthetic:`` is a task's name (not a number): ``synthetic:NAME[:N]``."""
    return bool(text) and not text.lstrip("+-").isdigit()


def _parse_task(source: str) -> tuple[str, int]:
    """(NAME, SAMPLES) of ``synthetic:NAME[:SAMPLES]``."""
    parts = source.split(":")
    name = parts[1]
    if name not in TASKS:
        raise ValueError(f"data: {name!r} in {source!r} is neither SAMPLES (a positive integer) nor a known "
                         f"synthetic task ({', '.join(TASKS)})")
    if len(parts) > 3:
        raise ValueError(f"data: expected synthetic:NAME[:SAMPLES] for a named task, got {source!r}")
    samples = TASK_DEFAULT_SAMPLES
    if len(parts) == 3:
        if not parts[2].isdigit():
            raise ValueError(f"data: SAMPLES of {source!r} must be a positive integer, got {parts[2]!r}")
        samples = int(parts[2])
    if not TASK_CLASSES <= samples <= MAX_SYNTHETIC_SAMPLES:
        raise ValueError(f"data: SAMPLES of {source!r} must be in [{TASK_CLASSES}, {MAX_SYNTHETIC_SAMPLES}], "
                         f"got {samples}")
    return name, samples


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


def _to_shape(x: torch.Tensor, size: tuple[int, int], chans: int) -> torch.Tensor:
    """Resize a N,C,H,W batch (C in {1, 3}) to ``size`` and ``chans`` channels."""
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return to_channels(x, chans)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    std = x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return ((x - mean) / std).contiguous()


def load_memory_source(source: str, input_size: tuple[int, int], in_chs: int = 3, *, seed: int = 0) -> TensorImages:
    """The in-memory source named by ``source`` (grammar in the module docstring), shaped for a (in_chs, H, W)
    input and normalised. ``seed`` only matters for ``synthetic`` and ``synthetic:NAME``. ValueError naming the
    problem for an unknown name (an unknown task: naming the known ones), a missing or unreadable file or
    malformed arrays."""
    if in_chs not in (1, 3):
        raise ValueError(f"data: in_chs must be 1 or 3, got {in_chs}")
    size = (int(input_size[0]), int(input_size[1]))
    if source == "digits":
        x, y = _digits()
        x = _to_shape(x, size, in_chs)
    elif source.startswith("synthetic:") and _is_task_name(source.split(":")[1]):
        name, samples = _parse_task(source)
        x, y = generate_task(name, samples, size, in_chs, seed)
    elif source == "synthetic" or source.startswith("synthetic:"):
        samples, classes = _parse_synthetic(source)
        x, y = _synthetic(samples, classes, size, in_chs, seed)
    elif source.endswith(".npz"):
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"data: file {path} does not exist")
        x, y = _npz(path)
        x = _to_shape(x, size, in_chs)
    else:
        raise ValueError(f"data: {source!r} is not an in-memory source (digits, synthetic[:N[:K]], "
                         f"synthetic:NAME[:N], FILE.npz)")
    num_classes = int(y.max().item()) + 1
    return TensorImages(_normalise(x.float()), y, num_classes, source)
