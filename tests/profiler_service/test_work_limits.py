"""Bounded work (issue 32, point 4): a device's queue of pending items has a cap (429 with Retry-After naming it);
an architecture's size is checked before it is built; slow validation of a request never holds the event loop, so
/v1/health answers meanwhile."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

import profiler_service.api.routers.measure as measure_router
from nas_ops.arch import FORMAT_MARKER, FORMAT_VERSION
from nas_ops.arch_files import architecture_from_json_obj
from profiler_service.api.app import create_app
from tests.profiler_service.conftest import SMALL_OPS, RunnerGate, make_settings

OTHER_OPS = ["conv_r16x16_c3-16_k3_s1_relu6", "conv_r16x16_c3-24_k3_s1_relu6", "conv_r16x16_c3-32_k3_s1_relu6"]
#: A valid architecture file of ours (stem, blocks, head), with ``blocks`` blocks.
STEM, BLOCK, HEAD = "conv_r32x32_c3-8_k3_s2_relu6", "mbconv_r16x16_c8-8_k3_e3_s1_relu6_skip", "head_r16x16_c8-10"
VALIDATION_WAIT_S = 30.0


def architecture(blocks: int) -> dict:
    return {"format": FORMAT_MARKER, "version": FORMAT_VERSION, "stem": STEM, "blocks": [BLOCK] * blocks,
            "head": HEAD}


@pytest.fixture
def capped(service_db: str, gate: RunnerGate) -> Iterator[TestClient]:
    """A service whose queue holds 5 items, its worker held at the gate (what it claimed stays pending)."""
    with TestClient(create_app(make_settings(service_db, max_pending_items=5))) as client:
        yield client
        gate.release()


def test_a_submit_over_the_pending_cap_is_429_naming_the_cap(capped: TestClient, gate: RunnerGate) -> None:
    first = capped.post("/v1/measure", json={"backend": "ort-cpu", "ops": SMALL_OPS})
    assert first.status_code == 202
    gate.wait_entered()  # the worker measures the first item: all three are still pending
    full = capped.post("/v1/measure", json={"backend": "ort-cpu", "ops": OTHER_OPS})
    assert full.status_code == 429, full.text
    assert full.headers["retry-after"] == "60"
    assert full.json() == {"code": "queue_full", "detail": (
        "this device has 3 job items pending (in queued or running jobs) and this request would add 3, above its "
        "limit of 5 pending items (max_pending_items, PROFILER_MAX_PENDING_ITEMS): retry once some are measured "
        "(Retry-After says when), or raise the limit")}
    assert [job["id"] for job in capped.get("/v1/jobs").json()["jobs"]] == [first.json()["id"]]  # rolled back
    fits = capped.post("/v1/measure", json={"backend": "ort-cpu", "ops": OTHER_OPS[:2]})
    assert fits.status_code == 202 and not fits.json()["attached"]  # 3 + 2 items: at the cap, not over it
    again = capped.post("/v1/measure", json={"backend": "ort-cpu", "ops": SMALL_OPS})
    assert again.status_code == 202 and again.json()["attached"]  # the same work adds no item
    too_many = capped.post("/v1/measure", json={"backend": "ort-cpu", "ops": [*SMALL_OPS, *OTHER_OPS]})
    assert too_many.status_code == 422 and too_many.json()["code"] == "over_limit"
    assert "max_pending_items" in too_many.json()["detail"]


def test_an_architecture_job_counts_as_one_item(capped: TestClient, gate: RunnerGate) -> None:
    assert capped.post("/v1/measure", json={"backend": "ort-cpu", "ops": [*SMALL_OPS, OTHER_OPS[0]]}
                       ).status_code == 202
    gate.wait_entered()
    arch = {"backend": "ort-cpu", "architecture": architecture(2)}
    assert capped.post("/v1/measure/architecture", json=arch).status_code == 202  # 4 + 1
    arch["batch"] = 2
    assert capped.post("/v1/measure/architecture", json=arch).status_code == 429


def test_an_architecture_over_the_size_limits_is_refused_before_it_is_built(service_db: str,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def never(data: object) -> None:
        raise AssertionError("the architecture was built")

    monkeypatch.setattr(measure_router, "architecture_from_json_obj", never)
    settings = make_settings(service_db, max_architecture_blocks=10, max_architecture_bytes=2048)
    with TestClient(create_app(settings)) as client:
        blocks = client.post("/v1/measure/architecture", json={"backend": "ort-cpu", "architecture": architecture(11)})
        assert blocks.status_code == 422, blocks.text
        assert blocks.json() == {"code": "over_limit", "detail": "architecture: 11 blocks is above this service's "
                                 "limit of 10 (max_architecture_blocks, PROFILER_MAX_ARCHITECTURE_BLOCKS)"}
        body = json.dumps({"backend": "ort-cpu", "architecture": {**architecture(1), "metadata": {"x": "y" * 3000}}})
        large = client.post("/v1/measure/architecture", content=body, headers={"content-type": "application/json"})
        assert large.status_code == 413, large.text
        assert large.json() == {"code": "too_large", "detail": f"architecture: the request body is {len(body)} "
                                "bytes, above this service's limit of 2048 bytes for an architecture "
                                "(max_architecture_bytes, PROFILER_MAX_ARCHITECTURE_BYTES)"}


class SlowValidator:
    """Stands in for a validation that takes long: it returns once the test releases it (or after
    VALIDATION_WAIT_S), and says whether it was still running when something else happened."""

    def __init__(self, real: Callable) -> None:
        self.real = real
        self.entered = threading.Event()
        self.release = threading.Event()
        self.done = threading.Event()

    def __call__(self, *args: object, **kwargs: object) -> object:
        self.entered.set()
        self.release.wait(VALIDATION_WAIT_S)
        try:
            return self.real(*args, **kwargs)
        finally:
            self.done.set()


@pytest.mark.parametrize(("name", "path", "body"), [
    ("architecture_from_json_obj", "/v1/measure/architecture", {"backend": "ort-cpu", "architecture": architecture(1)}),
    ("parse_ops", "/v1/measure", {"backend": "ort-cpu", "ops": SMALL_OPS}),
])
def test_health_answers_while_a_slow_validation_runs(service_db: str, monkeypatch: pytest.MonkeyPatch, name: str,
                                                     path: str, body: dict) -> None:
    slow = SlowValidator(architecture_from_json_obj if name == "architecture_from_json_obj"
                         else measure_router.parse_ops)
    monkeypatch.setattr(measure_router, name, slow)
    with TestClient(create_app(make_settings(service_db))) as client:
        answers: list[int] = []
        posting = threading.Thread(target=lambda: answers.append(client.post(path, json=body).status_code))
        posting.start()
        try:
            assert slow.entered.wait(VALIDATION_WAIT_S)
            assert client.get("/v1/health").status_code == 200
            assert not slow.done.is_set(), "/v1/health waited for the validation"
        finally:
            slow.release.set()
            posting.join(VALIDATION_WAIT_S)
        assert answers == [202]


def test_the_device_advertises_the_work_limits(client: TestClient) -> None:
    limits = client.get("/v1/device").json()["limits"]
    assert (limits["max_pending_items"], limits["max_architecture_blocks"], limits["max_architecture_bytes"]) == (
        20_000, 1000, 524_288)
