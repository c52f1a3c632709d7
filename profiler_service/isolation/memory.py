"""A process's resident memory as Linux reports it in ``/proc/PID/status``, and the reset of its peak.

``VmHWM`` is the peak resident set size ("high water mark") since the process started or since its peak was last
reset by writing ``5`` to ``/proc/PID/clear_refs`` (Linux 4.0 and later); the measuring process resets it before
every item, so each item's peak is its own. ``RssFile`` is the resident part of mapped files (the runtimes' code).
"""

from __future__ import annotations

from pathlib import Path

_KIB = 1024


def status_bytes(pid: int | str = "self") -> dict[str, int]:
    """The ``Vm*``/``Rss*`` fields of ``/proc/PID/status`` in bytes (empty where /proc does not exist)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    fields = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        parts = value.split()
        if (name.startswith("Vm") or name.startswith("Rss")) and len(parts) == 2 and parts[1] == "kB":
            fields[name] = int(parts[0]) * _KIB
    return fields


def rss_bytes(pid: int | str = "self") -> int | None:
    """The resident set size of ``pid`` (None when it cannot be read: the process is gone, or no /proc)."""
    return status_bytes(pid).get("VmRSS")


def peak_rss_bytes(pid: int | str = "self") -> int | None:
    """The peak resident set size (VmHWM) of ``pid`` since its start or its last :func:`reset_peak`."""
    return status_bytes(pid).get("VmHWM")


def reset_peak(pid: int | str = "self") -> bool:
    """Reset the peak (VmHWM) of ``pid`` to its current resident size; False where the kernel does not allow it."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True
