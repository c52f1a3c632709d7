"""Load on a live profiler service: the search client's traffic, on SQLite and on PostgreSQL.

For each database (``--db sqlite|postgres|both``) the benchmark

1. creates an empty database (a SQLite file in a temporary directory; a fresh, randomly named PostgreSQL database
   on ``--postgres`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``), dropped afterwards);
2. starts ``proxyless-profiler serve`` on it (127.0.0.1, a free port, ort-cpu, 1 thread, the ``fast`` protocol so
   that measure jobs write often: the harsh case for the database), through search_client's ``LocalProfiler``;
3. stores a table of ``TABLE_OPS`` (1,000) synthetic rows directly into the store with latency_db's repository
   functions, under the service's own device row (its name and fingerprint, from ``GET /v1/device``) and the
   context its lookups answer with (backend, batch, dtype, threads, env hash, protocol version), so that every
   lookup of these specs hits; the rows' statistics are placeholders, not measurements;
4. runs the scenarios, while a separate process probes ``GET /v1/health`` every 100 ms:

   - ``lookup_100`` and ``lookup_1000``: 8 concurrent client processes, each sending lookups of 100 (a slice of
     the table) or of all 1,000 specs; ``lookup_1000_1client``: one client alone (a request's cost without
     queueing, for comparison);
   - ``lookup_during_measure``: the same 1,000-spec lookups while a measure job of new ops runs;
   - ``measure_burst``: rounds of 5 concurrent ``POST /v1/measure`` (new ops each) mixed with 100-spec lookups
     from the 8 clients; then the burst's jobs are awaited (bounded) and a failed job counts as an error.

A request is an error when it does not answer 200/202 (or, for a lookup, does not find every stored spec) within
its timeout. Every request loop is bounded by a count and by a time cap, and the whole run by a time budget
(``--budget-s``, 160 s by default; scenarios that no longer fit are reported as skipped), so a frozen service
still ends the run, with its errors reported. Loopback only.

Prints p50/p95/p99 per scenario, error counts, the max health latency and the 1-minute load average before and after
each database (the cores may be shared), then one final line with the targets
(0 errors; health answering within 1 s throughout; 1,000-spec lookups with 8 clients: p50 < 20 ms and
p99 < 100 ms) and PASS/FAIL for each, per database. Writes ``service_load_<db>.json`` and ``.md`` to ``--out-dir``
(runs/benchmarks by default). Exit code: 0 when every target passes, 1 when one fails, 2 when the run could not be set up.

Example: ``.venv/bin/python -m benchmarks.service_load --db both`` (``--quick``: a few requests per scenario).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import queue
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.common import OUT_DIR


POSTGRES_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BACKEND = "ort-cpu"
TABLE_OPS = 1000
CLIENTS = 8
HEALTH_INTERVAL_S = 0.1
HEALTH_TIMEOUT_S = 2.0
MEASURES_PER_ROUND = 5
# the targets of issue 10
TARGET_HEALTH_S = 1.0
TARGET_P50_MS = 20.0
TARGET_P99_MS = 100.0


@dataclass(frozen=True)
class Plan:
    """Counts and time caps of one run (``--quick`` shrinks them)."""

    lookups_100: int = 40  # per client
    lookups_1000: int = 25  # per client
    lookups_single: int = 10  # 1,000-spec lookups of one client alone: the cost of a request without queueing
    lookups_during_measure: int = 25  # per client, at most (they stop when the job ends)
    measure_job_ops: int = 12
    burst_rounds: int = 3
    burst_measure_ops: int = 2  # new ops per measure post of the burst
    burst_lookups: int = 5  # per client and round
    scenario_cap_s: float = 8.0  # every request loop of a scenario stops starting requests after this
    request_timeout_s: float = 5.0
    job_wait_s: float = 8.0  # how long the burst's jobs are awaited

    @classmethod
    def quick(cls) -> Plan:
        return cls(lookups_100=3, lookups_1000=3, lookups_single=2, lookups_during_measure=3, measure_job_ops=2, burst_rounds=1,
                   burst_measure_ops=1, burst_lookups=2, scenario_cap_s=4.0, request_timeout_s=5.0, job_wait_s=5.0)


@dataclass
class Sample:
    """One request: when it started (wall clock, s), how long it took (ms), and its error (None when fine)."""

    started: float
    ms: float
    error: str | None


@dataclass
class Series:
    """The samples of one scenario and what they add up to."""

    name: str
    samples: list[Sample] = field(default_factory=list)
    seconds: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Request count, errors (count and the first distinct messages), p50/p95/p99/max of the fine requests."""
        fine = np.array([s.ms for s in self.samples if s.error is None])
        errors = [s.error for s in self.samples if s.error is not None]
        pct = (dict(zip(("p50_ms", "p95_ms", "p99_ms"), (float(v) for v in np.percentile(fine, [50, 95, 99]))))
               if fine.size else {"p50_ms": None, "p95_ms": None, "p99_ms": None})
        return {"requests": len(self.samples), "errors": len(errors), "error_examples": list(dict.fromkeys(errors))[:5],
                **pct, "max_ms": float(fine.max()) if fine.size else None, "seconds": round(self.seconds, 2),
                **self.notes}


class Budget:
    """The run's time budget: a deadline that caps every scenario."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


# --- op specs ------------------------------------------------------------------------------------------------
def spec_pool(count: int) -> list[str]:
    """``count`` distinct canonical mbconv specs, small enough for every limit of the service (8x8 to 32x32)."""
    from nas_ops.spec import format_spec, parse_spec

    specs: list[str] = []
    for res in (8, 16, 32):
        for cin in (8, 16, 24, 32, 40, 48):
            for cout in (8, 16, 24, 32, 40, 48):
                for kernel in (3, 5, 7):
                    for expand in (3, 6):
                        for stride in (1, 2):
                            skip = "_skip" if cin == cout and stride == 1 else ""
                            text = f"mbconv_r{res}x{res}_c{cin}-{cout}_k{kernel}_e{expand}_s{stride}_relu6{skip}"
                            specs.append(format_spec(parse_spec(text)))
                            if len(specs) == count:
                                return specs
    raise ValueError(f"spec pool: only {len(specs)} specs, {count} asked")


def placeholder_stats(index: int) -> dict[str, float | int]:
    """The statistics of a synthetic table row (a load test needs rows, not true latencies)."""
    median = 0.1 + (index % 97) / 100
    return {"median_ms": median, "mean_ms": median * 1.01, "std_ms": median * 0.02, "min_ms": median * 0.97,
            "p10_ms": median * 0.98, "p90_ms": median * 1.03, "iqr_ms": median * 0.03, "samples": 25}


# --- databases -----------------------------------------------------------------------------------------------
@contextmanager
def sqlite_database(tmp: Path) -> Iterator[str]:
    """A SQLite file URL in ``tmp`` (the service migrates it)."""
    yield f"sqlite:///{tmp / 'service_load.db'}"


@contextmanager
def postgres_database(server_url: str) -> Iterator[str]:
    """A fresh, randomly named database on ``server_url``, dropped (connections closed by force) afterwards."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(server_url)
    admin = {**url.translate_connect_args(username="user", database="dbname"), "connect_timeout": 5,
             "autocommit": True}
    name = f"service_load_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(**admin) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(**admin) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def check_postgres(server_url: str) -> str | None:
    """None when the PostgreSQL server answers, else the reason."""
    import psycopg
    from sqlalchemy.engine import make_url

    args = make_url(server_url).translate_connect_args(username="user", database="dbname")
    try:
        with psycopg.connect(**args, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0]
    return None


# --- the table -----------------------------------------------------------------------------------------------
def seed_table(url: str, db_url: str, specs: Sequence[str]) -> dict[str, Any]:
    """Store ``specs`` as rows of the service's device in the context its lookups use; return that context."""
    from latency_db.context import MeasurementContext
    from latency_db.connection import make_engine, make_session_factory
    from latency_db.repository import get_or_create_device, upsert_measurement
    from latency_db.transactions import write_session

    device = httpx.get(f"{url}/v1/device", timeout=30).raise_for_status().json()
    probe = httpx.post(f"{url}/v1/lookup", json={"backend": BACKEND, "ops": list(specs[:1])}, timeout=30)
    answer = probe.raise_for_status().json()
    context = MeasurementContext(**{f: answer[f] for f in MeasurementContext.__dataclass_fields__})
    engine = make_engine(db_url)
    try:
        with write_session(make_session_factory(engine)) as session:
            device_id = get_or_create_device(session, device["name"], device["fingerprint"]).id
            for index, spec in enumerate(specs):
                upsert_measurement(session, device_id=device_id, context=context, op_spec=spec,
                                   environment={"source": "benchmarks/service_load.py placeholder row"},
                                   protocol_params=device["protocol"]["params"], stats=placeholder_stats(index))
    finally:
        engine.dispose()
    check = httpx.post(f"{url}/v1/lookup", json={"backend": BACKEND, "ops": list(specs)}, timeout=60)
    missing = check.raise_for_status().json()["missing"]
    if missing:
        raise RuntimeError(f"{len(missing)} stored rows are invisible to the service's lookups, e.g. {missing[0]}")
    return context.as_dict()


# --- request loops (client processes) ------------------------------------------------------------------------
def lookup_client(url: str, ops: list[str], count: int, deadline_wall: float, timeout_s: float,
                  stop_file: str | None = None) -> list[Sample]:
    """Up to ``count`` lookups of ``ops``, none but the first started after ``deadline_wall`` (time.time()) nor
    once ``stop_file`` exists; a lookup that does not answer 200 with every op found is an error.

    An answer is parsed only when its bytes differ from the last one found complete: the clients share the
    service's cores, and parsing 225 KB of JSON costs a client about as much CPU as the service spends answering.
    """
    samples: list[Sample] = []
    body = {"backend": BACKEND, "ops": ops}
    checked: bytes | None = None  # an answer already parsed and found complete
    with httpx.Client(timeout=timeout_s) as client:
        for index in range(count):
            if stop_file is not None and os.path.exists(stop_file):
                break
            if index > 0 and time.time() >= deadline_wall:
                break
            started, t0 = time.time(), time.perf_counter()
            error: str | None = None
            try:
                response = client.post(f"{url}/v1/lookup", json=body)
                ms = (time.perf_counter() - t0) * 1e3
                if response.status_code != 200:
                    error = f"HTTP {response.status_code}: {response.text[:120]}"
                elif response.content != checked:  # the same bytes as a complete answer: complete too
                    if (found := len(response.json()["found"])) != len(ops):
                        error = f"found {found} of {len(ops)}"
                    else:
                        checked = response.content
            except httpx.HTTPError as exc:
                ms = (time.perf_counter() - t0) * 1e3
                error = f"{type(exc).__name__}: {exc}"[:160]
            samples.append(Sample(started, ms, error))
    return samples


def health_prober(url: str, stop: Any, out: Any) -> None:
    """GET /v1/health every HEALTH_INTERVAL_S until ``stop`` is set; puts the list of samples on ``out``."""
    samples: list[Sample] = []
    with httpx.Client(timeout=HEALTH_TIMEOUT_S) as client:
        while not stop.is_set():
            started, t0 = time.time(), time.perf_counter()
            error: str | None = None
            try:
                response = client.get(f"{url}/v1/health")
                if response.status_code != 200:
                    error = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"[:160]
            ms = (time.perf_counter() - t0) * 1e3
            samples.append(Sample(started, ms, error))
            stop.wait(max(0.0, HEALTH_INTERVAL_S - ms / 1e3))
    out.put([asdict(s) for s in samples])


def collect_probes(prober: Any, out: Any) -> list[Sample]:
    """The prober's samples (after its stop event is set); none when it never started or died."""
    if prober.pid is None:
        return []
    try:
        samples = [Sample(**s) for s in out.get(timeout=HEALTH_TIMEOUT_S + 10)]
    except queue.Empty:
        samples = []
    prober.join(10)
    return samples


def client_pid(hold_s: float) -> int:
    """The client process's id, after holding it ``hold_s`` (so that concurrent calls land in distinct processes)."""
    time.sleep(hold_s)
    return os.getpid()


def start_clients(pool: ProcessPoolExecutor, timeout_s: float = 60.0) -> None:
    """Make the pool start all CLIENTS processes (it starts them on demand) before anything is timed."""
    deadline = time.monotonic() + timeout_s
    pids: set[int] = set()
    while len(pids) < CLIENTS and time.monotonic() < deadline:
        pids |= set(pool.map(client_pid, [0.5] * CLIENTS))
    if len(pids) < CLIENTS:
        raise RuntimeError(f"only {len(pids)} of {CLIENTS} client processes started within {timeout_s:g} s")


def run_clients(pool: ProcessPoolExecutor, url: str, bodies: Sequence[list[str]], count: int, cap_s: float,
                timeout_s: float, stop_file: str | None = None) -> list[Sample]:
    """One lookup loop per body, each in its own client process; all their samples."""
    deadline = time.time() + cap_s
    futures = [pool.submit(lookup_client, url, list(ops), count, deadline, timeout_s, stop_file) for ops in bodies]
    return [sample for future in futures for sample in future.result()]


def post_measure(url: str, ops: list[str], timeout_s: float) -> tuple[Sample, int | None]:
    """``POST /v1/measure`` (no wait): its sample (an error unless 200/202) and the job id."""
    started, t0 = time.time(), time.perf_counter()
    try:
        response = httpx.post(f"{url}/v1/measure", json={"backend": BACKEND, "ops": ops}, timeout=timeout_s)
    except httpx.HTTPError as exc:
        return Sample(started, (time.perf_counter() - t0) * 1e3, f"{type(exc).__name__}: {exc}"[:160]), None
    ms = (time.perf_counter() - t0) * 1e3
    if response.status_code not in (200, 202):
        return Sample(started, ms, f"HTTP {response.status_code}: {response.text[:120]}"), None
    return Sample(started, ms, None), int(response.json()["id"])


def job_status(url: str, job_id: int, timeout_s: float) -> str:
    """The job's status, or ``unreachable`` when the service does not answer in time."""
    try:
        return str(httpx.get(f"{url}/v1/jobs/{job_id}", timeout=timeout_s).raise_for_status().json()["status"])
    except httpx.HTTPError:
        return "unreachable"


def wait_jobs(url: str, job_ids: Sequence[int], wait_s: float, timeout_s: float) -> dict[int, str]:
    """Poll the jobs until each is finished or ``wait_s`` has passed; their last statuses."""
    deadline = time.monotonic() + wait_s
    statuses = dict.fromkeys(job_ids, "queued")
    while True:
        for job_id in job_ids:
            if statuses[job_id] not in ("done", "failed", "cancelled"):
                statuses[job_id] = job_status(url, job_id, timeout_s)
        if all(s in ("done", "failed", "cancelled") for s in statuses.values()) or time.monotonic() >= deadline:
            return statuses
        time.sleep(0.25)


# --- scenarios -----------------------------------------------------------------------------------------------
def lookups(name: str, pool: ProcessPoolExecutor, url: str, bodies: Sequence[list[str]], count: int, plan: Plan,
            budget: Budget) -> Series:
    series = Series(name)
    t0 = time.monotonic()
    series.samples = run_clients(pool, url, bodies, count, min(plan.scenario_cap_s, budget.remaining()),
                                 plan.request_timeout_s)
    series.seconds = time.monotonic() - t0
    return series


def lookups_during_measure(pool: ProcessPoolExecutor, url: str, table: Sequence[str], new_ops: list[str],
                           plan: Plan, budget: Budget, tmp: Path) -> Series:
    """1,000-spec lookups from every client while a measure job of ``new_ops`` runs (they stop when it ends)."""
    series = Series("lookup_during_measure")
    t0 = time.monotonic()
    submit, job_id = post_measure(url, new_ops, plan.request_timeout_s)
    series.notes["measure_post"] = asdict(submit)
    cap = min(plan.scenario_cap_s, budget.remaining())
    stop_file = tmp / f"job-ended-{uuid.uuid4().hex[:8]}"
    ended: dict[str, float | str] = {}

    def watch() -> None:  # marks the end of the job for the clients (and when it was seen)
        deadline = time.monotonic() + cap
        while job_id is not None and time.monotonic() < deadline:
            status = job_status(url, job_id, plan.request_timeout_s)
            if status in ("done", "failed", "cancelled"):
                ended.update(status=status, at=time.time())
                break
            time.sleep(0.1)
        stop_file.touch()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    series.samples = run_clients(pool, url, [list(table)] * CLIENTS, plan.lookups_during_measure, cap,
                                 plan.request_timeout_s, str(stop_file))
    watcher.join(cap + plan.request_timeout_s)
    if submit.error is not None:
        series.samples.append(submit)
    series.seconds = time.monotonic() - t0
    end_at = float(ended.get("at", time.time()))
    if "status" in ended:
        status = str(ended["status"])
    else:  # still running when the clients stopped (or never created)
        status = job_status(url, job_id, plan.request_timeout_s) if job_id is not None else "not created"
    series.notes.update(job_ops=len(new_ops), job_status=status, failed_jobs=int(status == "failed"),
                        lookups_while_job_ran=sum(1 for s in series.samples if s.started < end_at))
    return series


def measure_burst(pool: ProcessPoolExecutor, url: str, table: Sequence[str], new_ops: list[str], plan: Plan,
                  budget: Budget) -> tuple[Series, Series]:
    """Rounds of MEASURES_PER_ROUND concurrent measure posts mixed with 100-spec lookups; then the jobs."""
    lookup_series, post_series = Series("burst_lookups"), Series("burst_measure_posts")
    t0 = time.monotonic()
    job_ids: list[int] = []
    size = plan.burst_measure_ops
    chunks = [new_ops[i:i + size] for i in range(0, len(new_ops), size)]
    bodies = [list(table[i * 100:(i + 1) * 100]) for i in range(CLIENTS)]
    with ThreadPoolExecutor(MEASURES_PER_ROUND) as posters:
        for round_index in range(plan.burst_rounds):
            cap = min(plan.scenario_cap_s / plan.burst_rounds, budget.remaining() - plan.job_wait_s)
            if cap < plan.request_timeout_s / 2:
                lookup_series.notes["rounds_skipped"] = plan.burst_rounds - round_index
                break
            chunk = chunks[round_index * MEASURES_PER_ROUND:(round_index + 1) * MEASURES_PER_ROUND]
            posts = [posters.submit(post_measure, url, ops, plan.request_timeout_s) for ops in chunk]
            lookup_series.samples += run_clients(pool, url, bodies, plan.burst_lookups, cap, plan.request_timeout_s)
            for post in posts:
                sample, job_id = post.result()
                post_series.samples.append(sample)
                if job_id is not None:
                    job_ids.append(job_id)
    lookup_series.seconds = time.monotonic() - t0
    statuses = wait_jobs(url, job_ids, max(0.0, min(plan.job_wait_s, budget.remaining())), plan.request_timeout_s)
    counts = {status: list(statuses.values()).count(status) for status in sorted(set(statuses.values()))}
    post_series.notes.update(jobs=counts, failed_jobs=counts.get("failed", 0))
    post_series.seconds = time.monotonic() - t0
    return lookup_series, post_series


# --- one database --------------------------------------------------------------------------------------------
def run_database(db: str, db_url: str, plan: Plan, budget: Budget, tmp: Path) -> dict[str, Any]:
    """Start the service on ``db_url``, seed the table, run every scenario with the health prober; the report."""
    from search_client.device.local_profiler import LocalProfiler

    log_path = tmp / f"serve_{db}.log"
    started = time.monotonic()
    load_before = os.getloadavg()[0]  # the cores are shared: what else ran is part of the figures
    profiler = LocalProfiler(db_url, log_path, protocol="fast", env={"PROFILER_WORKER_POLL_S": "0.1"})
    profiler.start(timeout=min(90.0, max(10.0, budget.remaining())))
    startup_s = time.monotonic() - started
    ctx = multiprocessing.get_context("spawn")
    stop, out = ctx.Event(), ctx.Queue()
    prober = ctx.Process(target=health_prober, args=(profiler.url, stop, out), daemon=True)
    series: list[Series] = []
    skipped: list[str] = []
    try:
        pool_specs = spec_pool(TABLE_OPS + plan.measure_job_ops
                               + plan.burst_rounds * MEASURES_PER_ROUND * plan.burst_measure_ops)
        table, new_ops = pool_specs[:TABLE_OPS], pool_specs[TABLE_OPS:]
        prober.start()
        context = seed_table(profiler.url, db_url, table)
        seeded_s = time.monotonic() - started - startup_s
        with ProcessPoolExecutor(CLIENTS, mp_context=ctx) as pool:
            start_clients(pool)
            slices = [list(table[i * 100:(i + 1) * 100]) for i in range(CLIENTS)]
            # (name, the budget it needs to run at all, how to run it)
            scenarios: list[tuple[str, float, Callable[[], list[Series]]]] = [
                ("lookup_100", plan.request_timeout_s + 2, lambda: [lookups(
                    "lookup_100", pool, profiler.url, slices, plan.lookups_100, plan, budget)]),
                ("lookup_1000_1client", plan.request_timeout_s + 2, lambda: [lookups(
                    "lookup_1000_1client", pool, profiler.url, [list(table)], plan.lookups_single, plan, budget)]),
                ("lookup_1000", plan.request_timeout_s + 2, lambda: [lookups(
                    "lookup_1000", pool, profiler.url, [list(table)] * CLIENTS, plan.lookups_1000, plan, budget)]),
                ("lookup_during_measure", plan.request_timeout_s + 2, lambda: [lookups_during_measure(
                    pool, profiler.url, table, new_ops[:plan.measure_job_ops], plan, budget, tmp)]),
                ("measure_burst", plan.request_timeout_s + plan.job_wait_s + 2, lambda: list(measure_burst(
                    pool, profiler.url, table, new_ops[plan.measure_job_ops:], plan, budget))),
            ]
            for name, needs_s, run in scenarios:
                if budget.remaining() < needs_s:
                    skipped.append(name)
                    continue
                series += run()
            skipped += [f"{s.name} ({s.notes['rounds_skipped']} of {plan.burst_rounds} rounds)" for s in series
                        if s.notes.get("rounds_skipped")]
    finally:
        stop.set()
        health = collect_probes(prober, out)
        profiler.stop()
    timings = {"load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
               "startup_seconds": round(startup_s, 2), "seed_seconds": round(seeded_s, 2),
               "seconds": round(time.monotonic() - started, 2)}
    return report_of(db, series, Series("health", health), skipped, context, timings)


def report_of(db: str, series: Sequence[Series], health: Series, skipped: list[str], context: dict[str, Any],
              timings: dict[str, float]) -> dict[str, Any]:
    """The JSON report of one database: scenarios, health, targets and their verdicts."""
    scenarios = {s.name: s.summary() for s in series}
    probes = health.summary()
    errors = sum(s["errors"] + s.get("failed_jobs", 0) for s in scenarios.values()) + probes["errors"]
    health_max_s = max((s.ms for s in health.samples), default=float("inf")) / 1e3
    big = scenarios.get("lookup_1000", {})
    p50, p99 = big.get("p50_ms"), big.get("p99_ms")
    targets = {
        "zero_errors": {"value": errors, "target": 0, "pass": errors == 0 and not skipped},
        "health_within_1s": {"value": round(health_max_s, 3), "target": TARGET_HEALTH_S,
                             "pass": bool(health.samples) and probes["errors"] == 0 and health_max_s < TARGET_HEALTH_S},
        "lookup_1000_p50_ms": {"value": None if p50 is None else round(p50, 1), "target": TARGET_P50_MS, "pass": p50 is not None and p50 < TARGET_P50_MS},
        "lookup_1000_p99_ms": {"value": None if p99 is None else round(p99, 1), "target": TARGET_P99_MS, "pass": p99 is not None and p99 < TARGET_P99_MS},
    }
    return {"db": db, "clients": CLIENTS, "table_ops": TABLE_OPS, "backend": BACKEND, "context": context,
            "scenarios": scenarios, "health": {**probes, "max_s": round(health_max_s, 3)}, "skipped": skipped,
            "errors": errors, "targets": targets, "passed": all(t["pass"] for t in targets.values()), **timings}


# --- output --------------------------------------------------------------------------------------------------
def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_report(report: dict[str, Any]) -> None:
    print(f"== {report['db']}: {report['table_ops']} stored ops, {report['clients']} clients, "
          f"{report['seconds']:.1f} s, load average {report['load_avg_1min'][0]:.2f} -> {report['load_avg_1min'][1]:.2f}")
    for name, s in {**report["scenarios"], "health": report["health"]}.items():
        extra = {k: v for k, v in s.items() if k not in ("requests", "errors", "error_examples", "p50_ms", "p95_ms",
                                                           "p99_ms", "max_ms", "seconds", "max_s")}
        print(f"{name:24s} n={s['requests']:4d} errors={s['errors']:3d} p50={fmt(s['p50_ms'])} ms "
              f"p95={fmt(s['p95_ms'])} ms p99={fmt(s['p99_ms'])} ms max={fmt(s['max_ms'])} ms"
              + (f" {json.dumps(extra)}" if extra else ""))
        for example in s["error_examples"]:
            print(f"    error: {example}")
    if report["skipped"]:
        print(f"skipped (time budget): {', '.join(report['skipped'])}")


def verdict_line(reports: Sequence[dict[str, Any]]) -> str:
    """The final line: the targets and PASS/FAIL of each, per database."""
    def word(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    parts = []
    for r in reports:
        t = r["targets"]
        parts.append(f"{r['db']}: errors={t['zero_errors']['value']} {word(t['zero_errors']['pass'])}, "
                     f"health max={t['health_within_1s']['value']:.3f}s {word(t['health_within_1s']['pass'])}, "
                     f"p50={fmt(t['lookup_1000_p50_ms']['value'])}ms {word(t['lookup_1000_p50_ms']['pass'])}, "
                     f"p99={fmt(t['lookup_1000_p99_ms']['value'])}ms {word(t['lookup_1000_p99_ms']['pass'])}")
    return (f"targets (0 errors, health < {TARGET_HEALTH_S:g} s, 1000-spec lookup p50 < {TARGET_P50_MS:g} ms and "
            f"p99 < {TARGET_P99_MS:g} ms with {CLIENTS} clients): " + " | ".join(parts))


def markdown(report: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [f"# Service load on {report['db']}", "",
             f"{report['table_ops']} stored ops, {report['clients']} concurrent client processes, backend "
             f"{report['backend']}, fast protocol for the measure jobs; health probed every "
             f"{HEALTH_INTERVAL_S * 1e3:.0f} ms. Run: {meta['when']} on {meta['host']} ({meta['cpus']} CPUs), "
             f"{'quick' if meta['quick'] else 'full'} plan, {report['seconds']:.1f} s; 1-minute load average "
             f"{report['load_avg_1min'][0]:.2f} before, {report['load_avg_1min'][1]:.2f} after.", "",
             "| scenario | requests | errors | p50 ms | p95 ms | p99 ms | max ms |", "|---|---|---|---|---|---|---|"]
    for name, s in {**report["scenarios"], "health": report["health"]}.items():
        lines.append(f"| {name} | {s['requests']} | {s['errors']} | {fmt(s['p50_ms'])} | {fmt(s['p95_ms'])} | "
                     f"{fmt(s['p99_ms'])} | {fmt(s['max_ms'])} |")
    lines += ["", "| target | value | goal | verdict |", "|---|---|---|---|"]
    for name, t in report["targets"].items():
        lines.append(f"| {name} | {t['value']} | {t['target']} | {'PASS' if t['pass'] else 'FAIL'} |")
    examples = [e for s in report["scenarios"].values() for e in s["error_examples"]] + report["health"][
        "error_examples"]
    if examples:
        lines += ["", "Errors seen (first of each kind):", ""] + [f"- `{e}`" for e in dict.fromkeys(examples)]
    if report["skipped"]:
        lines += ["", f"Skipped for the time budget: {', '.join(report['skipped'])}."]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (``--help`` lists it)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--quick", action="store_true", help="a few requests per scenario (smoke run)")
    parser.add_argument("--postgres", default=POSTGRES_SERVER, help="PostgreSQL server URL (a database is created)")
    parser.add_argument("--budget-s", type=float, default=160.0, help="time budget of the whole run")
    parser.add_argument("--log-dir", type=Path, default=None,
                        help="keep the services' logs here (default: a temporary directory, removed)")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR, help="where the reports are written")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.budget_s > 0:
        print(f"service_load: --budget-s must be > 0, got {args.budget_s}", file=sys.stderr)
        return 2
    dbs = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    if "postgres" in dbs:
        reason = check_postgres(args.postgres)
        if reason is not None:
            print(f"service_load: PostgreSQL server {args.postgres} unreachable: {reason}", file=sys.stderr)
            return 2
    plan = Plan.quick() if args.quick else Plan()
    budget = Budget(args.budget_s)
    meta = {"when": time.strftime("%Y-%m-%d %H:%M"), "host": platform.node(), "cpus": os.cpu_count(),
            "quick": args.quick, "plan": asdict(plan)}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    reports = []
    with tempfile.TemporaryDirectory(prefix="service_load_") as tmp_name:
        tmp = Path(tmp_name)
        for index, db in enumerate(dbs):
            # each database gets an equal share of what is left of the budget
            share = Budget(budget.remaining() / (len(dbs) - index))
            database = sqlite_database(tmp) if db == "sqlite" else postgres_database(args.postgres)
            try:
                with database as db_url:
                    report = run_database(db, db_url, plan, share, tmp)
            except (RuntimeError, httpx.HTTPError) as exc:
                log = tmp / f"serve_{db}.log"
                tail = log.read_text(errors="replace").strip().splitlines()[-5:] if log.exists() else []
                print(f"service_load: {db}: {exc}" + "".join(f"\n    {line}" for line in tail), file=sys.stderr)
                return 2
            if args.log_dir is not None:
                args.log_dir.mkdir(parents=True, exist_ok=True)
                shutil.copy(tmp / f"serve_{db}.log", args.log_dir / f"serve_{db}.log")
            report["meta"] = meta
            print_report(report)
            stem = args.out_dir / f"service_load_{db}"
            stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
            stem.with_suffix(".md").write_text(markdown(report, meta))
            reports.append(report)
    print(verdict_line(reports))
    return 0 if all(r["passed"] for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
