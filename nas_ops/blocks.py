"""Torch modules built from op specs: the exact modules the profiler measures and the supernet trains."""

from __future__ import annotations

import torch
from torch import nn

from nas_ops.spec import OpSpec

BN_MOMENTUM = 0.1
BN_EPS = 1e-3


def make_act(name: str) -> nn.Module:
    """The activation module for an op spec's ``act`` field."""
    if name == "relu6":
        return nn.ReLU6(inplace=True)
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "hswish":
        return nn.Hardswish(inplace=True)
    if name == "none":
        return nn.Identity()
    raise ValueError(f"op spec field 'act': unknown activation {name!r}")


def conv_bn_act(in_chs: int, out_chs: int, kernel: int, stride: int, act: str, groups: int = 1) -> nn.Sequential:
    """kxk conv (padding k//2, no bias) + BN + activation."""
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_chs, momentum=BN_MOMENTUM, eps=BN_EPS),
        make_act(act),
    )


class ConvBnAct(nn.Module):
    """The stem: kxk conv + BN + act (spec kind ``conv``)."""

    def __init__(self, spec: OpSpec) -> None:
        super().__init__()
        self.spec = spec
        self.conv = conv_bn_act(spec.in_chs, spec.out_chs, spec.kernel, spec.stride, spec.act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class MBConv(nn.Module):
    """Mobile inverted bottleneck (spec kind ``mbconv``), with timm's section names.

    conv_pw: 1x1 expand to mid_chs + BN + act (absent when exp_ratio == 1); conv_dw: kxk depthwise, stride s
    + BN + act; conv_pwl: 1x1 project + BN, no activation; shortcut: x + f(x) when the spec says skip.
    """

    def __init__(self, spec: OpSpec) -> None:
        super().__init__()
        self.spec = spec
        mid = spec.mid_chs
        self.has_skip = spec.skip
        # expand
        self.conv_pw = None if spec.exp_ratio == 1 else conv_bn_act(spec.in_chs, mid, 1, 1, spec.act)
        # depthwise
        self.conv_dw = conv_bn_act(mid, mid, spec.kernel, spec.stride, spec.act, groups=mid)
        # project (linear bottleneck)
        self.conv_pwl = nn.Sequential(
            nn.Conv2d(mid, spec.out_chs, 1, 1, 0, bias=False),
            nn.BatchNorm2d(spec.out_chs, momentum=BN_MOMENTUM, eps=BN_EPS),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self.conv_pw is None else self.conv_pw(x)
        out = self.conv_pwl(self.conv_dw(out))
        return x + out if self.has_skip else out


class FeatureMix(nn.Module):
    """1x1 conv + BN + act before the pool (spec kind ``mix``)."""

    def __init__(self, spec: OpSpec) -> None:
        super().__init__()
        self.spec = spec
        self.conv = conv_bn_act(spec.in_chs, spec.out_chs, 1, 1, spec.act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class PoolLinear(nn.Module):
    """Global average pool + linear classifier (spec kind ``head``)."""

    def __init__(self, spec: OpSpec) -> None:
        super().__init__()
        self.spec = spec
        self.linear = nn.Linear(spec.in_chs, spec.out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.mean(dim=(2, 3)))


class Zero(nn.Module):
    """Skip the cell: zeros of the output shape (spec kind ``zero``). Inside a shortcut it makes the identity."""

    def __init__(self, spec: OpSpec) -> None:
        super().__init__()
        self.spec = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


class Identity(nn.Module):
    """Return the input (spec kind ``identity``)."""

    def __init__(self, spec: OpSpec) -> None:
        super().__init__()
        self.spec = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


_BUILDERS: dict[str, type[nn.Module]] = {
    "conv": ConvBnAct,
    "mbconv": MBConv,
    "mix": FeatureMix,
    "head": PoolLinear,
    "zero": Zero,
    "identity": Identity,
}


def build_op(spec: OpSpec) -> nn.Module:
    """The torch module of ``spec`` (train mode, fresh weights). Its output shape is ``spec.output_shape``."""
    return _BUILDERS[spec.kind](spec)
