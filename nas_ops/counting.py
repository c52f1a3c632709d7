"""Parameter and FLOP counts of op specs and architectures, computed analytically (no module is built).

FLOPs follow the ProxylessNAS paper's convention: multiply-adds (MACs) of convolutions and linear layers only.

- conv: ``Hout * Wout * Cout * (Cin / groups) * k * k``
- linear: ``in_features * out_features``
- batch norm, activations, pooling, the shortcut add and zero/identity ops: not counted.

Parameters are everything the torch module holds as a parameter: conv weights (no conv bias: every conv is
followed by BN), the BN affine weight and bias (2 per channel; running statistics are buffers, not parameters),
and the classifier's weight and bias.
"""

from __future__ import annotations

import random
import statistics

from nas_ops.arch import Architecture
from nas_ops.space import SearchSpace
from nas_ops.spec import OpSpec


def _conv_params(in_chs: int, out_chs: int, kernel: int, groups: int = 1) -> int:
    """A bias-free kxk conv followed by BN (weight + 2 * out_chs affine parameters)."""
    return out_chs * (in_chs // groups) * kernel * kernel + 2 * out_chs


def _conv_macs(in_chs: int, out_chs: int, kernel: int, out_h: int, out_w: int, groups: int = 1) -> int:
    return out_h * out_w * out_chs * (in_chs // groups) * kernel * kernel


def _spec_params(spec: OpSpec) -> int:
    if spec.kind == "conv":
        return _conv_params(spec.in_chs, spec.out_chs, spec.kernel)
    if spec.kind == "mbconv":
        mid = spec.mid_chs
        # the expand conv exists exactly when exp_ratio != 1 (same rule as blocks.MBConv)
        expand = _conv_params(spec.in_chs, mid, 1) if spec.exp_ratio != 1 else 0
        depthwise = _conv_params(mid, mid, spec.kernel, groups=mid)
        project = _conv_params(mid, spec.out_chs, 1)
        return expand + depthwise + project
    if spec.kind == "mix":
        return _conv_params(spec.in_chs, spec.out_chs, 1)
    if spec.kind == "head":
        return spec.in_chs * spec.out_chs + spec.out_chs
    if spec.kind in ("zero", "identity"):
        return 0
    raise ValueError(f"op spec field 'kind': no parameter count for kind {spec.kind!r}")


def _spec_flops(spec: OpSpec) -> int:
    out_h, out_w = spec.out_height, spec.out_width
    if spec.kind == "conv":
        return _conv_macs(spec.in_chs, spec.out_chs, spec.kernel, out_h, out_w)
    if spec.kind == "mbconv":
        mid = spec.mid_chs
        # the expand conv runs at the input resolution; the depthwise conv carries the stride
        expand = _conv_macs(spec.in_chs, mid, 1, spec.height, spec.width) if spec.exp_ratio != 1 else 0
        depthwise = _conv_macs(mid, mid, spec.kernel, out_h, out_w, groups=mid)
        project = _conv_macs(mid, spec.out_chs, 1, out_h, out_w)
        return expand + depthwise + project
    if spec.kind == "mix":
        return _conv_macs(spec.in_chs, spec.out_chs, 1, out_h, out_w)
    if spec.kind == "head":
        return spec.in_chs * spec.out_chs
    if spec.kind in ("zero", "identity"):
        return 0
    raise ValueError(f"op spec field 'kind': no FLOP count for kind {spec.kind!r}")


def _specs_of(spec_or_arch: OpSpec | Architecture) -> list[OpSpec]:
    if isinstance(spec_or_arch, OpSpec):
        return [spec_or_arch]
    if isinstance(spec_or_arch, Architecture):
        return spec_or_arch.specs()
    raise ValueError(f"expected an OpSpec or an Architecture, got {type(spec_or_arch).__name__}")


def count_params(spec_or_arch: OpSpec | Architecture) -> int:
    """Number of trainable parameters of one op, or of a whole architecture (sum over all its ops)."""
    return sum(_spec_params(spec) for spec in _specs_of(spec_or_arch))


def count_flops(spec_or_arch: OpSpec | Architecture) -> int:
    """Multiply-adds of one op at batch 1, or of a whole architecture (sum over all its ops)."""
    return sum(_spec_flops(spec) for spec in _specs_of(spec_or_arch))


# --- memory -------------------------------------------------------------------------------------------------------
# What a forward pass of an op holds, estimated analytically so that a service can refuse an op BEFORE it builds it.
#
# Activations: the input plus every tensor the op's eval-mode forward materialises, each conv and each BN writes a
# new tensor, the activations run in place (``inplace=True``), the shortcut add writes one more; per kind:
#
# - conv, mix: input + conv out + BN out
# - mbconv: input + 2 x expanded (at the input resolution; absent when e1) + 2 x expanded (after the depthwise conv,
#   at the output resolution) + 2 x output (project conv, its BN) + output (the shortcut add, with skip)
# - head: input + pooled (in_chs) + logits (classes)
# - zero: input + output (``zeros_like``); identity: input only
#
# It is an upper bound of the peak (a runtime frees or reuses some of them): the limit it is checked against is an
# honest ceiling, never an underestimate. Weights: every parameter plus the BN running mean and variance.

DTYPE_BYTES: dict[str, int] = {"float32": 4, "float16": 2}


def dtype_size(dtype: str) -> int:
    """Bytes of one element of ``dtype`` (``float32`` or ``float16``)."""
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype: {dtype!r} is not one of {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype]


def _activation_elements(spec: OpSpec) -> int:
    """Elements of the tensors one sample's forward pass holds (see the section comment above)."""
    c_in, h, w = spec.input_shape
    inp = c_in * h * w
    out = 1
    for size in spec.output_shape:
        out *= size
    if spec.kind in ("conv", "mix"):
        return inp + 2 * out
    if spec.kind == "mbconv":
        mid = spec.mid_chs
        expanded = 2 * mid * h * w if spec.exp_ratio != 1 else 0
        depthwise = 2 * mid * spec.out_height * spec.out_width
        return inp + expanded + depthwise + 2 * out + (out if spec.skip else 0)
    if spec.kind == "head":
        return inp + spec.in_chs + spec.out_chs
    if spec.kind == "zero":
        return inp + out
    if spec.kind == "identity":
        return inp
    raise ValueError(f"op spec field 'kind': no memory estimate for kind {spec.kind!r}")


def _bn_channels(spec: OpSpec) -> int:
    """Channels of every BatchNorm of the op (each holds a running mean and a running variance)."""
    if spec.kind in ("conv", "mix"):
        return spec.out_chs
    if spec.kind == "mbconv":
        return (spec.mid_chs if spec.exp_ratio != 1 else 0) + spec.mid_chs + spec.out_chs
    return 0


def activation_bytes(spec: OpSpec, batch: int, dtype: str) -> int:
    """Bytes of the input and every intermediate and output tensor of one forward pass at ``batch``."""
    return _activation_elements(spec) * batch * dtype_size(dtype)


def weight_bytes(spec: OpSpec, dtype: str) -> int:
    """Bytes of the op's parameters and BN running statistics (independent of the batch)."""
    return (_spec_params(spec) + 2 * _bn_channels(spec)) * dtype_size(dtype)


def op_memory_bytes(spec: OpSpec, batch: int, dtype: str) -> int:
    """Memory estimate of measuring one op: its activations at ``batch`` plus its weights."""
    return activation_bytes(spec, batch, dtype) + weight_bytes(spec, dtype)


def network_memory_bytes(arch: Architecture, batch: int, dtype: str) -> int:
    """Memory estimate of a whole network: every op's weights, plus the largest op's activations (the ops run one
    after the other, so only one op's tensors are live at a time)."""
    specs = arch.specs()
    return sum(weight_bytes(spec, dtype) for spec in specs) + max(activation_bytes(spec, batch, dtype) for spec in specs)


#: Random architectures whose median working set is a space's (seeded: the same space gives the same number).
WORKING_SET_SAMPLES = 64


def space_working_set_bytes(space: SearchSpace, batch: int = 1, dtype: str = "float32") -> int:
    """The working set of a search space's typical network: the median of :func:`network_memory_bytes` over
    ``WORKING_SET_SAMPLES`` architectures drawn uniformly with a fixed seed (what a profiler's cache regime is
    chosen by when it measures the space's latency table)."""
    rng = random.Random(0)
    sizes = [network_memory_bytes(space.architecture(space.random_choices(rng)), batch, dtype)
             for _ in range(WORKING_SET_SAMPLES)]
    return int(statistics.median_low(sizes))
