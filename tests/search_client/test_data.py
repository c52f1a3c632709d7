"""In-memory sources (digits, synthetic, .npz), the seeded stratified split and the resumable batch stream."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from search_client.training.image_sets import TensorImages
from search_client.training.memory_sources import load_memory_source
from search_client.training.split import stratified_split
from search_client.training.streams import BatchStream


def _split(ds: TensorImages, fraction: float, seed: int) -> tuple[TensorImages, TensorImages]:
    train, valid = stratified_split(ds.labels, valid_fraction=fraction, seed=seed)
    return ds.subset(train), ds.subset(valid)


def test_digits_are_upsampled_three_channel_and_normalised() -> None:
    ds = load_memory_source("digits", (16, 16), 3)
    assert ds.x.shape == (1797, 3, 16, 16) and ds.x.dtype == torch.float32
    assert ds.y.shape == (1797,) and ds.num_classes == 10
    assert torch.allclose(ds.x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(ds.x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3)


def test_synthetic_is_seeded_and_sized() -> None:
    a = load_memory_source("synthetic:60:3", (8, 8), 3, seed=1)
    b = load_memory_source("synthetic:60:3", (8, 8), 3, seed=1)
    c = load_memory_source("synthetic:60:3", (8, 8), 3, seed=2)
    assert a.x.shape == (60, 3, 8, 8) and a.num_classes == 3
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x)
    assert torch.bincount(a.y).tolist() == [20, 20, 20]
    assert load_memory_source("synthetic", (8, 8), 1).x.shape == (1024, 1, 8, 8)


def test_synthetic_is_learnable_by_class_means() -> None:
    ds = load_memory_source("synthetic:400:4", (8, 8), 3, seed=0)
    train, valid = _split(ds, 0.25, seed=0)
    means = torch.stack([train.x[train.y == k].mean(0) for k in range(4)])
    pred = ((valid.x[:, None] - means[None]) ** 2).sum(dim=(2, 3, 4)).argmin(1)
    assert (pred == valid.y).float().mean() > 0.9


def test_npz_layouts(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x=rng.integers(0, 256, (12, 10, 10), dtype=np.uint8), y=np.arange(12) % 3)
    ds = load_memory_source(str(path), (16, 16), 3)
    assert ds.x.shape == (12, 3, 16, 16) and ds.num_classes == 3
    np.savez(path, x=rng.random((6, 5, 5, 3)).astype(np.float32), y=np.array([0, 1, 0, 1, 0, 1]))
    assert load_memory_source(str(path), (5, 5), 3).x.shape == (6, 3, 5, 5)
    np.savez(path, x=rng.random((6, 3, 5, 5)), y=np.zeros(6, dtype=np.int64))
    assert load_memory_source(str(path), (4, 4), 1).x.shape == (6, 1, 4, 4)


def test_npz_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, x=np.zeros((4, 5, 5)))
    with pytest.raises(ValueError, match="no array 'y'"):
        load_memory_source(str(path), (5, 5))
    np.savez(path, x=np.zeros((4, 5, 5)), y=np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match=r"array 'y'.*shape \(4,\)"):
        load_memory_source(str(path), (5, 5))
    np.savez(path, x=np.zeros((4, 5, 5)), y=np.array([0.5, 1, 0, 1]))
    with pytest.raises(ValueError, match="integer labels"):
        load_memory_source(str(path), (5, 5))
    with pytest.raises(ValueError, match="does not exist"):
        load_memory_source(str(tmp_path / "none.npz"), (5, 5))


def test_unknown_sources() -> None:
    with pytest.raises(ValueError, match="not an in-memory source"):
        load_memory_source("imagenet", (8, 8))
    with pytest.raises(ValueError, match="SAMPLES"):
        load_memory_source("synthetic:many", (8, 8))
    with pytest.raises(ValueError, match="CLASSES"):
        load_memory_source("synthetic:100:1", (8, 8))


def test_split_is_stratified_disjoint_and_seeded() -> None:
    ds = load_memory_source("synthetic:200:4", (4, 4), 3)
    train, valid = _split(ds, 0.2, seed=3)
    assert len(train) + len(valid) == 200
    assert torch.bincount(valid.y).tolist() == [10, 10, 10, 10]
    rows = {tuple(r) for r in torch.cat([train.x, valid.x]).flatten(1).tolist()}
    assert len(rows) == 200  # every sample exactly once
    again, other = _split(ds, 0.2, seed=3)[1], _split(ds, 0.2, seed=4)[1]
    assert torch.equal(valid.x, again.x) and not torch.equal(valid.x, other.x)
    with pytest.raises(ValueError, match="valid_fraction"):
        stratified_split(ds.labels, valid_fraction=1.0)


def test_batch_stream_is_seeded_and_resumable() -> None:
    ds = load_memory_source("synthetic:50:5", (4, 4), 3)
    a, b = BatchStream(ds, 8, seed=1), BatchStream(ds, 8, seed=1)
    assert len(a) == 7 and len(BatchStream(ds, 8, drop_last=True)) == 6
    first = [y.tolist() for _, y in a.epoch()]
    assert first == [y.tolist() for _, y in b.epoch()]
    assert sorted(sum(first, [])) == sorted(ds.y.tolist())
    for _ in range(3):
        a.next_batch()
    saved = a.state_dict()
    expected = [a.next_batch()[1].tolist() for _ in range(10)]  # crosses into the next pass
    c = BatchStream(ds, 8, seed=99)
    c.load_state_dict(saved)
    assert [c.next_batch()[1].tolist() for _ in range(10)] == expected
    with pytest.raises(ValueError, match="batch_size"):
        BatchStream(ds, 0)


def test_split_per_class_is_exact_disjoint_and_seeded() -> None:
    labels = np.repeat(np.arange(5), [12, 7, 9, 30, 4])
    train, valid = stratified_split(labels, valid_per_class=3, seed=1)
    assert np.bincount(labels[valid]).tolist() == [3] * 5
    assert np.intersect1d(train, valid).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, valid])), np.arange(len(labels)))
    assert np.array_equal(valid, stratified_split(labels, valid_per_class=3, seed=1)[1])
    assert not np.array_equal(valid, stratified_split(labels, valid_per_class=3, seed=2)[1])
    with pytest.raises(ValueError, match="class 4 .* 4 image.*at least 5"):
        stratified_split(labels, valid_per_class=4, name="d")


def test_batch_stream_over_memory_with_workers_matches_the_calling_process() -> None:
    ds = load_memory_source("synthetic:60:3", (4, 4), 3)
    a = BatchStream(ds, 8, seed=4, workers=0)
    b = BatchStream(ds, 8, seed=4, workers=2)
    for _ in range(12):  # more than one pass
        xa, ya = a.next_batch()
        xb, yb = b.next_batch()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    b.close()
