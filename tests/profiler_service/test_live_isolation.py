"""The real service measuring in its measuring process: an item past the time limit fails and the service goes
on, health answers at once while a large network is built, a cancel and a SIGTERM end the item in flight within
seconds, and a measured row records its real peak memory."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from latency_db.connection import make_engine, make_session_factory
from latency_db.models import Measurement
from tests.live import LiveProfiler

pytestmark = pytest.mark.live

SMALL = "mbconv_r8x8_c8-8_k3_e3_s1_relu6_skip"
#: A network of 400 blocks: seconds of building and exporting, little memory.
LARGE = {"format": "proxyless-arch", "version": 1, "stem": "conv_r64x64_c3-32_k3_s1_relu6",
         "blocks": ["mbconv_r64x64_c32-32_k3_e6_s1_relu6_skip"] * 400, "head": "head_r64x64_c32-10"}
CHILD = "profiler_service.isolation.child"


def measuring_children(pid: int) -> list[int]:
    """The measuring processes the service ``pid`` started (read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == pid and CHILD in cmdline:
            found.append(int(entry.name))
    return found


def wait_status(url: str, job_id: int, statuses: tuple[str, ...], timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=5).json()
        if job["status"] in statuses:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} not {statuses} within {timeout_s} s: {job}")


def submit_large(url: str) -> int:
    response = httpx.post(f"{url}/v1/measure/architecture", json={"backend": "ort-cpu", "architecture": LARGE},
                          timeout=30)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def test_limits_cancel_and_sigterm_end_the_item_not_the_service(tmp_path) -> None:
    db_url = f"sqlite:///{tmp_path / 'iso.db'}"
    env = {"PROFILER_ITEM_TIME_LIMIT_S": "1.5", "PROFILER_CANARY_INTERVAL_S": "0", "PROFILER_DUET": "false"}
    profiler = LiveProfiler(db_url, tmp_path / "serve.log", env=env).start()
    try:
        url, pid = profiler.url, profiler.process.pid
        # past the time limit: the item fails naming the limit; health answers at once meanwhile
        job_id = submit_large(url)
        wait_status(url, job_id, ("running",))
        slowest = 0.0
        while httpx.get(f"{url}/v1/jobs/{job_id}", timeout=5).json()["status"] == "running":
            started = time.monotonic()
            assert httpx.get(f"{url}/v1/health", timeout=5).status_code == 200
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.1)
        job = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=5).json()
        assert job["status"] == "failed"
        assert "took longer than the time limit of 1.5 s per item (item_time_limit_s)" in job["error"]
        assert slowest < 1.0  # the API never waits on measuring (it took 4.5-6 s inside the service process)

        # the service goes on: a small op is measured, with its real peak memory
        small = httpx.post(f"{url}/v1/measure", json={"backend": "ort-cpu", "ops": [SMALL]}, timeout=10).json()
        assert wait_status(url, small["id"], ("done", "failed"))["status"] == "done"
        engine = make_engine(db_url)
        try:
            with make_session_factory(engine)() as session:
                row = session.scalars(select(Measurement).where(Measurement.op_spec == SMALL)).one()
        finally:
            engine.dispose()
        assert 100 << 20 < row.peak_rss_bytes < 2048 << 20

        # a cancel ends the measuring process of the item in flight
        job_id = submit_large(url)
        wait_status(url, job_id, ("running",))
        time.sleep(0.3)
        assert measuring_children(pid)
        cancel = httpx.post(f"{url}/v1/jobs/{job_id}/cancel", headers={"content-type": "application/json"},
                            timeout=5)
        assert cancel.status_code == 200, cancel.text
        deadline = time.monotonic() + 3
        while measuring_children(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not measuring_children(pid)
        assert httpx.get(f"{url}/v1/jobs/{job_id}", timeout=5).json()["status"] == "cancelled"

        # SIGTERM while an item is measured: the service exits within seconds (it took 34 s in-process)
        job_id = submit_large(url)
        wait_status(url, job_id, ("running",))
        time.sleep(0.3)
        children = measuring_children(pid)
        assert children
        started = time.monotonic()
        profiler.process.send_signal(signal.SIGTERM)
        profiler.process.wait(30)
        assert time.monotonic() - started < 10
        for child in children:
            with pytest.raises(ProcessLookupError):
                os.kill(child, 0)
    finally:
        profiler.stop()
