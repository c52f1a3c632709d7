"""Reference architectures: MobileNetV2 (sizes, widths) and the ProxylessNAS search backbone."""

from __future__ import annotations

import re

import pytest
import torch

from nas_ops.counting import count_flops, count_params
from nas_ops.network import build_network
from nas_ops.reference_networks import make_divisible, mobilenet_v2, proxyless_backbone
from nas_ops.space import SPACES
from nas_ops.spec import parse_spec

torch.set_num_threads(1)


def test_mobilenet_v2_structure() -> None:
    arch = mobilenet_v2()
    assert arch.stem == parse_spec("conv_r224x224_c3-32_k3_s2_relu6")
    assert len(arch.blocks) == 17
    assert arch.blocks[0] == parse_spec("mbconv_r112x112_c32-16_k3_e1_s1_relu6")
    assert arch.blocks[1] == parse_spec("mbconv_r112x112_c16-24_k3_e6_s2_relu6")
    assert arch.blocks[2] == parse_spec("mbconv_r56x56_c24-24_k3_e6_s1_relu6_skip")
    assert arch.blocks[10] == parse_spec("mbconv_r14x14_c64-96_k3_e6_s1_relu6")  # stride 1 but 64 != 96
    assert sum(b.skip for b in arch.blocks) == 10
    assert arch.mix == parse_spec("mix_r7x7_c320-1280_relu6")
    assert arch.head == parse_spec("head_r7x7_c1280-1000")
    assert (count_params(arch), count_flops(arch)) == (3_504_872, 300_774_272)


def test_mobilenet_v2_options() -> None:
    small = mobilenet_v2(width_mult=0.5, resolution=32, num_classes=10)
    assert small.stem.out_chs == 16 and small.blocks[0].out_chs == 8 and small.blocks[-1].out_chs == 160
    assert small.mix.out_chs == 1280 and small.num_classes == 10 and small.input_size == (32, 32)
    assert mobilenet_v2(width_mult=1.4).mix.out_chs == 1792
    with torch.no_grad():
        assert build_network(small).eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize(("value", "expected"), [(32, 32), (16 * 0.5, 8), (24 * 0.35, 8), (96 * 0.75, 72),
                                                 (1280 * 1.4, 1792), (20, 24), (11, 16)])
def test_make_divisible(value: float, expected: int) -> None:
    assert make_divisible(value) == expected


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"width_mult": 0}, "width_mult"), ({"width_mult": 5.0}, "width_mult"), ({"resolution": 0}, "resolution"),
    ({"resolution": 224.0}, "resolution"), ({"num_classes": 0}, "num_classes"),
])
def test_mobilenet_v2_rejects_bad_arguments(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"field '{field}'")):
        mobilenet_v2(**kwargs)


def test_proxyless_backbone_defaults_to_the_heaviest_path() -> None:
    arch = proxyless_backbone()
    assert arch.metadata["space"] == "proxyless-mobile"
    assert len(arch.blocks) == 22
    assert all(b.kernel == 7 and b.exp_ratio == 6 for b in arch.blocks[1:])
    assert arch.specs()[:2] + arch.specs()[-2:] == SPACES["proxyless-mobile"].fixed_specs()


def test_proxyless_backbone_choices_space_and_resolution() -> None:
    space = SPACES["micro-16"]
    arch = proxyless_backbone([0, 6, 1], space="micro-16", resolution=24)
    assert arch.input_size == (24, 24)
    assert arch == space.with_resolution(24, 24).architecture([0, 6, 1])
    with pytest.raises(ValueError, match="known: proxyless-mobile"):
        proxyless_backbone(space="nope")
    with pytest.raises(ValueError, match=re.escape("field 'resolution'")):
        proxyless_backbone(resolution=0)
