"""The measuring process: ``python -m profiler_service.isolation.child``, started by the service (one per backend).

It reads requests (:mod:`profiler_service.isolation.frames`) one at a time and answers each with the result or the
error, after it builds and times the item with the same protocol functions the service would use in its own
process (:func:`~profiler_service.engine.protocol.measure_op_round`,
:func:`~profiler_service.engine.protocol.measure_network_round`, the duet of
:mod:`profiler_service.engine.duet`). What it keeps between requests: the calibration values of each measurement
session (a job's ops share them) and the started duets, both dropped when the process ends; the service restarts it
after a limit ended it, and what it kept is then measured again.

Requests (dicts, ``kind`` first):

- ``measure_op``: ``spec`` (an OpSpec), ``backend``, ``batch``, ``dtype``, ``threads``, ``params`` (a ProtocolParams dump),
  ``calibration_session`` (a string: the job's session), ``duet`` (None, or ``key`` and ``shared_baseline_ms``);
  answers a :class:`~profiler_service.engine.stats.RoundMeasurement`.
- ``measure_network``: ``arch`` (an Architecture) instead of ``spec``, no calibration session.
- ``start_duet``: ``backend``, ``threads``, ``params``, ``key``: starts the duet of that context and keeps it under
  ``key``; answers ``series_ms``, ``regime_ratio``, ``label`` and ``baseline_ms``. A later measurement with that
  ``key`` scales it to its ``shared_baseline_ms``; a key the process does not know (it was restarted) is started
  then.
- ``close_duet``: ``key``. ``ping``: answers the process's pid.

Every request may carry ``memory_bytes``: the limit of the process's resident memory while it measures. The
process sets its data-segment limit (``RLIMIT_DATA``, which bounds every private writable mapping: the heap and the
runtimes' arenas) to that limit less the resident size of its mapped files, so an allocation past it fails at once
with an error the reply names as a memory error; the service also ends the process if its resident memory passes
the limit anyway. Each reply carries the item's real peak resident memory (VmHWM, reset before the item), and
after each item the process frees what the item left and returns its free heap pages to the OS, so an item is not
charged for the last one's.

The process dies with its parent (``PR_SET_PDEATHSIG``), and exits when its request pipe closes.
"""

from __future__ import annotations

import ctypes
import gc
import os
import resource
import signal
import sys
from collections import OrderedDict
from typing import Any, BinaryIO

from profiler_service.isolation.frames import read_frame, write_frame
from profiler_service.isolation.memory import reset_peak, status_bytes

#: Resident memory the runtimes' mapped files may still grow by (code paths loaded on first use) within a limit.
FILE_GROWTH_BYTES = 64 << 20
#: Growth of the resident memory over one item past which the item's end runs a full garbage collection.
FULL_COLLECT_BYTES = 128 << 20
#: Measurement sessions whose calibration values are kept (the newest; a job uses one).
KEPT_SESSIONS = 4
#: Substrings of the runtimes' messages for a refused allocation (torch, onnxruntime, the C++ runtime).
try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:
    _LIBC = None
MEMORY_ERROR_MARKS = ("can't allocate memory", "cannot allocate memory", "bad_alloc", "bad allocation",
                      "failed to allocate memory", "out of memory")


def is_memory_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation the OS (or a runtime's allocator) refused."""
    return isinstance(exc, MemoryError) or any(mark in str(exc).lower() for mark in MEMORY_ERROR_MARKS)


class _Child:
    """The state the process keeps between requests, and the handlers."""

    def __init__(self) -> None:
        from profiler_service.engine.calibration import CalibrationCache

        self._sessions: OrderedDict[str, CalibrationCache] = OrderedDict()
        self._started: dict[str, Any] = {}  # key -> DuetStart
        self._duets: dict[str, tuple[float, Any]] = {}  # key -> (shared baseline, Duet)

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        kind = request.get("kind")
        handler = getattr(self, f"_{kind}", None) if isinstance(kind, str) else None
        if handler is None:
            return {"error": f"unknown request kind {kind!r}", "error_type": "ValueError"}
        _limit_memory(request.get("memory_bytes"))
        rss_before = status_bytes().get("VmRSS")
        reset_peak()
        try:
            value = handler(request)
        except BaseException as exc:  # the item's error, answered; the process goes on
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            error_type = "MemoryError" if is_memory_error(exc) else type(exc).__name__
            reply = {"error": f"{type(exc).__name__}: {exc}", "error_type": error_type}
        else:
            reply = {"ok": value}
        reply["peak_rss_bytes"] = status_bytes().get("VmHWM")
        _give_memory_back(rss_before)
        return reply

    def _ping(self, request: dict[str, Any]) -> int:
        return os.getpid()

    def _backend(self, request: dict[str, Any]) -> Any:
        from profiler_service.engine.backends import get_backend
        from profiler_service.engine.duet import DuetBackend
        from profiler_service.engine.protocol import ProtocolParams

        backend = get_backend(request["backend"])
        duet = request.get("duet")
        if duet is None:
            return backend
        key, shared = duet["key"], float(duet["shared_baseline_ms"])
        kept = self._duets.get(key)
        if kept is None or kept[0] != shared:
            started = self._started.pop(key, None)
            if started is None:  # a restarted process: the ratio of the duet's regime is timed again
                from profiler_service.engine.duet import start_regime_duet

                started = start_regime_duet(backend, request["threads"], ProtocolParams(**request["params"]))
            if kept is not None:
                kept[1].close()
            kept = (shared, started.scaled(shared))
            self._duets[key] = kept
        return DuetBackend(backend, kept[1])

    def _calibration(self, session: str) -> Any:
        from profiler_service.engine.calibration import CalibrationCache

        if session not in self._sessions:
            self._sessions[session] = CalibrationCache()
            while len(self._sessions) > KEPT_SESSIONS:
                self._sessions.popitem(last=False)
        self._sessions.move_to_end(session)
        return self._sessions[session]

    def _measure_op(self, request: dict[str, Any]) -> Any:
        from profiler_service.engine.protocol import ProtocolParams, measure_op_round

        backend = self._backend(request)
        return measure_op_round(request["spec"], backend, request["batch"], request["dtype"],
                                request["threads"], ProtocolParams(**request["params"]),
                                self._calibration(request["calibration_session"]))

    def _measure_network(self, request: dict[str, Any]) -> Any:
        from profiler_service.engine.protocol import ProtocolParams, measure_network_round

        backend = self._backend(request)
        return measure_network_round(request["arch"], backend, request["batch"],
                                     request["dtype"], request["threads"], ProtocolParams(**request["params"]))

    def _start_duet(self, request: dict[str, Any]) -> dict[str, Any]:
        from profiler_service.engine.backends import get_backend
        from profiler_service.engine.duet import start_regime_duet
        from profiler_service.engine.protocol import ProtocolParams

        self._close_duet(request)
        started = start_regime_duet(get_backend(request["backend"]), request["threads"],
                                    ProtocolParams(**request["params"]))
        self._started[request["key"]] = started
        return {"series_ms": started.series_ms, "regime_ratio": started.regime_ratio, "label": started.duet.label,
                "baseline_ms": started.duet.baseline_ms}

    def _close_duet(self, request: dict[str, Any]) -> None:
        started = self._started.pop(request["key"], None)
        if started is not None:
            started.duet.close()
        kept = self._duets.pop(request["key"], None)
        if kept is not None:
            kept[1].close()


def _give_memory_back(rss_before: int | None) -> None:
    """Free what the item left and return the heap's free pages to the OS (glibc's ``malloc_trim``), so the next
    item starts from the process's own size, not from the last item's peak. The young generations are collected
    always; a full collection (about 0.1 s with torch loaded, more than a small op's whole round) only when the
    item left the process :data:`FULL_COLLECT_BYTES` larger than before it (what it keeps on purpose, the export
    cache and the duets, grows by less)."""
    gc.collect(1)
    resident = status_bytes().get("VmRSS")
    if rss_before is None or resident is None or resident > rss_before + FULL_COLLECT_BYTES:
        gc.collect()
    if _LIBC is not None:
        try:
            _LIBC.malloc_trim(0)
        except AttributeError:  # not glibc
            pass


def _limit_memory(limit_bytes: int | None) -> None:
    """The data-segment limit for a resident-memory limit of ``limit_bytes`` (None: none); see the module
    docstring."""
    if limit_bytes is None:
        resource.setrlimit(resource.RLIMIT_DATA, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        return
    files = status_bytes().get("RssFile", 0)
    data = max(1 << 20, int(limit_bytes) - files - FILE_GROWTH_BYTES)
    resource.setrlimit(resource.RLIMIT_DATA, (data, resource.RLIM_INFINITY))


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent ends (no effect elsewhere)."""
    if _LIBC is None or not sys.platform.startswith("linux"):
        return
    try:
        _LIBC.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except AttributeError:
        pass


def _private_pipes() -> tuple[BinaryIO, BinaryIO]:
    """The request and reply pipes on private descriptors; fd 1 then points at stderr and fd 0 at /dev/null."""
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.stdout = sys.stderr
    return requests, replies


def main() -> int:
    """Serve requests until the request pipe closes."""
    requests, replies = _private_pipes()
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C of the service's terminal is the service's to handle
    # the runtimes load before the ready frame (the service's start timeout covers it), not in the first item
    import profiler_service.engine.backends  # noqa: F401
    import profiler_service.engine.protocol  # noqa: F401

    child = _Child()
    write_frame(replies, {"ready": os.getpid(), "rss_bytes": status_bytes().get("VmRSS")})
    while True:
        try:
            request = read_frame(requests)
        except EOFError:
            return 0
        write_frame(replies, child.handle(request))


if __name__ == "__main__":
    raise SystemExit(main())
