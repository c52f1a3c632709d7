"""Retraining: the one evaluation function and the config's data options."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from nas_ops.space import load_space
from search_client.training.datasets import DataOptions, open_search_data
from search_client.training.train import TrainConfig, evaluate, save_train_result, train_architecture


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
    config = TrainConfig(data=DataOptions("synthetic:40:2", valid_per_class=5), batch_size=4)
    data = config.open_data((16, 16), 3)
    assert data.info["valid_images"] == 10 and data.train.next_batch()[0].shape == (4, 3, 16, 16)
    with pytest.raises(ValueError, match="workers"):
        TrainConfig(data=DataOptions(workers=-1))
    with pytest.raises(ValueError, match="train config field 'data'"):
        TrainConfig(data="digits")  # type: ignore[arg-type]


def test_retraining_reads_an_image_folder_through_the_search_pipeline(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for label, level in (("dark", 40), ("light", 215)):  # two classes a net separates at once
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(12):
            pixels = np.clip(level + rng.normal(0, 20, (24, 20, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "data" / label / f"{i}.jpg")
    arch = replace(load_space("micro-16"), num_classes=2).architecture([0, 0, 0])  # a head of two outputs
    config = TrainConfig(data=DataOptions(str(tmp_path / "data"), valid_per_class=3, workers=2, color_jitter=0.2),
                         epochs=3, batch_size=8, lr=0.1)
    result = train_architecture(arch, config)
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert result.data["layout"] == "flat" and result.data["valid_images"] == 6 and result.data["workers"] == 2
    # the held-out split is the one the search's pipeline gives for the same options
    held_out = open_search_data(config.data, arch.input_size, arch.in_chs, config.batch_size, config.seed
                                ).eval_batches(4)
    assert result.top1 == pytest.approx(evaluate(result.network, held_out)[1])
    assert result.top1 >= 5 / 6
    files = save_train_result(result, arch, config, tmp_path / "out")
    summary = json.loads(files["summary"].read_text())
    assert summary["data"]["valid_from"] == "3 per class held out of train"
    assert summary["config"]["data"]["workers"] == 2
