"""Canonical JSON and its sha256: the identity of fingerprints and environments."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(obj: Any) -> str:
    """Serialize ``obj`` as canonical JSON: sorted keys, compact separators, no NaN/Infinity.

    Raises ValueError when ``obj`` holds something JSON cannot represent.
    """
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not canonical JSON: {exc}") from None


def canonical_hash(obj: Any) -> str:
    """The sha256 (64 lowercase hex digits) of :func:`canonical_json` of ``obj``."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()
