"""The heartbeat of a claimed job: a thread that renews the worker's lease while the worker works on the job."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from types import TracebackType

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Calls ``renew()`` every ``every_s`` seconds until the block ends (use it as a context manager).

    ``renew`` returns False once the job is no longer the worker's (taken over, cancelled, finished): the keeper
    then sets :attr:`lost` and stops. A renewal that raises (the database is briefly unreachable) is logged and
    tried again at the next beat: the lease lasts several beats, so one missed beat loses nothing.
    """

    def __init__(self, renew: Callable[[], bool], every_s: float) -> None:
        if not every_s > 0:
            raise ValueError(f"every_s: expected seconds > 0, got {every_s!r}")
        self._renew = renew
        self._every_s = every_s
        self._done = threading.Event()
        self._lost = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="profiler-lease", daemon=True)

    @property
    def lost(self) -> bool:
        """True once a renewal found the job no longer the worker's."""
        return self._lost.is_set()

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._done.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._done.wait(self._every_s):
            try:
                renewed = self._renew()
            except Exception as exc:  # retried at the next beat
                log.warning("renewing a job lease failed: %s: %s", type(exc).__name__, exc)
                continue
            if not renewed:
                self._lost.set()
                return
