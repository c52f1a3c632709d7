"""LatencyClient against httpx.MockTransport: requests sent, retries, and every error path."""

from __future__ import annotations

import json
import sys

import httpx
import pytest

from nas_ops.space import SPACES
from search_client.device.client import LOOKUP_CHUNK, JobProgress, LatencyClient
from search_client.device.errors import (
    AuthRefused,
    BadRequest,
    DeviceUnreachable,
    JobFailed,
    MissingEntriesError,
    RequestTimeout,
    ServerError,
)
from tests.search_client.conftest import FakeDevice, fake_stats

URL = "http://device.test:8000"


def make_client(handler, **kwargs) -> tuple[LatencyClient, list[float]]:
    """A client on ``handler`` whose backoff sleeps are recorded instead of slept."""
    client = LatencyClient(URL, transport=httpx.MockTransport(handler), **kwargs)
    sleeps: list[float] = []
    client._sleep = sleeps.append
    return client, sleeps


def test_connection_refused_retries_then_device_unreachable():
    attempts = []

    def handler(request):
        attempts.append(request.url.path)
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    client, sleeps = make_client(handler, retries=3, backoff_s=0.5)
    with pytest.raises(DeviceUnreachable) as info:
        client.health()
    assert len(attempts) == 4
    assert sleeps == [0.5, 1.0, 2.0]  # exponential backoff between the attempts
    assert str(info.value) == f"device {URL} unreachable after 4 attempt(s): Connection refused"


def test_retries_zero_means_one_attempt():
    attempts = []

    def handler(request):
        attempts.append(1)
        raise httpx.ConnectError("refused", request=request)

    client, sleeps = make_client(handler, retries=0)
    with pytest.raises(DeviceUnreachable, match="after 1 attempt"):
        client.device_info()
    assert len(attempts) == 1 and sleeps == []


def test_401_is_auth_refused_without_retry():
    attempts = []

    def handler(request):
        attempts.append(request.headers.get("authorization"))
        return httpx.Response(401, json={"detail": "missing or wrong bearer token", "code": "unauthorized"})

    client, _ = make_client(handler, token="wrong")
    with pytest.raises(AuthRefused) as info:
        client.submit_measure(["conv_r16x16_c3-8_k3_s1_relu6"], "ort-cpu")
    assert info.value.status == 401
    assert "missing or wrong bearer token" in str(info.value)
    assert attempts == ["Bearer wrong"]


@pytest.mark.parametrize("status", [400, 422])
def test_4xx_is_bad_request_with_server_message_and_no_retry(status):
    attempts = []
    message = "ops[0]: op spec field 'kernel': must be one of (1, 3, 5, 7, 9, 11), got 4"

    def handler(request):
        attempts.append(1)
        return httpx.Response(status, json={"detail": message, "code": "invalid_input"})

    client, sleeps = make_client(handler)
    with pytest.raises(BadRequest) as info:
        client.lookup(["mbconv_r8x8_c8-8_k4_e3_s1_relu6"], "ort-cpu")
    assert info.value.status == status and info.value.code == "invalid_input"
    assert message in str(info.value)
    assert len(attempts) == 1 and sleeps == []


def test_fastapi_validation_list_is_joined_into_the_message():
    def handler(request):
        return httpx.Response(422, json={"detail": [{"loc": ["body", "batch"], "msg": "must be >= 1"}]})

    client, _ = make_client(handler)
    with pytest.raises(BadRequest, match="body.batch: must be >= 1"):
        client.lookup(["conv_r16x16_c3-8_k3_s1_relu6"], "ort-cpu", batch=0)


def test_503_is_retried_then_succeeds():
    answers = iter([httpx.Response(503, json={"detail": "database busy", "code": "unavailable"}),
                    httpx.Response(503, text="busy"),
                    httpx.Response(200, json={"status": "ok", "version": "0.1.0"})])
    client, sleeps = make_client(lambda request: next(answers), backoff_s=0.25)
    assert client.health() == {"status": "ok", "version": "0.1.0"}
    assert sleeps == [0.25, 0.5]


def test_500_on_every_attempt_is_server_error():
    attempts = []

    def handler(request):
        attempts.append(1)
        return httpx.Response(500, json={"detail": "internal error: KeyError", "code": "internal_error"})

    client, _ = make_client(handler, retries=2)
    with pytest.raises(ServerError, match="server error 500 after 3 attempt.*internal error: KeyError") as info:
        client.health()
    assert info.value.status == 500 and len(attempts) == 3


def test_read_timeout_is_request_timeout():
    def handler(request):
        raise httpx.ReadTimeout("timed out", request=request)

    client, _ = make_client(handler)
    with pytest.raises(RequestTimeout, match="no response in time"):
        client.health()


def test_base_url_and_retries_are_validated():
    with pytest.raises(ValueError, match="device url"):
        LatencyClient("device.test:8000")
    with pytest.raises(ValueError, match="retries"):
        LatencyClient(URL, retries=-1)


def test_lookup_chunks_long_lists_and_merges():
    bodies = []
    specs = [f"conv_r{h}x{h}_c3-8_k3_s1_relu6" for h in range(1, 1025)][: LOOKUP_CHUNK + 120]

    def handler(request):
        body = json.loads(request.content)
        bodies.append(body)
        found = {op: fake_stats(op) for op in body["ops"] if op.startswith("conv_r1x")}
        return httpx.Response(200, json={
            "backend": body["backend"], "batch": body["batch"], "dtype": body["dtype"], "threads": 1,
            "env_hash": "e" * 64, "protocol_version": "p1", "found": found,
            "missing": [op for op in body["ops"] if op not in found]})

    client, _ = make_client(handler)
    result = client.lookup(specs, "ort-cpu", batch=2)
    assert [len(b["ops"]) for b in bodies] == [LOOKUP_CHUNK, 120]
    assert bodies[0]["batch"] == 2 and bodies[0]["threads"] is None and bodies[0]["dtype"] == "float32"
    assert len(result.found) + len(result.missing) == len(specs)
    assert set(result.found) == {s for s in specs if s.startswith("conv_r1x")}
    assert result.env_hash == "e" * 64 and result.protocol_version == "p1" and result.threads == 1


def test_wait_job_failed_raises_job_failed_with_items():
    device = FakeDevice(fail_ops={"conv_r16x16_c3-8_k3_s1_relu6"})
    with device.client() as client:
        job = client.submit_measure(["conv_r16x16_c3-8_k3_s1_relu6", "conv_r8x8_c3-8_k3_s1_relu6"], "ort-cpu")
        with pytest.raises(JobFailed) as info:
            client.wait_job(job["id"], timeout_s=5, poll_s=0.01)
    assert info.value.status == "failed"
    assert info.value.failed_items == [{"op": "conv_r16x16_c3-8_k3_s1_relu6", "error": "out of memory"}]
    assert "conv_r16x16_c3-8_k3_s1_relu6: out of memory" in str(info.value)


def test_wait_job_cancelled_raises_job_failed():
    def handler(request):
        return httpx.Response(200, json={"id": 7, "status": "cancelled", "total": 3, "done": 1,
                                         "error": "cancelled by the user", "failed_items": []})

    client, _ = make_client(handler)
    with pytest.raises(JobFailed, match="job 7 .* ended cancelled: cancelled by the user"):
        client.wait_job(7, timeout_s=1, poll_s=0.01)


class FakeClock:
    """Stands in for the ``time`` module of the client: ``sleep`` advances ``monotonic`` and is recorded."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_job_that_never_finishes_is_request_timeout(monkeypatch):
    clock = FakeClock()
    # the module that defines LatencyClient, wherever it lives, polls on this clock instead of the wall clock
    monkeypatch.setattr(sys.modules[LatencyClient.__module__], "time", clock)
    polls = []

    def handler(request):
        polls.append(clock.now)
        return httpx.Response(200, json={"id": 3, "status": "running", "total": 10, "done": 4, "failed_items": []})

    client, _ = make_client(handler)
    with pytest.raises(RequestTimeout, match=r"job 3 .* not finished after 0.2 s \(4/10 done"):
        client.wait_job(3, timeout_s=0.2, poll_s=0.02, progress=False)
    # one poll every poll_s until the deadline, then the timeout: about timeout_s / poll_s polls, no sleep past it
    assert 10 <= len(polls) <= 12
    assert all(s <= 0.02 + 1e-12 for s in clock.sleeps)
    assert sum(clock.sleeps) == pytest.approx(0.2)


def test_wait_job_reports_every_poll_to_the_progress_callback():
    device = FakeDevice(polls_to_finish=3)
    seen: list[JobProgress] = []
    with device.client() as client:
        job = client.submit_measure(["conv_r16x16_c3-8_k3_s1_relu6"], "ort-cpu")
        done = client.wait_job(job["id"], timeout_s=5, poll_s=0.01, progress=seen.append)
    assert done["status"] == "done" and done["done"] == 1
    assert device.polls[job["id"]] == 3
    assert seen == [JobProgress(job["id"], "queued", 0, 1), JobProgress(job["id"], "queued", 0, 1),
                    JobProgress(job["id"], "done", 1, 1)]


def test_measure_missing_measures_only_missing_ops():
    stored_op = "conv_r16x16_c3-8_k3_s1_relu6"
    device = FakeDevice(stored={stored_op: fake_stats(stored_op)})
    ops = [stored_op, "conv_r8x8_c3-8_k3_s1_relu6", "mbconv_r8x8_c8-8_k3_e3_s1_relu6_skip"]
    with device.client() as client:
        found = client.measure_missing(ops, "ort-cpu", poll_s=0.01)
    assert list(found) == ops
    assert found[ops[1]] == fake_stats(ops[1])
    assert device.measured == ops[1:]
    assert [p for m, p in device.requests if m == "POST"] == ["/v1/lookup", "/v1/measure", "/v1/lookup"]


def test_measure_missing_still_missing_raises():
    def handler(request):
        body = json.loads(request.content) if request.content else {}
        if request.url.path == "/v1/lookup":
            return httpx.Response(200, json={"backend": "ort-cpu", "batch": 1, "dtype": "float32", "threads": 1,
                                             "env_hash": "e", "protocol_version": "p", "found": {},
                                             "missing": body["ops"]})
        return httpx.Response(200, json={"id": 1, "status": "done", "total": 1, "done": 1, "failed_items": []})

    client, _ = make_client(handler)
    with pytest.raises(MissingEntriesError) as info:
        client.measure_missing(["conv_r16x16_c3-8_k3_s1_relu6"], "ort-cpu")
    assert info.value.missing == ["conv_r16x16_c3-8_k3_s1_relu6"]


def test_measure_architecture_returns_network_stats():
    device = FakeDevice(polls_to_finish=2)
    arch = SPACES["micro-16"].architecture([0, 1, 2])
    with device.client() as client:
        stats = client.measure_architecture(arch, "ort-cpu", poll_s=0.01)
    assert stats == {**fake_stats("architecture"), "median_ms": device.sum_of_ops(arch.to_dict())}
    assert ("POST", "/v1/measure/architecture") in device.requests


def test_table_export_json_and_csv():
    def handler(request):
        assert request.url.params["backend"] == "ort-cpu"
        if request.url.params["format"] == "csv":
            return httpx.Response(200, text="op,median_ms\nconv,0.1\n")
        return httpx.Response(200, json={"device": "d", "fingerprint_hash": "f", "measurements": []})

    client, _ = make_client(handler)
    assert client.table("ort-cpu")["measurements"] == []
    assert client.table("ort-cpu", format="csv").startswith("op,median_ms")
    with pytest.raises(ValueError, match="format"):
        client.table(format="xml")


def test_every_post_sends_the_json_content_type_a_bodiless_cancel_too():
    """The service refuses a POST without it (a page of another site could send one): the client always sends it."""
    seen = []

    def handler(request):
        seen.append((request.method, request.url.path, request.headers.get("content-type")))
        if request.url.path.endswith("/cancel"):
            return httpx.Response(200, json={"id": 3, "status": "cancelled"})
        return httpx.Response(202, json={"id": 4, "status": "queued", "attached": False})

    client, _ = make_client(handler)
    assert client.cancel_job(3)["status"] == "cancelled"
    client.submit_measure(["conv_r16x16_c3-8_k3_s1_relu6"], "ort-cpu")
    assert seen == [("POST", "/v1/jobs/3/cancel", "application/json"),
                    ("POST", "/v1/measure", "application/json")]
