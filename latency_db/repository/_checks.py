"""Argument checks shared by the repository functions; each raises ValueError naming the field."""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Collection
from typing import Any

from latency_db.context import MeasurementContext

_HEX64 = re.compile(r"[0-9a-f]{64}")


def check_text(field: str, value: Any, max_len: int) -> str:
    """A non-empty string of at most ``max_len`` characters."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field}: expected a non-empty string, got {value!r}")
    if len(value) > max_len:
        raise ValueError(f"{field}: longer than {max_len} characters ({len(value)})")
    return value


def check_positive_int(field: str, value: Any) -> int:
    """An int >= 1 (bool is not an int here)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field}: expected an integer >= 1, got {value!r}")
    return value


def check_index(field: str, value: Any) -> int:
    """An int >= 0 (bool is not an int here)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{field}: expected an integer >= 0, got {value!r}")
    return value


def check_finite(field: str, value: Any, *, minimum: float | None = None) -> float:
    """A finite real number (at least ``minimum`` when given), as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{field}: expected a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{field}: expected a number >= {minimum:g}, got {value!r}")
    return float(value)


def check_hash(field: str, value: Any) -> str:
    """A sha256 hex digest: 64 lowercase hex digits."""
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise ValueError(f"{field}: expected 64 lowercase hex digits, got {value!r}")
    return value


def check_choice(field: str, value: Any, choices: Collection[str]) -> str:
    """One of ``choices``."""
    if value not in choices:
        raise ValueError(f"{field}: expected one of {', '.join(choices)}, got {value!r}")
    return value


def check_dict(field: str, value: Any) -> dict[str, Any]:
    """A dict (copied, so later changes by the caller do not reach the stored row)."""
    if not isinstance(value, dict):
        raise ValueError(f"{field}: expected a JSON object (dict), got {type(value).__name__}")
    return dict(value)


def check_context(value: Any) -> MeasurementContext:
    """A MeasurementContext whose fields fit the columns: backend and dtype non-empty (64 / 16 characters), batch
    and threads >= 1, env_hash a sha256 hex digest, protocol_version non-empty (32 characters)."""
    if not isinstance(value, MeasurementContext):
        raise ValueError(f"context: expected a MeasurementContext, got {type(value).__name__}")
    check_text("backend", value.backend, 64)
    check_positive_int("batch", value.batch)
    check_text("dtype", value.dtype, 16)
    check_positive_int("threads", value.threads)
    check_hash("env_hash", value.env_hash)
    check_text("protocol_version", value.protocol_version, 32)
    return value
