"""The torch CPU thread count of the commands that train (``--train-threads``)."""

from __future__ import annotations

import torch


def set_threads(threads: int | None) -> None:
    """Fix torch's CPU thread count (more threads than free cores slows training down by far more than 2x)."""
    if threads is not None:
        torch.set_num_threads(threads)
