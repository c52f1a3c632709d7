"""Analytic parameter and FLOP (multiply-add) counts against hand-computed values and the built modules."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings

from nas_ops.blocks import build_op
from nas_ops.counting import count_flops, count_params
from nas_ops.network import build_network
from nas_ops.reference_networks import mobilenet_v2
from nas_ops.space import SPACES
from nas_ops.spec import OpSpec, parse_spec
from tests.nas_ops.helpers import measured_macs, op_specs

torch.set_num_threads(1)


@pytest.mark.parametrize(
    ("text", "params", "flops"),
    [
        # 3*32*3*3 weights + 2*32 BN; 112*112 outputs * 32 * 3 * 9
        ("conv_r224x224_c3-32_k3_s2_relu6", 864 + 64, 112 * 112 * 32 * 27),
        # expand 16->96 (1536 + 192), dw 3x3 (864 + 192), project 96->24 (2304 + 48)
        ("mbconv_r112x112_c16-24_k3_e6_s2_relu6", 1536 + 192 + 864 + 192 + 2304 + 48,
         112 * 112 * 16 * 96 + 56 * 56 * 96 * 9 + 56 * 56 * 96 * 24),
        # e1: no expand conv; dw 5x5 on 32 (800 + 64), project 32->16 (512 + 32)
        ("mbconv_r112x112_c32-16_k5_e1_s1_relu6", 800 + 64 + 512 + 32, 112 * 112 * 32 * 25 + 112 * 112 * 32 * 16),
        # mid = round(10 * 2.5) = 25; odd resolution with stride 2: 7x7 -> 4x4
        ("mbconv_r7x7_c10-12_k7_e2.5_s2_relu6", 250 + 50 + 25 * 49 + 50 + 300 + 24,
         49 * 10 * 25 + 16 * 25 * 49 + 16 * 25 * 12),
        ("mbconv_r14x14_c24-24_k3_e3_s1_relu6_skip", 24 * 72 + 144 + 72 * 9 + 144 + 72 * 24 + 48,
         196 * 24 * 72 + 196 * 72 * 9 + 196 * 72 * 24),
        ("mix_r7x7_c320-1280_relu6", 320 * 1280 + 2560, 49 * 320 * 1280),
        ("head_r7x7_c1280-1000", 1280 * 1000 + 1000, 1280 * 1000),
        ("zero_r28x28_c40-40_s1", 0, 0),
        ("identity_r28x28_c40-40", 0, 0),
    ],
)
def test_hand_computed_values(text: str, params: int, flops: int) -> None:
    spec = parse_spec(text)
    assert count_params(spec) == params
    assert count_flops(spec) == flops


@settings(max_examples=150, deadline=None)
@given(op_specs(max_chs=48, max_res=12))
def test_params_equal_module_parameters(spec: OpSpec) -> None:
    assert count_params(spec) == sum(p.numel() for p in build_op(spec).parameters())


@settings(max_examples=60, deadline=None)
@given(op_specs(max_chs=24, max_res=10))
def test_flops_equal_macs_of_a_real_forward_pass(spec: OpSpec) -> None:
    assert count_flops(spec) == measured_macs(build_op(spec), spec.input_shape)


def test_architecture_counts_are_sums_over_ops() -> None:
    space = SPACES["micro-16"]
    arch = space.architecture([1, space.cells()[1].zero_index, 5])
    assert count_params(arch) == sum(count_params(s) for s in arch.specs())
    assert count_flops(arch) == sum(count_flops(s) for s in arch.specs())
    network = build_network(arch)
    assert count_params(arch) == sum(p.numel() for p in network.parameters())
    assert count_flops(arch) == measured_macs(network, (arch.in_chs, *arch.input_size))


def test_mobilenet_v2_matches_hand_derivation() -> None:
    """MobileNetV2 1.0 at 224, derived layer by layer (conv MACs = Hout*Wout*Cout*Cin/groups*k*k)."""

    def block(cin: int, cout: int, t: int, h_in: int, stride: int) -> tuple[int, int]:
        mid, h_out = cin * t, h_in // stride
        params = (cin * mid + 2 * mid if t != 1 else 0) + mid * 9 + 2 * mid + mid * cout + 2 * cout
        macs = (h_in * h_in * cin * mid if t != 1 else 0) + h_out * h_out * mid * 9 + h_out * h_out * mid * cout
        return params, macs

    layers = [
        (3 * 32 * 9 + 64, 112 * 112 * 32 * 27),              # stem 3x3 s2 -> 32
        block(32, 16, 1, 112, 1),
        block(16, 24, 6, 112, 2), block(24, 24, 6, 56, 1),
        block(24, 32, 6, 56, 2), *[block(32, 32, 6, 28, 1)] * 2,
        block(32, 64, 6, 28, 2), *[block(64, 64, 6, 14, 1)] * 3,
        block(64, 96, 6, 14, 1), *[block(96, 96, 6, 14, 1)] * 2,
        block(96, 160, 6, 14, 2), *[block(160, 160, 6, 7, 1)] * 2,
        block(160, 320, 6, 7, 1),
        (320 * 1280 + 2560, 7 * 7 * 320 * 1280),               # feature mix 1x1 -> 1280
        (1280 * 1000 + 1000, 1280 * 1000),                     # classifier
    ]
    params, macs = sum(p for p, _ in layers), sum(m for _, m in layers)
    assert (params, macs) == (3_504_872, 300_774_272)  # 3,504,872 is also torchvision's published count
    arch = mobilenet_v2()
    assert count_params(arch) == params
    assert count_flops(arch) == macs
