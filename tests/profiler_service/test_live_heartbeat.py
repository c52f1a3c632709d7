"""One live service per device identity, with real processes on one SQLite file: a second ``serve`` of the same
device refuses to start with one line naming the first; ``--take-over`` starts it and the first stops measuring;
a clean stop frees the device at once, and so does a killed service's restart (issue 32, point 8)."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import httpx
import pytest
from sqlalchemy import select

from latency_db.connection import make_engine, make_session_factory
from latency_db.models import ServiceHeartbeat
from tests.live import PROFILER, LiveProfiler, free_port

pytestmark = pytest.mark.live

ENV = {"PROFILER_HEARTBEAT_S": "0.5", "PROFILER_CANARY_INTERVAL_S": "0"}


def heartbeat_pids(db_url: str) -> list[int]:
    engine = make_engine(db_url)
    try:
        with make_session_factory(engine)() as session:
            return list(session.scalars(select(ServiceHeartbeat.pid)))
    finally:
        engine.dispose()


def wait_until(condition, timeout_s: float = 60.0) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_a_second_service_of_the_device_refuses_then_takes_over(tmp_path) -> None:
    db_url = f"sqlite:///{tmp_path / 'one.db'}"
    first = LiveProfiler(db_url, tmp_path / "first.log", env=ENV).start()
    second = LiveProfiler(db_url, tmp_path / "second.log", extra_args=("--take-over",), env=ENV)
    try:
        refused = subprocess.run(
            [str(PROFILER), "serve", "--port", str(free_port()), "--db", db_url, "--backends", "ort-cpu",
             "--protocol", "fast", "--log-level", "warning"],
            capture_output=True, text=True, timeout=120, env={**os.environ, **ENV})
        assert refused.returncode == 1, refused.stderr
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1, refused.stderr
        assert lines[0].startswith(f"error: device '{socket.gethostname()}' (this name and fingerprint) is already "
                                   f"served on this database by pid {first.process.pid} on ")
        assert "last seen" in lines[0] and "--take-over" in lines[0]
        assert heartbeat_pids(db_url) == [first.process.pid]

        second.start()
        assert heartbeat_pids(db_url) == [second.process.pid]

        def first_stopped_measuring() -> bool:
            ready = httpx.get(f"{first.url}/v1/ready", timeout=5)
            return ready.status_code == 503 and ready.json()["worker"] == "stopped"

        assert wait_until(first_stopped_measuring)
        assert "another service took device" in (tmp_path / "first.log").read_text()
        assert httpx.get(f"{second.url}/v1/ready", timeout=5).status_code == 200
        first.stop()
        assert heartbeat_pids(db_url) == [second.process.pid]  # the first's stop leaves the second's row alone

        second.kill()  # no clean stop: its row stays, but its process is gone
        assert heartbeat_pids(db_url) == [second.process.pid]
        third = LiveProfiler(db_url, tmp_path / "third.log", env=ENV).start()  # no --take-over needed
        try:
            assert heartbeat_pids(db_url) == [third.process.pid]
        finally:
            third.stop()
        assert heartbeat_pids(db_url) == []  # a clean stop deletes the row
    finally:
        second.stop()
        first.stop()
