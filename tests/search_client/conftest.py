"""Fixtures of the search-client tests (reusable by the search tests).

- ``fake_device``: a :class:`FakeDevice`, an in-memory profiler that speaks the REST API of docs/api.md
  through ``httpx.MockTransport``; ``fake_device.client()`` is a :class:`LatencyClient` wired to it. Its latency of
  an op is a deterministic function of the spec (:func:`device_median_ms`: a costlier op is slower), measured only
  through a job, so tests can count lookups and measured ops (``fake_device.requests``, ``fake_device.measured``).
  It can also stand for
  a device with a per-core cache (``cache_bytes``: the protocol version of every answer follows the request's
  working set, and a network measured warm runs ``regime_scale`` times its stored sum), a loaded device
  (``measure_stats``: the Stats of the n-th measurement of an op), and it attaches a repeated measure request to
  its queued job and cancels jobs (``POST /v1/jobs/{id}/cancel``; ``cancel_fails``).
- ``live_profiler``: a REAL ``proxyless-profiler serve`` process on 127.0.0.1 (free port, SQLite file in a temp
  directory, backend ort-cpu, 1 thread, fast protocol; see tests/live.py), started once per test module after
  /v1/health answers, stopped (SIGTERM) after the module. Yields the :class:`tests.live.LiveProfiler`
  (``.url``, ``.db_url``, ``.log_path``). Tests using it should carry ``@pytest.mark.live``.

Helpers (import them from this module): :func:`make_table` (a complete table of a space with the fake
latencies, no device needed), :func:`other_device_table` (the same for a device whose latencies are unrelated),
:func:`device_table` (the plain table a FakeDevice measures) and :func:`softmax_probs` (random alphas and their
softmax per cell).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import torch

from nas_ops.arch_files import architecture_from_json_obj
from nas_ops.counting import count_flops, network_memory_bytes, op_memory_bytes
from nas_ops.space import SPACES, SearchSpace
from nas_ops.spec import format_spec, parse_spec
from search_client.device.client import LatencyClient
from search_client.table.latency_table import LatencyTable, table_specs
from tests.live import LiveProfiler

FAKE_FINGERPRINT = {"cpu": "fake-cpu", "cores": 2, "torch": "2.13.0"}
FAKE_COST_SCALE = 5e5  # multiply-adds + bytes of an op whose fake latency is half its range
FAKE_DEVICE = {"url": "http://fake-device:8000", "name": "fake", "fingerprint": FAKE_FINGERPRINT,
               "fingerprint_hash": "f" * 64}


def fake_median_ms(spec: str) -> float:
    """A deterministic latency in [0.1, 2.1) ms for ``spec`` (from its sha256): :func:`make_table`'s entries, in
    no particular order of the ops' costs."""
    digest = hashlib.sha256(spec.encode()).digest()
    return 0.1 + int.from_bytes(digest[:4], "big") / 2**32 * 2.0


def device_median_ms(spec: str) -> float:
    """The :class:`FakeDevice`'s latency of ``spec``, in [0.1, 2.1) ms: for an op spec it grows with the op's
    multiply-adds plus memory bytes, jittered by +-1% from its sha256 (less than :func:`fake_stats`' IQR), so no two
    candidates of a cell are in an implausible ordering; for any other text, :func:`fake_median_ms`."""
    try:
        op = parse_spec(spec)
    except ValueError:
        return fake_median_ms(spec)
    unit = int.from_bytes(hashlib.sha256(spec.encode()).digest()[:4], "big") / 2**32
    cost = count_flops(op) + op_memory_bytes(op, 1, "float32")
    return 0.1 + 2.0 * cost / (cost + FAKE_COST_SCALE) * (0.99 + 0.02 * unit)


def stats_of(m: float, iqr_share: float = 0.03) -> dict[str, Any]:
    """Stats of a measurement with median ``m`` and an IQR of ``iqr_share`` of it."""
    return {"median_ms": m, "mean_ms": m * 1.01, "std_ms": m * 0.02, "min_ms": m * 0.97, "p10_ms": m * 0.98,
            "p90_ms": m * 1.03, "iqr_ms": m * iqr_share, "samples": 25}


def fake_stats(spec: str) -> dict[str, Any]:
    """The :class:`FakeDevice`'s Stats of ``spec`` (median :func:`device_median_ms`, IQR 3%)."""
    return stats_of(device_median_ms(spec))


def fake_regime(working_set_bytes: int | None, cache_bytes: int) -> str:
    """The cache regime of the service's rule (docs/protocol.md "Cache regime and flush") for a cache of
    ``cache_bytes``: warm, flush<K> (K: KiB rounded up to a power of two, below 16 MiB) or cold."""
    if working_set_bytes is None:
        return "cold"
    if working_set_bytes <= cache_bytes:
        return "warm"
    kib = 1 << (-(-working_set_bytes // 1024) - 1).bit_length()
    return f"flush{kib}" if kib < 16384 else "cold"


def fake_version(regime: str) -> str:
    """The protocol version of a duet measurement in ``regime``: ``4+warm+duet``, ``4+flush1024+duet``, ``4+duet``."""
    return "4+duet" if regime == "cold" else f"4+{regime}+duet"


def make_table(space: SearchSpace | str = "micro-16", scale: float = 1.0, **overrides: Any) -> LatencyTable:
    """A complete table of ``space`` with the fake latencies (times ``scale``), as the fake device would give."""
    space = SPACES[space] if isinstance(space, str) else space
    stats = {spec: stats_of(fake_median_ms(spec) * scale) for spec in table_specs(space)}
    kwargs = {"device": FAKE_DEVICE, "backend": "ort-cpu", "batch": 1, "threads": 1, "protocol_version": "test-1",
              "env_hash": "e" * 64, **overrides}
    return LatencyTable.from_stats(space, stats, **kwargs)


def other_device_table(space: SearchSpace | str = "micro-16", salt: str = "#B", **overrides: Any) -> LatencyTable:
    """A complete table of ``space`` whose latencies are unrelated to :func:`make_table`'s (another device, whose
    costs order the ops differently): :func:`fake_median_ms` of each spec with ``salt`` appended."""
    space = SPACES[space] if isinstance(space, str) else space
    stats = {spec: stats_of(fake_median_ms(spec + salt)) for spec in table_specs(space)}
    kwargs = {"device": FAKE_DEVICE, "backend": "ort-cpu", "batch": 1, "threads": 1, "protocol_version": "test-1",
              "env_hash": "e" * 64, **overrides}
    return LatencyTable.from_stats(space, stats, **kwargs)


def device_table(space: SearchSpace | str = "micro-16", **overrides: Any) -> LatencyTable:
    """The plain table of ``space`` that a :class:`FakeDevice` measures (its :func:`fake_stats`)."""
    space = SPACES[space] if isinstance(space, str) else space
    kwargs = {"device": FAKE_DEVICE, "backend": "ort-cpu", "batch": 1, "threads": 1, "protocol_version": "test-1",
              "env_hash": "e" * 64, **overrides}
    return LatencyTable.from_stats(space, {spec: fake_stats(spec) for spec in table_specs(space)}, **kwargs)


def softmax_probs(table: LatencyTable, seed: int = 0, dtype: torch.dtype = torch.float64
                  ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Random alphas (leaf tensors, requires_grad) per cell of ``table`` and their softmax path weights."""
    gen = torch.Generator().manual_seed(seed)
    alphas = [torch.randn(len(row), generator=gen, dtype=dtype, requires_grad=True) for row in table.entries]
    return alphas, [torch.softmax(a, dim=0) for a in alphas]


class FakeDevice:
    """An in-memory profiler service answering the /v1 API (enough for the client: device, lookup, jobs).

    Jobs finish after ``polls_to_finish`` polls of GET /v1/jobs/{id}. ``fail_ops`` are ops whose measurement fails
    (the job ends ``failed`` with them as failed items).
    """

    def __init__(self, stored: dict[str, dict[str, Any]] | None = None, polls_to_finish: int = 1,
                 fail_ops: set[str] | None = None,
                 network_ms: Callable[[dict[str, Any]], float] | None = None,
                 flagged_on_measure: dict[str, str] | None = None, cache_bytes: int | None = None,
                 regime_scale: dict[str, float] | None = None,
                 measure_stats: Callable[[str, int], dict[str, Any]] | None = None) -> None:
        self.stored: dict[str, dict[str, Any]] = dict(stored or {})
        # the per-core cache (None: every answer has protocol version "test-1", whatever the working set)
        self.cache_bytes = cache_bytes
        self.regime_scale = dict(regime_scale or {})  # a network's median times this in a regime (default 1)
        self.measure_stats = measure_stats  # Stats of the n-th (0-based) measurement of an op (None: fake_stats)
        self.measure_counts: dict[str, int] = {}
        self.cancelled: list[int] = []  # the jobs cancelled through POST /v1/jobs/{id}/cancel
        self.cancel_fails = False  # answer every cancel with a 503
        self.on_poll: Callable[[int], None] | None = None  # called with the job id before every poll's answer
        self.drift: dict[str, Any] | None = None  # the drift entry of GET /v1/device (None: a service without it)
        # median of a measured architecture (its request body); None: the sum of its ops' stored medians (a device
        # whose networks are exactly their tables: an anchored table is the plain one)
        self.network_ms = network_ms
        self.architectures: list[dict[str, Any]] = []
        self.flagged_on_measure = dict(flagged_on_measure or {})  # ops a measurement stores flagged, with the reason
        self.forced: list[list[str]] = []  # the ops of every job submitted with force
        self.polls_to_finish = polls_to_finish
        self.fail_ops = set(fail_ops or ())
        self.jobs: dict[int, dict[str, Any]] = {}
        self.polls: dict[int, int] = {}
        self.requests: list[tuple[str, str]] = []
        self.bodies: dict[str, list[dict[str, Any]]] = {}  # the JSON body of every POST, by path
        self.measured: list[str] = []

    def client(self, **kwargs: Any) -> LatencyClient:
        return LatencyClient("http://fake-device:8000", transport=httpx.MockTransport(self.handle), **kwargs)

    # --- routes -----------------------------------------------------------------------------------------------
    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.method, request.url.path))
        path = request.url.path
        body = json.loads(request.content) if request.content else {}
        if request.method == "POST":
            content_type = request.headers.get("content-type", "").split(";")[0].strip()
            if content_type != "application/json" and "authorization" not in request.headers:
                # as the service does: a POST a page of another site could send is refused
                return httpx.Response(415, json={"detail": f"POST {path} needs 'Content-Type: application/json'",
                                                 "code": "json_required"})
            self.bodies.setdefault(path, []).append(body)
        if path == "/v1/health":
            return httpx.Response(200, json={"status": "ok", "version": "0.1.0"})
        if path == "/v1/device":
            info = {"name": "fake", "fingerprint": FAKE_FINGERPRINT, "fingerprint_hash": "f" * 64,
                    "protocol": {"version": "test-1", "params": {}}, "default_threads": 1,
                    "backends": [{"name": "ort-cpu", "options": {}, "env_hash": "e" * 64}], "limits": {}}
            return httpx.Response(200, json=info if self.drift is None else {**info, "drift": self.drift})
        if path == "/v1/lookup":
            return self._lookup(body)
        if path == "/v1/measure":
            running = self._same_work(body)
            if running is not None:
                return httpx.Response(200, json={**self._public(running), "attached": True})
            if body.get("force"):
                self.forced.append(list(body["ops"]))
            return self._create_job(body, "ops", body["ops"])
        if path == "/v1/measure/architecture":
            self.architectures.append(body["architecture"])
            working_set = body.get("working_set_bytes")
            if working_set is None:  # the service measures a network without one in its own working set
                working_set = network_memory_bytes(architecture_from_json_obj(body["architecture"]), body["batch"],
                                                   body["dtype"])
            return self._create_job({**body, "working_set_bytes": working_set}, "architecture", [],
                                    body["architecture"])
        if path.startswith("/v1/jobs/") and path.endswith("/cancel"):
            return self._cancel(int(path.split("/")[3]))
        if path.startswith("/v1/jobs/"):
            return self._poll(int(path.rsplit("/", 1)[1]))
        return httpx.Response(404, json={"detail": f"no route {path}", "code": "not_found"})

    def version(self, working_set_bytes: int | None) -> str:
        """The protocol version of an answer to a request with ``working_set_bytes``."""
        return "test-1" if self.cache_bytes is None else fake_version(fake_regime(working_set_bytes,
                                                                                  self.cache_bytes))

    def _same_work(self, body: dict[str, Any]) -> int | None:
        """The queued job measuring the same ops in the same context and force (the service attaches to it)."""
        for job_id, job in self.jobs.items():
            if (job["status"] == "queued" and job["kind"] == "ops" and job["_ops"] == body["ops"]
                    and job["_force"] == bool(body.get("force"))
                    and job["protocol_version"] == self.version(body.get("working_set_bytes"))):
                return job_id
        return None

    def _cancel(self, job_id: int) -> httpx.Response:
        if self.cancel_fails:
            return httpx.Response(503, json={"detail": "database unavailable", "code": "unavailable"})
        if job_id not in self.jobs:
            return httpx.Response(404, json={"detail": f"job {job_id} not found", "code": "not_found"})
        self.cancelled.append(job_id)
        if self.jobs[job_id]["status"] == "queued":
            self.jobs[job_id].update(status="cancelled", pending=0)
        return httpx.Response(200, json=self._public(job_id))

    def _lookup(self, body: dict[str, Any]) -> httpx.Response:
        for i, op in enumerate(body["ops"]):
            try:
                parse_spec(op)
            except ValueError as exc:
                return httpx.Response(422, json={"detail": f"ops[{i}]: {exc}", "code": "invalid_input"})
        found = {op: self.stored[op] for op in body["ops"] if op in self.stored}
        return httpx.Response(200, json={
            "backend": body["backend"], "batch": body["batch"], "dtype": body["dtype"],
            "threads": body["threads"] or 1, "env_hash": "e" * 64,
            "protocol_version": self.version(body.get("working_set_bytes")), "found": found, "missing": [op for op in body["ops"] if op not in found]})

    def _create_job(self, body: dict[str, Any], kind: str, ops: list[str],
                    architecture: dict[str, Any] | None = None) -> httpx.Response:
        job_id = len(self.jobs) + 1
        self.jobs[job_id] = {
            "id": job_id, "kind": kind, "status": "queued", "backend": body["backend"], "batch": body["batch"],
            "dtype": body["dtype"], "threads": body["threads"] or 1, "total": max(len(ops), 1), "done": 0,
            "skipped": 0, "failed": 0, "cancelled": 0, "pending": max(len(ops), 1), "error": None,
            "result": None, "created_at": "2025-01-01T00:00:00Z", "started_at": None, "finished_at": None,
            "failed_items": [], "protocol_version": self.version(body.get("working_set_bytes")), "attached": False,
            "_ops": ops, "_architecture": architecture, "_force": bool(body.get("force")),
        }
        self.polls[job_id] = 0
        return httpx.Response(202, json=self._public(job_id))

    def _poll(self, job_id: int) -> httpx.Response:
        if job_id not in self.jobs:
            return httpx.Response(404, json={"detail": f"job {job_id} not found", "code": "not_found"})
        self.polls[job_id] += 1
        if self.on_poll is not None:
            self.on_poll(job_id)
        job = self.jobs[job_id]
        if job["status"] == "queued" and self.polls[job_id] >= self.polls_to_finish:
            self._finish(job)
        return httpx.Response(200, json=self._public(job_id))

    def _finish(self, job: dict[str, Any]) -> None:
        failed = [op for op in job["_ops"] if op in self.fail_ops]
        for op in job["_ops"]:
            if op not in failed:
                n = self.measure_counts.get(op, 0)
                self.measure_counts[op] = n + 1
                self.stored[op] = fake_stats(op) if self.measure_stats is None else self.measure_stats(op, n)
                if op in self.flagged_on_measure:
                    self.stored[op]["flagged"] = self.flagged_on_measure[op]
                self.measured.append(op)
        if job["kind"] == "architecture":
            job["result"] = fake_stats("architecture")
            scale = self.regime_scale.get(_regime_of(job["protocol_version"]), 1.0)
            job["result"]["median_ms"] = (self.network_ms or self.sum_of_ops)(job["_architecture"]) * scale
        job.update(status="failed" if failed else "done", done=job["total"] - len(failed), failed=len(failed),
                   pending=0, error="some ops failed" if failed else None,
                   failed_items=[{"op": op, "error": "out of memory"} for op in failed])

    def sum_of_ops(self, architecture: dict[str, Any]) -> float:
        """The stored medians (fake ones where none is stored) of the architecture's ops, summed; a chosen Zero
        (in the network: its identity block) costs nothing, as in a table."""
        specs = [format_spec(spec) for spec in architecture_from_json_obj(architecture).specs()
                 if spec.kind not in ("zero", "identity")]
        return sum(self.stored.get(spec, fake_stats(spec))["median_ms"] for spec in specs)

    def _public(self, job_id: int) -> dict[str, Any]:
        return {k: v for k, v in self.jobs[job_id].items() if not k.startswith("_")}


def _regime_of(version: str) -> str:
    for part in version.split("+")[1:]:
        if part != "duet":
            return part
    return "cold"


@pytest.fixture
def fake_device() -> FakeDevice:
    """An empty :class:`FakeDevice` (nothing stored; every job finishes on its first poll)."""
    return FakeDevice()


@pytest.fixture(scope="module")
def live_profiler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveProfiler]:
    """A real ``proxyless-profiler serve`` process for the module (empty SQLite DB, ort-cpu, fast protocol)."""
    directory = tmp_path_factory.mktemp("live_profiler")
    profiler = LiveProfiler(f"sqlite:///{directory / 'latency.db'}", directory / "serve.log").start()
    try:
        yield profiler
    finally:
        profiler.stop()
