"""The device fingerprint and the measurement environment, and their hash.

A measurement's identity includes :func:`env_hash` of :func:`environment`: the host (CPU model, core count, GPU
and driver, OS), the runtime versions (python, numpy, torch, onnxruntime) and the backend's options and thread
count. Any change there gives another hash, so old numbers are never silently reused under a new runtime.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from latency_db.hashing import canonical_hash
from profiler_service.engine.backends.base import Backend

CPUINFO = Path("/proc/cpuinfo")
NVIDIA_DRIVER_VERSION = Path("/proc/driver/nvidia/version")


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (Linux), else what ``platform`` reports."""
    if CPUINFO.is_file():
        for line in CPUINFO.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def _nvidia_driver() -> str | None:
    """The NVIDIA kernel driver version (Linux), or None."""
    if not NVIDIA_DRIVER_VERSION.is_file():
        return None
    text = NVIDIA_DRIVER_VERSION.read_text(encoding="utf-8", errors="replace")
    for token in text.split():
        if token[:1].isdigit() and token.count(".") >= 1:
            return token
    return None


def gpu_info() -> dict[str, Any]:
    """GPU name, count, driver and CUDA runtime when torch sees a CUDA device; all None otherwise."""
    if not torch.cuda.is_available():
        return {"gpu": None, "gpu_count": 0, "gpu_driver": None, "cuda": None}
    return {"gpu": torch.cuda.get_device_name(0), "gpu_count": torch.cuda.device_count(),
            "gpu_driver": _nvidia_driver(), "cuda": torch.version.cuda}


def device_fingerprint() -> dict[str, Any]:
    """What identifies this host and its runtimes (JSON-ready)."""
    return {
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "machine": platform.machine(),
        **gpu_info(),
        "os": platform.system(),
        "os_release": platform.release(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
    }


def environment(backend: Backend, threads: int) -> dict[str, Any]:
    """The environment of a measurement: the device fingerprint, the backend (runtime, options) and threads."""
    return {"device": device_fingerprint(), "backend": backend.environment(threads), "threads": threads}


def env_hash(env: dict[str, Any]) -> str:
    """sha256 (64 hex characters) of the canonical JSON of ``env`` (sorted keys, no spaces); ValueError if ``env``
    holds something JSON cannot represent."""
    return canonical_hash(env)
