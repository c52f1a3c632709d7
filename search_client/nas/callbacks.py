"""What the search loop reports while it runs: :class:`SearchCallbacks` (the command line draws bars from it).

The loop itself prints nothing; the default callbacks only pass warnings on to :func:`warnings.warn`
(category :class:`SearchWarning`).
"""

from __future__ import annotations

import warnings
from typing import Any


class SearchWarning(UserWarning):
    """A search that runs but will likely not give what was asked (e.g. an architecture that cannot move)."""


class SearchCallbacks:
    """Hooks of the search loop; subclass and override what you need (every hook but :meth:`warning` does
    nothing by default)."""

    def warning(self, message: str) -> None:
        """Something the user should know before the search trains (called before the first step)."""
        warnings.warn(message, SearchWarning, stacklevel=2)

    def epoch_start(self, epoch: int, total_epochs: int, phase: str, steps: int) -> None:
        """Epoch ``epoch`` (1-based) of ``total_epochs`` starts: ``phase`` is warmup or search, ``steps`` weight
        steps follow."""

    def step(self) -> None:
        """One weight step (and the architecture step after it, if any) is done."""

    def epoch_end(self, row: dict[str, Any]) -> None:
        """An epoch ended; ``row`` is its log row (see :mod:`search_client.nas.search_log`)."""
