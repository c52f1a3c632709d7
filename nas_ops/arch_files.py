"""Reading an architecture file in either format: ours (:mod:`nas_ops.arch`) or the official ProxylessNAS
``net.config`` (:mod:`nas_ops.official`), told apart by their keys.

Imports run one way: :mod:`nas_ops.official` builds :class:`~nas_ops.arch.Architecture` objects, this module
imports both, and :mod:`nas_ops.arch` imports neither.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nas_ops.arch import Architecture
from nas_ops.official import from_net_config


def load_architecture(path: str | Path) -> Architecture:
    """Read an architecture file: our JSON format, or the official ProxylessNAS ``net.config`` (detected by keys)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    return architecture_from_json_obj(data)


def architecture_from_json_obj(data: Any) -> Architecture:
    """Our format when it carries the format marker, the official net.config when it has ``first_conv``."""
    if isinstance(data, dict) and "first_conv" in data and "format" not in data:
        return from_net_config(data)
    return Architecture.from_dict(data)
