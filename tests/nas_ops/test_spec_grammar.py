"""Op spec grammar: canonical round trip over all valid specs, and ValueError naming the field for bad input."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings

from nas_ops.spec import OpSpec, format_spec, parse_spec
from tests.nas_ops.helpers import op_specs


@settings(max_examples=400, deadline=None)
@given(op_specs())
def test_format_then_parse_is_identity(spec: OpSpec) -> None:
    text = format_spec(spec)
    assert parse_spec(text) == spec
    assert format_spec(parse_spec(text)) == text
    assert str(spec) == text


@settings(max_examples=200, deadline=None)
@given(op_specs())
def test_output_shape_follows_stride(spec: OpSpec) -> None:
    if spec.kind == "head":
        assert spec.output_shape == (spec.out_chs,)
    else:
        assert spec.output_shape == (spec.out_chs, -(-spec.height // spec.stride), -(-spec.width // spec.stride))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mbconv_r112x112_c16-24_k5_e3_s2_relu6",
         OpSpec("mbconv", 16, 24, 112, 112, kernel=5, exp_ratio=3.0, stride=2, act="relu6")),
        ("mbconv_r56x56_c24-24_k3_e6_s1_relu6_skip",
         OpSpec("mbconv", 24, 24, 56, 56, kernel=3, exp_ratio=6.0, stride=1, act="relu6", skip=True)),
        ("mbconv_r9x7_c5-5_k7_e2.25_s1_hswish",
         OpSpec("mbconv", 5, 5, 9, 7, kernel=7, exp_ratio=2.25, stride=1, act="hswish")),
        ("conv_r224x224_c3-32_k3_s2_relu6", OpSpec("conv", 3, 32, 224, 224, kernel=3, stride=2, act="relu6")),
        ("mix_r7x7_c320-1280_relu6", OpSpec("mix", 320, 1280, 7, 7, act="relu6")),
        ("head_r7x7_c1280-1000", OpSpec("head", 1280, 1000, 7, 7)),
        ("zero_r28x28_c40-40_s1", OpSpec("zero", 40, 40, 28, 28)),
        ("identity_r28x28_c40-40", OpSpec("identity", 40, 40, 28, 28)),
    ],
)
def test_parse_known_strings(text: str, expected: OpSpec) -> None:
    assert parse_spec(text) == expected
    assert format_spec(expected) == text


BAD_SPECS = [
    # (string, field named in the message)
    ("conv2d_r8x8_c3-8_k3_s1_relu6", "kind"),
    ("", "kind"),
    ("mbconv", "spec"),
    ("mbconv_r8x8", "spec"),
    ("mbconv_8x8_c3-8_k3_e6_s1_relu6", "resolution"),
    ("mbconv_r8_c3-8_k3_e6_s1_relu6", "resolution"),
    ("mbconv_r8x8_c3_k3_e6_s1_relu6", "channels"),
    ("mbconv_r8x8_c3-_k3_e6_s1_relu6", "channels"),
    ("mbconv_r0x8_c3-8_k3_e6_s1_relu6", "height"),
    ("mbconv_r8x1025_c3-8_k3_e6_s1_relu6", "width"),
    ("mbconv_r8x8_c0-8_k3_e6_s1_relu6", "in_chs"),
    ("mbconv_r8x8_c3-4097_k3_e6_s1_relu6", "out_chs"),
    ("head_r8x8_c3-100001", "out_chs"),
    ("mbconv_r8x8_c3-8_k4_e6_s1_relu6", "kernel"),
    ("mbconv_r8x8_c3-8_k13_e6_s1_relu6", "kernel"),
    ("mbconv_r8x8_c3-8_k3_e6_s3_relu6", "stride"),
    ("mbconv_r8x8_c3-8_k3_e0.5_s1_relu6", "exp_ratio"),
    ("mbconv_r8x8_c3-8_k3_e9_s1_relu6", "exp_ratio"),
    ("mbconv_r8x8_c3-8_k3_e6_s1_gelu", "spec"),
    ("mbconv_r8x8_c3-8_k3_s1_relu6", "e"),
    ("mbconv_r8x8_c3-8_e6_s1_relu6", "k"),
    ("mbconv_r8x8_c3-8_k3_e6_relu6", "s"),
    ("mbconv_r8x8_c3-8_k3_e6_s1", "act"),
    ("mbconv_r8x8_c3-8_k3_k5_e6_s1_relu6", "k"),
    ("mbconv_r8x8_c3-8_k3_e6_s1_relu6_skip", "skip"),
    ("mbconv_r8x8_c8-8_k3_e6_s2_relu6_skip", "skip"),
    ("mbconv_r8x8_c8-8_e6_k3_s1_relu6", "spec"),  # not canonical order
    ("mbconv_r8x8_c8-8_k3_e6.0_s1_relu6", "spec"),  # not canonical number
    ("mbconv_r08x8_c8-8_k3_e6_s1_relu6", "spec"),  # leading zero
    ("conv_r8x8_c3-8_k3_e6_s1_relu6", "e"),
    ("conv_r8x8_c3-8_k3_s1_relu6_skip", "skip"),
    ("mix_r8x8_c3-8_k1_relu6", "k"),
    ("head_r8x8_c3-8_relu6", "act"),
    ("zero_r8x8_c8-8_s2", "stride"),
    ("zero_r8x8_c8-16_s1", "out_chs"),
    ("zero_r8x8_c8-8", "s"),
    ("identity_r8x8_c8-4", "out_chs"),
    ("identity_r8x8_c8-8_s1", "s"),
    ("mbconv_r8x8_c3-8_k3_e6_s1_relu6_extra", "spec"),
    ("m" * 200, "spec"),
]


@pytest.mark.parametrize(("text", "field"), BAD_SPECS)
def test_malformed_or_out_of_bounds_raises_naming_field(text: str, field: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"op spec field '{field}'")):
        parse_spec(text)


@pytest.mark.parametrize("value", [None, 12, b"conv_r8x8_c3-8_k3_s1_relu6"])
def test_non_string_is_rejected(value: object) -> None:
    with pytest.raises(ValueError, match="must be a string"):
        parse_spec(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        (dict(kind="mbconv", in_chs=8, out_chs=8, height=8, width=8, kernel=True, exp_ratio=6.0), "kernel"),
        (dict(kind="mbconv", in_chs=8, out_chs=8, height=8, width=8, kernel=3, exp_ratio=6.123), "exp_ratio"),
        (dict(kind="conv", in_chs=8.0, out_chs=8, height=8, width=8, kernel=3), "in_chs"),
        (dict(kind="conv", in_chs=8, out_chs=8, height=8, width=8, kernel=3.0), "kernel"),
        (dict(kind="conv", in_chs=8, out_chs=8, height=8, width=8, kernel=3, stride=1.0), "stride"),
        (dict(kind="head", in_chs=8, out_chs=8, height=8, width=8, skip=1), "skip"),
    ],
)
def test_direct_construction_is_validated(fields: dict, field: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"op spec field '{field}'")):
        OpSpec(**fields)
