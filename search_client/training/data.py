"""The in-memory API that :mod:`search_client.nas.search_loop` used before :mod:`search_client.training.datasets`.

Kept as a thin layer over the new modules (no rule of its own) until the search loop opens its data with
:func:`search_client.training.datasets.open_search_data`; image folders are streamed and only open there.
"""

from __future__ import annotations

import numpy as np

from search_client.training.image_sets import TensorImages
from search_client.training.memory_sources import is_memory_source, load_memory_source
from search_client.training.split import stratified_split
from search_client.training.streams import BatchStream

ImageDataset = TensorImages

__all__ = ["BatchStream", "ImageDataset", "load_dataset", "train_valid_split"]


def load_dataset(source: str, input_size: tuple[int, int], in_chs: int = 3, *, seed: int = 0) -> TensorImages:
    """An in-memory source (:func:`search_client.training.memory_sources.load_memory_source`)."""
    if not isinstance(source, str) or not is_memory_source(source):
        raise ValueError(f"data: unknown source {source!r}: this entry point reads 'digits', 'synthetic[:N[:K]]' "
                         "or a .npz file; image folders are streamed by search_client.training.datasets")
    return load_memory_source(source, input_size, in_chs, seed=seed)


def train_valid_split(dataset: TensorImages, valid_fraction: float = 0.2, *, seed: int = 0
                      ) -> tuple[TensorImages, TensorImages]:
    """The stratified split of :func:`search_client.training.split.stratified_split`, as two subsets."""
    train, valid = stratified_split(dataset.labels, valid_fraction=valid_fraction, seed=seed, name=dataset.name)
    return (dataset.subset(np.asarray(train), f"{dataset.name}[train]"),
            dataset.subset(np.asarray(valid), f"{dataset.name}[valid]"))
