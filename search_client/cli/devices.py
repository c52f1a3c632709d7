"""The device side of the command lines: one place that opens a device's client, picks its backend, and cancels
the job an interrupted command leaves on the device."""

from __future__ import annotations

import shlex
from collections.abc import Callable

from search_client.device.client import LatencyClient
from search_client.device.errors import LatencyClientError


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


def cancel_command(client: LatencyClient, job_id: int, token: str | None) -> str:
    """The shell command that cancels job ``job_id`` of the device behind ``client`` (``POST /v1/jobs/{id}/cancel``
    with the JSON content type the service requires of a POST; the token read from ``$PROXYLESS_TOKEN``, never
    printed)."""
    auth = ' -H "Authorization: Bearer $PROXYLESS_TOKEN"' if token else ""
    url = shlex.quote(f"{client.base_url}/v1/jobs/{job_id}/cancel")
    return f"curl -s -X POST {url} -H 'content-type: application/json'{auth}"


def cancel_interrupted(client: LatencyClient, token: str | None) -> str:
    """Cancel the job ``client`` was waiting on when the command was interrupted (:attr:`LatencyClient.running_job`);
    return the one line that says so, or, when the cancel fails, the command that cancels it."""
    job_id = client.running_job
    if job_id is None:
        return "interrupted: no job of this command was running on the device"
    try:
        client.cancel_job(job_id)
    except LatencyClientError as exc:
        return (f"interrupted: job {job_id} keeps running on {client.base_url} (cancelling it failed: {exc}); "
                f"cancel it with: {cancel_command(client, job_id, token)}")
    return f"interrupted: cancelled job {job_id} on {client.base_url} (the items it measured are kept)"
