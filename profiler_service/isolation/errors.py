"""What can go wrong with an item measured in the measuring process (each message names the item and the limit)."""

from __future__ import annotations


class IsolationError(RuntimeError):
    """An item the measuring process could not measure; ``str()`` is the whole message a job item stores.
    ``peak_rss_bytes``: the measuring process's peak resident memory during the item, where it is known (the
    child's own report, or the last reading before the service ended it)."""

    def __init__(self, message: str, peak_rss_bytes: int | None = None) -> None:
        super().__init__(message)
        self.peak_rss_bytes = peak_rss_bytes


class MemoryLimitExceeded(IsolationError):
    """The item needed more memory than its limit: the runtime refused an allocation, or the process's resident
    memory passed the limit and the process was ended."""


class TimeLimitExceeded(IsolationError):
    """The item took longer than its time limit; the process was ended."""


class MeasuringProcessDied(IsolationError):
    """The measuring process ended while it measured the item (a crash, a signal, the OOM killer)."""


class RemoteError(IsolationError):
    """The item's own error in the measuring process (e.g. an op its runtime cannot run): ``"Type: message"``."""
