"""The real service as a process: a job survives SIGKILL and every item is measured exactly once; a duet service
keeps one baseline across restarts."""

from __future__ import annotations

import time
from collections import Counter

import httpx
import pytest
from sqlalchemy import select

from latency_db.connection import make_engine, make_session_factory
from latency_db.models import Job, JobItem, Measurement
from tests.live import LiveProfiler

pytestmark = pytest.mark.live

# A job long by construction: 48 distinct ops (about 0.1-0.2 s each with the fast protocol), so that the SIGKILL
# sent right after the first done item is seen lands while dozens of items are still pending.
OPS = [f"mbconv_r8x8_c{c}-{c}_k{k}_e{e}_s1_relu6{skip}"
       for c in (8, 16, 24, 32) for k in (3, 5, 7) for e in (3, 6) for skip in ("", "_skip")]


def job_state(db_url: str, job_id: int) -> tuple[str, dict[str, int]]:
    """The job's status and its items' counts by status, read from the database."""
    engine = make_engine(db_url)
    try:
        with make_session_factory(engine)() as session:
            status = session.get(Job, job_id).status
            counts = Counter(session.scalars(select(JobItem.status).where(JobItem.job_id == job_id)))
    finally:
        engine.dispose()
    return status, dict(counts)


def test_killed_service_resumes_its_job_and_measures_each_item_once(tmp_path) -> None:
    db_url = f"sqlite:///{tmp_path / 'live.db'}"
    profiler = LiveProfiler(db_url, tmp_path / "serve.log").start()
    try:
        job = httpx.post(f"{profiler.url}/v1/measure", json={"backend": "ort-cpu", "ops": OPS}, timeout=10).json()
        deadline = time.monotonic() + 120
        progress = job
        while progress["done"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
            progress = httpx.get(f"{profiler.url}/v1/jobs/{job['id']}", timeout=5).json()
        assert progress["done"] >= 1, progress
        profiler.kill()  # at once: the job is observed with >= 1 done item and dozens pending
        status, counts = job_state(db_url, job["id"])
        assert status == "running" and counts.get("done", 0) >= 1 and counts.get("pending", 0) >= 1, counts

        sessions = make_session_factory(make_engine(db_url))
        with sessions() as session:
            before = {m.op_spec: (m.id, m.updated_at, m.median_ms) for m in session.scalars(select(Measurement))}
        assert len(before) == counts["done"]  # a done item has its row, a pending one none (one transaction)

        profiler = LiveProfiler(db_url, tmp_path / "serve.log", port=profiler.port).start()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            final = httpx.get(f"{profiler.url}/v1/jobs/{job['id']}", timeout=5).json()
            if final["status"] != "running" and final["status"] != "queued":
                break
            time.sleep(0.1)
        assert final["status"] == "done" and final["done"] == len(OPS) and final["pending"] == 0, final

        with sessions() as session:
            rows = {m.op_spec: m for m in session.scalars(select(Measurement))}
            items = session.scalars(select(JobItem).where(JobItem.job_id == job["id"])).all()
        assert sorted(rows) == sorted(OPS)  # one row per op
        assert all(item.status == "done" and item.measurement_id == rows[item.op_spec].id for item in items)
        for spec, (row_id, updated_at, median) in before.items():  # measured before the kill: never again
            assert (rows[spec].id, rows[spec].updated_at, rows[spec].median_ms) == (row_id, updated_at, median)
    finally:
        profiler.stop()


def test_token_and_bind_rules_on_a_real_process(tmp_path) -> None:
    db_url = f"sqlite:///{tmp_path / 'token.db'}"
    profiler = LiveProfiler(db_url, tmp_path / "serve.log", extra_args=("--token", "abc")).start()
    try:
        body = {"backend": "ort-cpu", "ops": OPS}  # 48 items: still unfinished when the submit answers
        assert httpx.post(f"{profiler.url}/v1/measure", json=body, timeout=5).status_code == 401
        ok = httpx.post(f"{profiler.url}/v1/measure", json=body, headers={"Authorization": "Bearer abc"}, timeout=5)
        assert ok.status_code == 202 and ok.json()["done"] < len(OPS)
    finally:
        profiler.stop()


def test_a_duet_service_keeps_one_baseline_across_restarts(tmp_path) -> None:
    from latency_db.models import CanaryReference
    from profiler_service.engine.duet import DEFAULT_REFERENCE
    from profiler_service.jobs.duets import BASELINE_VERSION

    db_url = f"sqlite:///{tmp_path / 'duet.db'}"
    measured = []
    for ops in (OPS[:2], OPS[2:3]):  # two processes, one after the other, on one database
        profiler = LiveProfiler(db_url, tmp_path / "serve.log", extra_args=("--duet",)).start()
        try:
            protocol = httpx.get(f"{profiler.url}/v1/device", timeout=5).json()["protocol"]
            job = httpx.post(f"{profiler.url}/v1/measure", json={"backend": "ort-cpu", "ops": ops, "wait_s": 120},
                             timeout=130).json()
            assert job["status"] == "done" and job["protocol_version"] == protocol["version"]
            measured.append(protocol["version"])
        finally:
            profiler.stop()
    assert measured[0] == measured[1] and measured[0].endswith("+duet")
    engine = make_engine(db_url)
    try:
        with make_session_factory(engine)() as session:
            versions = sorted(session.scalars(select(Measurement.protocol_version)))
            baselines = session.scalars(select(CanaryReference)).all()
    finally:
        engine.dispose()
    assert versions == [measured[0]] * 3
    # the second process scaled to the first one's baseline instead of storing its own: one baseline of the
    # environment, shared by every regime (stored under its own key, not a regime's version)
    duet = [b.protocol_version for b in baselines if b.op_spec == DEFAULT_REFERENCE]
    assert duet == [BASELINE_VERSION]
    # the canaries were measured plain: their references are under the version without the duet
    assert {b.protocol_version for b in baselines if b.op_spec != DEFAULT_REFERENCE} == {measured[0][:-len("+duet")]}
