"""The HTTP server of ``proxyless-profiler serve``: uvicorn, told at the first signal that the service is stopping.

uvicorn stops on SIGTERM/SIGINT by closing its listeners and then WAITING for every request in flight, before the
app's lifespan shutdown runs: a long-poll (``POST /v1/measure`` with ``wait_s``) would hold the process for up to
``max_wait_s``. This server sets the app's ``stopping`` event as soon as the signal arrives, so a long-poll answers
at once (202 with the job's progress), then uvicorn finishes the shutdown: the lifespan stops the worker after the
item in flight. ``timeout_graceful_shutdown`` bounds what is left (any other slow request).

Connections are bounded in time: an idle keep-alive connection is closed after ``keep_alive_timeout_s``, and a
request must arrive whole within ``request_timeout_s`` (``api.http_guard``: uvicorn has no such timeout of its
own), so a half-open or slowloris connection is closed.
"""

from __future__ import annotations

import socket
import threading
from types import FrameType

import uvicorn

from profiler_service.api.http_guard import guarded_protocol
from profiler_service.settings import ProfilerSettings


class ProfilerServer(uvicorn.Server):
    """A uvicorn server whose exit signal also sets ``stopping`` (the app's ``app.state.stopping``)."""

    def __init__(self, config: uvicorn.Config, stopping: threading.Event) -> None:
        super().__init__(config)
        self.stopping = stopping

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.stopping.set()
        super().handle_exit(sig, frame)


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (OSError when the port is in use or the address is not this host's)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on accepted sockets whose proto says TCP.
    # Without it, Nagle holds a response's body (written after its headers) until the client's delayed ACK: about
    # 40 ms added to every answer smaller than a segment (health, job polls, lookups of a few hundred specs).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT, not one with a listener
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def serve_app(app: object, stopping: threading.Event, sock: socket.socket, log_level: str,
              settings: ProfilerSettings) -> None:
    """Serve ``app`` on the already bound ``sock`` until SIGTERM/SIGINT (see the module docstring), with the
    connection timeouts and the shutdown grace of ``settings``."""
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=settings.shutdown_grace_s,
                            timeout_keep_alive=settings.keep_alive_timeout_s,  # type: ignore[arg-type]
                            http=guarded_protocol(settings.request_timeout_s))
    ProfilerServer(config, stopping).run(sockets=[sock])
