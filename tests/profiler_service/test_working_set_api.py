"""``working_set_bytes`` through the API: validated, mapped to the cache regime's protocol version in the answers,
measured in that regime by the worker, and found again by a lookup with the same working set.

The service runs the ``auto`` preset with a configured 2 MiB per-core cache; its worker measures with a scripted
measurer that records the cache flush it was given (nothing is timed).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from latency_db.models import Job, Measurement
from nas_ops.counting import network_memory_bytes
from nas_ops.space import load_space
from profiler_service.api.app import create_app
from profiler_service.engine.protocol import PROTOCOL_VERSION, ProtocolParams
from tests.profiler_service.conftest import SMALL_OPS, make_settings
from tests.profiler_service.jobs_fakes import stats

MIB = 1 << 20
# the service measures in a duet by default: every version carries +duet
WARM, COLD = f"{PROTOCOL_VERSION}+warm+duet", f"{PROTOCOL_VERSION}+duet"
COLD_FLUSH = ProtocolParams().cache_flush_kib


class FlushRecorder:
    """Stands in for measure_op_round / measure_network_round: records the cache flush of every call, returns fixed stats."""

    def __init__(self) -> None:
        self.flushes: list[int] = []

    def __call__(self, subject: Any, backend: Any, batch: int, dtype: str, threads: int, params: ProtocolParams,
                 *args: Any, **kwargs: Any) -> Any:
        self.flushes.append(params.cache_flush_kib)
        return stats(1.0)


@pytest.fixture
def auto(service_db: str) -> Iterator[tuple[TestClient, FlushRecorder]]:
    settings = make_settings(service_db, protocol="auto", cache_kib=2048, backends="ort-cpu")
    with TestClient(create_app(settings)) as client:
        recorder = FlushRecorder()
        worker = client.app.state.service.worker
        worker.measure_op = worker.measure_network = recorder
        yield client, recorder


def lookup(client: TestClient, **extra: Any) -> dict[str, Any]:
    answer = client.post("/v1/lookup", json={"backend": "ort-cpu", "ops": SMALL_OPS[:1], **extra})
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.mark.parametrize("value", [0, -1, (1 << 40) + 1, "1000", True, 1.5, [1]])
@pytest.mark.parametrize("path", ["/v1/lookup", "/v1/measure"])
def test_bad_working_sets_are_refused(auto: tuple[TestClient, FlushRecorder], path: str, value: Any) -> None:
    client, _ = auto
    answer = client.post(path, json={"backend": "ort-cpu", "ops": SMALL_OPS[:1], "working_set_bytes": value})
    assert answer.status_code == 422, answer.text
    assert "working_set_bytes" in answer.text


def test_the_answer_carries_the_protocol_version_of_the_regime(auto: tuple[TestClient, FlushRecorder]) -> None:
    client, _ = auto
    assert lookup(client, working_set_bytes=MIB)["protocol_version"] == WARM
    assert lookup(client, working_set_bytes=2 * MIB)["protocol_version"] == WARM  # fits exactly
    assert lookup(client, working_set_bytes=2 * MIB + 1)["protocol_version"] == f"{PROTOCOL_VERSION}+flush4096+duet"
    assert lookup(client, working_set_bytes=16 * MIB)["protocol_version"] == COLD
    assert lookup(client, working_set_bytes=float(MIB))["protocol_version"] == WARM  # an integral JSON number
    assert lookup(client)["protocol_version"] == COLD  # none given: cold, as before
    assert lookup(client, working_set_bytes=None)["protocol_version"] == COLD


def test_the_device_reports_the_cache_and_the_rule(auto: tuple[TestClient, FlushRecorder]) -> None:
    client, _ = auto
    protocol = client.get("/v1/device").json()["protocol"]
    assert protocol["preset"] == "auto" and protocol["version"] == COLD
    assert protocol["cache"]["size_bytes"] == 2 * MIB and "PROFILER_CACHE_KIB" in protocol["cache"]["source"]
    assert protocol["regimes"] == {"cold": COLD, "warm": WARM, "flush4096": f"{PROTOCOL_VERSION}+flush4096+duet",
                                   "flush8192": f"{PROTOCOL_VERSION}+flush8192+duet"}
    assert "flush<K>" in protocol["rule"]


def test_a_job_and_a_lookup_with_the_same_working_set_agree(auto: tuple[TestClient, FlushRecorder]) -> None:
    client, recorder = auto
    job = client.post("/v1/measure", json={"backend": "ort-cpu", "ops": SMALL_OPS[:2], "working_set_bytes": MIB,
                                           "wait_s": 60}).json()
    assert job["status"] == "done" and job["done"] == 2 and job["protocol_version"] == WARM  # the job says so
    assert client.get(f"/v1/jobs/{job['id']}").json()["protocol_version"] == WARM
    assert recorder.flushes and set(recorder.flushes) == {0}  # measured warm
    warm = lookup(client, working_set_bytes=MIB // 2)  # another working set in the same regime
    assert warm["protocol_version"] == WARM and warm["missing"] == []
    assert lookup(client, working_set_bytes=4 * MIB)["missing"] == SMALL_OPS[:1]  # cold rows are others
    with client.app.state.service.sessions() as session:
        versions = {m.protocol_version for m in session.query(Measurement).all()}
        flushes = {m.protocol_params["cache_flush_kib"] for m in session.query(Measurement).all()}
    assert versions == {WARM} and flushes == {0}


def test_a_cold_job_is_flushed(auto: tuple[TestClient, FlushRecorder]) -> None:
    client, recorder = auto
    job = client.post("/v1/measure", json={"backend": "ort-cpu", "ops": SMALL_OPS[:1], "wait_s": 60}).json()
    assert job["status"] == "done" and set(recorder.flushes) == {COLD_FLUSH} and job["protocol_version"] == COLD
    assert lookup(client)["missing"] == [] and lookup(client, working_set_bytes=1)["missing"] == SMALL_OPS[:1]


def test_a_job_between_the_cache_and_16_mib_is_flushed_by_its_size(auto: tuple[TestClient, FlushRecorder]
                                                                      ) -> None:
    client, recorder = auto
    job = client.post("/v1/measure", json={"backend": "ort-cpu", "ops": SMALL_OPS[:1], "working_set_bytes": 3 * MIB,
                                           "wait_s": 60}).json()
    assert job["status"] == "done" and job["protocol_version"] == f"{PROTOCOL_VERSION}+flush4096+duet"
    assert set(recorder.flushes) == {4096}
    assert lookup(client, working_set_bytes=4 * MIB)["missing"] == []  # the same regime: its rows
    assert lookup(client)["missing"] == SMALL_OPS[:1] and lookup(client, working_set_bytes=MIB)["missing"] == \
        SMALL_OPS[:1]  # cold and warm rows are others
    with client.app.state.service.sessions() as session:
        assert {m.protocol_params["cache_flush_kib"] for m in session.query(Measurement).all()} == {4096}


def architecture_job(client: TestClient, arch: dict[str, Any], **extra: Any) -> Job:
    answer = client.post("/v1/measure/architecture", json={"backend": "ort-cpu", "architecture": arch,
                                                           "wait_s": 60, **extra})
    assert answer.status_code == 200 and answer.json()["status"] == "done", answer.text
    with client.app.state.service.sessions() as session:
        return session.get(Job, answer.json()["id"])


def test_a_network_is_measured_in_the_regime_of_its_own_working_set(auto: tuple[TestClient, FlushRecorder]
                                                                     ) -> None:
    client, recorder = auto
    space = load_space("micro-16")
    arch = space.architecture([0] * len(space.cells()))
    assert network_memory_bytes(arch, 1, "float32") < 2 * MIB
    assert architecture_job(client, arch.to_dict()).protocol_version == WARM
    assert recorder.flushes and set(recorder.flushes) == {0}
    recorder.flushes.clear()
    # a working set named in the request wins over the network's own
    assert architecture_job(client, arch.to_dict(), working_set_bytes=64 * MIB).protocol_version == COLD
    assert set(recorder.flushes) == {COLD_FLUSH}


def test_a_forced_preset_ignores_the_working_set(service_db: str) -> None:
    with TestClient(create_app(make_settings(service_db, protocol="warm", cache_kib=2048))) as client:
        assert lookup(client, working_set_bytes=64 * MIB)["protocol_version"] == WARM
    with TestClient(create_app(make_settings(service_db, protocol="default", cache_kib=2048))) as client:
        assert lookup(client, working_set_bytes=1)["protocol_version"] == COLD
        assert client.get("/v1/device").json()["protocol"]["preset"] == "cold"
