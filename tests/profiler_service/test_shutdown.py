"""SIGTERM on a real ``proxyless-profiler serve``: a hanging long-poll answers at once and the process exits in
seconds; the worker stops after the item in flight (the job stays resumable)."""

from __future__ import annotations

import signal
import subprocess
import threading
import time

import httpx
import pytest
from sqlalchemy import select

from latency_db.connection import make_engine, make_session_factory
from latency_db.models import JobItem, Measurement
from tests.live import LiveProfiler

pytestmark = pytest.mark.live

# 300 distinct small ops: a job that runs for far longer than the test waits, on any machine
OPS = [f"conv_r16x16_c3-{out}_k3_s1_relu6" for out in range(1, 301)]
EXIT_DEADLINE_S = 15.0


def test_sigterm_with_a_hanging_long_poll_exits_within_seconds(tmp_path) -> None:
    db_url = f"sqlite:///{tmp_path / 'shutdown.db'}"
    profiler = LiveProfiler(db_url, tmp_path / "serve.log").start()
    answer: dict[str, object] = {}

    def long_poll() -> None:
        try:
            response = httpx.post(f"{profiler.url}/v1/measure", json={"backend": "ort-cpu", "ops": OPS, "wait_s": 500},
                                  timeout=120)
            answer["status"], answer["body"] = response.status_code, response.json()
        except httpx.HTTPError as exc:
            answer["error"] = repr(exc)

    client = threading.Thread(target=long_poll, daemon=True)
    try:
        client.start()
        deadline = time.monotonic() + 120
        jobs: list[dict] = []
        while time.monotonic() < deadline and not (jobs and jobs[0]["status"] == "running" and jobs[0]["done"] >= 1):
            jobs = httpx.get(f"{profiler.url}/v1/jobs", timeout=10).json()["jobs"]
            time.sleep(0.1)
        assert jobs and jobs[0]["done"] >= 1, (jobs, (tmp_path / "serve.log").read_text()[-3000:])
        assert client.is_alive(), answer  # the long-poll hangs on the running job

        profiler.process.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        try:
            code = profiler.process.wait(EXIT_DEADLINE_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the service did not exit within {EXIT_DEADLINE_S:.0f} s of SIGTERM")
        # uvicorn shuts down gracefully, then ends by the signal it was sent (143 in a shell)
        assert code == -signal.SIGTERM, (code, (tmp_path / "serve.log").read_text()[-2000:])
        client.join(10)
        assert answer.get("status") == 202, answer  # the long-poll got the job's progress, not a dropped connection
        body = answer["body"]
        assert body["status"] == "running" and body["pending"] > 0  # type: ignore[index]
        print(f"exited {time.monotonic() - sent:.1f} s after SIGTERM")
    finally:
        profiler.stop()

    # The worker stopped after the item in flight: every done item has its row, the rest is still pending.
    sessions = make_session_factory(make_engine(db_url))
    with sessions() as session:
        items = session.scalars(select(JobItem)).all()
        rows = {m.id for m in session.scalars(select(Measurement))}
    assert len(items) == len(OPS)
    done = [item for item in items if item.status == "done"]
    assert done and all(item.measurement_id in rows for item in done)
    assert {item.status for item in items} <= {"done", "pending"}
    assert len(done) < len(OPS)
