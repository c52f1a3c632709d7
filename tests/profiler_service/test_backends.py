"""Backends: the registry, option checks, runners, numerics of ORT against torch, CUDA (skipped without CUDA)."""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from nas_ops.blocks import build_op
from nas_ops.spec import parse_spec
from profiler_service.engine.backends import (
    BACKEND_NAMES,
    OrtBackend,
    TorchBackend,
    available_backends,
    get_backend,
    provider_short_name,
)
from profiler_service.engine.backends.export_cache import ExportCache
from profiler_service.engine.protocol import ProtocolParams, Stats, measure_op_round

MBCONV = parse_spec("mbconv_r16x16_c8-8_k3_e3_s1_relu6_skip")
NUMERICS_SPECS = ["mbconv_r16x16_c8-16_k5_e6_s2_relu6", "conv_r16x16_c3-8_k3_s2_relu6", "head_r4x4_c16-10",
                  "mix_r4x4_c16-32_hswish", "mbconv_r8x8_c16-16_k7_e3_s1_relu_skip"]
FAST = ProtocolParams.fast().model_copy(update={"affinity": False})
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# --- registry ------------------------------------------------------------------------------------------------
def test_known_names_cover_torch_and_every_compute_provider() -> None:
    for name in ("torch-cpu", "torch-cuda", "ort-cpu", "ort-cuda", "ort-tensorrt", "ort-openvino", "ort-xnnpack"):
        assert name in BACKEND_NAMES
    assert "ort-azure" not in BACKEND_NAMES
    assert len(set(BACKEND_NAMES)) == len(BACKEND_NAMES)


def test_available_backends_are_the_runnable_ones() -> None:
    names = [b.name for b in available_backends()]
    assert names[:1] == ["torch-cpu"] and "ort-cpu" in names
    assert set(names) <= set(BACKEND_NAMES)
    for provider in ort.get_available_providers():
        if provider != "AzureExecutionProvider":
            assert f"ort-{provider_short_name(provider)}" in names
    assert ("torch-cuda" in names) == torch.cuda.is_available()
    assert get_backend("ort-cpu").available and get_backend("torch-cpu").available


def test_unknown_backend_message_lists_the_available_ones() -> None:
    with pytest.raises(ValueError, match="unknown backend 'ort-quantum'") as info:
        get_backend("ort-quantum")
    assert "torch-cpu" in str(info.value) and "ort-cpu" in str(info.value)


def test_known_but_unavailable_backend_is_refused() -> None:
    missing = [name for name in BACKEND_NAMES if name not in {b.name for b in available_backends()}]
    if not missing:
        pytest.skip("every known backend is available here")
    with pytest.raises(ValueError, match="not available on this device; available: torch-cpu") as info:
        get_backend(missing[0])
    assert missing[0] in str(info.value)


@pytest.mark.parametrize(("provider", "short"), [
    ("TensorrtExecutionProvider", "tensorrt"), ("CUDAExecutionProvider", "cuda"), ("CPUExecutionProvider", "cpu"),
    ("OpenVINOExecutionProvider", "openvino"), ("XnnpackExecutionProvider", "xnnpack"),
])
def test_provider_short_names(provider: str, short: str) -> None:
    assert provider_short_name(provider) == short


def test_bad_provider_and_options_are_refused_with_their_name() -> None:
    with pytest.raises(ValueError, match="not an ONNX Runtime execution provider"):
        provider_short_name("CPU")
    with pytest.raises(ValueError, match="not a compute provider"):
        OrtBackend("AzureExecutionProvider")
    with pytest.raises(ValueError, match="'graph_optimization'"):
        OrtBackend("CPUExecutionProvider", graph_optimization="max")
    with pytest.raises(ValueError, match="'execution_mode'"):
        OrtBackend("CPUExecutionProvider", execution_mode="async")
    with pytest.raises(ValueError, match="'inter_op_threads'"):
        OrtBackend("CPUExecutionProvider", inter_op_threads=0)
    with pytest.raises(ValueError, match="'opset'"):
        OrtBackend("CPUExecutionProvider", opset=9)
    with pytest.raises(ValueError, match="'device'"):
        TorchBackend("tpu")


def test_environment_holds_runtime_version_options_and_threads() -> None:
    env = get_backend("ort-cpu").environment(2)
    assert env["runtime_version"] == ort.__version__ and env["threads"] == 2
    assert env["options"]["graph_optimization"] == "all" and env["options"]["provider"] == "CPUExecutionProvider"
    basic = OrtBackend("CPUExecutionProvider", graph_optimization="basic").environment(2)
    assert basic["options"]["graph_optimization"] == "basic" and basic != env
    torch_env = get_backend("torch-cpu").environment(1)
    assert torch_env["runtime_version"] == torch.__version__ and torch_env["options"]["batchnorm"] == "unfolded"


@pytest.mark.parametrize("name", ["torch-cpu", "ort-cpu"])
def test_prepare_rejects_bad_arguments_naming_them(name: str) -> None:
    backend = get_backend(name)
    module = build_op(MBCONV)
    with pytest.raises(ValueError, match="input_shape"):
        backend.prepare(module, (8, 16, 16), "float32", 1)
    with pytest.raises(ValueError, match="dtype: 'float16' is not measured on"):
        backend.prepare(module, (1, 8, 16, 16), "float16", 1)
    with pytest.raises(ValueError, match="threads"):
        backend.prepare(module, (1, 8, 16, 16), "float32", 0)


# --- runners -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["torch-cpu", "ort-cpu"])
def test_runner_times_each_run_and_calls_the_hook_untimed(name: str) -> None:
    calls = []
    with get_backend(name).prepare(build_op(MBCONV), (2, 8, 16, 16), "float32", 1, seed=3) as runner:
        times = runner.time_runs(7, lambda: calls.append(1))
        assert runner.input.shape == (2, 8, 16, 16)
    assert len(times) == 7 and len(calls) == 7
    assert all(math.isfinite(t) and t > 0 for t in times)


def test_torch_runner_restores_the_thread_count() -> None:
    before = torch.get_num_threads()
    with get_backend("torch-cpu").prepare(build_op(MBCONV), (1, 8, 16, 16), "float32", 1) as runner:
        runner.time_runs(2)
    assert torch.get_num_threads() == before


def check_measured(stats: Stats) -> None:
    """Every field present, finite and >= 0 (calibrated statistics are floored at 0), in order, >= 3 samples."""
    values = stats.as_dict()
    assert set(values) == {"median_ms", "mean_ms", "std_ms", "min_ms", "p10_ms", "p90_ms", "iqr_ms", "samples"}
    assert all(math.isfinite(v) and v >= 0 for v in values.values()), values
    assert stats.min_ms <= stats.p10_ms <= stats.median_ms <= stats.p90_ms and stats.samples >= 3, values


@pytest.mark.parametrize("name", ["torch-cpu", "ort-cpu"])
def test_measure_op_gives_finite_non_negative_stats(name: str) -> None:
    check_measured(measure_op_round(MBCONV, get_backend(name), 1, "float32", 1, FAST).calibrated())


@pytest.mark.parametrize("text", NUMERICS_SPECS)
def test_ort_output_equals_torch_output(text: str) -> None:
    spec = parse_spec(text)
    torch.manual_seed(0)
    module = build_op(spec).eval()
    with torch.no_grad():  # non-trivial BN statistics, so that ORT's BN folding is exercised
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    shape = (2, *spec.input_shape)
    with get_backend("ort-cpu").prepare(module, shape, "float32", 1, seed=5) as ort_runner:
        ort_out = ort_runner.output()
        x = ort_runner.input
    with get_backend("torch-cpu").prepare(module, shape, "float32", 1, seed=5) as torch_runner:
        torch_out = torch_runner.output()
        assert np.array_equal(torch_runner.input, x)
    assert ort_out.shape == torch_out.shape == (2, *spec.output_shape)
    np.testing.assert_allclose(ort_out, torch_out, rtol=1e-4, atol=1e-4)


def test_torch_cpu_keeps_freed_memory_option_recorded() -> None:
    backend = get_backend("torch-cpu")
    assert backend.options["malloc"] in ("glibc-keep-freed", "default")
    assert backend.environment(1)["options"]["malloc"] == backend.options["malloc"]


# --- CUDA (skipped without a CUDA device) ----------------------------------------------------------------------
@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_torch_cuda_times_with_events(dtype: str) -> None:
    backend = get_backend("torch-cuda")
    assert backend.options["timing"] == "cuda-events"
    check_measured(measure_op_round(MBCONV, backend, 4, dtype, 1, FAST).calibrated())


@pytest.mark.cuda
@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers() or not torch.cuda.is_available(),
                    reason="needs onnxruntime-gpu and a CUDA device")
def test_ort_cuda_matches_torch_and_measures() -> None:
    backend = get_backend("ort-cuda")
    module = build_op(MBCONV).eval()
    with backend.prepare(module, (2, 8, 16, 16), "float32", 1, seed=1) as runner:
        out = runner.output()
        x = runner.input
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-3, atol=1e-3)
    check_measured(measure_op_round(MBCONV, backend, 1, "float32", 1, FAST).calibrated())


def test_ort_exports_an_identical_module_once_and_a_different_one_again() -> None:
    """The rounds of a job and the anchors build the same module from a spec again: it is exported once."""
    backend = OrtBackend("CPUExecutionProvider")

    def module(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())

    outputs = []
    for seed in (0, 0, 1, 0):
        with backend.prepare(module(seed), (1, 3, 8, 8), "float32", 1) as runner:
            outputs.append(runner.output())
    assert backend.export_cache.exports == 2 and len(backend.export_cache) == 2
    assert np.array_equal(outputs[0], outputs[1]) and not np.array_equal(outputs[0], outputs[2])
    with backend.prepare(module(0), (1, 3, 10, 10), "float32", 1) as runner:  # another input shape: another model
        assert runner.output().shape == (1, 4, 8, 8)
    assert backend.export_cache.exports == 3
    assert OrtBackend("CPUExecutionProvider").environment(1) == backend.environment(1)  # the cache is no option


def test_export_cache_drops_the_least_recently_used_model_beyond_its_bytes() -> None:
    cache = ExportCache(max_bytes=10)
    modules = [nn.Linear(1, 1) for _ in range(3)]
    for module, model in zip(modules, (b"aaaa", b"bbbb", b"cccc")):
        cache.model(module, (1, 1), 17, lambda model=model: model)
    assert len(cache) == 2 and cache.exports == 3
    assert cache.model(modules[2], (1, 1), 17, lambda: b"new!") == b"cccc"  # kept
    assert cache.model(modules[0], (1, 1), 17, lambda: b"again") == b"again"  # dropped first, exported again
    assert cache.model(nn.Linear(1, 1), (1, 1), 17, lambda: b"x" * 11) == b"x" * 11 and len(cache) == 2  # too big
    with pytest.raises(ValueError, match="max_bytes"):
        ExportCache(-1)
