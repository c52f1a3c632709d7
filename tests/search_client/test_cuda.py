"""Training on a GPU: the AMP dtype rule, the mixed-precision step (bf16 and fp16 with its scaler, run on the CPU's
autocast here), channels_last and non-blocking placement, the kernel settings; and, where a CUDA device exists
(``pytest.mark.cuda``, skipped otherwise), a search on it with AMP, pinned batches and deterministic repeats."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from search_client.nas.config import SearchConfig
from search_client.nas.search_loop import SearchRun, run_search
from search_client.training.cuda import DeviceTraining, MixedPrecision, amp_dtype_for, configure_kernels
from search_client.training.datasets import DataOptions
from search_client.training.train import train_step
from tests.search_client.conftest import make_table

torch.set_num_threads(1)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 5))


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(6, 3, 8, 8, generator=gen), torch.randint(0, 5, (6,), generator=gen)


@pytest.fixture
def kernel_settings() -> Iterator[None]:
    """Restore the process-wide kernel settings a test changes."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    yield
    torch.use_deterministic_algorithms(saved[0])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[1], saved[2]
    if saved[3] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved[3]


def test_amp_dtype_rule() -> None:
    cuda = torch.device("cuda")
    assert amp_dtype_for(cuda, False) is None
    assert amp_dtype_for(cuda, True, bf16_supported=True) is torch.bfloat16
    assert amp_dtype_for(cuda, True, bf16_supported=False) is torch.float16
    with pytest.raises(ValueError, match="--amp: automatic mixed precision is for CUDA training; the train "
                                         "device is cpu"):
        amp_dtype_for(torch.device("cpu"), True)
    with pytest.raises(ValueError, match="dtype must be bfloat16, float16 or None"):
        MixedPrecision("cpu", torch.float64)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_mixed_precision_step_trains_float32_weights(dtype: torch.dtype) -> None:
    net, batch = _net(), _batch()
    before = [p.detach().clone() for p in net.parameters()]
    precision = MixedPrecision("cpu", dtype)
    assert (precision.scaler is not None) == (dtype is torch.float16)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    loss, acc = train_step(net, batch, opt, label_smoothing=0.1, precision=precision)
    assert torch.isfinite(torch.tensor(loss)) and 0.0 <= acc <= 1.0
    assert all(p.dtype is torch.float32 for p in net.parameters())
    assert all(not torch.equal(p, b) for p, b in zip(net.parameters(), before))
    with precision.autocast():
        assert net(batch[0]).dtype is dtype  # the forward ran in the low precision


def test_the_fp16_scaler_skips_a_step_with_inf_gradients_and_lowers_the_scale() -> None:
    net = _net()
    precision = MixedPrecision("cpu", torch.float16)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    before = [p.detach().clone() for p in net.parameters()]
    scale = precision.scaler.get_scale()
    with precision.autocast():
        loss = net(_batch()[0]).float().sum() * float("inf")
    opt.zero_grad(set_to_none=True)
    assert precision.backward_step(loss, opt) is False
    assert all(torch.equal(p, b) for p, b in zip(net.parameters(), before))
    assert precision.scaler.get_scale() < scale
    restored = MixedPrecision("cpu", torch.float16)
    restored.load_state_dict(precision.state_dict())
    assert restored.scaler.get_scale() == precision.scaler.get_scale()
    assert MixedPrecision().state_dict() is None


def test_device_training_on_the_cpu_and_in_channels_last() -> None:
    plain = DeviceTraining("cpu")
    assert (plain.channels_last, plain.pin_memory, plain.non_blocking, plain.precision.name) == \
        (False, False, False, "off")
    assert plain.describe() == {"train_device": "cpu", "amp": "off", "channels_last": False, "pin_memory": False,
                                "deterministic": torch.are_deterministic_algorithms_enabled()}
    cl = DeviceTraining("cpu", channels_last=True)
    net = cl.prepare_model(_net())
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last)
    x, y = cl.to_device(_batch())
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    assert torch.equal(x, _batch()[0]) and torch.equal(y, _batch()[1])


def test_kernel_settings(kernel_settings: None) -> None:
    configure_kernels(deterministic=True)
    assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    assert not torch.backends.cudnn.benchmark and os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    configure_kernels(deterministic=False)
    assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark


def _search_config(**overrides: object) -> SearchConfig:
    table = make_table("micro-16")
    low, high = table.min_latency()[0], table.max_latency()[0]
    return SearchConfig(**{**dict(targets_ms=[low + 0.4 * (high - low)], data=DataOptions("synthetic:160:10"), epochs=1,
                                  batch_size=16, loss="add#linear", arch_every=2), **overrides})


def test_a_search_runs_with_deterministic_kernels_on_the_cpu(tmp_path: Path, kernel_settings: None) -> None:
    configure_kernels(deterministic=True)
    result = run_search(_search_config(), [make_table("micro-16")], tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert result.finished and summary["deterministic"] is True and summary["amp"] == "off"
    assert summary["world_size"] == 1 and summary["distributed_backend"] is None


# --- on a CUDA device -------------------------------------------------------------------------------------------
@pytest.mark.cuda
@needs_cuda
def test_a_search_on_cuda_with_amp(tmp_path: Path) -> None:
    result = run_search(_search_config(), [make_table("micro-16")], tmp_path, device="cuda", amp=True)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert result.finished
    assert summary["train_device"] == "cuda" and summary["amp"] in ("bf16", "fp16")
    assert summary["channels_last"] is True and summary["pin_memory"] is True
    assert all(p.device.type == "cuda" for p in result.supernet.parameters())


@pytest.mark.cuda
@needs_cuda
def test_cuda_batches_are_pinned_and_copied_in_channels_last(tmp_path: Path) -> None:
    run = SearchRun(_search_config(), [make_table("micro-16")], tmp_path, device="cuda")
    batch = run.data.train.next_batch()
    assert batch[0].is_pinned()
    x, y = run._to_device(batch)
    assert x.is_cuda and x.is_contiguous(memory_format=torch.channels_last) and y.is_cuda


@pytest.mark.cuda
@needs_cuda
def test_deterministic_cuda_searches_repeat_exactly(tmp_path: Path, kernel_settings: None) -> None:
    configure_kernels(deterministic=True)
    alphas = []
    for name in ("a", "b"):
        result = run_search(_search_config(), [make_table("micro-16")], tmp_path / name, device="cuda")
        alphas.append(torch.cat([a.detach().cpu() for a in result.supernet.arch_parameters()]))
    assert torch.equal(alphas[0], alphas[1])
