"""Retraining: the one evaluation function and the config's data options."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from search_client.training.train import TrainConfig, evaluate


class _Fixed(nn.Module):
    """Logits that put class ``x[:, 0] > 0`` first; records its mode during the forward."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        positive = (x[:, 0] > 0).float()
        return torch.stack([1 - positive, positive], dim=1) * 10.0 + self.weight


def test_evaluate_weighs_every_sample_across_uneven_batches() -> None:
    net = _Fixed()
    x = torch.tensor([[1.0], [-1.0], [1.0], [1.0], [-1.0]])
    y = torch.tensor([1, 0, 0, 1, 0])  # the third one is wrong
    batches = [(x[:3], y[:3]), (x[3:], y[3:])]
    loss, top1 = evaluate(net, batches)
    assert top1 == pytest.approx(4 / 5)
    logits = torch.tensor([[0.0, 10.0], [10.0, 0.0], [0.0, 10.0], [0.0, 10.0], [10.0, 0.0]])
    assert loss == pytest.approx(float(nn.functional.cross_entropy(logits, y)), rel=1e-5)
    assert net.modes == [False, False] and net.training  # eval mode inside, mode restored
    with pytest.raises(ValueError, match="no samples"):
        evaluate(net, [])


def test_train_config_checks_its_data_options() -> None:
    options = TrainConfig(data="digits", valid_per_class=5, workers=2).data_options((16, 16), 3)
    assert options.valid_per_class == 5 and options.workers == 2 and options.input_size == (16, 16)
    with pytest.raises(ValueError, match="train config: .*workers"):
        TrainConfig(workers=-1)
