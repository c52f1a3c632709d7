"""The architecture-step split: images of each class held out of the training set, with a fixed seed.

One rule for every source (in memory or on disk): per class, in a seeded random order, the first
``valid_per_class`` images (when given) or ``round(valid_fraction * n)`` of them (at least one) are held out;
each class keeps at least one training image. The split is stratified and the two parts never overlap.
"""

from __future__ import annotations

import numpy as np
import torch


def stratified_split(labels: np.ndarray, *, valid_per_class: int | None = None, valid_fraction: float = 0.2,
                     seed: int = 0, name: str = "data") -> tuple[np.ndarray, np.ndarray]:
    """(train indices, valid indices), each sorted int64, of samples with class ``labels`` (N,).

    ValueError (naming ``name`` and the class) when a class has too few images to keep one on each side.
    """
    if isinstance(valid_fraction, bool) or not 0.0 < valid_fraction < 1.0:
        raise ValueError(f"valid_fraction: must be in (0, 1), got {valid_fraction!r}")
    if valid_per_class is not None and (isinstance(valid_per_class, bool) or valid_per_class < 1):
        raise ValueError(f"valid_per_class: must be a positive integer, got {valid_per_class!r}")
    labels = np.asarray(labels, dtype=np.int64)
    gen = torch.Generator().manual_seed(seed)
    train_parts, valid_parts = [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if valid_per_class is not None:
            if len(members) <= valid_per_class:
                raise ValueError(f"data: class {label} of {name} has {len(members)} image(s); holding out "
                                 f"{valid_per_class} per class needs at least {valid_per_class + 1}")
            n_valid = valid_per_class
        else:
            if len(members) < 2:
                raise ValueError(f"data: class {label} of {name} has 1 image; a split needs at least 2 per class")
            n_valid = min(len(members) - 1, max(1, round(len(members) * valid_fraction)))
        members = members[torch.randperm(len(members), generator=gen).numpy()]
        valid_parts.append(members[:n_valid])
        train_parts.append(members[n_valid:])
    if not train_parts:
        raise ValueError(f"data: {name} has no samples to split")
    return np.sort(np.concatenate(train_parts)), np.sort(np.concatenate(valid_parts))
