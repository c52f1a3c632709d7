"""Named generated tasks where the architecture matters: ``--data synthetic:NAME[:N]``.

``synthetic[:N[:K]]`` (:mod:`search_client.training.memory_sources`) is smooth class patterns plus noise: every
small network learns it, so a search on it cannot be told from a random draw. The tasks here are generated from
the seed alone (no download, a few seconds for 10,000 images at 32x32), have ``TASK_CLASSES`` (10) classes, exactly
``N / 10`` images each (N rounded down to a multiple of 10), and are built so that what a network can see and hold
decides how well it learns them in a short budget:

    teacher     smooth multi-scale random images; the label is the argmax of a fixed random convolutional teacher
                (conv layers of 24 channels at 32x32, 16x16 and 8x8 with ReLU, global average pooling, linear
                readout), its class biases set so that every class holds about a tenth of a pool of images, of
                which the first N / 10 of each class are kept. A student must rebuild many fine features at high
                resolution: width (expansion) and depth help.
    glyphs      two marked glyphs (A and B, 5x5 patterns of equal brightness that differ only in their shape)
                among distractor glyphs of other shapes on a noisy background; the class is the direction from A
                to B in ten 36-degree sectors (each image drawn inside its sector's middle 24 degrees, the glyphs
                6 to 20 pixels apart). The class is a relation between glyphs far apart: it needs a receptive
                field that covers both and features that tell the shapes apart.
    gratings    textures over the whole image: a sum of two sinusoidal gratings whose orientation pair is the
                class (ten pairs of nearby orientations), at random phases and slightly jittered frequencies,
                under noise and a distractor grating of random orientation. Telling nearby orientations apart
                needs large kernels or depth.

Every task is generated at 32x32 (its images carry detail at that scale) and resized (bilinear) to the
requested input size, with 3 channels (or their mean for 1). The same seed gives the same tensors; the task's
definition (teacher weights, glyph shapes, orientations) and its images both come from the seed.
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


# --- shared pieces ---------------------------------------------------------------------------------------------
def smooth_images(n: int, gen: torch.Generator, chans: int = 3, size: int = NATIVE_SIZE,
                  scales: tuple[tuple[int, float], ...] = ((4, 1.0), (8, 0.7), (16, 0.5), (32, 0.35))
                  ) -> torch.Tensor:
    """``n`` random images (n, chans, size, size): white noise drawn at each (grid, amplitude) of ``scales`` and
    upsampled bilinearly, summed (coarse structure and fine detail both present)."""
    x = torch.zeros(n, chans, size, size)
    for grid, amp in scales:
        noise = torch.randn(n, chans, grid, grid, generator=gen)
        if grid != size:
            noise = F.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)
        x += amp * noise
    return x


def balance_biases(logits: torch.Tensor, steps: int = 300) -> torch.Tensor:
    """Class biases b such that ``argmax(logits + b)`` gives each class about the same share of the rows: each
    step moves b_k by how far class k's share is from 1/K (scaled to the logits' spread)."""
    n, k = logits.shape
    bias = torch.zeros(k)
    scale = float(logits.std()) or 1.0
    for step in range(steps):
        counts = torch.bincount((logits + bias).argmax(1), minlength=k).float()
        bias -= scale * (1.0 - step / steps) * (counts / n - 1.0 / k)
    return bias


def take_per_class(y: torch.Tensor, per_class: int, classes: int) -> torch.Tensor | None:
    """Indices (ascending) of the first ``per_class`` rows of every class, or None when a class has fewer."""
    keep = []
    for c in range(classes):
        rows = torch.nonzero(y == c).flatten()
        if rows.numel() < per_class:
            return None
        keep.append(rows[:per_class])
    return torch.sort(torch.cat(keep)).values


def balanced_labels(n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` labels, each class ``n / TASK_CLASSES`` times, in a random order."""
    y = torch.arange(n) % TASK_CLASSES
    return y[torch.randperm(n, generator=gen)]


# --- teacher ---------------------------------------------------------------------------------------------------
TEACHER_WIDTH = 24
TEACHER_KERNELS = (5, 3, 3)  # at 32x32, 16x16 and 8x8 (2x2 average pooling between layers)


def _teacher_weights(gen: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """He-scaled random conv layers (3 -> width -> ... -> width) and a linear readout (width -> classes)."""
    layers, chans = [], 3
    for k in TEACHER_KERNELS:
        w = torch.randn(TEACHER_WIDTH, chans, k, k, generator=gen) * math.sqrt(2 / (chans * k * k))
        layers.append((w, 0.1 * torch.randn(TEACHER_WIDTH, generator=gen)))
        chans = TEACHER_WIDTH
    readout = torch.randn(TASK_CLASSES, chans, generator=gen) / math.sqrt(chans)
    layers.append((readout, torch.zeros(TASK_CLASSES)))
    return layers


def _teacher_logits(x: torch.Tensor, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    h = x
    for depth, (w, b) in enumerate(layers[:-1]):
        if depth:
            h = F.avg_pool2d(h, 2)
        h = F.relu(F.conv2d(h, w, b, padding=w.shape[-1] // 2))
        h = (h - h.mean(dim=(0, 2, 3), keepdim=True)) / h.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    pooled = h.mean(dim=(2, 3))
    w, b = layers[-1]
    return pooled @ w.T + b


def teacher(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of the ``teacher`` task (module docstring)."""
    layers = _teacher_weights(gen)
    per_class = n // TASK_CLASSES
    pool = n + n // 4 + 200
    while True:
        x = smooth_images(pool, gen)
        x = (x - x.mean()) / x.std()
        with torch.no_grad():
            logits = _teacher_logits(x, layers)
        logits = (logits - logits.mean(0)) / logits.std(0).clamp_min(1e-6)
        y = (logits + balance_biases(logits)).argmax(1)
        keep = take_per_class(y, per_class, TASK_CLASSES)
        if keep is not None:
            return x[keep], y[keep]
        pool *= 2


# --- glyphs ----------------------------------------------------------------------------------------------------
GLYPH_SIZE = 5
GLYPH_SHAPES = 6  # A, B and four distractor shapes
GLYPH_DISTRACTORS = (2, 4)  # inclusive range of distractors per image
GLYPH_DISTANCE = (6.0, 20.0)
GLYPH_NOISE = 0.35


def _glyph_shapes(gen: torch.Generator) -> torch.Tensor:
    """``GLYPH_SHAPES`` distinct 5x5 binary patterns with the same number of lit pixels (13 of 25)."""
    shapes: list[torch.Tensor] = []
    while len(shapes) < GLYPH_SHAPES:
        order = torch.randperm(GLYPH_SIZE * GLYPH_SIZE, generator=gen)
        shape = torch.zeros(GLYPH_SIZE * GLYPH_SIZE)
        shape[order[:13]] = 1.0
        if all(int((shape != s.flatten()).sum()) >= 8 for s in shapes):
            shapes.append(shape.view(GLYPH_SIZE, GLYPH_SIZE))
    return torch.stack(shapes)


def _free_spot(taken: list[tuple[int, int]], gen: torch.Generator, limit: int) -> tuple[int, int] | None:
    for _ in range(50):
        r, c = (int(v) for v in torch.randint(0, limit + 1, (2,), generator=gen))
        if all(abs(r - tr) >= GLYPH_SIZE + 1 or abs(c - tc) >= GLYPH_SIZE + 1 for tr, tc in taken):
            return r, c
    return None


def glyphs(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of the ``glyphs`` task (module docstring)."""
    shapes = _glyph_shapes(gen)
    colour = 0.5 + torch.rand(3, generator=gen)  # one colour for every glyph: only the shape tells them apart
    y = balanced_labels(n, gen)
    x = smooth_images(n, gen, scales=((4, 0.5), (32, GLYPH_NOISE)))
    limit = NATIVE_SIZE - GLYPH_SIZE
    for i in range(n):
        while True:
            angle = math.radians(36.0 * int(y[i]) + 24.0 * (float(torch.rand((), generator=gen)) - 0.5))
            dist = GLYPH_DISTANCE[0] + (GLYPH_DISTANCE[1] - GLYPH_DISTANCE[0]) * float(torch.rand((), generator=gen))
            dr, dc = -dist * math.sin(angle), dist * math.cos(angle)  # rows grow downwards: angle counter-clockwise
            r_lo, r_hi = max(0.0, -dr), min(limit, limit - dr)
            c_lo, c_hi = max(0.0, -dc), min(limit, limit - dc)
            if r_lo <= r_hi and c_lo <= c_hi:
                break
        ra = round(r_lo + (r_hi - r_lo) * float(torch.rand((), generator=gen)))
        ca = round(c_lo + (c_hi - c_lo) * float(torch.rand((), generator=gen)))
        rb, cb = min(max(round(ra + dr), 0), limit), min(max(round(ca + dc), 0), limit)
        placed = [(0, ra, ca), (1, rb, cb)]
        taken = [(ra, ca), (rb, cb)]
        lo, hi = GLYPH_DISTRACTORS
        for _ in range(int(torch.randint(lo, hi + 1, (), generator=gen))):
            spot = _free_spot(taken, gen, limit)
            if spot is not None:
                taken.append(spot)
                placed.append((2 + int(torch.randint(0, GLYPH_SHAPES - 2, (), generator=gen)), *spot))
        for kind, r, c in placed:
            patch = x[i, :, r:r + GLYPH_SIZE, c:c + GLYPH_SIZE]
            mask = shapes[kind]
            glyph = colour[:, None, None] + 0.1 * patch
            x[i, :, r:r + GLYPH_SIZE, c:c + GLYPH_SIZE] = patch * (1 - mask) + glyph * mask
    return x, y


# --- gratings --------------------------------------------------------------------------------------------------
GRATING_FREQ = (0.18, 0.30)  # cycles per pixel, the range the class frequency is drawn from
GRATING_NOISE = 1.0
GRATING_DISTRACTOR = 0.6


def _grating(theta: torch.Tensor, freq: torch.Tensor, phase: torch.Tensor, size: int = NATIVE_SIZE) -> torch.Tensor:
    """(n, size, size) sinusoids of orientation ``theta`` (radians), ``freq`` (cycles/pixel) and ``phase``."""
    coords = torch.arange(size, dtype=torch.float32)
    rows, cols = coords[:, None], coords[None, :]
    t = (cols * torch.cos(theta)[:, None, None] + rows * torch.sin(theta)[:, None, None])
    return torch.sin(2 * math.pi * freq[:, None, None] * t + phase[:, None, None])


def gratings(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of the ``gratings`` task (module docstring)."""
    base = torch.rand(TASK_CLASSES, generator=gen) * math.pi
    gap = math.radians(25.0) + torch.rand(TASK_CLASSES, generator=gen) * math.radians(20.0)
    pairs = torch.stack([base, base + gap], 1)  # each class: two orientations 25-45 degrees apart
    freq = GRATING_FREQ[0] + (GRATING_FREQ[1] - GRATING_FREQ[0]) * torch.rand(TASK_CLASSES, 2, generator=gen)
    y = balanced_labels(n, gen)
    colour = 0.5 + torch.rand(2, 3, generator=gen)
    x = GRATING_NOISE * torch.randn(n, 3, NATIVE_SIZE, NATIVE_SIZE, generator=gen)
    for j in range(2):
        theta = pairs[y, j] + math.radians(3.0) * torch.randn(n, generator=gen)
        f = freq[y, j] * (1 + 0.05 * torch.randn(n, generator=gen))
        phase = 2 * math.pi * torch.rand(n, generator=gen)
        x += colour[j][None, :, None, None] * _grating(theta, f, phase)[:, None]
    theta = math.pi * torch.rand(n, generator=gen)
    f = GRATING_FREQ[0] + (GRATING_FREQ[1] - GRATING_FREQ[0]) * torch.rand(n, generator=gen)
    x += GRATING_DISTRACTOR * _grating(theta, f, 2 * math.pi * torch.rand(n, generator=gen))[:, None]
    return x, y


#: The named tasks of ``synthetic:NAME[:N]``.
TASKS: dict[str, Generator] = {"teacher": teacher, "glyphs": glyphs, "gratings": gratings}


def generate_task(name: str, samples: int, size: tuple[int, int], chans: int, seed: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``samples`` images (rounded down to a multiple of ``TASK_CLASSES``) of task ``name`` at ``size`` with
    ``chans`` (1 or 3) channels, float32, and their int64 labels; ValueError naming the known tasks for an unknown
    name."""
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
