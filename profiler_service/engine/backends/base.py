"""What every measurement backend provides: a :class:`Backend` that prepares a module, and the :class:`Runner` it
returns, which runs and times that module on one bound random input."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Self

import numpy as np
from torch import nn

DTYPES: tuple[str, ...] = ("float32", "float16")
MAX_THREADS = 256


class Runner(ABC):
    """One module prepared on one backend with a random input bound to it.

    ``time_runs`` is the only timed path: each run is timed on its own (a host clock around a synchronous call on
    CPU, CUDA events on CUDA devices), and ``before_each`` (e.g. a cache flush) runs untimed before every run.
    """

    @abstractmethod
    def run(self) -> None:
        """One inference on the bound input (synchronous: it returns when the result is ready)."""

    @abstractmethod
    def time_runs(self, count: int, before_each: Callable[[], None] | None = None) -> list[float]:
        """Run ``count`` inferences and return each one's latency in milliseconds."""

    def time_group(self, count: int, runs_per_timing: int,
                   before_each: Callable[[], None] | None = None) -> list[float]:
        """``count`` timings, each of ``runs_per_timing`` consecutive runs (``before_each`` once before each group,
        untimed); returns each timing's latency per run, in ms. For runs too short to time one by one: the host
        clock around synchronous runs (a backend may time groups its own way)."""
        times = []
        for _ in range(count):
            if before_each is not None:
                before_each()
            start = time.perf_counter_ns()
            for _ in range(runs_per_timing):
                self.run()
            times.append((time.perf_counter_ns() - start) / 1e6 / runs_per_timing)
        return times

    @property
    def timer_resolution_ms(self) -> float:
        """The resolution of the clock that times the runs, in ms (here the host's ``perf_counter``)."""
        return time.get_clock_info("perf_counter").resolution * 1e3

    @abstractmethod
    def output(self) -> np.ndarray:
        """Run once and return the output as a float32 numpy array (for numerical checks)."""

    @property
    @abstractmethod
    def input(self) -> np.ndarray:
        """The bound input, as a float32 numpy array."""

    def close(self) -> None:
        """Release the session / device memory (idempotent)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class Backend(ABC):
    """A runtime on this device (e.g. ONNX Runtime with one execution provider) that can time torch modules.

    ``options`` are the settings that change its timings (they enter :meth:`environment` and so the environment
    hash); ``dtypes`` are the input/compute dtypes it measures; ``boundary_kind`` names the cheap op that the
    protocol's calibration puts around an op (see :mod:`profiler_service.engine.calibration`).
    """

    name: str
    options: dict[str, Any]
    dtypes: tuple[str, ...] = ("float32",)
    boundary_kind: str = "depthwise_conv"

    @property
    @abstractmethod
    def available(self) -> bool:
        """Whether this runtime and its device are present here."""

    @abstractmethod
    def environment(self, threads: int) -> dict[str, Any]:
        """Runtime name and version, options and thread count: what identifies this backend's numbers."""

    @abstractmethod
    def _prepare(self, module: nn.Module, input_shape: tuple[int, int, int, int], dtype: str, threads: int,
                 seed: int) -> Runner:
        """Build the runner of an eval-mode ``module`` (arguments already checked)."""

    def prepare(self, module: nn.Module, input_shape: Sequence[int], dtype: str, threads: int, *,
                seed: int = 0) -> Runner:
        """A :class:`Runner` timing ``module`` (put in eval mode) on a random input of ``input_shape`` (N, C, H, W).

        Raises ValueError naming the bad argument (shape, dtype, threads) or when the backend is not available.
        """
        if not self.available:
            raise ValueError(f"backend {self.name!r} is not available on this device")
        shape = check_input_shape(input_shape)
        check_dtype(self, dtype)
        check_threads(threads)
        return self._prepare(module.eval(), shape, dtype, threads, seed)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} available={self.available}>"


def check_input_shape(input_shape: Sequence[int]) -> tuple[int, int, int, int]:
    """(N, C, H, W) of positive integers; ValueError naming ``input_shape`` otherwise."""
    shape = tuple(input_shape)
    if len(shape) != 4 or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
        raise ValueError(f"input_shape: expected 4 positive integers (N, C, H, W), got {input_shape!r}")
    return shape  # type: ignore[return-value]


def check_dtype(backend: Backend, dtype: str) -> None:
    """``dtype`` must be one the backend measures."""
    if dtype not in backend.dtypes:
        raise ValueError(f"dtype: {dtype!r} is not measured on {backend.name}; supported: {', '.join(backend.dtypes)}")


def check_threads(threads: int) -> None:
    """A thread count in [1, MAX_THREADS]."""
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
        raise ValueError(f"threads: must be an integer in [1, {MAX_THREADS}], got {threads!r}")


def random_input(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Standard normal float32 input, reproducible from ``seed``."""
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
