"""The real ``serve`` process closes connections that hold it without sending a request: an idle socket, headers
sent a byte at a time (slowloris); a head larger than the bound is a 431; a request that arrived whole may take
longer than the deadline to answer (issue 32, point 4)."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.live import LiveProfiler

pytestmark = pytest.mark.live

REQUEST_TIMEOUT_S = 2.0
#: How long past the deadline a loaded machine may take to close (the test fails long before "never").
SLACK_S = 8.0


@pytest.fixture(scope="module")
def profiler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveProfiler]:
    folder = tmp_path_factory.mktemp("connections")
    env = {"PROFILER_REQUEST_TIMEOUT_S": str(REQUEST_TIMEOUT_S), "PROFILER_KEEP_ALIVE_TIMEOUT_S": "30"}
    with LiveProfiler(f"sqlite:///{folder / 'live.db'}", folder / "serve.log", env=env) as live:
        yield live


def connect(profiler: LiveProfiler) -> socket.socket:
    return socket.create_connection(("127.0.0.1", profiler.port), timeout=5)


def closed_by_server(sock: socket.socket, wait_s: float) -> bool:
    """Whether the server closes ``sock`` within ``wait_s`` (what it sends first is read and dropped)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if ready:
            try:
                if not sock.recv(65536):
                    return True
            except ConnectionResetError:
                return True
    return False


def test_an_idle_connection_is_closed_after_the_request_timeout(profiler: LiveProfiler) -> None:
    with connect(profiler) as sock:
        opened = time.monotonic()
        assert closed_by_server(sock, REQUEST_TIMEOUT_S + SLACK_S)
        assert time.monotonic() - opened >= REQUEST_TIMEOUT_S - 0.5  # the deadline, not at once


def test_headers_sent_byte_by_byte_are_cut_off_at_the_deadline(profiler: LiveProfiler) -> None:
    with connect(profiler) as sock:
        opened = time.monotonic()
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        closed = False
        while not closed and time.monotonic() - opened < REQUEST_TIMEOUT_S + SLACK_S:
            try:
                sock.sendall(b"x")  # one more byte of a header that never ends
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            closed = closed_by_server(sock, 0.2)
        assert closed, "the server still reads a request whose headers never end"


def test_a_head_over_the_bound_is_a_431(profiler: LiveProfiler) -> None:
    with connect(profiler) as sock:
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 100_000)
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert b'"code": "headers_too_large"' in answer


def test_keep_alive_requests_and_a_long_answer_are_not_cut(profiler: LiveProfiler) -> None:
    with httpx.Client(base_url=profiler.url, timeout=30) as client:
        assert client.get("/v1/health").status_code == 200
        time.sleep(0.5)
        assert client.get("/v1/health").status_code == 200  # the same connection, within the keep-alive timeout
        ops = [f"mbconv_r8x8_c{c}-{c}_k{k}_e6_s1_relu6" for c in (8, 16, 24, 32) for k in (3, 5, 7)]
        started = time.monotonic()
        job = client.post("/v1/measure", json={"backend": "ort-cpu", "ops": ops, "force": True,
                                               "wait_s": REQUEST_TIMEOUT_S + 1.5})
        assert job.status_code in (200, 202), job.text  # answered after the deadline: the request had arrived
        if job.status_code == 202:
            assert time.monotonic() - started >= REQUEST_TIMEOUT_S
            client.post(f"/v1/jobs/{job.json()['id']}/cancel", headers={"content-type": "application/json"})


def test_pipelined_requests_are_all_answered(profiler: LiveProfiler) -> None:
    request = b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with connect(profiler) as sock:
        sock.sendall(request * 3)
        received = b""
        while received.count(b"HTTP/1.1 200 ") < 3:
            chunk = sock.recv(65536)
            assert chunk, received
            received += chunk
