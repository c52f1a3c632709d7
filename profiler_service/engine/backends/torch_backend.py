"""PyTorch eager backends: ``torch-cpu`` and ``torch-cuda``.

The module runs as a deployed eager torch model would: eval mode under ``torch.inference_mode``, BatchNorm left
as its own eval-mode op (eager torch does not fold it into the conv). On CPU each run is timed by a host clock
around the synchronous call, with ``torch.set_num_threads(threads)`` in force (restored afterwards). On CUDA the
runs are timed with CUDA events recorded on the current stream after a synchronize, never by a host clock per
run; float16 is measured there (module and input cast to half).

Eager torch allocates every activation with the C allocator; glibc's default returns large freed blocks to the OS
(mmap, heap trimming), and then an inference page-faults through megabytes of fresh memory or not, depending on
the heap's history (measured: 0 to 3,500 faults per inference, one op 2.5x slower). ``torch-cpu`` therefore keeps
freed memory in the process (``mallopt``: no mmap for large blocks, no trimming), the usual tuning of a CPU
inference server; the option is recorded as ``malloc`` and, once applied, holds for the whole process.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from profiler_service.engine.backends.base import Backend, Runner, random_input

_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16}
# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
MALLOC_KEEP = "glibc-keep-freed"


def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (it has mallopt), else None."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - raises AttributeError on other C libraries
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory() -> None:
    """glibc: never trim the heap, never mmap large blocks (process-wide). ValueError if glibc refuses."""
    libc = _glibc()
    if libc is None:
        raise ValueError("malloc: the C library is not glibc; mallopt tuning is not possible here")
    if libc.mallopt(_M_MMAP_MAX, 0) != 1 or libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) != 1:
        raise ValueError("malloc: glibc refused the mallopt tuning")


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` for the block, the previous value restored after it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class TorchRunner(Runner):
    """An eval-mode module and its bound input on one torch device."""

    def __init__(self, module: nn.Module, x: np.ndarray, dtype: str, device: str, threads: int) -> None:
        self._device = torch.device(device)
        self._module = module.to(device=self._device, dtype=_TORCH_DTYPES[dtype])
        self._x_host = x
        self._x = torch.from_numpy(x).to(device=self._device, dtype=_TORCH_DTYPES[dtype])
        self._threads = threads

    @property
    def input(self) -> np.ndarray:
        return self._x_host

    def run(self) -> None:
        with torch_threads(self._threads), torch.inference_mode():
            self._module(self._x)
            if self._device.type == "cuda":
                torch.cuda.synchronize(self._device)

    def time_runs(self, count: int, before_each: Callable[[], None] | None = None) -> list[float]:
        with torch_threads(self._threads), torch.inference_mode():
            if self._device.type == "cuda":
                return self._time_cuda(count, before_each)
            return self._time_host(count, before_each)

    def _time_host(self, count: int, before_each: Callable[[], None] | None) -> list[float]:
        module, x, clock = self._module, self._x, time.perf_counter_ns
        times = []
        for _ in range(count):
            if before_each is not None:
                before_each()
            start = clock()
            module(x)
            times.append((clock() - start) / 1e6)
        return times

    def _time_cuda(self, count: int, before_each: Callable[[], None] | None) -> list[float]:
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(count)]
        torch.cuda.synchronize(self._device)
        for start, end in events:
            if before_each is not None:
                before_each()
            start.record()
            self._module(self._x)
            end.record()
        torch.cuda.synchronize(self._device)
        return [float(start.elapsed_time(end)) for start, end in events]

    def output(self) -> np.ndarray:
        with torch_threads(self._threads), torch.inference_mode():
            return self._module(self._x).float().cpu().numpy()

    def close(self) -> None:
        self._module = None  # type: ignore[assignment]
        self._x = None  # type: ignore[assignment]


class TorchBackend(Backend):
    """Eager PyTorch on ``device`` ("cpu" or "cuda")."""

    boundary_kind = "channel_scale"

    def __init__(self, device: str) -> None:
        if device not in ("cpu", "cuda"):
            raise ValueError(f"torch backend field 'device': must be 'cpu' or 'cuda', got {device!r}")
        self.device = device
        self.name = f"torch-{device}"
        self.dtypes = ("float32", "float16") if device == "cuda" else ("float32",)
        self.options = {"mode": "eager", "inference_mode": True, "batchnorm": "unfolded"}
        if device == "cpu":
            self.options["malloc"] = MALLOC_KEEP if _glibc() is not None else "default"
        else:
            self.options.update({"cudnn_benchmark": False, "timing": "cuda-events"})

    @property
    def available(self) -> bool:
        return self.device == "cpu" or torch.cuda.is_available()

    def environment(self, threads: int) -> dict[str, Any]:
        env: dict[str, Any] = {"backend": self.name, "runtime": "torch", "runtime_version": torch.__version__,
                               "options": dict(self.options), "threads": threads}
        if self.device == "cpu":
            env["mkldnn"] = torch.backends.mkldnn.is_available()
        elif self.available:
            env["cuda_version"] = torch.version.cuda
            env["cudnn_version"] = torch.backends.cudnn.version()
        return env

    def _prepare(self, module: nn.Module, input_shape: tuple[int, int, int, int], dtype: str, threads: int,
                 seed: int) -> Runner:
        if self.device == "cuda":
            torch.backends.cudnn.benchmark = bool(self.options["cudnn_benchmark"])
        elif self.options["malloc"] == MALLOC_KEEP:
            keep_freed_memory()
        return TorchRunner(module, random_input(input_shape, seed), dtype, self.device, threads)
