"""Named generated tasks where the architecture matters: ``--data synthetic:NAME[:N]``.

``synthetic[:N[:K]]`` (:mod:`search_client.training.memory_sources`) is smooth class patterns plus noise, and
``digits`` is easy for every small network: on them a search cannot be told from a random draw.
The tasks here are generated from the seed alone (no download; well under a second for 10,000 images at 32x32),
have ``TASK_CLASSES`` (10) classes of exactly ``N / 10`` images each (N rounded down to a multiple of 10), and are
built so that what a network can see decides how well it learns them in a short budget.

Tasks (``TASKS``)::

    glass       Glass patterns: white noise (3 channels) plus a copy of itself shifted by 6 pixels, plus weaker
                independent noise. The class is the orientation of the shift, ten orientations 18 degrees apart
                over 180 degrees (a Glass pattern is symmetric, so a shift and its opposite are one class). No
                pixel, and no neighbourhood smaller than the shift, says anything about the class: only the
                correlation of pixels 6 apart at full detail does, so a network needs a receptive field that spans
                the shift while the image is still at high resolution (16x16 after tiny-32's stride-2 stem: large
                kernels and expanded channels in the first stage) and the 10 orientations differ by about 2
                pixels at the end of the shift. How widely random networks of a space spread on it with one
                budget: ``python -m benchmarks.task_spread`` (tiny-32's figures: benchmarks/results/task_spread.md).

The images are drawn at 32x32 (``NATIVE_SIZE``: their detail is at that scale) and resized (bilinear) to the
requested input size, with 3 channels or their mean for 1. The same seed gives the same tensors; the images and
the labels' order both come from the seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

TASK_CLASSES = 10
#: Images of a named task when ``synthetic:NAME`` gives no N.
TASK_DEFAULT_SAMPLES = 4000
#: Every task is drawn at this size, then resized to the network's input.
NATIVE_SIZE = 32

Generator = Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


def balanced_labels(n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` labels, each class ``n / TASK_CLASSES`` times (n a multiple of it), in a random order."""
    y = torch.arange(n) % TASK_CLASSES
    return y[torch.randperm(n, generator=gen)]


# --- glass -----------------------------------------------------------------------------------------------------
GLASS_DISTANCE = 6.0  # pixels between the dot pattern and its copy
GLASS_NOISE = 0.5  # amplitude of the independent noise added on top (the pattern and its copy have 1)


def glass_shifts(dist: float = GLASS_DISTANCE) -> list[tuple[int, int]]:
    """The (row, column) shift of each class at ``dist`` pixels: orientation 18 x class degrees, counter-clockwise
    from the columns' direction (rows grow downwards), rounded to whole pixels."""
    return [(round(-dist * math.sin(math.radians(18.0 * k))), round(dist * math.cos(math.radians(18.0 * k))))
            for k in range(TASK_CLASSES)]


def glass(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` (a multiple of ``TASK_CLASSES``) images (n, 3, 32, 32) and labels of the ``glass`` task (module
    docstring): for class k, ``x(p) = s(p) + s(p + shift_k) + GLASS_NOISE * m(p)`` with s and m white noise."""
    y = balanced_labels(n, gen)
    pad = int(math.ceil(GLASS_DISTANCE)) + 1
    noise = torch.randn(n, 3, NATIVE_SIZE + 2 * pad, NATIVE_SIZE + 2 * pad, generator=gen)
    x = noise[:, :, pad:pad + NATIVE_SIZE, pad:pad + NATIVE_SIZE].clone()
    for k, (r, c) in enumerate(glass_shifts()):
        rows = torch.nonzero(y == k).flatten()
        x[rows] += noise[rows][:, :, pad + r:pad + r + NATIVE_SIZE, pad + c:pad + c + NATIVE_SIZE]
    return x + GLASS_NOISE * torch.randn(n, 3, NATIVE_SIZE, NATIVE_SIZE, generator=gen), y


#: The named tasks of ``synthetic:NAME[:N]``.
TASKS: dict[str, Generator] = {"glass": glass}


def generate_task(name: str, samples: int, size: tuple[int, int], chans: int, seed: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``samples`` images (rounded down to a multiple of ``TASK_CLASSES``) of task ``name`` at ``size`` with
    ``chans`` (1 or 3) channels, float32, and their int64 labels; ValueError naming the known tasks for an unknown
    name, or for fewer than ``TASK_CLASSES`` images."""
    if name not in TASKS:
        raise ValueError(f"data: unknown synthetic task {name!r} (known: {', '.join(TASKS)})")
    if samples < TASK_CLASSES:
        raise ValueError(f"data: a synthetic task needs at least {TASK_CLASSES} images, got {samples}")
    gen = torch.Generator().manual_seed(seed)
    x, y = TASKS[name](samples - samples % TASK_CLASSES, gen)
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    if chans == 1:
        x = x.mean(dim=1, keepdim=True)
    return x.float().contiguous(), y.long()
