"""Errors of the device client: what went wrong when talking to a device, or what a device lacks.

Tree (in the spirit of httpx's own)::

    LatencyClientError             any failure talking to a profiler service
    ├── DeviceUnreachable          no connection after every retry (refused, DNS, reset, connect timeout)
    ├── AuthRefused                401 / 403: missing or wrong bearer token
    ├── BadRequest                 other 4xx: the service rejected the request (message and status kept)
    ├── ServerError                5xx on every attempt
    ├── RequestTimeout             no response, or a job not finished, within the deadline
    └── JobFailed                  a job ended ``failed`` / ``cancelled`` or with failed items

    MissingEntriesError(ValueError)   a latency table lacks entries; lists every missing op spec

The command line maps them to exit codes (:func:`search_client.cli.errors.exit_code`).

Every message names the device URL (or the table) and says what to do where there is something to do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class LatencyClientError(Exception):
    """Base class of every error raised while talking to a profiler service."""


class DeviceUnreachable(LatencyClientError):
    """No connection to the device after all attempts (connection refused, name not resolved, reset, ...)."""


class AuthRefused(LatencyClientError):
    """The service answered 401 or 403: a token is required, or the given token is wrong."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class BadRequest(LatencyClientError):
    """The service rejected the request with a 4xx status (other than 401/403); never retried.

    ``message`` is the service's own ``detail``, ``code`` its short error code (or None).
    """

    def __init__(self, message: str, status: int, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class ServerError(LatencyClientError):
    """The service answered 5xx on every attempt."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class RequestTimeout(LatencyClientError):
    """A response did not come in time, or a job was not finished by the caller's deadline."""


class JobFailed(LatencyClientError):
    """A measurement job ended ``failed`` or ``cancelled``, or finished with failed items.

    ``job`` is the job's last JSON; ``error`` its error message; ``failed_items`` its ``[{"op", "error"}]`` list.
    """

    def __init__(self, message: str, job: dict[str, Any]) -> None:
        super().__init__(message)
        self.job = job
        self.job_id = job.get("id")
        self.status = job.get("status")
        self.error: str | None = job.get("error")
        self.failed_items: list[dict[str, Any]] = list(job.get("failed_items") or [])


class MissingEntriesError(ValueError):
    """A latency table cannot be built: some op specs have no measurement. ``missing`` lists all of them."""

    def __init__(self, missing: Sequence[str], context: str = "") -> None:
        self.missing = list(missing)
        where = f" {context}" if context else ""
        super().__init__(f"{len(self.missing)} op spec(s) missing{where}: {', '.join(self.missing)}")
