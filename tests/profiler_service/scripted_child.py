"""A scripted measuring process for the tests of :mod:`profiler_service.isolation.process`: it speaks the real
frame protocol and does what each request's ``kind`` says.

- ``echo``: answers ``value``; ``remote_error``: answers an item error; ``memory_error``: answers a refused
  allocation; ``sleep``: sleeps ``seconds`` then answers; ``crash``: kills itself with ``signal``;
  ``allocate``: touches ``mib`` MiB and answers (under the request's ``memory_bytes`` as data limit);
  ``exit_before_ready`` in the environment: exits with status 3 before the ready frame.
"""

from __future__ import annotations

import os
import signal
import time

from profiler_service.isolation.child import _limit_memory, _private_pipes
from profiler_service.isolation.frames import read_frame, write_frame
from profiler_service.isolation.memory import reset_peak, status_bytes


def main() -> int:
    requests, replies = _private_pipes()
    if os.environ.get("SCRIPTED_CHILD_EXIT_BEFORE_READY"):
        return 3
    write_frame(replies, {"ready": os.getpid(), "rss_bytes": status_bytes().get("VmRSS")})
    held = []
    while True:
        try:
            request = read_frame(requests)
        except EOFError:
            return 0
        kind = request["kind"]
        reset_peak()
        if kind == "echo":
            reply = {"ok": request["value"], "peak_rss_bytes": 1234}
        elif kind == "remote_error":
            reply = {"error": "ValueError: op spec 'x': unknown kind", "error_type": "ValueError"}
        elif kind == "memory_error":
            reply = {"error": "RuntimeError: DefaultCPUAllocator: can't allocate memory", "error_type": "MemoryError"}
        elif kind == "sleep":
            time.sleep(request["seconds"])
            reply = {"ok": "slept", "peak_rss_bytes": None}
        elif kind == "crash":
            os.kill(os.getpid(), request["signal"])
            time.sleep(10)
            reply = {"ok": "survived"}
        elif kind == "allocate":
            _limit_memory(request.get("memory_bytes"))
            try:
                held.append(bytearray(request["mib"] << 20))
                reply = {"ok": len(held), "peak_rss_bytes": status_bytes().get("VmHWM")}
            except MemoryError as exc:
                reply = {"error": f"MemoryError: {exc}", "error_type": "MemoryError"}
            held.clear()
        else:
            reply = {"error": f"unknown kind {kind}", "error_type": "ValueError"}
        write_frame(replies, reply)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise SystemExit(main())
