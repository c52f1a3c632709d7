"""A profiler service as a child process on 127.0.0.1 (the demo's embedded default, and the live tests').

It runs the ``proxyless-profiler serve`` console script installed beside this interpreter: the search client starts
it as a program and talks to it over HTTP only, like any other device.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

PROFILER = Path(sys.executable).with_name("proxyless-profiler")


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalProfiler:
    """``start()`` launches the service and waits for ``GET /v1/health``; ``stop()`` ends it (SIGTERM, then SIGKILL);
    ``kill()`` sends SIGKILL at once. As a context manager it always stops the process."""

    def __init__(self, db_url: str, log_path: Path, *, port: int | None = None, backends: str = "ort-cpu",
                 threads: int = 1, protocol: str = "auto", extra_args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> None:
        self.db_url = db_url
        self.log_path = Path(log_path)
        self.port = port or free_port()
        self.args = [str(PROFILER), "serve", "--host", "127.0.0.1", "--port", str(self.port), "--db", db_url,
                     "--backends", backends, "--threads", str(threads), "--protocol", protocol,
                     "--log-level", "warning", *extra_args]
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> LocalProfiler:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the profiler exited with code {self.process.returncode}; see {self.log_path}")
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the profiler did not answer within {timeout:.0f} s; see {self.log_path}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> LocalProfiler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
