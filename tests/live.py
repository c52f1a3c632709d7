"""Live-test helpers: the real ``proxyless-profiler serve`` process on 127.0.0.1, with the fast protocol."""

from __future__ import annotations

from pathlib import Path

from search_client.device.local_profiler import PROFILER, LocalProfiler, free_port

__all__ = ["PROFILER", "LiveProfiler", "free_port"]


class LiveProfiler(LocalProfiler):
    """A profiler for tests: ort-cpu, 1 thread, the fast protocol, a short worker poll."""

    def __init__(self, db_url: str, log_path: Path, *, port: int | None = None, extra_args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> None:
        super().__init__(db_url, log_path, port=port, protocol="fast", extra_args=extra_args,
                         env={"PROFILER_WORKER_POLL_S": "0.1", **(env or {})})
