"""The device side of the command lines: one place that opens a device's client and picks its backend."""

from __future__ import annotations

from collections.abc import Callable

from search_client.device.client import LatencyClient


def make_client(url: str, token: str | None) -> LatencyClient:
    """The client of one device (tests route it to a fake device by replacing this function)."""
    return LatencyClient(url, token)


def pick_backend(client: LatencyClient, backend: str | None, announce: Callable[[str], None] | None = None) -> str:
    """``backend`` when given, else the first backend the device advertises (then said through ``announce``)."""
    if backend:
        return backend
    names = [b["name"] for b in client.device_info().get("backends", [])]
    if not names:
        raise ValueError(f"--backend: device {client.base_url} advertises no backend")
    if announce is not None:
        announce(f"backend: {names[0]} (first of the device's {', '.join(names)}; choose with --backend)")
    return names[0]
