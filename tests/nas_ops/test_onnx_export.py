"""ONNX export: a valid graph for every op kind and whole networks, numerically equal to torch under ORT."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from nas_ops.blocks import build_op
from nas_ops.export import export_onnx, onnx_bytes
from nas_ops.network import build_network
from nas_ops.space import SPACES
from nas_ops.spec import OpSpec, parse_spec

torch.set_num_threads(1)

OPS = [
    "conv_r16x16_c3-8_k3_s2_relu6",
    "conv_r9x9_c4-6_k5_s1_hswish",
    "mbconv_r8x8_c8-8_k3_e6_s1_relu6_skip",
    "mbconv_r8x8_c8-12_k5_e3_s2_relu6",
    "mbconv_r7x7_c8-8_k7_e1_s1_relu",
    "mix_r4x4_c12-32_relu6",
    "head_r4x4_c32-10",
    "zero_r8x8_c8-8_s1",
    "identity_r8x8_c8-8",
]


def _session(data: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _check_matches_torch(data: bytes, module: nn.Module, shape: tuple[int, ...]) -> np.ndarray:
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["input"]
    assert len(model.graph.node) >= 1
    x = torch.randn(*shape)
    out = _session(data).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        expected = module.eval()(x).numpy()
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=1e-4)
    return out


def _randomize_bn(module: nn.Module) -> None:
    """Non-trivial BN statistics, so folding BN into the conv is really checked."""
    generator = torch.Generator().manual_seed(0)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=generator) + 0.5)


@pytest.mark.parametrize("text", OPS)
def test_every_op_kind_exports_and_matches_torch(text: str) -> None:
    spec = parse_spec(text)
    module = build_op(spec)
    _randomize_bn(module)
    data = onnx_bytes(module, input_shape=(2, *spec.input_shape))
    out = _check_matches_torch(data, module, (2, *spec.input_shape))
    assert out.shape == (2, *spec.output_shape)


@pytest.mark.parametrize("text", ["zero_r8x8_c8-8_s1", "identity_r8x8_c8-8"])
def test_zero_and_identity_graphs_read_their_input(text: str) -> None:
    spec = parse_spec(text)
    model = onnx.load_from_string(onnx_bytes(spec))
    dims = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [1, *spec.output_shape]  # fixed batch, right shape
    assert model.graph.output[0].name not in {i.name for i in model.graph.input}
    x = np.random.default_rng(0).standard_normal((1, *spec.input_shape)).astype(np.float32)
    out = _session(model.SerializeToString()).run(None, {"input": x})[0]
    np.testing.assert_array_equal(out, np.zeros_like(x) if spec.kind == "zero" else x)


def test_spec_exports_with_default_batch_one() -> None:
    spec = parse_spec("mbconv_r8x8_c8-8_k3_e6_s1_relu6_skip")
    model = onnx.load_from_string(onnx_bytes(spec))
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 8, 8, 8]


def test_whole_network_with_identity_cells(tmp_path: Path) -> None:
    space = SPACES["micro-16"]
    arch = space.architecture([1, space.cells()[1].zero_index, 4])
    network = build_network(arch)
    _randomize_bn(network)
    path = export_onnx(network, tmp_path / "net.onnx", input_shape=(1, 3, 16, 16))
    assert network.training  # exported in eval mode, then the caller's train mode is restored
    assert path == tmp_path / "net.onnx" and path.stat().st_size > 0
    _check_matches_torch(path.read_bytes(), network, (1, 3, 16, 16))


def test_an_output_that_is_the_graph_input_gets_a_real_node() -> None:
    """Whatever the exporter does with a pass-through graph, the written graph has a node producing the output."""
    from onnx import TensorProto, helper

    from nas_ops.export import _route_passthrough_outputs

    value = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 2])
    model = helper.make_model(helper.make_graph([], "passthrough", [value], [value]))
    _route_passthrough_outputs(model)
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["Identity"]
    x = np.arange(2, dtype=np.float32).reshape(1, 2)
    np.testing.assert_array_equal(_session(model.SerializeToString()).run(None, {"input": x})[0], x)


def test_architecture_export_and_dynamic_batch() -> None:
    arch = SPACES["tiny-32"].architecture([0, 6, 1, 2, 3, 4, 5])
    data = onnx_bytes(arch, dynamic_batch=True)
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model, full_check=True)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    out = _session(data).run(None, {"input": np.zeros((3, 3, 32, 32), np.float32)})[0]
    assert out.shape == (3, 10)


def test_network_with_a_zero_block_keeps_its_input() -> None:
    arch = SPACES["micro-16"].architecture([0, 0, 0])
    blocks = list(arch.blocks)
    blocks[2] = OpSpec("zero", 8, 8, 16, 16)
    network = build_network(type(arch)(stem=arch.stem, blocks=blocks, head=arch.head))
    _check_matches_torch(onnx_bytes(network, input_shape=(2, 3, 16, 16)), network, (2, 3, 16, 16))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_shape": (1, 4, 8, 8)}, "does not match the op's input"),
        ({"input_shape": (1, 8, 8)}, "expected 4 positive integers"),
        ({"input_shape": (0, 8, 8, 8)}, "expected 4 positive integers"),
        ({"opset": 9}, "field 'opset'"),
        ({"opset": 21}, "field 'opset'"),
    ],
)
def test_bad_export_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        onnx_bytes(parse_spec("identity_r8x8_c8-8"), **kwargs)


def test_plain_module_needs_an_input_shape() -> None:
    with pytest.raises(ValueError, match=re.escape("field 'input_shape': required")):
        onnx_bytes(nn.ReLU())
    with pytest.raises(ValueError, match="does not depend on its input"):
        onnx_bytes(_Constant(), input_shape=(1, 2, 2, 2))


class _Constant(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.ones(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value * 2
