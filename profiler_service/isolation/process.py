"""The service's side of a measuring process: start it, send it an item, and enforce the item's limits.

:meth:`MeasuringProcess.request` sends one request and waits for the reply while it watches, every ``poll_s``
seconds: the stop hook (a cancelled job, a stopping service), the item's time limit, the child's resident memory
against the item's memory limit, and whether the child still lives. Any of the first three ends the child
(SIGKILL: it may be inside a runtime call that nothing else interrupts), so a cancel or a SIGTERM stops the item in
flight within ``poll_s`` plus the kill; the next request starts a new child. The waiting thread holds no lock the
API needs, so health checks and requests never wait on measuring.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from profiler_service.engine.protocol import MeasurementStopped
from profiler_service.isolation.errors import (
    MeasuringProcessDied,
    MemoryLimitExceeded,
    RemoteError,
    TimeLimitExceeded,
)
from profiler_service.isolation.frames import read_frame, write_frame
from profiler_service.isolation.memory import rss_bytes

log = logging.getLogger(__name__)

#: The command that runs a measuring process.
CHILD_COMMAND: tuple[str, ...] = (sys.executable, "-m", "profiler_service.isolation.child")
#: Seconds a new measuring process may take to load its runtimes and say it is ready.
DEFAULT_START_S = 120.0
#: Seconds between two looks at the stop hook, the clock and the child's memory while an item is measured.
DEFAULT_POLL_S = 0.2
_MIB = 1 << 20


def describe_exit(returncode: int) -> str:
    """How a process ended, in words (a signal by name; SIGKILL with its usual sender)."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        if -returncode == signal.SIGKILL:
            return f"killed by {name} (the kernel's OOM killer sends it when the machine runs out of memory)"
        return f"ended by {name}"
    return f"exited with status {returncode}"


class MeasuringProcess:
    """One measuring process (started on first use, restarted after it was ended); one request at a time.

    ``label`` names it in messages and logs (the backend it measures); ``command`` runs the child (tests pass
    scripted children); ``clock`` and ``rss`` are what the limits read (tests pass fake ones)."""

    def __init__(self, label: str, *, command: Sequence[str] = CHILD_COMMAND, start_s: float = DEFAULT_START_S,
                 poll_s: float = DEFAULT_POLL_S, clock: Callable[[], float] = time.monotonic,
                 rss: Callable[[int], int | None] = rss_bytes, env: dict[str, str] | None = None) -> None:
        self.label = label
        self.command = list(command)
        self.start_s = start_s
        self.poll_s = poll_s
        self.clock = clock
        self.rss = rss
        self.env = env
        self.generation = 0  # raised at every start: what the child kept belongs to one generation
        self.idle_rss_bytes: int | None = None  # the child's resident memory when it said it was ready
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        """The running child's pid (None when none runs)."""
        return self._process.pid if self._process is not None and self._process.poll() is None else None

    def request(self, message: dict[str, Any], *, what: str, memory_bytes: int | None = None,
                memory_setting: str = "the memory limit", time_limit_s: float | None = None,
                should_stop: Callable[[], bool] | None = None) -> tuple[Any, int | None]:
        """Send ``message`` (with ``memory_bytes``) and return (the reply's value, the item's peak resident bytes).

        ``what`` names the item in messages, ``memory_setting`` the setting its memory limit comes from. Raises
        MeasurementStopped (``should_stop`` said so), TimeLimitExceeded, MemoryLimitExceeded, MeasuringProcessDied
        or RemoteError (the item's own error in the child); after any but the last, the child is gone."""
        with self._lock:
            self._ensure_started(should_stop)  # a start has its own limit (start_s), not the item's
            started = self.clock()
            process = self._process
            assert process is not None and process.stdin is not None
            try:
                write_frame(process.stdin, {**message, "memory_bytes": memory_bytes})
            except (BrokenPipeError, OSError):
                self._reap()
                raise MeasuringProcessDied(f"the measuring process of {self.label} died before measuring {what}: "
                                           f"{describe_exit(process.wait())}") from None
            reply = self._await_reply(what, started, memory_bytes, memory_setting, time_limit_s, should_stop)
        if "error" in reply:
            peak = reply.get("peak_rss_bytes")
            if reply.get("error_type") == "MemoryError":
                raise MemoryLimitExceeded(
                    f"measuring {what} needed more memory than {memory_setting} of {_mib(memory_bytes)} allows "
                    f"(the runtime refused an allocation: {reply['error']})", peak)
            raise RemoteError(reply["error"], peak)
        return reply["ok"], reply.get("peak_rss_bytes")

    def _await_reply(self, what: str, started: float, memory_bytes: int | None, memory_setting: str,
                     time_limit_s: float | None, should_stop: Callable[[], bool] | None) -> dict[str, Any]:
        process = self._process
        assert process is not None and process.stdout is not None
        while True:
            reply = self._next_frame(process, f"died while measuring {what}")
            if reply is not None:
                return reply
            if should_stop is not None and should_stop():
                self.kill()
                raise MeasurementStopped(f"measuring {what} stopped: its job was cancelled or the service stops "
                                         "(the measuring process was ended)")
            elapsed = self.clock() - started
            if time_limit_s is not None and elapsed > time_limit_s:
                self.kill()
                raise TimeLimitExceeded(f"measuring {what} took longer than the time limit of {time_limit_s:g} s "
                                        "per item (item_time_limit_s); the measuring process was ended")
            resident = self.rss(process.pid) if memory_bytes is not None else None
            if resident is not None and memory_bytes is not None and resident > memory_bytes:
                self.kill()
                raise MemoryLimitExceeded(f"measuring {what} passed {memory_setting} of {_mib(memory_bytes)}: the "
                                          f"measuring process reached {_mib(resident)} resident and was ended",
                                          resident)

    def _ensure_started(self, should_stop: Callable[[], bool] | None) -> None:
        if self._process is not None and self._process.poll() is None:
            return
        self._reap()
        process = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=self.env,
                                   start_new_session=True)  # a terminal's Ctrl-C reaches the service only
        self._process = process
        self.generation += 1
        assert process.stdout is not None
        deadline = self.clock() + self.start_s
        while True:
            ready = self._next_frame(process, "did not start")
            if ready is not None:
                self.idle_rss_bytes = ready.get("rss_bytes")
                log.info("measuring process of %s started (pid %s, %s resident)", self.label, process.pid,
                         _mib(self.idle_rss_bytes))
                return
            if should_stop is not None and should_stop():
                self.kill()
                raise MeasurementStopped(f"starting the measuring process of {self.label} stopped")
            if self.clock() > deadline:
                self.kill()
                raise MeasuringProcessDied(f"the measuring process of {self.label} did not start within "
                                           f"{self.start_s:g} s")

    def _next_frame(self, process: subprocess.Popen[bytes], dead: str) -> dict[str, Any] | None:
        """The child's next frame if one arrives within ``poll_s``, else None; MeasuringProcessDied ("the measuring
        process of LABEL <dead>: <how it ended>") when it closed its pipe, wrote what is no frame, or ended."""
        assert process.stdout is not None
        readable, _, _ = select.select([process.stdout], [], [], self.poll_s)
        if readable:
            try:
                return read_frame(process.stdout)
            except (EOFError, ValueError) as exc:
                self._reap()
                how = describe_exit(process.wait()) if isinstance(exc, EOFError) else str(exc)
                raise MeasuringProcessDied(f"the measuring process of {self.label} {dead}: {how}") from None
        if process.poll() is not None:
            self._reap()
            raise MeasuringProcessDied(f"the measuring process of {self.label} {dead}: "
                                       f"{describe_exit(process.returncode)}")
        return None

    def kill(self) -> None:
        """End the child now (SIGKILL) and reap it; the next request starts a new one."""
        process = self._process
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)  # its own session: the child and anything it started
            except (ProcessLookupError, PermissionError):
                process.kill()
            process.wait()
        self._reap()

    def _reap(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        try:
            process.wait(timeout=1.0)  # a child that closed its pipe is exiting: let it say how
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def close(self) -> None:
        """Stop the child: close its request pipe (it exits), SIGKILL after a second if it does not."""
        process = self._process
        if process is None:
            return
        if process.stdin is not None:
            try:
                process.stdin.close()
            except OSError:
                pass
        try:
            process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            pass
        self.kill()


def _mib(value: int | None) -> str:
    return "no limit" if value is None else f"{value / _MIB:.0f} MiB"
