"""The named generated tasks (``synthetic:NAME[:N]``): grammar, determinism, shapes, class balance, and what the
``glass`` task's images hold."""

from __future__ import annotations

import pytest
import torch

from search_client.training.datasets import DataOptions, open_search_data
from search_client.training.memory_sources import load_memory_source
from search_client.training.synthetic_tasks import (
    GLASS_DISTANCE,
    NATIVE_SIZE,
    TASK_CLASSES,
    TASK_DEFAULT_SAMPLES,
    TASKS,
    generate_task,
    glass,
    glass_shifts,
)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_is_seeded_shaped_and_balanced(name: str) -> None:
    a = load_memory_source(f"synthetic:{name}:200", (32, 32), 3, seed=1)
    b = load_memory_source(f"synthetic:{name}:200", (32, 32), 3, seed=1)
    c = load_memory_source(f"synthetic:{name}:200", (32, 32), 3, seed=2)
    assert a.x.shape == (200, 3, 32, 32) and a.x.dtype == torch.float32
    assert a.y.shape == (200,) and a.y.dtype == torch.int64 and a.num_classes == TASK_CLASSES
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x) and not torch.equal(a.y, c.y)
    assert torch.bincount(a.y, minlength=TASK_CLASSES).tolist() == [20] * TASK_CLASSES
    assert torch.isfinite(a.x).all()
    assert torch.allclose(a.x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)  # normalised like every source


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_at_other_sizes_and_grey(name: str) -> None:
    x, y = generate_task(name, 55, (16, 16), 1, seed=0)
    assert x.shape == (50, 1, 16, 16) and x.dtype == torch.float32 and y.shape == (50,)  # 55 rounded down
    assert torch.bincount(y).tolist() == [5] * TASK_CLASSES


def test_glass_classes_are_the_shift_of_a_copy() -> None:
    """Each class's images correlate with themselves at its shift (about 1/2.25) and not at the other classes'."""
    shifts = glass_shifts()
    assert len(set(shifts)) == TASK_CLASSES  # ten distinct shifts
    assert all(abs((r * r + c * c) ** 0.5 - GLASS_DISTANCE) <= 0.71 for r, c in shifts)
    x, y = glass(400, torch.Generator().manual_seed(0))
    assert x.shape == (400, 3, NATIVE_SIZE, NATIVE_SIZE)
    m = 8  # margin so that every shift stays inside the image
    for k in range(TASK_CLASSES):
        xs = x[y == k]
        corr = []
        for r, c in shifts:
            a = xs[:, :, m:-m, m:-m]
            b = xs[:, :, m + r:NATIVE_SIZE - m + r, m + c:NATIVE_SIZE - m + c]
            corr.append(float(((a - a.mean()) * (b - b.mean())).mean() / (a.std() * b.std())))
        assert corr[k] > 0.35 and max(v for j, v in enumerate(corr) if j != k) < 0.1


def test_glass_pixels_alone_say_nothing_of_the_class() -> None:
    x, y = glass(2000, torch.Generator().manual_seed(1))
    means = torch.stack([x[y == k].mean(dim=(0, 2, 3)) for k in range(TASK_CLASSES)])
    stds = torch.stack([x[y == k].std(dim=(0, 2, 3)) for k in range(TASK_CLASSES)])
    assert means.abs().max() < 0.02 and (stds.max(0).values - stds.min(0).values).max() < 0.02


def test_default_size_and_the_old_grammar_unchanged() -> None:
    assert load_memory_source("synthetic:glass", (8, 8), 3).x.shape == (TASK_DEFAULT_SAMPLES, 3, 8, 8)
    assert TASK_DEFAULT_SAMPLES % TASK_CLASSES == 0
    assert load_memory_source("synthetic", (8, 8), 3).x.shape == (1024, 3, 8, 8)
    old = load_memory_source("synthetic:60:3", (8, 8), 3, seed=1)
    assert old.x.shape == (60, 3, 8, 8) and torch.bincount(old.y).tolist() == [20, 20, 20]
    assert load_memory_source("synthetic:30", (8, 8), 3).num_classes == 10


@pytest.mark.parametrize("source, message", [
    ("synthetic:nope", r"^data: 'nope' in 'synthetic:nope' is neither SAMPLES \(a positive integer\) nor a known "
                       r"synthetic task \(glass\)$"),
    ("synthetic:many", "SAMPLES"),
    ("synthetic:glass:lots", r"SAMPLES of 'synthetic:glass:lots' must be a positive integer"),
    ("synthetic:glass:5", r"SAMPLES of 'synthetic:glass:5' must be in \[10, "),
    ("synthetic:glass:100:3", r"expected synthetic:NAME\[:SAMPLES\]"),
    ("synthetic:-3", "SAMPLES"),
    ("synthetic:100:1", "CLASSES"),
])
def test_bad_task_sources_are_refused_with_one_line(source: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        load_memory_source(source, (8, 8))
    assert "\n" not in str(info.value)


def test_generate_task_refuses_unknown_names_and_too_few_images() -> None:
    with pytest.raises(ValueError, match=r"unknown synthetic task 'x' \(known: glass\)"):
        generate_task("x", 100, (8, 8), 3, seed=0)
    with pytest.raises(ValueError, match="at least 10 images"):
        generate_task("glass", 9, (8, 8), 3, seed=0)


def test_a_task_opens_as_search_data_with_its_classes() -> None:
    data = open_search_data(DataOptions("synthetic:glass:100"), (16, 16), 3, batch_size=16, seed=0)
    try:
        assert data.num_classes == TASK_CLASSES and data.info["valid_images"] == 20
        x, _ = next(iter(data.train.epoch()))
        assert x.shape == (16, 3, 16, 16)
    finally:
        data.close()
