"""The op-spec grammar as one regular expression: it matches exactly what parse_canonical_spec accepts."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nas_ops.spec import MAX_CHANNELS, MAX_CLASSES, format_spec, int_range_pattern, parse_canonical_spec, spec_pattern
from tests.nas_ops.helpers import op_specs

PATTERN = re.compile(spec_pattern())


def accepted(text: str) -> bool:
    try:
        parse_canonical_spec(text)
    except ValueError:
        return False
    return True


def matches(text: str) -> bool:
    """JSON Schema (ECMA-262) semantics: ``$`` is the end of the string, never before a final newline."""
    return PATTERN.search(text) is not None and not text.endswith("\n")


@pytest.mark.parametrize(("low", "high"), [(1, 1024), (1, MAX_CHANNELS), (1, MAX_CLASSES), (0, 9), (7, 7), (95, 1203)])
def test_int_range_pattern_matches_exactly_the_range(low: int, high: int) -> None:
    group = re.compile(int_range_pattern(low, high))
    for n in range(0, 2 * high + 20):
        assert (group.fullmatch(str(n)) is not None) == (low <= n <= high), n
    assert not group.fullmatch("0" + str(high)) and not group.fullmatch("")


@given(op_specs())
@settings(max_examples=400, deadline=None)
def test_every_canonical_spec_matches(spec) -> None:  # type: ignore[no-untyped-def]
    assert matches(format_spec(spec))


@given(st.from_regex(PATTERN, fullmatch=True))
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_every_string_of_the_pattern_is_a_canonical_spec(text: str) -> None:
    if not text.endswith("\n"):  # Python's $ also matches before a final newline; JSON Schema's does not
        assert accepted(text), text


@given(op_specs(), st.data())
@settings(max_examples=400, deadline=None)
def test_near_misses_match_iff_the_parser_accepts(spec, data) -> None:  # type: ignore[no-untyped-def]
    text = format_spec(spec)
    at = data.draw(st.integers(0, len(text)))
    edit = data.draw(st.sampled_from(["insert", "delete", "replace"]))
    char = data.draw(st.sampled_from("0123456789_-xkesrc .\u00a0\n"))
    if edit == "insert":
        text = text[:at] + char + text[at:]
    elif edit == "delete":
        text = text[:at] + text[at + 1:]
    else:
        text = text[:at] + char + text[at + 1:]
    assert matches(text) == accepted(text), text


@pytest.mark.parametrize("text", [
    "zero_r8x8_c8-9_s1", "zero_r8x8_c8-8_s2", "identity_r8x8_c8-9", "mbconv_r8x8_c8-16_k3_e6_s1_relu6_skip",
    "mbconv_r8x8_c8-8_k3_e6_s2_relu6_skip", "mbconv_r8x8_c8-8_k3_e2.50_s1_relu6", "mbconv_r8x8_c8-8_k3_e8.5_s1_relu6",
    "conv_r0x8_c3-8_k3_s1_relu6", "conv_r8x8_c3-8_k4_s1_relu6", " conv_r8x8_c3-8_k3_s1_relu6",
])
def test_rules_across_fields_are_in_the_pattern(text: str) -> None:
    assert not accepted(text) and not matches(text)


def test_bounds_narrow_the_pattern() -> None:
    narrow = re.compile(spec_pattern(max_channels=64, max_resolution=32))
    assert narrow.search("conv_r32x32_c3-64_k3_s1_relu6") and not narrow.search("conv_r33x32_c3-64_k3_s1_relu6")
    assert not narrow.search("conv_r32x32_c3-65_k3_s1_relu6")
    assert narrow.search("head_r7x7_c64-1000")  # the classes of a head are not channels
    with pytest.raises(ValueError, match="within the grammar's"):
        spec_pattern(max_channels=MAX_CHANNELS + 1)
