"""The watch over a claimed job: a thread that renews the worker's lease and notices when the job is no longer the
worker's to run (cancelled, taken over, finished), while the worker works on it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Until the block ends (use it as a context manager): every ``renew_s`` seconds calls ``renew()``, and in
    between, every ``check_s`` seconds, ``still_held()``.

    Either answering False (the job was cancelled, taken over after the lease expired, or finished) sets
    :attr:`lost` and ends the watch: the worker then stops working on the job, also in the middle of an item. A
    call that raises (the database is briefly unreachable) is logged and tried again at the next beat: the lease
    lasts several renewal periods, so one missed beat loses nothing.
    """

    def __init__(self, renew: Callable[[], bool], renew_s: float, still_held: Callable[[], bool],
                 check_s: float) -> None:
        for name, value in (("renew_s", renew_s), ("check_s", check_s)):
            if not value > 0:
                raise ValueError(f"{name}: expected seconds > 0, got {value!r}")
        self._renew, self._renew_s = renew, renew_s
        self._still_held, self._check_s = still_held, check_s
        self._done = threading.Event()
        self._lost = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="profiler-lease", daemon=True)

    @property
    def lost(self) -> bool:
        """True once the job was found no longer the worker's (cancelled, taken over, finished)."""
        return self._lost.is_set()

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._done.set()
        self._thread.join()

    def _watch(self) -> None:
        next_renewal = time.monotonic() + self._renew_s
        while not self._done.wait(min(self._check_s, max(0.0, next_renewal - time.monotonic()))):
            renewing = time.monotonic() >= next_renewal
            try:
                held = self._renew() if renewing else self._still_held()
            except Exception as exc:  # tried again at the next beat
                log.warning("watching a job's lease failed: %s: %s", type(exc).__name__, exc)
                continue
            finally:
                if renewing:
                    next_renewal = time.monotonic() + self._renew_s
            if not held:
                self._lost.set()
                return
