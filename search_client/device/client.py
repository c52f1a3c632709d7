"""HTTP client of one profiler service (the REST API of docs/api.md).

The search side never imports the profiler: it asks a device for latencies over HTTP with :class:`LatencyClient`.

- Explicit timeouts (:data:`DEFAULT_TIMEOUT`); an injectable ``transport`` (``httpx.MockTransport`` in tests).
- Connection errors and 5xx answers are retried with exponential backoff (``backoff_s * 2**k``); 4xx never are.
- Every failure is one of the documented exceptions of :mod:`search_client.device.errors`.
- No terminal output: a job's progress goes to an optional callback (``progress``, called with a
  :class:`JobProgress` after every poll, ``attached`` set for a job the service answered a request with instead
  of queueing a duplicate); the command line draws its bars from it.
- :attr:`LatencyClient.running_job` names the job the client is waiting on, and stays set when the wait is
  interrupted (KeyboardInterrupt), so that the caller can cancel it (:meth:`LatencyClient.cancel_job`).

This package imports httpx and nas_ops only (no torch, no rich).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import httpx

from nas_ops.arch import Architecture
from nas_ops.counting import network_memory_bytes
from nas_ops.spec import OpSpec, format_spec
from search_client.device.api_schema import JOB_ATTACHED, JOB_DONE, JOB_FINISHED, JOB_PROTOCOL_VERSION
from search_client.device.errors import (
    AuthRefused,
    BadRequest,
    DeviceUnreachable,
    JobFailed,
    LatencyClientError,
    MissingEntriesError,
    RequestTimeout,
    ServerError,
)

DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=60.0, write=30.0, pool=5.0)
LOOKUP_CHUNK = 500  # op specs per lookup / measure request
#: The content type of a POST without a body (a cancel): the service refuses a POST that a page of another site
#: could send, one without a JSON content type or an Authorization header.
JSON_CONTENT = {"Content-Type": "application/json"}

# Errors that mean "no usable connection": retried like a 5xx. Read/write timeouts are not (the request may
# have been received; repeating a long measurement request would not help).
_CONNECTION_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadError, httpx.WriteError,
                      httpx.RemoteProtocolError)


@dataclass(frozen=True)
class JobProgress:
    """Where a job stands after one poll: its id, status, items done and total (None while unknown), and whether
    the request that waits on it attached to a job already queued or running (``attached`` of the answer)."""

    job_id: int
    status: str | None
    done: int
    total: int | None
    attached: bool = False


ProgressCallback = Callable[[JobProgress], None]
"""Called after every poll of a job (see :meth:`LatencyClient.wait_job`)."""


@dataclass(frozen=True)
class NetworkMeasurement:
    """An end-to-end measurement of one network: its Stats, the protocol version (so the cache regime) the job
    measured it in (None: a service that does not say), and the job's id."""

    stats: dict[str, Any]
    protocol_version: str | None
    job_id: int


@dataclass
class LookupResult:
    """Answer of ``POST /v1/lookup`` (merged over chunks): stats of the found specs and the missing specs."""

    found: dict[str, dict[str, Any]]
    missing: list[str]
    backend: str
    batch: int
    dtype: str
    threads: int | None
    env_hash: str
    protocol_version: str
    extra: dict[str, Any] = field(default_factory=dict)  # any other keys of the answer


def spec_strings(ops: Iterable[str | OpSpec]) -> list[str]:
    """Canonical spec strings of ``ops`` (OpSpec or str), duplicates dropped, first-seen order kept."""
    out: dict[str, None] = {}
    for op in ops:
        if isinstance(op, OpSpec):
            out[format_spec(op)] = None
        elif isinstance(op, str):
            out[op] = None
        else:
            raise ValueError(f"ops: expected op spec strings or OpSpec, got {type(op).__name__}")
    return list(out)


def _context_body(backend: str, batch: int, dtype: str, threads: int | None, working_set_bytes: int | None
                  ) -> dict[str, Any]:
    """The context fields of a request body; ``working_set_bytes`` only when given (a service of an earlier
    version refuses unknown fields)."""
    body: dict[str, Any] = {"backend": backend, "batch": batch, "dtype": dtype, "threads": threads}
    if working_set_bytes is not None:
        body["working_set_bytes"] = int(working_set_bytes)
    return body


def _chunks(items: Sequence[str], size: int) -> list[Sequence[str]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _error_message(response: httpx.Response) -> tuple[str, str | None]:
    """The service's ``detail`` and ``code`` (FastAPI validation lists are joined), or the body's text."""
    try:
        body = response.json()
    except ValueError:
        return (response.text.strip()[:500] or response.reason_phrase), None
    if not isinstance(body, dict):
        return str(body)[:500], None
    detail = body.get("detail", body)
    if isinstance(detail, list):  # FastAPI's default 422: [{"loc": [...], "msg": ...}, ...]
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(x) for x in item.get("loc", []))
                parts.append(f"{loc}: {item.get('msg', item)}" if loc else str(item.get("msg", item)))
            else:
                parts.append(str(item))
        detail = "; ".join(parts)
    return str(detail), body.get("code")


def _reason(exc: Exception) -> str:
    """A short reason for a transport error: ``[Errno 111] Connection refused`` -> ``Connection refused``."""
    text = str(exc) or type(exc).__name__
    return re.sub(r"^\[Errno -?\d+\]\s*", "", text)


class LatencyClient:
    """Client of one profiler service at ``base_url`` (e.g. ``http://127.0.0.1:8000``).

    Args:
        base_url: the service root, http:// or https://.
        token: bearer token sent with every request (needed for POSTs when the service has one).
        timeout: per-request httpx timeouts.
        retries: how many times a request is tried again after a connection error or a 5xx (so at most
            ``retries + 1`` attempts), waiting ``backoff_s * 2**k`` before retry k.
        transport: an httpx transport, e.g. ``httpx.MockTransport(handler)`` in tests.

    Use as a context manager (or call :meth:`close`).
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        retries: int = 3,
        backoff_s: float = 0.5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not isinstance(base_url, str) or not re.match(r"^https?://[^/\s]+", base_url):
            raise ValueError(f"device url: expected http://HOST[:PORT] or https://..., got {base_url!r}")
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise ValueError(f"retries: must be an integer >= 0, got {retries!r}")
        if not backoff_s >= 0:
            raise ValueError(f"backoff_s: must be >= 0, got {backoff_s!r}")
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff_s = float(backoff_s)
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)
        self._sleep = time.sleep  # replaced in tests to observe the backoff
        self.running_job: int | None = None  # the job being waited on (kept after a KeyboardInterrupt)

    # --- lifecycle ------------------------------------------------------------------------------------------
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- transport, retries and error mapping ---------------------------------------------------------------
    def _request(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None
                 ) -> httpx.Response:
        """Send one request with retries; return a 2xx response or raise a :class:`LatencyClientError`."""
        attempts = self.retries + 1
        where = f"{method} {self.base_url}{path}"
        for attempt in range(1, attempts + 1):
            try:
                response = self._http.request(method, path, json=json, params=params,
                                              headers=JSON_CONTENT if method == "POST" and json is None else None)
            except _CONNECTION_ERRORS as exc:
                if attempt == attempts:
                    raise DeviceUnreachable(
                        f"device {self.base_url} unreachable after {attempts} attempt(s): {_reason(exc)}"
                    ) from exc
            except httpx.TimeoutException as exc:
                raise RequestTimeout(f"{where}: no response in time ({type(exc).__name__})") from exc
            else:
                if response.status_code < 500:
                    self._raise_for_client_error(response, where)
                    return response
                if attempt == attempts:
                    message, _ = _error_message(response)
                    raise ServerError(
                        f"{where}: server error {response.status_code} after {attempts} attempt(s): {message}",
                        response.status_code,
                    )
            self._sleep(self.backoff_s * 2 ** (attempt - 1))
        raise RuntimeError("retry loop ended without an answer")  # not reached: the last attempt raises

    @staticmethod
    def _raise_for_client_error(response: httpx.Response, where: str) -> None:
        status = response.status_code
        if status < 400:
            return
        message, code = _error_message(response)
        if status in (401, 403):
            raise AuthRefused(f"{where}: refused ({status}): {message}; pass the device's token (--token)", status)
        raise BadRequest(f"{where}: rejected ({status}): {message}", status, code)

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError as exc:
            raise LatencyClientError(f"{method} {self.base_url}{path}: answer is not JSON") from exc

    # --- service info ---------------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """``GET /v1/health``: ``{"status": "ok", "version": ...}``."""
        return self._json("GET", "/v1/health")

    def device_info(self) -> dict[str, Any]:
        """``GET /v1/device``: name, fingerprint, fingerprint_hash, protocol, default_threads, backends, limits."""
        return self._json("GET", "/v1/device")

    # --- lookup ---------------------------------------------------------------------------------------------
    def lookup(
        self,
        ops: Iterable[str | OpSpec],
        backend: str,
        batch: int = 1,
        dtype: str = "float32",
        threads: int | None = None,
        *,
        working_set_bytes: int | None = None,
    ) -> LookupResult:
        """Stored stats of ``ops`` on this device (``POST /v1/lookup``, in chunks of :data:`LOOKUP_CHUNK`), under
        the cache regime of ``working_set_bytes`` (the network's the ops belong to; None: the device's default,
        cold)."""
        specs = spec_strings(ops)
        if not specs:
            raise ValueError("ops: nothing to look up (empty list)")
        answers = [self._lookup_chunk(chunk, backend, batch, dtype, threads, working_set_bytes)
                   for chunk in _chunks(specs, LOOKUP_CHUNK)]
        first = answers[0]
        if any((a["env_hash"], a["protocol_version"]) != (first["env_hash"], first["protocol_version"])
               for a in answers):
            raise LatencyClientError(
                f"device {self.base_url}: environment or protocol changed during the lookup; run it again"
            )
        known = {"found", "missing", "backend", "batch", "dtype", "threads", "env_hash", "protocol_version"}
        return LookupResult(
            found={spec: stats for a in answers for spec, stats in a["found"].items()},
            missing=[spec for a in answers for spec in a["missing"]],
            backend=first["backend"],
            batch=first["batch"],
            dtype=first["dtype"],
            threads=first["threads"],
            env_hash=first["env_hash"],
            protocol_version=first["protocol_version"],
            extra={k: v for k, v in first.items() if k not in known},
        )

    def _lookup_chunk(self, chunk: Sequence[str], backend: str, batch: int, dtype: str, threads: int | None,
                      working_set_bytes: int | None) -> dict[str, Any]:
        body = {**_context_body(backend, batch, dtype, threads, working_set_bytes), "ops": list(chunk)}
        answer = self._json("POST", "/v1/lookup", json=body)
        required = ("found", "missing", "backend", "batch", "dtype", "threads", "env_hash", "protocol_version")
        absent = [key for key in required if not isinstance(answer, dict) or key not in answer]
        if absent:
            raise LatencyClientError(
                f"POST {self.base_url}/v1/lookup: answer lacks {', '.join(absent)}; is this a profiler service?"
            )
        return answer

    # --- jobs -----------------------------------------------------------------------------------------------
    def submit_measure(
        self,
        ops: Iterable[str | OpSpec],
        backend: str,
        batch: int = 1,
        dtype: str = "float32",
        threads: int | None = None,
        *,
        force: bool = False,
        wait_s: float = 0,
        working_set_bytes: int | None = None,
    ) -> dict[str, Any]:
        """Create a measurement job for ``ops`` (``POST /v1/measure``) under the cache regime of
        ``working_set_bytes`` (see :meth:`lookup`); return the job JSON."""
        body = {**_context_body(backend, batch, dtype, threads, working_set_bytes), "ops": spec_strings(ops),
                "force": force, "wait_s": wait_s}
        return self._json("POST", "/v1/measure", json=body)

    def job(self, job_id: int) -> dict[str, Any]:
        """``GET /v1/jobs/{id}``."""
        return self._json("GET", f"/v1/jobs/{int(job_id)}")

    def cancel_job(self, job_id: int) -> dict[str, Any]:
        """``POST /v1/jobs/{id}/cancel``."""
        return self._json("POST", f"/v1/jobs/{int(job_id)}/cancel")

    def wait_job(self, job_id: int, timeout_s: float = 3600.0, poll_s: float = 1.0,
                 progress: ProgressCallback | None = None, *, attached: bool = False) -> dict[str, Any]:
        """Poll a job until it finishes; return its JSON when ``done`` without failed items.

        ``progress`` (optional) is called with a :class:`JobProgress` after every poll (``attached``: the job was
        answered to a request that attached to it). Raises :class:`JobFailed` when the job ends
        ``failed``/``cancelled`` or with failed items, :class:`RequestTimeout` when it is not finished after
        ``timeout_s`` seconds (the job keeps running on the device). While it waits, :attr:`running_job` is
        ``job_id``; a KeyboardInterrupt leaves it so (the caller may cancel the job), any other end clears it.
        """
        if not timeout_s > 0 or not poll_s > 0:
            raise ValueError(f"timeout_s and poll_s: must be > 0, got {timeout_s!r} and {poll_s!r}")
        self.running_job = int(job_id)
        try:
            job = self._poll_until_finished(int(job_id), timeout_s, poll_s, progress, attached)
        except KeyboardInterrupt:
            raise
        except BaseException:
            self.running_job = None
            raise
        self.running_job = None
        return self._check_finished(job)

    def _poll_until_finished(self, job_id: int, timeout_s: float, poll_s: float,
                             progress: ProgressCallback | None, attached: bool) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.job(job_id)
            if progress:
                progress(JobProgress(job_id, job.get("status"), int(job.get("done") or 0), job.get("total"),
                                     attached))
            if job.get("status") in JOB_FINISHED:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RequestTimeout(
                    f"job {job_id} on {self.base_url} not finished after {timeout_s:g} s "
                    f"({job.get('done', 0)}/{job.get('total', '?')} done, status {job.get('status')}); "
                    "it keeps running on the device"
                )
            time.sleep(min(poll_s, remaining))
        return job

    def _wait_submitted(self, job: dict[str, Any], timeout_s: float, poll_s: float,
                        progress: ProgressCallback | None) -> dict[str, Any]:
        """The answer of a measure request, waited on until it finishes (:meth:`wait_job`) and checked."""
        if job.get("status") not in JOB_FINISHED:
            self.running_job = int(job["id"])  # an interrupt before the first poll still knows the job
            job = self.wait_job(job["id"], timeout_s=timeout_s, poll_s=poll_s, progress=progress,
                                attached=bool(job.get(JOB_ATTACHED)))
        return self._check_finished(job)

    def _check_finished(self, job: dict[str, Any]) -> dict[str, Any]:
        status, failed = job.get("status"), list(job.get("failed_items") or [])
        if status == JOB_DONE and not failed:
            return job
        items = "; ".join(f"{item.get('op')}: {item.get('error')}" for item in failed[:10])
        more = f" (+{len(failed) - 10} more)" if len(failed) > 10 else ""
        error = job.get("error")
        raise JobFailed(
            f"job {job.get('id')} on {self.base_url} ended {status}"
            + (f": {error}" if error else "")
            + (f"; {len(failed)} failed item(s): {items}{more}" if failed else ""),
            job,
        )

    # --- composite operations -------------------------------------------------------------------------------
    def measure_missing(
        self,
        ops: Iterable[str | OpSpec],
        backend: str,
        batch: int = 1,
        dtype: str = "float32",
        threads: int | None = None,
        *,
        timeout_s: float = 3600.0,
        poll_s: float = 1.0,
        progress: ProgressCallback | None = None,
        working_set_bytes: int | None = None,
        force: bool = False,
    ) -> dict[str, dict[str, Any]]:
        """Stats of every op of ``ops``: look up, measure the missing ones (``force``: all of them, again) through
        jobs, look up again (all under the cache regime of ``working_set_bytes``, see :meth:`lookup`).

        Returns ``{spec: Stats}`` for every spec; raises :class:`MissingEntriesError` if some are still missing.
        ``progress`` receives every poll of the jobs (see :meth:`wait_job`).
        """
        specs = spec_strings(ops)
        result = self.lookup(specs, backend, batch, dtype, threads, working_set_bytes=working_set_bytes)
        found = dict(result.found)
        to_measure = specs if force else result.missing
        if to_measure:
            for chunk in _chunks(to_measure, LOOKUP_CHUNK):
                job = self.submit_measure(chunk, backend, batch, dtype, threads, force=force,
                                          working_set_bytes=working_set_bytes)
                self._wait_submitted(job, timeout_s, poll_s, progress)
            again = self.lookup(to_measure, backend, batch, dtype, threads, working_set_bytes=working_set_bytes)
            found.update(again.found)
            if again.missing:
                raise MissingEntriesError(again.missing, f"on {self.base_url} ({backend}) after measuring")
        return {spec: found[spec] for spec in specs}

    def measure_architecture(self, arch: Architecture, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """End-to-end Stats of the whole network ``arch``: the ``stats`` of :meth:`measure_network` (same
        arguments)."""
        return self.measure_network(arch, *args, **kwargs).stats

    def measure_network(
        self,
        arch: Architecture,
        backend: str,
        batch: int = 1,
        dtype: str = "float32",
        threads: int | None = None,
        *,
        timeout_s: float = 3600.0,
        poll_s: float = 1.0,
        progress: ProgressCallback | None = None,
        working_set_bytes: int | None = None,
    ) -> NetworkMeasurement:
        """Measure the whole network ``arch`` end to end (``POST /v1/measure/architecture``, then wait) in the cache
        regime of ``working_set_bytes`` (a table's, to compare with it; None: the network's own,
        :func:`nas_ops.counting.network_memory_bytes`); the answer says the protocol version it was measured in."""
        working_set = network_memory_bytes(arch, batch, dtype) if working_set_bytes is None else working_set_bytes
        body = {**_context_body(backend, batch, dtype, threads, working_set), "architecture": arch.to_dict(),
                "wait_s": 0}
        job = self._wait_submitted(self._json("POST", "/v1/measure/architecture", json=body), timeout_s, poll_s,
                                   progress)
        if not isinstance(job.get("result"), dict):
            raise LatencyClientError(f"job {job.get('id')} on {self.base_url} finished without a result")
        return NetworkMeasurement(job["result"], job.get(JOB_PROTOCOL_VERSION), int(job["id"]))

    def table(
        self,
        backend: str | None = None,
        batch: int | None = None,
        dtype: str | None = None,
        threads: int | None = None,
        format: str = "json",
    ) -> dict[str, Any] | str:
        """The device's whole table (``GET /v1/table``): a dict for ``format="json"``, CSV text for ``"csv"``."""
        if format not in ("json", "csv"):
            raise ValueError(f"format: expected 'json' or 'csv', got {format!r}")
        params = {k: v for k, v in {"backend": backend, "batch": batch, "dtype": dtype, "threads": threads,
                                    "format": format}.items() if v is not None}
        if format == "csv":
            return self._request("GET", "/v1/table", params=params).text
        return self._json("GET", "/v1/table", params=params)
