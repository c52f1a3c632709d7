"""ONNX export of single ops, whole architectures and arbitrary modules (legacy TorchScript exporter).

Every exported graph reads its input and produces its output with at least one real node, so ONNX Runtime can
time it: a ``zero`` op (whose output does not depend on the input values) is exported as
``ConstantOfShape(Shape(input))`` instead of a folded constant, and an output that would be the graph input itself
is routed through an ``Identity`` node.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch
from onnx import helper
from torch import nn

from nas_ops.arch import Architecture
from nas_ops.blocks import Zero, build_op
from nas_ops.network import build_network
from nas_ops.spec import OpSpec

# The legacy exporter stops at opset 20; our ops are only checked from 13 on.
MIN_OPSET, MAX_OPSET = 13, 20
INPUT_NAME, OUTPUT_NAME, BATCH_AXIS = "input", "output", "batch"

ExportSource = nn.Module | Architecture | OpSpec


def _resolve(source: ExportSource, input_shape: Sequence[int] | None) -> tuple[nn.Module, tuple[int, ...]]:
    """The module to export and the full (N, C, H, W) input shape."""
    if isinstance(source, OpSpec):
        module, expected = build_op(source), source.input_shape
    elif isinstance(source, Architecture):
        module, expected = build_network(source), (source.in_chs, *source.input_size)
    elif isinstance(source, nn.Module):
        if input_shape is None:
            raise ValueError("export field 'input_shape': required when exporting a plain nn.Module")
        module, expected = source, None
    else:
        raise ValueError(f"export: expected an nn.Module, Architecture or OpSpec, got {type(source).__name__}")
    if input_shape is None:
        return module, (1, *expected)
    shape = tuple(input_shape)
    if len(shape) != 4 or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
        raise ValueError(f"export field 'input_shape': expected 4 positive integers (N, C, H, W), got {input_shape!r}")
    if expected is not None and shape[1:] != tuple(expected):
        raise ValueError(f"export field 'input_shape': {shape} does not match the op's input (C, H, W) = {expected}")
    return module, shape


def _pin_batch(model: onnx.ModelProto, batch: int) -> None:
    """Give the graph input and outputs a fixed batch dimension again."""
    for value in (*model.graph.input, *model.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_value = batch


def _route_passthrough_outputs(model: onnx.ModelProto) -> None:
    """An output that IS a graph input gets an Identity node, so the graph has a real node producing it."""
    inputs = {value.name for value in model.graph.input}
    for value in model.graph.output:
        if value.name in inputs:
            produced = f"{value.name}_identity"
            model.graph.node.append(helper.make_node("Identity", [value.name], [produced]))
            value.name = produced


def _export_model(module: nn.Module, shape: tuple[int, ...], opset: int, dynamic_batch: bool) -> onnx.ModelProto:
    # A zero op ignores its input's values: with static shapes the tracer folds it to a constant and drops the
    # input. With a symbolic batch it becomes ConstantOfShape(Shape(input)); the batch is pinned again afterwards.
    symbolic_batch = dynamic_batch or any(isinstance(m, Zero) for m in module.modules())
    dynamic_axes = {INPUT_NAME: {0: BATCH_AXIS}, OUTPUT_NAME: {0: BATCH_AXIS}} if symbolic_batch else None
    buffer = io.BytesIO()
    was_training = module.training
    module.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(
                module, (torch.randn(*shape),), buffer, opset_version=opset, dynamo=False,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=dynamic_axes,
            )
    finally:
        module.train(was_training)
    model = onnx.load_from_string(buffer.getvalue())
    if symbolic_batch and not dynamic_batch:
        _pin_batch(model, shape[0])
    _route_passthrough_outputs(model)
    if not model.graph.input or not model.graph.node:
        raise ValueError("export: the module's output does not depend on its input; the ONNX graph would be empty")
    return model


def onnx_bytes(
    module_or_arch: ExportSource,
    *,
    input_shape: Sequence[int] | None = None,
    opset: int = 17,
    dynamic_batch: bool = False,
) -> bytes:
    """Serialized ONNX model of an op spec, an architecture or a module, exported in eval mode.

    ``input_shape`` is (N, C, H, W); for an OpSpec or Architecture it defaults to batch 1 at the spec's input
    and must match it when given. The batch is fixed unless ``dynamic_batch`` (then axis 0 is named ``batch``).
    The graph's input is named ``input`` and its output ``output``. Specs and architectures get fresh random
    weights; a module keeps its own and its train/eval mode is restored afterwards.
    """
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"export field 'opset': must be an integer in [{MIN_OPSET}, {MAX_OPSET}], got {opset!r}")
    module, shape = _resolve(module_or_arch, input_shape)
    return _export_model(module, shape, opset, dynamic_batch).SerializeToString()


def export_onnx(
    module_or_arch: ExportSource,
    path: str | Path,
    *,
    input_shape: Sequence[int] | None = None,
    opset: int = 17,
    dynamic_batch: bool = False,
) -> Path:
    """Write the ONNX model of ``module_or_arch`` to ``path`` (see :func:`onnx_bytes`) and return the path."""
    data = onnx_bytes(module_or_arch, input_shape=input_shape, opset=opset, dynamic_batch=dynamic_batch)
    target = Path(path)
    target.write_bytes(data)
    return target
