"""The registry of measurement backends: every name we know, and the ones this device can run.

Names: ``torch-cpu``, ``torch-cuda``, and ``ort-<short>`` for every ONNX Runtime execution provider
(``ort-cpu``, ``ort-cuda``, ``ort-tensorrt``, ``ort-openvino``, ``ort-xnnpack``, ...), except the providers that
are not compute devices (Azure). Only available backends are advertised.
"""

from __future__ import annotations

from functools import cache

import onnxruntime as ort

from profiler_service.engine.backends.base import Backend
from profiler_service.engine.backends.ort_backend import NON_COMPUTE_PROVIDERS, OrtBackend
from profiler_service.engine.backends.torch_backend import TorchBackend


@cache
def _known_backends() -> dict[str, Backend]:
    """One instance per known backend, with default options (built once)."""
    backends: list[Backend] = [TorchBackend("cpu"), TorchBackend("cuda")]
    providers = [p for p in ort.get_all_providers() if p not in NON_COMPUTE_PROVIDERS]
    # CPU and CUDA first, so that listings start with the common ones.
    providers.sort(key=lambda p: (p != "CPUExecutionProvider", p != "CUDAExecutionProvider", p))
    backends.extend(OrtBackend(provider) for provider in providers)
    return {backend.name: backend for backend in backends}


BACKEND_NAMES: tuple[str, ...] = tuple(_known_backends())


def available_backends() -> list[Backend]:
    """The backends this device can run, in the order of BACKEND_NAMES."""
    return [backend for backend in _known_backends().values() if backend.available]


def get_backend(name: str) -> Backend:
    """The backend called ``name``; ValueError (listing the available ones) if unknown or not available here."""
    available = ", ".join(b.name for b in available_backends())
    backend = _known_backends().get(name)
    if backend is None:
        raise ValueError(f"backend: unknown backend {name!r}; available on this device: {available}")
    if not backend.available:
        raise ValueError(f"backend: {name!r} is not available on this device; available: {available}")
    return backend
