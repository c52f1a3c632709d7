"""The canonical-form check of op specs: a key has exactly one spelling."""

from __future__ import annotations

import pytest

from nas_ops.spec import NonCanonicalSpec, format_spec, parse_canonical_spec, parse_spec

SPEC = "mbconv_r56x56_c24-24_k3_e6_s1_relu6_skip"


@pytest.mark.parametrize("spelled", [SPEC + " ", " " + SPEC, "\n" + SPEC, SPEC + "\u00a0", SPEC + "\u2003"])
def test_padded_spec_parses_but_is_not_canonical(spelled: str) -> None:
    assert format_spec(parse_spec(spelled)) == SPEC  # parse_spec forgives whitespace around a spec
    with pytest.raises(NonCanonicalSpec) as info:
        parse_canonical_spec(spelled)
    assert info.value.canonical == SPEC
    assert str(info.value) == f"op spec field 'spec': {spelled!r} is not canonical; write it as {SPEC!r}"


@pytest.mark.parametrize(("spelled", "canonical"), [
    ("mbconv_r56x56_c24-24_k3_e6.0_s1_relu6", "mbconv_r56x56_c24-24_k3_e6_s1_relu6"),
    ("conv_r016x16_c3-8_k3_s1_relu6", "conv_r16x16_c3-8_k3_s1_relu6"),
])
def test_other_spellings_name_the_canonical_form(spelled: str, canonical: str) -> None:
    for parse in (parse_spec, parse_canonical_spec):
        with pytest.raises(NonCanonicalSpec, match=f"write it as '{canonical}'"):
            parse(spelled)


def test_canonical_spec_is_accepted() -> None:
    assert format_spec(parse_canonical_spec(SPEC)) == SPEC
