"""Every block's real output shape equals spec.output_shape, for all candidate ops, resolutions and strides."""

from __future__ import annotations

import itertools

import pytest
import torch

from nas_ops.blocks import build_op
from nas_ops.spec import OpSpec

torch.set_num_threads(1)

RESOLUTIONS = [(1, 1), (7, 7), (8, 8), (15, 9), (16, 16)]
CANDIDATES = [(k, e) for k in (3, 5, 7) for e in (3.0, 6.0)] + [(3, 1.0), (5, 2.5)]


def _check(spec: OpSpec, batch: int = 2) -> torch.Tensor:
    module = build_op(spec)
    x = torch.randn(batch, *spec.input_shape)
    with torch.no_grad():
        out = module.eval()(x)
    assert tuple(out.shape) == (batch, *spec.output_shape), str(spec)
    return out


@pytest.mark.parametrize(("height", "width"), RESOLUTIONS)
@pytest.mark.parametrize(("kernel", "exp_ratio"), CANDIDATES)
def test_mbconv_candidates(height: int, width: int, kernel: int, exp_ratio: float) -> None:
    for (in_chs, out_chs), stride in itertools.product([(4, 4), (4, 6)], (1, 2)):
        skips = [False, True] if stride == 1 and in_chs == out_chs else [False]
        for skip in skips:
            spec = OpSpec("mbconv", in_chs, out_chs, height, width, kernel=kernel, exp_ratio=exp_ratio,
                          stride=stride, act="relu6", skip=skip)
            _check(spec)


@pytest.mark.parametrize(("height", "width"), RESOLUTIONS)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kernel", [1, 3, 5, 7])
def test_conv(height: int, width: int, stride: int, kernel: int) -> None:
    _check(OpSpec("conv", 3, 8, height, width, kernel=kernel, stride=stride, act="relu"))


@pytest.mark.parametrize(("height", "width"), RESOLUTIONS)
def test_mix_head_zero_identity(height: int, width: int) -> None:
    _check(OpSpec("mix", 6, 10, height, width, act="hswish"))
    _check(OpSpec("head", 6, 11, height, width))
    zeros = _check(OpSpec("zero", 5, 5, height, width))
    assert torch.count_nonzero(zeros) == 0
    x = torch.randn(2, 5, height, width)
    assert torch.equal(build_op(OpSpec("identity", 5, 5, height, width))(x), x)


def test_skip_adds_the_input() -> None:
    """With skip, the block is x + f(x): equal to the same weights without skip plus x."""
    spec = OpSpec("mbconv", 4, 4, 6, 6, kernel=3, exp_ratio=3.0, act="relu6", skip=True)
    with_skip = build_op(spec).eval()
    without = build_op(OpSpec("mbconv", 4, 4, 6, 6, kernel=3, exp_ratio=3.0, act="relu6")).eval()
    without.load_state_dict(with_skip.state_dict())
    x = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(with_skip(x), without(x) + x)


def test_expand_conv_only_when_ratio_is_not_one() -> None:
    assert build_op(OpSpec("mbconv", 4, 8, 6, 6, kernel=3, exp_ratio=1.0, act="relu6")).conv_pw is None
    assert build_op(OpSpec("mbconv", 4, 8, 6, 6, kernel=3, exp_ratio=1.5, act="relu6")).conv_pw is not None
