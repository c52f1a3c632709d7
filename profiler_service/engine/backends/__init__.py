"""Measurement backends: PyTorch (CPU, CUDA) and ONNX Runtime with each of its execution providers."""

from profiler_service.engine.backends.base import DTYPES, Backend, Runner
from profiler_service.engine.backends.ort_backend import OrtBackend, provider_short_name
from profiler_service.engine.backends.registry import (
    BACKEND_NAMES,
    available_backends,
    get_backend,
)
from profiler_service.engine.backends.torch_backend import TorchBackend

__all__ = [
    "BACKEND_NAMES",
    "DTYPES",
    "Backend",
    "OrtBackend",
    "Runner",
    "TorchBackend",
    "available_backends",
    "get_backend",
    "provider_short_name",
]
