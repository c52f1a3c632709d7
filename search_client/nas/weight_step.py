"""The weight step of the search: train the sampled path (or the DARTS mixture) of the supernet on one batch."""

from __future__ import annotations

import torch

from search_client.nas.supernet import Supernet
from search_client.training.cuda import MixedPrecision
from search_client.training.train import train_step


def weight_step(supernet: Supernet, batch: tuple[torch.Tensor, torch.Tensor], optimizer: torch.optim.Optimizer,
                *, mode: str, label_smoothing: float, generator: torch.Generator,
                precision: MixedPrecision | None = None) -> tuple[float, float]:
    """One weight step: sample one path per cell by p (the mixture in ``darts`` mode), alphas frozen, the
    forward under ``precision`` (default: full precision); returns (loss, accuracy) of the batch."""
    if mode == "darts":
        supernet.use_mixture()
    else:
        supernet.sample_single(generator)
    # train_step zeroes grads with set_to_none: the paths that did not run keep grad None, so SGD gives them no
    # weight decay and no momentum update
    with supernet.training_weights():
        return train_step(supernet, batch, optimizer, label_smoothing=label_smoothing, precision=precision)
