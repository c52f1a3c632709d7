"""The analytic memory estimate of an op against the tensors its built module really holds."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from nas_ops.blocks import build_op
from nas_ops.counting import activation_bytes, dtype_size, op_memory_bytes, weight_bytes
from nas_ops.spec import parse_spec

torch.set_num_threads(1)


class StorageRecorder(TorchDispatchMode):
    """Keeps every tensor an aten op returns alive, so that two distinct storages never share an address."""

    def __init__(self) -> None:
        super().__init__()
        self.outputs: list[torch.Tensor] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        result = func(*args, **(kwargs or {}))
        flat = result if isinstance(result, (tuple, list)) else (result,)
        self.outputs.extend(t for t in flat if isinstance(t, torch.Tensor))
        return result


def forward_bytes(spec_text: str, batch: int, dtype: torch.dtype) -> tuple[int, int]:
    """(bytes of the input and of every distinct storage the eval forward writes, bytes of float params + buffers)."""
    spec = parse_spec(spec_text)
    module = build_op(spec).eval().to(dtype)
    x = torch.randn(batch, *spec.input_shape, dtype=dtype)
    recorder = StorageRecorder()
    with torch.no_grad(), recorder:
        module(x)
    held = [t for t in [*module.parameters(), *module.buffers()] if t.is_floating_point()]
    weight_storages = {t.untyped_storage().data_ptr() for t in held}  # views of a weight (linear's t()) are no tensor
    storages = {x.untyped_storage().data_ptr(): x.untyped_storage().nbytes()}
    for t in recorder.outputs:
        if t.untyped_storage().data_ptr() not in weight_storages:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    weights = sum(t.numel() * t.element_size() for t in held)
    return sum(storages.values()), weights


@pytest.mark.parametrize("text", [
    "conv_r32x32_c3-16_k3_s2_relu6",
    "conv_r15x15_c4-8_k5_s1_none",
    "mbconv_r16x16_c8-16_k5_e6_s2_relu6",
    "mbconv_r14x14_c12-12_k3_e3_s1_hswish_skip",
    "mbconv_r9x9_c10-12_k7_e2.5_s2_relu",
    "mbconv_r16x16_c16-8_k3_e1_s1_relu6",
    "mix_r7x7_c32-64_relu6",
    "head_r7x7_c64-10",
    "zero_r16x16_c8-8_s1",
    "identity_r16x16_c8-8",
])
@pytest.mark.parametrize("batch", [1, 3])
def test_estimate_equals_the_tensors_of_the_built_module(text: str, batch: int) -> None:
    spec = parse_spec(text)
    real_activations, real_weights = forward_bytes(text, batch, torch.float32)
    assert activation_bytes(spec, batch, "float32") == real_activations
    assert weight_bytes(spec, "float32") == real_weights
    assert op_memory_bytes(spec, batch, "float32") == real_activations + real_weights


def test_float16_halves_the_estimate() -> None:
    spec = parse_spec("mbconv_r16x16_c8-16_k5_e6_s2_relu6")
    assert op_memory_bytes(spec, 2, "float16") * 2 == op_memory_bytes(spec, 2, "float32")
    assert dtype_size("float16") == 2
    with pytest.raises(ValueError, match="dtype: 'int8'"):
        dtype_size("int8")


def test_zero_and_identity_ops_cost_memory_even_without_multiply_adds() -> None:
    # the op of the issue: 0 multiply-adds, but two 2 GiB tensors at batch 1
    zero = parse_spec("zero_r512x512_c2048-2048_s1")
    assert activation_bytes(zero, 1, "float32") == 2 * 2048 * 512 * 512 * 4
    assert activation_bytes(parse_spec("identity_r512x512_c2048-2048"), 1, "float32") == 2048 * 512 * 512 * 4
