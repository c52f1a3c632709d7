"""The data entry point: DataOptions validation, open_search_data's streams and held-out batches."""

from __future__ import annotations

import pytest
import torch

from search_client.training.datasets import DataOptions, open_search_data


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        DataOptions("digits", (8, 8), 3, 0)
    with pytest.raises(ValueError, match="in_chs"):
        DataOptions("digits", (8, 8), 2, 8)
    with pytest.raises(ValueError, match="input_size"):
        DataOptions("digits", (8,), 3, 8)
    with pytest.raises(ValueError, match="valid_fraction"):
        DataOptions("digits", (8, 8), 3, 8, valid_fraction=1.0)
    with pytest.raises(ValueError, match="valid_per_class"):
        DataOptions("digits", (8, 8), 3, 8, valid_per_class=0)
    with pytest.raises(ValueError, match="exclude each other"):
        DataOptions("digits", (8, 8), 3, 8, valid_per_class=2, use_val_folder=True)
    with pytest.raises(ValueError, match="workers"):
        DataOptions("digits", (8, 8), 3, 8, workers=-1)
    with pytest.raises(ValueError, match="color_jitter"):
        DataOptions("digits", (8, 8), 3, 8, color_jitter=-0.1)
    with pytest.raises(dataclasses_frozen_error()):
        DataOptions("digits", (8, 8), 3, 8).seed = 1  # type: ignore[misc]


def dataclasses_frozen_error() -> type[Exception]:
    import dataclasses

    return dataclasses.FrozenInstanceError


def test_search_data_of_an_in_memory_source() -> None:
    data = open_search_data(DataOptions("synthetic:100:4", (8, 8), 3, 16, seed=1))
    assert data.num_classes == 4 and data.name == "synthetic:100:4"
    x, y = data.train.next_batch()
    assert x.shape == (16, 3, 8, 8) and y.shape == (16,)
    held = list(data.eval_batches(7))
    assert sum(len(y) for _, y in held) == 20  # 20% of each class
    again = list(data.eval_batches(7))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(held, again))
