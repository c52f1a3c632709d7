"""Training on a GPU: automatic mixed precision, channels_last, pinned memory with non-blocking copies, and the
choice between the fastest and deterministic kernels.

:class:`MixedPrecision` runs a training step's forward under ``torch.autocast`` and its backward and optimizer
step: bf16 needs no loss scaling; fp16 goes through a ``torch.amp.GradScaler`` (a step whose gradients hold
inf/NaN is skipped and the scale lowered). In a run of several processes the gradients are averaged over the ranks
before the scaler looks at them (:func:`search_client.training.distributed.average_gradients_now`), so every rank
skips or takes the same step. The weights and the optimizer state stay float32.

:class:`DeviceTraining` is how one run uses its device: on CUDA, mixed precision when asked (``amp``: bf16 where
the GPU supports it, else fp16 with the scaler), the model and the inputs in channels_last, batches read into
pinned memory and copied with ``non_blocking=True``; on the CPU none of these (``amp`` is refused there). What it
chose is :meth:`DeviceTraining.describe` (for summaries).

:func:`configure_kernels` is process-wide: deterministic kernels (``torch.use_deterministic_algorithms``, cuDNN
deterministic without benchmarking, cuBLAS's workspace setting, which must be in place before the first cuBLAS
call), or cuDNN's benchmark mode (the fastest kernel per shape, chosen by timing, so results can vary run to run).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from search_client.training.distributed import average_gradients_now

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
CUBLAS_DETERMINISTIC = ":4096:8"


class MixedPrecision:
    """Autocast to ``dtype`` (None: full precision) on ``device_type``, with a gradient scaler for fp16."""

    def __init__(self, device_type: str = "cpu", dtype: torch.dtype | None = None) -> None:
        if dtype not in (None, torch.bfloat16, torch.float16):
            raise ValueError(f"mixed precision: dtype must be bfloat16, float16 or None, got {dtype!r}")
        self.device_type, self.dtype = device_type, dtype
        self.scaler = torch.amp.GradScaler(device_type) if dtype == torch.float16 else None

    @property
    def name(self) -> str:
        """``off``, ``bf16`` or ``fp16``."""
        return {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self) -> Any:
        """The context of a forward pass: autocast to the dtype, or nothing at full precision."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> bool:
        """Backward of ``loss`` and the optimizer's step (through the scaler in fp16); returns False when the
        scaler skipped the step (inf/NaN gradients)."""
        if self.scaler is None:
            loss.backward()
            optimizer.step()
            return True
        self.scaler.scale(loss).backward()
        average_gradients_now(optimizer)
        scale = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= scale

    def state_dict(self) -> dict[str, Any] | None:
        """The scaler's state (None without one), for checkpoints."""
        return None if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore :meth:`state_dict`'s output (ignored without a scaler, or when ``state`` is None)."""
        if self.scaler is not None and state is not None:
            self.scaler.load_state_dict(state)


FULL_PRECISION = MixedPrecision()


def amp_dtype_for(device: torch.device, amp: bool, *, bf16_supported: bool | None = None) -> torch.dtype | None:
    """The autocast dtype of a run: None without ``amp``; on CUDA bf16 where supported (``bf16_supported``,
    default: asked of the GPU), else fp16. ValueError for ``amp`` on another device."""
    if not amp:
        return None
    if device.type != "cuda":
        raise ValueError(f"--amp: automatic mixed precision is for CUDA training; the train device is {device}")
    supported = torch.cuda.is_bf16_supported() if bf16_supported is None else bf16_supported
    return torch.bfloat16 if supported else torch.float16


class DeviceTraining:
    """How a run trains on ``device`` (see the module docstring); ``channels_last`` defaults to on for CUDA."""

    def __init__(self, device: torch.device | str = "cpu", *, amp: bool = False, channels_last: bool | None = None,
                 bf16_supported: bool | None = None) -> None:
        self.device = torch.device(device)
        on_gpu = self.device.type == "cuda"
        self.precision = MixedPrecision(self.device.type, amp_dtype_for(self.device, amp,
                                                                        bf16_supported=bf16_supported))
        self.channels_last = on_gpu if channels_last is None else bool(channels_last)
        self.pin_memory = self.non_blocking = on_gpu

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """``model`` on the device (in channels_last when chosen)."""
        return model.to(self.device, memory_format=self.memory_format)

    def to_device(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch (images, labels) on the device: non-blocking copies from pinned memory on CUDA, images in the
        model's memory format."""
        x, y = batch
        x = x.to(self.device, non_blocking=self.non_blocking, memory_format=self.memory_format)
        return x, y.to(self.device, non_blocking=self.non_blocking)

    def inputs(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[torch.Tensor]:
        """The images of ``batches`` on the device (for batch-norm re-estimation)."""
        for batch in batches:
            yield self.to_device(batch)[0]

    def prepare_streams(self, *streams: Any) -> None:
        """Pinned memory for the streams' batches when copies go to a GPU."""
        for stream in streams:
            stream.set_pin_memory(self.pin_memory)

    def describe(self) -> dict[str, Any]:
        """What the run uses: device, amp (off/bf16/fp16), channels_last, pinned memory, deterministic kernels."""
        return {"train_device": str(self.device), "amp": self.precision.name, "channels_last": self.channels_last,
                "pin_memory": self.pin_memory, "deterministic": torch.are_deterministic_algorithms_enabled()}


def configure_kernels(*, deterministic: bool) -> None:
    """Process-wide kernel choice (see the module docstring). Call it before the first CUDA operation."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC)
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True
