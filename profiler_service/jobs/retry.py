"""Bounded retries with exponential back-off for the worker's database operations.

A store that is briefly unavailable (a restart, a lock held too long, a lost connection) gets a few more tries,
each after a longer wait; a store that stays unavailable (a full disk) ends in :class:`StoreUnavailable` after
``attempts`` tries, never in a retry storm. Only errors that :func:`latency_db.errors.is_store_unavailable` calls
transient are retried; any other error is raised at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from latency_db.errors import describe_store_error, is_store_unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
#: Waits ``seconds``; returns True when the wait was cut short because the worker is stopping.
Sleep = Callable[[float], bool]


@dataclass(frozen=True)
class Backoff:
    """``attempts`` tries; the k-th wait (k = 0, 1, ...) is ``first_s * factor**k`` seconds, at most ``max_s``."""

    attempts: int = 5
    first_s: float = 0.5
    factor: float = 2.0
    max_s: float = 30.0

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or self.attempts < 1:
            raise ValueError(f"attempts: expected an integer >= 1, got {self.attempts!r}")
        if not (self.first_s > 0 and self.factor >= 1 and self.max_s >= self.first_s):
            raise ValueError(f"back-off: need first_s > 0, factor >= 1, max_s >= first_s, got {self}")

    def wait_s(self, failures: int) -> float:
        """The wait after the ``failures``-th consecutive failure (1, 2, ...)."""
        return min(self.max_s, self.first_s * self.factor ** (failures - 1))


class StoreUnavailable(RuntimeError):
    """The store refused an operation on every try."""


class Interrupted(RuntimeError):
    """A back-off wait was cut short: the worker is stopping."""


def with_retries(operation: Callable[[], T], what: str, backoff: Backoff, sleep: Sleep) -> T:
    """Run ``operation``; on a transient store error wait and try again, ``backoff.attempts`` tries in all.

    Raises StoreUnavailable naming ``what``, the number of tries and the last error when every try failed;
    Interrupted when a wait was cut short; any non-transient error at once.
    """
    for attempt in range(1, backoff.attempts + 1):
        try:
            return operation()
        except Exception as exc:
            if not is_store_unavailable(exc):
                raise
            reason = describe_store_error(exc)
            if attempt == backoff.attempts:
                raise StoreUnavailable(f"{what}: the database refused it {attempt} times (last: {reason})") from exc
            wait = backoff.wait_s(attempt)
            log.warning("%s failed (%s), try %d of %d; next try in %.1f s", what, reason, attempt,
                        backoff.attempts, wait)
            if sleep(wait):
                raise Interrupted(f"{what}: the worker is stopping") from exc
    raise AssertionError("unreachable: attempts >= 1")
