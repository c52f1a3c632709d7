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

from nas_ops.arch import Architecture
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
