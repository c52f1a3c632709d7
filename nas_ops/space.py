"""Search spaces: a fixed stem and first block, stages of searchable cells, a fixed feature mix and head.

Every searchable cell chooses one of the MBConv ``candidates`` (kernel x expand ratio) or, where the cell has
stride 1 and ``in_chs == out_chs`` and ``allow_zero`` is set, ``Zero`` (skip the cell: with the shortcut it becomes
the identity). Cell shapes follow from ``input_size`` (no resolution is hard-coded): ``with_resolution`` moves
every cell and fixed op to another input size.

Space file format (JSON or YAML, the keys of :meth:`SearchSpace.to_dict`)::

    name: tiny-32                  # str, required
    input_size: [32, 32]           # [H, W], required
    in_chs: 3                      # optional, default 3
    stem_chs: 16                   # required; stem = 3x3 conv + BN + act
    stem_stride: 2                 # optional, 1 or 2, default 2
    first_block_chs: 16            # required; fixed 3x3 MBConv1, stride 1
    stages:                        # required, non-empty; the first cell of a stage has its stride, others 1
      - {width: 24, depth: 2, stride: 2}
      - ...
    candidates:                    # required, non-empty, no duplicates; MBConv choices of every cell
      - {kernel: 3, exp_ratio: 3}
      - ...
    allow_zero: true               # optional, default true
    mix_chs: 1280                  # optional, default 1280; null = no feature mix layer
    num_classes: 1000              # optional, default 1000
    act: relu6                     # optional, default relu6 (relu6 | relu | hswish | none)

Unknown keys and out-of-range values raise ValueError naming the key.
"""

from __future__ import annotations

import json
import math
import operator
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from nas_ops.arch import Architecture
from nas_ops.spec import ACTIVATIONS, KERNELS, MAX_CHANNELS, MAX_CLASSES, MAX_EXPAND, MAX_RESOLUTION, MIN_EXPAND
from nas_ops.spec import STRIDES, OpSpec

FIRST_BLOCK_KERNEL = 3
ZERO_NAME = "Zero"
MAX_DEPTH = 64
SPACE_FILE_SUFFIXES = (".json", ".yaml", ".yml")


def _fail(key: str, message: str) -> None:
    raise ValueError(f"search space field '{key}': {message}")


def _check_int(key: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        _fail(key, f"must be an integer in [{low}, {high}], got {value!r}")


def _check_choice(key: str, value: Any, allowed: tuple[int, ...] | tuple[str, ...]) -> None:
    """``value`` must be one of ``allowed`` and of the same type (so 3.0 is not a kernel and True not a stride)."""
    if type(value) is not type(allowed[0]) or value not in allowed:
        _fail(key, f"must be one of {allowed}, got {value!r}")


@dataclass(frozen=True)
class Stage:
    """``depth`` cells of output width ``width``; the first one has stride ``stride``, the others 1."""

    width: int
    depth: int
    stride: int

    def __post_init__(self) -> None:
        _check_int("stages.width", self.width, 1, MAX_CHANNELS)
        _check_int("stages.depth", self.depth, 1, MAX_DEPTH)
        _check_choice("stages.stride", self.stride, STRIDES)


@dataclass(frozen=True)
class Candidate:
    """An MBConv choice: kxk depthwise kernel, expand ratio."""

    kernel: int
    exp_ratio: float

    def __post_init__(self) -> None:
        _check_choice("candidates.kernel", self.kernel, KERNELS)
        exp = self.exp_ratio
        if isinstance(exp, bool) or not isinstance(exp, (int, float)) or not MIN_EXPAND <= exp <= MAX_EXPAND:
            _fail("candidates.exp_ratio", f"must be a number in [{MIN_EXPAND:g}, {MAX_EXPAND:g}], got {exp!r}")
        if round(exp, 2) != exp:
            _fail("candidates.exp_ratio", f"at most two decimals, got {exp!r}")
        object.__setattr__(self, "exp_ratio", float(exp))

    @property
    def name(self) -> str:
        """The paper's name, e.g. ``3x3_MBConv6``."""
        return f"{self.kernel}x{self.kernel}_MBConv{self.exp_ratio:g}"


@dataclass(frozen=True)
class Cell:
    """One searchable position: its shapes and its candidate ops (Zero last, when allowed)."""

    index: int
    stage: int
    in_chs: int
    out_chs: int
    height: int
    width: int
    stride: int
    candidates: tuple[OpSpec, ...]
    zero_index: int | None
    candidate_names: tuple[str, ...]

    def is_zero(self, j: int) -> bool:
        """Whether candidate ``j`` is the cell's Zero op: it costs nothing (0 ms, no weights), so a latency table
        neither measures nor stores it."""
        return self.zero_index == j

    def network_op(self, j: int) -> OpSpec:
        """The op candidate ``j`` puts in a network: a chosen Zero becomes an identity block (the shortcut)."""
        if self.is_zero(j):
            return OpSpec("identity", self.in_chs, self.in_chs, self.height, self.width)
        return self.candidates[j]


@dataclass(frozen=True, kw_only=True)
class SearchSpace:
    """A ProxylessNAS-style backbone with searchable cells (file format in the module docstring)."""

    name: str
    input_size: tuple[int, int]
    in_chs: int = 3
    stem_chs: int
    stem_stride: int = 2
    first_block_chs: int
    stages: tuple[Stage, ...]
    candidates: tuple[Candidate, ...]
    allow_zero: bool = True
    mix_chs: int | None = 1280
    num_classes: int = 1000
    act: str = "relu6"
    # derived once from the fields above (frozen dataclass: set through object.__setattr__)
    _cells: tuple[Cell, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            _fail("name", f"must be a non-empty string, got {self.name!r}")
        if not isinstance(self.input_size, tuple) or len(self.input_size) != 2:
            _fail("input_size", f"must be (H, W), got {self.input_size!r}")
        for value in self.input_size:
            _check_int("input_size", value, 1, MAX_RESOLUTION)
        _check_int("in_chs", self.in_chs, 1, MAX_CHANNELS)
        _check_int("stem_chs", self.stem_chs, 1, MAX_CHANNELS)
        _check_choice("stem_stride", self.stem_stride, STRIDES)
        _check_int("first_block_chs", self.first_block_chs, 1, MAX_CHANNELS)
        if not isinstance(self.stages, tuple) or not self.stages or not all(isinstance(s, Stage) for s in self.stages):
            _fail("stages", "must be a non-empty tuple of Stage")
        if (not isinstance(self.candidates, tuple) or not self.candidates
                or not all(isinstance(c, Candidate) for c in self.candidates)):
            _fail("candidates", "must be a non-empty tuple of Candidate")
        if len(set(self.candidates)) != len(self.candidates):
            _fail("candidates", "contains duplicates")
        if not isinstance(self.allow_zero, bool):
            _fail("allow_zero", f"must be a boolean, got {self.allow_zero!r}")
        if self.mix_chs is not None:
            _check_int("mix_chs", self.mix_chs, 1, MAX_CHANNELS)
        _check_int("num_classes", self.num_classes, 1, MAX_CLASSES)
        _check_choice("act", self.act, ACTIVATIONS)
        object.__setattr__(self, "_cells", self._build_cells())

    # --- shapes ---------------------------------------------------------------------------------------------
    def stem_spec(self) -> OpSpec:
        """The fixed stem: 3x3 conv with ``stem_stride`` to ``stem_chs`` + BN + act, at the input size."""
        h, w = self.input_size
        return OpSpec("conv", self.in_chs, self.stem_chs, h, w, kernel=3, stride=self.stem_stride, act=self.act)

    def first_block_spec(self) -> OpSpec:
        """The fixed first block: 3x3_MBConv1, stride 1 (with the shortcut when it keeps the channel count)."""
        stem = self.stem_spec()
        return OpSpec("mbconv", self.stem_chs, self.first_block_chs, stem.out_height, stem.out_width,
                      kernel=FIRST_BLOCK_KERNEL, exp_ratio=1.0, stride=1, act=self.act,
                      skip=self.stem_chs == self.first_block_chs)

    def _build_cells(self) -> tuple[Cell, ...]:
        first = self.first_block_spec()
        chs, h, w = first.output_shape
        cells: list[Cell] = []
        for stage_index, stage in enumerate(self.stages):
            for depth_index in range(stage.depth):
                stride = stage.stride if depth_index == 0 else 1
                cell = self._cell(len(cells), stage_index, chs, stage.width, h, w, stride)
                cells.append(cell)
                _, h, w = cell.candidates[0].output_shape
                chs = stage.width
        return tuple(cells)

    def _cell(self, index: int, stage: int, in_chs: int, out_chs: int, h: int, w: int, stride: int) -> Cell:
        keeps_shape = stride == 1 and in_chs == out_chs
        specs = [OpSpec("mbconv", in_chs, out_chs, h, w, kernel=c.kernel, exp_ratio=float(c.exp_ratio),
                        stride=stride, act=self.act, skip=keeps_shape) for c in self.candidates]
        names = [c.name for c in self.candidates]
        zero_index = None
        if self.allow_zero and keeps_shape:
            zero_index = len(specs)
            specs.append(OpSpec("zero", in_chs, in_chs, h, w, stride=1))
            names.append(ZERO_NAME)
        return Cell(index=index, stage=stage, in_chs=in_chs, out_chs=out_chs, height=h, width=w, stride=stride,
                    candidates=tuple(specs), zero_index=zero_index, candidate_names=tuple(names))

    def cells(self) -> list[Cell]:
        """The searchable cells in execution order."""
        return list(self._cells)

    def _tail_specs(self) -> tuple[OpSpec | None, OpSpec]:
        """(mix or None, head) after the last cell."""
        last = self._cells[-1].candidates[0]
        chs, h, w = last.output_shape
        mix = None
        if self.mix_chs is not None:
            mix = OpSpec("mix", chs, self.mix_chs, h, w, act=self.act)
            chs = self.mix_chs
        return mix, OpSpec("head", chs, self.num_classes, h, w)

    def fixed_specs(self) -> list[OpSpec]:
        """The ops every architecture of the space shares: stem, first block, mix (if any), head."""
        mix, head = self._tail_specs()
        return [self.stem_spec(), self.first_block_spec(), *([mix] if mix else []), head]

    def table_specs(self) -> list[OpSpec]:
        """Every op a latency table of the space needs: the fixed ops, then each cell's candidates except Zero
        (:meth:`Cell.is_zero`: it costs 0), each op once, in that order."""
        specs = list(self.fixed_specs())
        for cell in self._cells:
            specs.extend(op for j, op in enumerate(cell.candidates) if not cell.is_zero(j))
        return list(dict.fromkeys(specs))

    # --- architectures --------------------------------------------------------------------------------------
    def architecture(self, choices: Sequence[int]) -> Architecture:
        """The architecture taking candidate ``choices[i]`` at cell i; a chosen Zero becomes an identity block.

        ``choices`` may be any sequence of integers (Python, numpy or integer tensor elements).
        """
        if isinstance(choices, (str, bytes)) or not hasattr(choices, "__len__"):
            raise ValueError(f"choices: expected a sequence of integers, got {type(choices).__name__}")
        if len(choices) != len(self._cells):
            raise ValueError(f"choices: expected {len(self._cells)} choices (one per cell), got {len(choices)}")
        indices = [self._choice_index(cell, choice) for cell, choice in zip(self._cells, choices)]
        blocks = [self.first_block_spec(), *(cell.network_op(choice) for cell, choice in zip(self._cells, indices))]
        mix, head = self._tail_specs()
        return Architecture(stem=self.stem_spec(), blocks=blocks, head=head, mix=mix,
                            metadata={"space": self.name, "choices": indices})

    @staticmethod
    def _choice_index(cell: Cell, choice: Any) -> int:
        """``choice`` as a Python int in range for ``cell``; ValueError naming ``choices[i]`` otherwise."""
        try:
            index = None if isinstance(choice, bool) else operator.index(choice)
        except TypeError:
            index = None
        if index is None or not 0 <= index < len(cell.candidates):
            raise ValueError(f"choices[{cell.index}]: must be an integer in [0, {len(cell.candidates) - 1}], "
                             f"got {choice!r}")
        return index

    def random_choices(self, rng: random.Random) -> list[int]:
        """One uniformly drawn candidate index per cell."""
        return [rng.randrange(len(cell.candidates)) for cell in self._cells]

    def size(self) -> int:
        """Number of distinct architectures: the product of the cells' candidate counts."""
        return math.prod(len(cell.candidates) for cell in self._cells)

    def with_resolution(self, h: int, w: int) -> SearchSpace:
        """The same space at input size (h, w): every cell and fixed op is reshaped."""
        return replace(self, input_size=(h, w))

    # --- file format ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-ready dict (the space file format of the module docstring)."""
        return {
            "name": self.name,
            "input_size": list(self.input_size),
            "in_chs": self.in_chs,
            "stem_chs": self.stem_chs,
            "stem_stride": self.stem_stride,
            "first_block_chs": self.first_block_chs,
            "stages": [{"width": s.width, "depth": s.depth, "stride": s.stride} for s in self.stages],
            "candidates": [{"kernel": c.kernel, "exp_ratio": c.exp_ratio} for c in self.candidates],
            "allow_zero": self.allow_zero,
            "mix_chs": self.mix_chs,
            "num_classes": self.num_classes,
            "act": self.act,
        }

    @classmethod
    def from_dict(cls, data: Any) -> SearchSpace:
        """Build from the space file format; ValueError names the bad key."""
        if not isinstance(data, dict):
            raise ValueError(f"search space: expected an object, got {type(data).__name__}")
        known = {"name", "input_size", "in_chs", "stem_chs", "stem_stride", "first_block_chs", "stages",
                 "candidates", "allow_zero", "mix_chs", "num_classes", "act"}
        unknown = sorted(set(data) - known)
        if unknown:
            _fail(unknown[0], f"unknown key (expected some of {', '.join(sorted(known))})")
        for key in ("name", "input_size", "stem_chs", "first_block_chs", "stages", "candidates"):
            if key not in data:
                _fail(key, "missing")
        if not isinstance(data["input_size"], (list, tuple)) or len(data["input_size"]) != 2:
            _fail("input_size", f"must be a list [H, W], got {data['input_size']!r}")
        stages = _items(data["stages"], "stages", Stage, ("width", "depth", "stride"))
        candidates = _items(data["candidates"], "candidates", Candidate, ("kernel", "exp_ratio"))
        optional = {k: data[k] for k in ("in_chs", "stem_stride", "allow_zero", "mix_chs", "num_classes", "act")
                    if k in data}
        return cls(name=data["name"], input_size=tuple(data["input_size"]), stem_chs=data["stem_chs"],
                   first_block_chs=data["first_block_chs"], stages=stages, candidates=candidates, **optional)


def _items(raw: Any, key: str, kind: type, keys: tuple[str, ...]) -> tuple[Any, ...]:
    """A list of objects with exactly ``keys`` -> tuple of ``kind``; errors name the list index."""
    if not isinstance(raw, list) or not raw:
        _fail(key, "must be a non-empty list")
    items = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or set(item) != set(keys):
            _fail(f"{key}[{i}]", f"must be an object with exactly the keys {', '.join(keys)}, got {item!r}")
        try:
            items.append(kind(**item))
        except ValueError as exc:
            raise ValueError(f"{exc} (at {key}[{i}])") from exc
    return tuple(items)


# --- the named search spaces ------------------------------------------------------------------------------------
PROXYLESS_CANDIDATES = tuple(Candidate(k, float(e)) for k in (3, 5, 7) for e in (3, 6))
_PROXYLESS_DEPTHS, _PROXYLESS_STRIDES = (4, 4, 4, 4, 4, 1), (2, 2, 2, 1, 2, 1)


def _proxyless(name: str, stem: int, first: int, widths: tuple[int, ...], mix: int) -> SearchSpace:
    stages = tuple(Stage(w, d, s) for w, d, s in zip(widths, _PROXYLESS_DEPTHS, _PROXYLESS_STRIDES))
    return SearchSpace(name=name, input_size=(224, 224), stem_chs=stem, first_block_chs=first, stages=stages,
                       candidates=PROXYLESS_CANDIDATES, mix_chs=mix)


SPACES: dict[str, SearchSpace] = {
    # the paper's search backbone (ImageNet, mobile setting)
    "proxyless-mobile": _proxyless("proxyless-mobile", 32, 16, (24, 40, 80, 96, 192, 320), 1280),
    # the widths of the released GPU and CPU nets, same stage structure
    "proxyless-gpu": _proxyless("proxyless-gpu", 40, 24, (32, 56, 112, 128, 256, 432), 1728),
    "proxyless-cpu": _proxyless("proxyless-cpu", 40, 24, (32, 48, 88, 104, 216, 360), 1432),
    # CIFAR-sized: searchable in minutes on a 2-core CPU (32x32 -> 16x16 stem, 7 cells)
    "tiny-32": SearchSpace(
        name="tiny-32", input_size=(32, 32), stem_chs=16, stem_stride=2, first_block_chs=16,
        stages=(Stage(16, 2, 1), Stage(24, 2, 2), Stage(32, 2, 2), Stage(48, 1, 1)),
        candidates=PROXYLESS_CANDIDATES, mix_chs=256, num_classes=10,
    ),
    # for unit tests: 16x16 input, 3 cells (2 may be Zero), no feature mix
    "micro-16": SearchSpace(
        name="micro-16", input_size=(16, 16), stem_chs=8, stem_stride=1, first_block_chs=8,
        stages=(Stage(8, 2, 1), Stage(16, 1, 2)),
        candidates=PROXYLESS_CANDIDATES, mix_chs=None, num_classes=10,
    ),
}


def load_space(name_or_path: str | Path) -> SearchSpace:
    """A named space (:data:`SPACES`), or a space file (``.json``, ``.yaml`` or ``.yml``; format in the module
    docstring)."""
    text = str(name_or_path)
    if isinstance(name_or_path, str) and name_or_path in SPACES:
        return SPACES[name_or_path]
    path = Path(name_or_path)
    if path.suffix.lower() not in SPACE_FILE_SUFFIXES:
        raise ValueError(f"search space {text!r}: not a space name (known: {', '.join(SPACES)}) "
                         f"nor a {'/'.join(SPACE_FILE_SUFFIXES)} file")
    if not path.is_file():
        raise ValueError(f"search space file {text!r}: not found")
    raw = path.read_text(encoding="utf-8")
    try:
        data = json.loads(raw) if path.suffix.lower() == ".json" else yaml.safe_load(raw)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"search space file {text!r}: not valid {path.suffix[1:].upper()} ({exc})") from exc
    return SearchSpace.from_dict(data)


def save_space(space: SearchSpace, path: str | Path) -> Path:
    """Write ``space`` as JSON or YAML, chosen by the file suffix."""
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in SPACE_FILE_SUFFIXES:
        raise ValueError(f"search space file {str(path)!r}: suffix must be one of {', '.join(SPACE_FILE_SUFFIXES)}")
    data = space.to_dict()
    text = json.dumps(data, indent=2) + "\n" if suffix == ".json" else yaml.safe_dump(data, sort_keys=False)
    target.write_text(text, encoding="utf-8")
    return target
