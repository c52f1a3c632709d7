"""Start ``proxyless-profiler serve`` as a real process on 127.0.0.1 (shared by the live tests of every package)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

PROFILER = Path(sys.executable).with_name("proxyless-profiler")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveProfiler:
    """A profiler process; ``start()`` waits for /v1/health, ``kill()`` sends SIGKILL, ``stop()`` SIGTERM."""

    db_url: str
    log_path: Path
    port: int = field(default_factory=free_port)
    extra_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> LiveProfiler:
        args = [str(PROFILER), "serve", "--host", "127.0.0.1", "--port", str(self.port), "--db", self.db_url,
                "--backends", "ort-cpu", "--threads", "1", "--protocol", "fast", "--log-level", "warning",
                *self.extra_args]
        env = {**os.environ, "PROFILER_WORKER_POLL_S": "0.1", **self.env}
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"profiler exited with {self.process.returncode}: {self.log_path.read_text()}")
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"profiler did not become healthy in {timeout} s: {self.log_path.read_text()}")

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
