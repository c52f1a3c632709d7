"""Test data shared by the latency_db tests."""

from __future__ import annotations

from typing import Any

FINGERPRINT = {"cpu": "Test CPU 3000", "cores": 8, "torch": "2.13.0", "os": "Linux"}
ENV_HASH = "ab" * 32


def make_stats(median_ms: float = 1.5, **overrides: Any) -> dict[str, Any]:
    """A valid Stats dict around ``median_ms``."""
    stats = {
        "median_ms": median_ms,
        "mean_ms": median_ms * 1.02,
        "std_ms": median_ms * 0.05,
        "min_ms": median_ms * 0.9,
        "p10_ms": median_ms * 0.95,
        "p90_ms": median_ms * 1.1,
        "iqr_ms": median_ms * 0.08,
        "samples": 50,
    }
    stats.update(overrides)
    return stats


def spec(i: int) -> str:
    """The i-th distinct (well-formed) op spec string; specs sort in the order of i (for i < 9000)."""
    return f"mbconv_r16x16_c{1000 + i}-{1000 + i}_k3_e3_s1_relu6_skip"
