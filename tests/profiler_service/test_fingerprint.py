"""Device fingerprint, measurement environment and its hash: stable for the same environment, changed by any change."""

from __future__ import annotations

import os
import platform
import re

import onnxruntime as ort
import pytest
import torch

from profiler_service.engine.backends import OrtBackend, get_backend
from profiler_service.engine.fingerprint import device_fingerprint, env_hash, environment


def test_fingerprint_describes_this_host() -> None:
    fp = device_fingerprint()
    assert fp["cpu_cores"] == os.cpu_count() and fp["cpu_model"]
    assert fp["torch"] == torch.__version__ and fp["onnxruntime"] == ort.__version__
    assert fp["python"] == platform.python_version() and fp["os"] == platform.system()
    if torch.cuda.is_available():
        assert fp["gpu"] == torch.cuda.get_device_name(0)
    else:
        assert fp["gpu"] is None and fp["gpu_count"] == 0


def test_environment_is_fingerprint_backend_and_threads() -> None:
    env = environment(get_backend("ort-cpu"), 3)
    assert env["device"] == device_fingerprint() and env["threads"] == 3
    assert env["backend"]["options"]["provider"] == "CPUExecutionProvider" and env["backend"]["threads"] == 3


def test_hash_is_stable_hex_and_independent_of_key_order() -> None:
    env = environment(get_backend("torch-cpu"), 1)
    first = env_hash(env)
    assert re.fullmatch(r"[0-9a-f]{64}", first)
    assert env_hash(environment(get_backend("torch-cpu"), 1)) == first
    assert env_hash(dict(reversed(list(env.items())))) == first


def test_threads_backend_and_options_change_the_hash() -> None:
    ort_cpu = get_backend("ort-cpu")
    base = env_hash(environment(ort_cpu, 1))
    assert env_hash(environment(ort_cpu, 2)) != base
    assert env_hash(environment(get_backend("torch-cpu"), 1)) != base
    for options in ({"graph_optimization": "extended"}, {"execution_mode": "parallel"}, {"inter_op_threads": 2},
                    {"provider_options": {"arena_extend_strategy": "kSameAsRequested"}}):
        assert env_hash(environment(OrtBackend("CPUExecutionProvider", **options), 1)) != base, options


@pytest.mark.parametrize(("module", "attribute"), [(ort, "__version__"), (torch, "__version__")])
def test_a_changed_runtime_version_changes_the_hash(monkeypatch: pytest.MonkeyPatch, module: object,
                                                    attribute: str) -> None:
    backend = get_backend("ort-cpu")
    before = env_hash(environment(backend, 1))
    monkeypatch.setattr(module, attribute, "999.0.0")
    after = env_hash(environment(backend, 1))
    assert after != before


def test_unhashable_environment_is_refused() -> None:
    with pytest.raises(ValueError, match="JSON"):
        env_hash({"bad": object()})
    with pytest.raises(ValueError, match="JSON"):
        env_hash({"nan": float("nan")})
