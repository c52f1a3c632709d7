"""Op specs: one canonical, human-readable string per op.

An :class:`OpSpec` holds everything that changes an op's cost (kind, channels, input resolution, kernel, expand
ratio, stride, shortcut, activation). Batch size and dtype are not part of it: they belong to the measurement context.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Literal

OpKind = Literal["conv", "mbconv", "mix", "head", "zero", "identity"]
Activation = Literal["relu6", "relu", "hswish", "none"]

KINDS: tuple[str, ...] = ("conv", "mbconv", "mix", "head", "zero", "identity")
ACTIVATIONS: tuple[str, ...] = ("relu6", "relu", "hswish", "none")

# Bounds: a request can never ask a device to build an op larger than these.
MAX_CHANNELS = 4096
MAX_CLASSES = 100_000
MAX_RESOLUTION = 1024
KERNELS: tuple[int, ...] = (1, 3, 5, 7, 9, 11)
STRIDES: tuple[int, ...] = (1, 2)
MIN_EXPAND, MAX_EXPAND = 1.0, 8.0
MAX_SPEC_LENGTH = 128
ZERO_STRIDES: tuple[int, ...] = (1,)  # a zero op only stands where the cell has stride 1

# Which fields each kind carries, in canonical order ("r" and "c" always come first).
_FIELDS: dict[str, tuple[str, ...]] = {
    "conv": ("k", "s", "act"),
    "mbconv": ("k", "e", "s", "act", "skip"),
    "mix": ("act",),
    "head": (),
    "zero": ("s",),
    "identity": (),
}


@dataclass(frozen=True, order=True)
class OpSpec:
    """One op of a network at one position: a value object, hashable, ordered, validated on creation.

    ``height``/``width`` are the op's INPUT resolution. ``out_chs`` of a ``head`` is the number of classes.
    Fields a kind does not use keep their defaults (``kernel=1, exp_ratio=1.0, stride=1, act="none",
    skip=False``) so that two equal ops always compare equal.
    """

    kind: str
    in_chs: int
    out_chs: int
    height: int
    width: int
    kernel: int = 1
    exp_ratio: float = 1.0
    stride: int = 1
    act: str = "none"
    skip: bool = False

    def __post_init__(self) -> None:
        validate(self)

    # --- derived shapes -------------------------------------------------------------------------------------
    @property
    def out_height(self) -> int:
        """Output height: ``ceil(H / stride)`` for strided ops (padding k//2), 1 for the head."""
        if self.kind == "head":
            return 1
        return (self.height - 1) // self.stride + 1

    @property
    def out_width(self) -> int:
        if self.kind == "head":
            return 1
        return (self.width - 1) // self.stride + 1

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one input sample."""
        return (self.in_chs, self.height, self.width)

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Shape of one output sample: (C, H, W), or (classes,) for the head."""
        if self.kind == "head":
            return (self.out_chs,)
        return (self.out_chs, self.out_height, self.out_width)

    @property
    def mid_chs(self) -> int:
        """Expanded width of an MBConv (``round(in * e)``); ``in_chs`` for other kinds."""
        if self.kind == "mbconv":
            return int(round(self.in_chs * self.exp_ratio))
        return self.in_chs

    def with_resolution(self, height: int, width: int) -> OpSpec:
        """The same op at another input resolution."""
        return replace(self, height=height, width=width)

    def __str__(self) -> str:
        return format_spec(self)


def _fail(field: str, message: str) -> None:
    raise ValueError(f"op spec field '{field}': {message}")


def _check_int(field: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        _fail(field, f"must be an integer in [{low}, {high}], got {value!r}")


def validate(spec: OpSpec) -> None:
    """Check every field of ``spec`` against its kind and bounds; raise ValueError naming the bad field."""
    if spec.kind not in KINDS:
        _fail("kind", f"unknown kind {spec.kind!r}; expected one of {', '.join(KINDS)}")
    _check_int("in_chs", spec.in_chs, 1, MAX_CHANNELS)
    _check_int("out_chs", spec.out_chs, 1, MAX_CLASSES if spec.kind == "head" else MAX_CHANNELS)
    _check_int("height", spec.height, 1, MAX_RESOLUTION)
    _check_int("width", spec.width, 1, MAX_RESOLUTION)
    if not isinstance(spec.kernel, int) or isinstance(spec.kernel, bool) or spec.kernel not in KERNELS:
        _fail("kernel", f"must be one of {KERNELS}, got {spec.kernel!r}")
    if not isinstance(spec.stride, int) or isinstance(spec.stride, bool) or spec.stride not in STRIDES:
        _fail("stride", f"must be one of {STRIDES}, got {spec.stride!r}")
    if spec.act not in ACTIVATIONS:
        _fail("act", f"unknown activation {spec.act!r}; expected one of {', '.join(ACTIVATIONS)}")
    exp = spec.exp_ratio
    if isinstance(exp, bool) or not isinstance(exp, (int, float)) or not MIN_EXPAND <= exp <= MAX_EXPAND:
        _fail("exp_ratio", f"must be a number in [{MIN_EXPAND:g}, {MAX_EXPAND:g}], got {exp!r}")
    if round(exp, 2) != exp:
        _fail("exp_ratio", f"at most two decimals, got {exp!r}")
    if not isinstance(spec.skip, bool):
        _fail("skip", f"must be a boolean, got {spec.skip!r}")

    used = _FIELDS[spec.kind]
    defaults = {"k": ("kernel", 1), "e": ("exp_ratio", 1.0), "s": ("stride", 1), "act": ("act", "none"),
                "skip": ("skip", False)}
    for key, (attr, default) in defaults.items():
        if key not in used and getattr(spec, attr) != default:
            _fail(attr, f"a {spec.kind} op has no {attr} (got {getattr(spec, attr)!r})")

    if spec.kind in ("zero", "identity") and spec.in_chs != spec.out_chs:
        _fail("out_chs", f"a {spec.kind} op keeps its channels: in {spec.in_chs} != out {spec.out_chs}")
    if spec.kind == "zero" and spec.stride not in ZERO_STRIDES:
        _fail("stride", "a zero op only stands where the cell has stride 1")
    if spec.skip and (spec.stride != 1 or spec.in_chs != spec.out_chs):
        _fail("skip", "an identity shortcut needs stride 1 and in_chs == out_chs")


def _format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def format_spec(spec: OpSpec) -> str:
    """The canonical string of ``spec`` (see :func:`parse_spec` for the grammar)."""
    parts = [spec.kind, f"r{spec.height}x{spec.width}", f"c{spec.in_chs}-{spec.out_chs}"]
    for key in _FIELDS[spec.kind]:
        if key == "k":
            parts.append(f"k{spec.kernel}")
        elif key == "e":
            parts.append(f"e{_format_number(spec.exp_ratio)}")
        elif key == "s":
            parts.append(f"s{spec.stride}")
        elif key == "act":
            parts.append(spec.act)
        elif key == "skip" and spec.skip:
            parts.append("skip")
    return "_".join(parts)


_RES = re.compile(r"r(\d{1,5})x(\d{1,5})")
_CHS = re.compile(r"c(\d{1,6})-(\d{1,6})")
_INT = re.compile(r"([ks])(\d{1,3})")
_EXP = re.compile(r"e(\d{1,2}(?:\.\d{1,2})?)")


def parse_spec(text: str) -> OpSpec:
    """Parse an op spec string.

    Grammar (fields separated by ``_``; the canonical order is the one shown, and :func:`format_spec` writes it)::

        spec     := kind "_" res "_" chans { "_" field }
        kind     := "conv" | "mbconv" | "mix" | "head" | "zero" | "identity"
        res      := "r" H "x" W            input resolution, 1..1024
        chans    := "c" IN "-" OUT         input / output channels, 1..4096 (OUT = classes for head, <= 100000)
        field    := "k" K                  kernel, odd 1..11          (conv, mbconv)
                  | "e" E                  expand ratio 1..8, <= 2 decimals (mbconv; e1 = no expand conv)
                  | "s" S                  stride 1 or 2              (conv, mbconv, zero)
                  | ACT                    relu6 | relu | hswish | none  (conv, mbconv, mix)
                  | "skip"                 identity shortcut, needs s1 and IN == OUT  (mbconv)

    Kinds: ``conv`` is a kxk conv + BN + act (the stem); ``mbconv`` is the mobile inverted bottleneck (1x1 expand
    + BN + act, kxk depthwise + BN + act, 1x1 project + BN); ``mix`` is the feature-mix 1x1 conv + BN + act;
    ``head`` is global average pool + linear classifier; ``zero`` outputs zeros; ``identity`` returns its input.
    Every field a kind takes is required (``skip`` is a flag: present or absent), and only the canonical order
    is accepted, so each op has exactly one spelling: the string is safe to use as a database key.

    Examples::

        mbconv_r112x112_c16-24_k5_e3_s2_relu6
        mbconv_r56x56_c24-24_k3_e6_s1_relu6_skip
        conv_r224x224_c3-32_k3_s2_relu6
        mix_r7x7_c320-1280_relu6
        head_r7x7_c1280-1000
        zero_r28x28_c40-40_s1

    Raises ValueError naming the bad field for any malformed or out-of-bounds string.
    """
    if not isinstance(text, str):
        raise ValueError(f"op spec must be a string, got {type(text).__name__}")
    if len(text) > MAX_SPEC_LENGTH:
        raise ValueError(f"op spec field 'spec': longer than {MAX_SPEC_LENGTH} characters")
    tokens = text.strip().split("_")
    kind = tokens[0]
    if kind not in KINDS:
        _fail("kind", f"unknown kind {kind!r} in {text!r}; expected one of {', '.join(KINDS)}")
    if len(tokens) < 3:
        _fail("spec", f"{text!r} needs at least kind, resolution (rHxW) and channels (cIN-OUT)")
    res, chans = _RES.fullmatch(tokens[1]), _CHS.fullmatch(tokens[2])
    if not res:
        _fail("resolution", f"expected rHxW, got {tokens[1]!r}")
    if not chans:
        _fail("channels", f"expected cIN-OUT, got {tokens[2]!r}")

    values: dict[str, object] = {}
    expected = _FIELDS[kind]
    for token in tokens[3:]:
        if token in ACTIVATIONS:
            key, value = "act", token
        elif token == "skip":
            key, value = "skip", True
        elif m := _INT.fullmatch(token):
            key, value = m.group(1), int(m.group(2))
        elif m := _EXP.fullmatch(token):
            key, value = "e", float(m.group(1))
        else:
            _fail("spec", f"unknown field {token!r} in {text!r}")
        if key not in expected:
            _fail(key, f"a {kind} op takes no {key!r} field (in {text!r})")
        if key in values:
            _fail(key, f"given twice in {text!r}")
        values[key] = value
    missing = [k for k in expected if k != "skip" and k not in values]
    if missing:
        _fail(missing[0], f"missing from {text!r} (a {kind} op needs {', '.join(k for k in expected if k != 'skip')})")

    spec = OpSpec(
        kind=kind,
        in_chs=int(chans.group(1)),
        out_chs=int(chans.group(2)),
        height=int(res.group(1)),
        width=int(res.group(2)),
        kernel=int(values.get("k", 1)),  # type: ignore[arg-type]
        exp_ratio=float(values.get("e", 1.0)),  # type: ignore[arg-type]
        stride=int(values.get("s", 1)),  # type: ignore[arg-type]
        act=str(values.get("act", "none")),
        skip=bool(values.get("skip", False)),
    )
    _check_canonical(spec, text.strip(), text)
    return spec


class NonCanonicalSpec(ValueError):
    """A valid op written in another spelling than its canonical one (``canonical`` holds that one)."""

    def __init__(self, text: str, canonical: str) -> None:
        super().__init__(f"op spec field 'spec': {text!r} is not canonical; write it as {canonical!r}")
        self.canonical = canonical


def _check_canonical(spec: OpSpec, spelled: str, text: str) -> None:
    """The one rule of canonical spelling: ``spelled`` must be exactly what :func:`format_spec` writes."""
    canonical = format_spec(spec)
    if spelled != canonical:
        raise NonCanonicalSpec(text, canonical)


def parse_canonical_spec(text: str) -> OpSpec:
    """Parse ``text`` and require it to BE the canonical string: the check for anything used as a key.

    :func:`parse_spec` forgives surrounding whitespace (a spec typed in a file or a shell); a key may not carry
    it, since ``"conv_... "`` and ``"conv_..."`` would be two keys of one op. Raises ValueError naming the canonical
    form for any other spelling (leading/trailing whitespace, a no-break space, ...).
    """
    spec = parse_spec(text)
    _check_canonical(spec, text, text)
    return spec


# --- the grammar as one regular expression ----------------------------------------------------------------------
# Built from the tables above (kinds, their fields in canonical order, bounds, kernels, strides, activations) so
# that the parser and the pattern have one definition; the API publishes it as the op spec's JSON Schema ``pattern``
# and a schema fuzzer generates valid specs from it. tests/nas_ops/test_spec_pattern.py checks that it matches
# exactly the strings parse_canonical_spec accepts.


def _same_length_ranges(lo: str, hi: str) -> list[str]:
    """Regex pieces matching the digit strings lo..hi, both of one length (inner digits may be 0)."""
    if lo == hi:
        return [lo]
    if len(lo) == 1:
        return [f"[{lo}-{hi}]"]
    if lo[0] == hi[0]:
        return [lo[0] + piece for piece in _same_length_ranges(lo[1:], hi[1:])]
    rest = len(lo) - 1
    pieces, first, last, tail = [], int(lo[0]), int(hi[0]), []
    if lo[1:] != "0" * rest:
        pieces += [lo[0] + piece for piece in _same_length_ranges(lo[1:], "9" * rest)]
        first += 1
    if hi[1:] != "9" * rest:
        tail = [hi[0] + piece for piece in _same_length_ranges("0" * rest, hi[1:])]
        last -= 1
    if first <= last:
        digit = str(first) if first == last else f"[{first}-{last}]"
        pieces.append(digit + ("[0-9]" if rest == 1 else f"[0-9]{{{rest}}}"))
    return pieces + tail


def int_range_pattern(low: int, high: int) -> str:
    """A regex group matching the decimal integers ``low..high`` (``low >= 0``) written without leading zeros."""
    if not 0 <= low <= high:
        raise ValueError(f"int_range_pattern: need 0 <= low <= high, got {low}, {high}")
    pieces: list[str] = []
    for n_digits in range(len(str(low)), len(str(high)) + 1):
        start = max(low, 10 ** (n_digits - 1) if n_digits > 1 else 0)
        end = min(high, 10**n_digits - 1)
        if start <= end:
            pieces += _same_length_ranges(str(start), str(end))
    return "(?:" + "|".join(pieces) + ")"


def _choice(values: tuple[object, ...]) -> str:
    return "(?:" + "|".join(re.escape(str(v)) for v in values) + ")"


def _expand_pattern() -> str:
    """``e`` values as format_spec writes them: an integer, or at most two decimals without a trailing zero."""
    if not (float(MIN_EXPAND).is_integer() and float(MAX_EXPAND).is_integer()):
        raise ValueError("the expand-ratio bounds must be integers for the pattern")
    low, high = int(MIN_EXPAND), int(MAX_EXPAND)
    return f"(?:{int_range_pattern(low, high)}|{int_range_pattern(low, high - 1)}\\.[0-9]?[1-9])"


def spec_pattern(max_channels: int = MAX_CHANNELS, max_resolution: int = MAX_RESOLUTION) -> str:
    """The anchored regular expression of every canonical op spec string (valid in Python ``re`` and ECMA-262,
    i.e. JSON Schema), with channels and resolution bounded by the arguments (at most the grammar's bounds).

    It holds the cross-field rules too (zero and identity keep their channels, ``skip`` needs s1 and IN == OUT,
    a zero op has stride 1) through back-references. Limits that depend on more than the string's fields
    (multiply-adds, memory) are the service's, not the grammar's.
    """
    if not (1 <= max_channels <= MAX_CHANNELS and 1 <= max_resolution <= MAX_RESOLUTION):
        raise ValueError(f"spec_pattern: bounds must be within the grammar's ({MAX_CHANNELS} channels, "
                         f"{MAX_RESOLUTION} resolution), got {max_channels}, {max_resolution}")
    res_n, chs_n = int_range_pattern(1, max_resolution), int_range_pattern(1, max_channels)
    fields = {
        "k": "k" + _choice(KERNELS),
        "e": "e" + _expand_pattern(),
        "s": "s" + _choice(STRIDES),
        "act": _choice(ACTIVATIONS),
    }
    groups = 0
    alternatives = []
    for kind in KINDS:
        keys = _FIELDS[kind]
        res = f"r{res_n}x{res_n}"
        if kind in ("zero", "identity"):
            groups += 1
            chans = f"c({chs_n})-\\{groups}"  # keeps its channels: OUT repeats IN
        elif kind == "head":
            chans = f"c{chs_n}-{int_range_pattern(1, MAX_CLASSES)}"
        else:
            chans = f"c{chs_n}-{chs_n}"
        head = f"{kind}_{res}_{chans}"
        parts = [("s" + _choice(ZERO_STRIDES)) if (key == "s" and kind == "zero") else fields[key]
                 for key in keys if key != "skip"]
        body = "".join("_" + part for part in parts)
        if "skip" not in keys:
            alternatives.append(head + body)
            continue
        alternatives.append(head + body)  # without the shortcut: any channels, any stride
        groups += 1
        skip_parts = [("s1" if key == "s" else fields[key]) for key in keys if key != "skip"]
        alternatives.append(f"{kind}_{res}_c({chs_n})-\\{groups}" + "".join("_" + p for p in skip_parts) + "_skip")
    return "^(?:" + "|".join(alternatives) + ")$"
