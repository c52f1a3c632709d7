"""ONNX Runtime backends: one class, parametrized by the execution provider and the session options.

The module is exported to ONNX (eval mode, :func:`nas_ops.export.onnx_bytes`) and run in an InferenceSession with
the backend's options; with the default ``graph_optimization="all"`` ORT folds BatchNorm into the conv and applies
its layout transforms, as a deployed ORT model would. Input and output are bound once with IOBinding (on the
provider's device for CUDA and TensorRT), so a timed run is one ``run_with_iobinding`` call: no allocation of the
output and no host/device copy in the timed region. ORT synchronizes the provider's stream before a run returns,
so the host clock around one run measures the latency a caller sees, on every provider. Exports are kept in
memory (:mod:`profiler_service.engine.backends.export_cache`): the rounds of a job and the anchors' networks export
each module once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import onnxruntime as ort
from torch import nn

from nas_ops.export import MAX_OPSET, MIN_OPSET, onnx_bytes
from profiler_service.engine.backends.base import Backend, Runner, random_input
from profiler_service.engine.backends.export_cache import ExportCache

PROVIDER_SUFFIX = "ExecutionProvider"
# Providers that are not compute devices: never advertised.
NON_COMPUTE_PROVIDERS = frozenset({"AzureExecutionProvider"})
# Providers whose tensors live in CUDA device memory (the rest take host memory).
CUDA_MEMORY_PROVIDERS = frozenset({"CUDAExecutionProvider", "TensorrtExecutionProvider"})

GRAPH_OPTIMIZATION_LEVELS: dict[str, ort.GraphOptimizationLevel] = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
EXECUTION_MODES: dict[str, ort.ExecutionMode] = {
    "sequential": ort.ExecutionMode.ORT_SEQUENTIAL,
    "parallel": ort.ExecutionMode.ORT_PARALLEL,
}


def provider_short_name(provider: str) -> str:
    """``TensorrtExecutionProvider`` -> ``tensorrt`` (the backend is then called ``ort-tensorrt``)."""
    if not provider.endswith(PROVIDER_SUFFIX) or provider == PROVIDER_SUFFIX:
        raise ValueError(f"provider: {provider!r} is not an ONNX Runtime execution provider name")
    return provider[: -len(PROVIDER_SUFFIX)].lower()


class OrtRunner(Runner):
    """An InferenceSession with its input and output bound once (IOBinding)."""

    def __init__(self, session: ort.InferenceSession, x: np.ndarray, device: str) -> None:
        self._session = session
        self._x = x
        input_name = session.get_inputs()[0].name
        output_name = session.get_outputs()[0].name
        # One plain run gives the output shape and element type (and is the first warm-up run).
        y = session.run([output_name], {input_name: x})[0]
        self._binding = session.io_binding()
        self._x_value = ort.OrtValue.ortvalue_from_numpy(x, device, 0)
        self._y_value = ort.OrtValue.ortvalue_from_shape_and_type(list(y.shape), y.dtype, device, 0)
        self._binding.bind_ortvalue_input(input_name, self._x_value)
        self._binding.bind_ortvalue_output(output_name, self._y_value)

    @property
    def input(self) -> np.ndarray:
        return self._x

    def run(self) -> None:
        self._session.run_with_iobinding(self._binding)

    def time_runs(self, count: int, before_each: Callable[[], None] | None = None) -> list[float]:
        run, binding, clock = self._session.run_with_iobinding, self._binding, time.perf_counter_ns
        times = []
        for _ in range(count):
            if before_each is not None:
                before_each()
            start = clock()
            run(binding)
            times.append((clock() - start) / 1e6)
        return times

    def output(self) -> np.ndarray:
        self.run()
        return np.asarray(self._y_value.numpy(), dtype=np.float32)

    def close(self) -> None:
        self._binding = None  # type: ignore[assignment]
        self._session = None  # type: ignore[assignment]


class OrtBackend(Backend):
    """ONNX Runtime with one execution provider and fixed session options.

    Options: ``graph_optimization`` (disable | basic | extended | all), ``execution_mode`` (sequential |
    parallel), ``inter_op_threads`` (>= 1), ``provider_options`` (dict passed to the provider), ``opset`` of the
    export. The intra-op thread count is the measurement's ``threads``.
    """

    def __init__(self, provider: str, *, graph_optimization: str = "all", execution_mode: str = "sequential",
                 inter_op_threads: int = 1, provider_options: dict[str, Any] | None = None, opset: int = 17) -> None:
        if provider in NON_COMPUTE_PROVIDERS:
            raise ValueError(f"provider: {provider} is not a compute provider")
        self.provider = provider
        self.name = f"ort-{provider_short_name(provider)}"
        if graph_optimization not in GRAPH_OPTIMIZATION_LEVELS:
            raise ValueError(f"ort option 'graph_optimization': must be one of "
                             f"{', '.join(GRAPH_OPTIMIZATION_LEVELS)}, got {graph_optimization!r}")
        if execution_mode not in EXECUTION_MODES:
            raise ValueError(f"ort option 'execution_mode': must be one of {', '.join(EXECUTION_MODES)}, "
                             f"got {execution_mode!r}")
        if isinstance(inter_op_threads, bool) or not isinstance(inter_op_threads, int) or inter_op_threads < 1:
            raise ValueError(f"ort option 'inter_op_threads': must be an integer >= 1, got {inter_op_threads!r}")
        if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
            raise ValueError(f"ort option 'opset': must be an integer in [{MIN_OPSET}, {MAX_OPSET}], got {opset!r}")
        if provider_options is not None and not isinstance(provider_options, dict):
            raise ValueError(f"ort option 'provider_options': must be a dict, got {type(provider_options).__name__}")
        self.device = "cuda" if provider in CUDA_MEMORY_PROVIDERS else "cpu"
        self.options: dict[str, Any] = {
            "provider": provider,
            "provider_options": dict(provider_options or {}),
            "graph_optimization": graph_optimization,
            "execution_mode": execution_mode,
            "inter_op_threads": inter_op_threads,
            "opset": opset,
            "io_binding": self.device,
        }
        self.export_cache = ExportCache()  # not an option: it changes no measured number, only how often we export

    @property
    def available(self) -> bool:
        return self.provider in ort.get_available_providers()

    def environment(self, threads: int) -> dict[str, Any]:
        return {"backend": self.name, "runtime": "onnxruntime", "runtime_version": ort.__version__,
                "options": dict(self.options), "threads": threads}

    def session_options(self, threads: int) -> ort.SessionOptions:
        """The SessionOptions of this backend at ``threads`` intra-op threads."""
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = self.options["inter_op_threads"]
        options.graph_optimization_level = GRAPH_OPTIMIZATION_LEVELS[self.options["graph_optimization"]]
        options.execution_mode = EXECUTION_MODES[self.options["execution_mode"]]
        options.log_severity_level = 3  # errors only
        return options

    def create_session(self, model: bytes, threads: int) -> ort.InferenceSession:
        """An InferenceSession of a serialized model on this provider; ValueError if ORT fell back to another."""
        providers = [(self.provider, self.options["provider_options"])]
        session = ort.InferenceSession(model, self.session_options(threads), providers=providers)
        if session.get_providers()[0] != self.provider:
            raise ValueError(f"backend {self.name}: ONNX Runtime did not load {self.provider} "
                             f"(session providers: {', '.join(session.get_providers())})")
        return session

    def _prepare(self, module: nn.Module, input_shape: tuple[int, int, int, int], dtype: str, threads: int,
                 seed: int) -> Runner:
        opset = self.options["opset"]
        model = self.export_cache.model(module, input_shape, opset,
                                        lambda: onnx_bytes(module, input_shape=input_shape, opset=opset))
        return OrtRunner(self.create_session(model, threads), random_input(input_shape, seed), self.device)
