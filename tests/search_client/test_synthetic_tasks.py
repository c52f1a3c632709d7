"""The named generated tasks (``synthetic:NAME[:N]``): grammar, determinism, shapes, class balance."""

from __future__ import annotations

import pytest
import torch

from search_client.training.datasets import DataOptions, open_search_data
from search_client.training.memory_sources import load_memory_source
from search_client.training.synthetic_tasks import (
    TASK_CLASSES,
    TASK_DEFAULT_SAMPLES,
    TASKS,
    balance_biases,
    generate_task,
    take_per_class,
)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_is_seeded_shaped_and_balanced(name: str) -> None:
    a = load_memory_source(f"synthetic:{name}:200", (32, 32), 3, seed=1)
    b = load_memory_source(f"synthetic:{name}:200", (32, 32), 3, seed=1)
    c = load_memory_source(f"synthetic:{name}:200", (32, 32), 3, seed=2)
    assert a.x.shape == (200, 3, 32, 32) and a.x.dtype == torch.float32
    assert a.y.dtype == torch.int64 and a.num_classes == TASK_CLASSES
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x)
    assert torch.bincount(a.y, minlength=TASK_CLASSES).tolist() == [20] * TASK_CLASSES
    assert torch.isfinite(a.x).all()
    assert torch.allclose(a.x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)  # normalised like every source


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_at_other_sizes_and_grey(name: str) -> None:
    x, y = generate_task(name, 55, (16, 16), 1, seed=0)
    assert x.shape == (50, 1, 16, 16) and y.shape == (50,)  # rounded down to a multiple of the classes
    assert torch.bincount(y).tolist() == [5] * TASK_CLASSES


def test_default_size_and_the_old_grammar_unchanged() -> None:
    assert load_memory_source("synthetic:gratings", (8, 8), 3).x.shape[0] == TASK_DEFAULT_SAMPLES
    assert load_memory_source("synthetic", (8, 8), 3).x.shape == (1024, 3, 8, 8)
    old = load_memory_source("synthetic:60:3", (8, 8), 3, seed=1)
    assert old.x.shape == (60, 3, 8, 8) and torch.bincount(old.y).tolist() == [20, 20, 20]


@pytest.mark.parametrize("source, message", [
    ("synthetic:nope", r"'nope' in 'synthetic:nope' is neither SAMPLES .* nor a known synthetic task "
                       r"\(teacher, glyphs, gratings\)"),
    ("synthetic:many", "SAMPLES"),
    ("synthetic:glyphs:lots", r"SAMPLES of 'synthetic:glyphs:lots' must be a positive integer"),
    ("synthetic:glyphs:5", r"SAMPLES of 'synthetic:glyphs:5' must be in \[10, "),
    ("synthetic:glyphs:100:3", r"expected synthetic:NAME\[:SAMPLES\]"),
    ("synthetic:-3", "SAMPLES"),
    ("synthetic:100:1", "CLASSES"),
])
def test_bad_task_sources_are_refused_with_one_line(source: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        load_memory_source(source, (8, 8))
    assert "\n" not in str(info.value)


def test_generate_task_refuses_unknown_names() -> None:
    with pytest.raises(ValueError, match=r"unknown synthetic task 'x' \(known: teacher, glyphs, gratings\)"):
        generate_task("x", 100, (8, 8), 3, seed=0)


def test_a_task_opens_as_search_data_with_its_classes() -> None:
    data = open_search_data(DataOptions("synthetic:glyphs:100"), (16, 16), 3, batch_size=16, seed=0)
    try:
        assert data.num_classes == TASK_CLASSES and data.info["valid_images"] == 20
        x, y = next(iter(data.train.epoch()))
        assert x.shape == (16, 3, 16, 16)
    finally:
        data.close()


def test_balance_helpers() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2000, 4, generator=gen) + torch.tensor([2.0, 0.0, 0.0, -1.0])
    counts = torch.bincount((logits + balance_biases(logits)).argmax(1), minlength=4)
    assert counts.min() >= 400 and counts.max() <= 600  # a quarter each, about
    y = torch.tensor([0, 1, 1, 0, 2, 1, 0])
    assert take_per_class(y, 1, 3).tolist() == [0, 1, 4]
    assert take_per_class(y, 2, 3) is None
