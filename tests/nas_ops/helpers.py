"""Shared test helpers: a strategy of valid op specs, an independent MAC counter, and a generated net.config."""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import strategies as st
from torch import nn

from nas_ops.spec import ACTIVATIONS, KERNELS, MAX_CHANNELS, MAX_CLASSES, MAX_RESOLUTION, STRIDES, OpSpec


@st.composite
def op_specs(draw: st.DrawFn, max_chs: int = MAX_CHANNELS, max_res: int = MAX_RESOLUTION) -> OpSpec:
    """Any valid OpSpec: every kind, the full bounds of every field, and only the fields the kind carries."""
    kind = draw(st.sampled_from(["conv", "mbconv", "mix", "head", "zero", "identity"]))
    in_chs = draw(st.integers(1, max_chs))
    height, width = draw(st.integers(1, max_res)), draw(st.integers(1, max_res))
    if kind in ("zero", "identity"):
        return OpSpec(kind, in_chs, in_chs, height, width)
    if kind == "head":
        return OpSpec(kind, in_chs, draw(st.integers(1, MAX_CLASSES)), height, width)
    out_chs = draw(st.integers(1, max_chs))
    act = draw(st.sampled_from(ACTIVATIONS))
    if kind == "mix":
        return OpSpec(kind, in_chs, out_chs, height, width, act=act)
    kernel, stride = draw(st.sampled_from(KERNELS)), draw(st.sampled_from(STRIDES))
    if kind == "conv":
        return OpSpec(kind, in_chs, out_chs, height, width, kernel=kernel, stride=stride, act=act)
    exp_ratio = draw(st.integers(100, 800)) / 100  # 1..8 with at most two decimals
    skip = stride == 1 and in_chs == out_chs and draw(st.booleans())
    return OpSpec(kind, in_chs, out_chs, height, width, kernel=kernel, exp_ratio=exp_ratio, stride=stride,
                  act=act, skip=skip)


def measured_macs(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """MACs of the convs and linears of ``module`` at batch 1, read from the tensors of a real forward pass."""
    total = 0

    def conv_hook(conv: nn.Conv2d, inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = conv.kernel_size
        total += output[0].numel() * (conv.in_channels // conv.groups) * kh * kw

    def linear_hook(linear: nn.Linear, inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        total += linear.in_features * linear.out_features

    handles = [m.register_forward_hook(conv_hook) for m in module.modules() if isinstance(m, nn.Conv2d)]
    handles += [m.register_forward_hook(linear_hook) for m in module.modules() if isinstance(m, nn.Linear)]
    try:
        with torch.no_grad():
            module.eval()(torch.randn(1, *input_shape))
    finally:
        for handle in handles:
            handle.remove()
    return total


# The released ProxylessNAS mobile net: (kernel, expand) per cell, None = Zero (identity) cell.
MOBILE_STAGES: tuple[tuple[int, int, tuple[tuple[int, int] | None, ...]], ...] = (
    # width, first stride, cells
    (32, 2, ((5, 3), (3, 3), None, None)),
    (40, 2, ((7, 3), (3, 3), (5, 3), (5, 3))),
    (80, 2, ((7, 6), (5, 3), (5, 3), (5, 3))),
    (96, 1, ((5, 6), (5, 3), (5, 3), (5, 3))),
    (192, 2, ((7, 6), (7, 6), (7, 3), (7, 3))),
    (320, 1, ((7, 6),)),
)


def identity_layer(chs: int) -> dict[str, Any]:
    return {"name": "IdentityLayer", "in_channels": chs, "out_channels": chs, "use_bn": False, "act_func": None,
            "dropout_rate": 0, "ops_order": "weight_bn_act"}


def conv_layer(in_chs: int, out_chs: int, kernel: int, stride: int) -> dict[str, Any]:
    return {"name": "ConvLayer", "kernel_size": kernel, "stride": stride, "dilation": 1, "groups": 1, "bias": False,
            "has_shuffle": False, "in_channels": in_chs, "out_channels": out_chs, "use_bn": True,
            "act_func": "relu6", "dropout_rate": 0, "ops_order": "weight_bn_act"}


def mobile_net_config() -> dict[str, Any]:
    """net.config of the released ProxylessNAS mobile net, in the official format (keys as the release writes)."""
    blocks: list[dict[str, Any]] = [{
        "name": "MobileInvertedResidualBlock",
        "mobile_inverted_conv": {"name": "MBInvertedConvLayer", "in_channels": 32, "out_channels": 16,
                                 "kernel_size": 3, "stride": 1, "expand_ratio": 1},
        "shortcut": None,
    }]
    chs = 16
    for width, first_stride, cells in MOBILE_STAGES:
        for i, cell in enumerate(cells):
            stride = first_stride if i == 0 else 1
            shortcut = identity_layer(chs) if stride == 1 and chs == width else None
            if cell is None:
                conv: dict[str, Any] = {"name": "ZeroLayer", "stride": stride}
            else:
                conv = {"name": "MBInvertedConvLayer", "in_channels": chs, "out_channels": width,
                        "kernel_size": cell[0], "stride": stride, "expand_ratio": cell[1]}
            blocks.append({"name": "MobileInvertedResidualBlock", "mobile_inverted_conv": conv,
                           "shortcut": shortcut})
            chs = width
    return {
        "name": "ProxylessNASNets",
        "bn": {"momentum": 0.1, "eps": 0.001},
        "first_conv": conv_layer(3, 32, 3, 2),
        "blocks": blocks,
        "feature_mix_layer": conv_layer(320, 1280, 1, 1),
        "classifier": {"name": "LinearLayer", "in_features": 1280, "out_features": 1000, "bias": True,
                       "use_bn": False, "act_func": None, "dropout_rate": 0, "ops_order": "weight_bn_act"},
    }
