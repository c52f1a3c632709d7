"""Architectures: a backbone of op specs plus metadata, and its JSON file format.

Architecture file (JSON, UTF-8), format version 1::

    {
      "format": "proxyless-arch",          # fixed marker
      "version": 1,
      "stem":   "conv_r224x224_c3-32_k3_s2_relu6",
      "blocks": ["mbconv_r112x112_c32-16_k3_e1_s1_relu6", ...],   # in order, first block included
      "mix":    "mix_r7x7_c320-1280_relu6",                       # or null when there is no feature mix
      "head":   "head_r7x7_c1280-1000",
      "metadata": {                         # free-form; written by the search, all optional:
        "space": "proxyless-mobile",
        "devices": [...], "predicted_latency_ms": {...}, "probabilities": [[...], ...]
      }
    }

The input size is the stem's resolution and the number of classes is the head's ``out_chs``. Every op's input
shape must equal the previous op's output shape; loading a file whose ops do not chain raises ValueError.
Reading a file in either format (ours or the official net.config): :mod:`nas_ops.arch_files`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nas_ops.spec import OpSpec, format_spec, parse_spec

FORMAT_MARKER = "proxyless-arch"
FORMAT_VERSION = 1


@dataclass
class Architecture:
    """A whole network: stem, blocks, optional feature mix, head; plus free-form metadata."""

    stem: OpSpec
    blocks: list[OpSpec]
    head: OpSpec
    mix: OpSpec | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) of the network input."""
        return (self.stem.height, self.stem.width)

    @property
    def in_chs(self) -> int:
        return self.stem.in_chs

    @property
    def num_classes(self) -> int:
        return self.head.out_chs

    def with_resolution(self, height: int, width: int) -> Architecture:
        """The same ops at input size (height, width): every op takes the previous op's output resolution."""
        specs: list[OpSpec] = []
        h, w = height, width
        for spec in self.specs():
            moved = spec.with_resolution(h, w)
            specs.append(moved)
            h, w = moved.out_height, moved.out_width
        n_blocks = len(self.blocks)
        return Architecture(stem=specs[0], blocks=specs[1:1 + n_blocks],
                            mix=specs[1 + n_blocks] if self.mix is not None else None, head=specs[-1],
                            metadata=dict(self.metadata))

    def specs(self) -> list[OpSpec]:
        """Every op in execution order: stem, blocks, mix (if any), head."""
        return [self.stem, *self.blocks, *([self.mix] if self.mix else []), self.head]

    def validate(self) -> None:
        """Check kinds and that every op's input shape is the previous op's output shape."""
        if self.stem.kind != "conv":
            raise ValueError(f"architecture field 'stem': must be a conv op, got {self.stem.kind}")
        if self.head.kind != "head":
            raise ValueError(f"architecture field 'head': must be a head op, got {self.head.kind}")
        if self.mix is not None and self.mix.kind != "mix":
            raise ValueError(f"architecture field 'mix': must be a mix op, got {self.mix.kind}")
        for i, block in enumerate(self.blocks):
            if block.kind not in ("mbconv", "identity", "zero", "conv"):
                raise ValueError(f"architecture field 'blocks[{i}]': a {block.kind} op cannot be a block")
        specs = self.specs()
        names = ["stem", *[f"blocks[{i}]" for i in range(len(self.blocks))], *(["mix"] if self.mix else []), "head"]
        for (prev, prev_name), (cur, cur_name) in zip(zip(specs, names), zip(specs[1:], names[1:])):
            if cur.input_shape != prev.output_shape:
                raise ValueError(
                    f"architecture field '{cur_name}': input shape {cur.input_shape} does not match the output "
                    f"shape {prev.output_shape} of {prev_name}"
                )

    # --- file format ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_MARKER,
            "version": FORMAT_VERSION,
            "stem": format_spec(self.stem),
            "blocks": [format_spec(b) for b in self.blocks],
            "mix": format_spec(self.mix) if self.mix else None,
            "head": format_spec(self.head),
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Architecture:
        """Build from our JSON dict; raise ValueError naming the bad key."""
        if not isinstance(data, dict):
            raise ValueError("architecture: expected a JSON object")
        if data.get("format") != FORMAT_MARKER:
            raise ValueError(f"architecture field 'format': expected {FORMAT_MARKER!r}, got {data.get('format')!r}")
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"architecture field 'version': unsupported version {data.get('version')!r}")
        for key in ("stem", "blocks", "head"):
            if key not in data:
                raise ValueError(f"architecture field '{key}': missing")
        if not isinstance(data["blocks"], list):
            raise ValueError("architecture field 'blocks': must be a list of op spec strings")
        metadata = data.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise ValueError("architecture field 'metadata': must be an object")
        return cls(
            stem=parse_spec(data["stem"]),
            blocks=[parse_spec(b) for b in data["blocks"]],
            mix=parse_spec(data["mix"]) if data.get("mix") else None,
            head=parse_spec(data["head"]),
            metadata=metadata,
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")
