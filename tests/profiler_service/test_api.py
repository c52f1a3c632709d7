"""The REST API through the ASGI app: codes, messages, persisted rows, jobs."""

from __future__ import annotations

import math
import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from latency_db.models import Job, JobItem, Measurement
from nas_ops.space import load_space
from nas_ops.spec import parse_spec
from profiler_service.engine.protocol import PROTOCOL_VERSION
from tests.profiler_service.conftest import JSON, SMALL_OPS, RunnerGate, make_settings

STAT_KEYS = {"median_ms", "mean_ms", "std_ms", "min_ms", "p10_ms", "p90_ms", "iqr_ms", "samples", "rounds", "flagged",
             "peak_rss_bytes"}


def count_rows(client: TestClient, model: type) -> int:
    with client.app.state.service.sessions() as session:
        return session.scalar(select(func.count()).select_from(model))


def wait_done(client: TestClient, job_id: int, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def test_health_ready_device(client: TestClient) -> None:
    assert client.get("/v1/health").json()["status"] == "ok"
    ready = client.get("/v1/ready")
    assert ready.status_code == 200 and ready.json()["database"] == "ok"
    info = client.get("/v1/device").json()
    assert info["name"] == "test-device"
    assert {b["name"] for b in info["backends"]} == {"ort-cpu", "torch-cpu"}
    assert all(len(b["env_hash"]) == 64 for b in info["backends"])
    assert info["protocol"]["version"] and info["limits"]["max_ops_per_request"] == 2000
    assert len(info["fingerprint_hash"]) == 64


def test_lookup_of_empty_table_lists_everything_missing(client: TestClient) -> None:
    body = client.post("/v1/lookup", json={"backend": "ort-cpu", "ops": SMALL_OPS}).json()
    assert body["found"] == {} and body["missing"] == SMALL_OPS
    assert body["threads"] == 1 and len(body["env_hash"]) == 64


def test_measure_waits_stores_and_lookup_finds(client: TestClient) -> None:
    response = client.post("/v1/measure", json={"backend": "ort-cpu", "ops": SMALL_OPS, "wait_s": 60})
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["status"] == "done" and job["done"] == 3 and job["total"] == 3 and job["pending"] == 0
    found = client.post("/v1/lookup", json={"backend": "ort-cpu", "ops": SMALL_OPS}).json()["found"]
    assert set(found) == set(SMALL_OPS)
    for stats in found.values():
        assert set(stats) == STAT_KEYS
        # calibrated statistics are floored at 0 (module docstring of the protocol): order, not size, is checked
        assert 0 <= stats["min_ms"] <= stats["median_ms"] <= stats["p90_ms"] and stats["samples"] >= 1
    assert count_rows(client, Measurement) == 3
    # a different backend is a different table
    other = client.post("/v1/lookup", json={"backend": "torch-cpu", "ops": SMALL_OPS}).json()
    assert other["missing"] == SMALL_OPS


def test_stored_items_are_skipped_unless_forced(client: TestClient) -> None:
    ops = SMALL_OPS[:2]
    client.post("/v1/measure", json={"backend": "ort-cpu", "ops": ops, "wait_s": 60})
    with client.app.state.service.sessions() as session:
        before = {m.op_spec: (m.id, m.updated_at) for m in session.scalars(select(Measurement))}
    again = client.post("/v1/measure", json={"backend": "ort-cpu", "ops": ops, "wait_s": 60}).json()
    assert again["skipped"] == 2 and again["done"] == 0
    forced = client.post("/v1/measure", json={"backend": "ort-cpu", "ops": ops, "wait_s": 60, "force": True}).json()
    assert forced["done"] == 2
    with client.app.state.service.sessions() as session:
        after = {m.op_spec: (m.id, m.updated_at) for m in session.scalars(select(Measurement))}
        forced_rows = {item.op_spec: item.measurement_id
                       for item in session.scalars(select(JobItem).where(JobItem.job_id == forced["id"]))}
    # updated in place, one row each: same ids, the forced job's items point at them, timestamps never go back
    assert {op: row_id for op, (row_id, _) in after.items()} == {op: row_id for op, (row_id, _) in before.items()}
    assert forced_rows == {op: row_id for op, (row_id, _) in before.items()}
    assert all(after[op][1] >= before[op][1] for op in before)


def test_measure_without_wait_answers_202_then_finishes(gated_client: TestClient, gate: RunnerGate) -> None:
    client = gated_client
    response = client.post("/v1/measure", json={"backend": "ort-cpu", "ops": SMALL_OPS[:1]})
    assert response.status_code == 202  # the gate holds every measurement: the job cannot have finished
    assert response.json()["status"] in ("queued", "running") and response.json()["done"] == 0
    gate.release()
    job = wait_done(client, response.json()["id"])
    assert job["status"] == "done" and job["done"] == 1
    listed = client.get("/v1/jobs", params={"status": "done"}).json()["jobs"]
    assert [j["id"] for j in listed] == [job["id"]]


def test_measuring_the_work_of_a_running_job_attaches_to_it(gated_client: TestClient, gate: RunnerGate) -> None:
    client = gated_client
    first = client.post("/v1/measure", json={"backend": "ort-cpu", "ops": SMALL_OPS[:2]})
    gate.wait_entered()  # the job is running
    assert first.status_code == 202 and first.json()["attached"] is False
    again = client.post("/v1/measure", json={"backend": "ort-cpu", "ops": SMALL_OPS[1::-1]})
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"] and again.json()["attached"]
    forced = client.post("/v1/measure", json={"backend": "ort-cpu", "ops": SMALL_OPS[:2], "force": True})
    assert forced.json()["id"] != first.json()["id"] and forced.json()["attached"] is False
    space = load_space("micro-16")
    arch = {"backend": "ort-cpu", "architecture": space.architecture([0] * len(space.cells())).to_dict()}
    network = client.post("/v1/measure/architecture", json=arch).json()
    assert network["attached"] is False
    assert client.post("/v1/measure/architecture", json=arch).json() | {"attached": False} == network
    gate.release()
    assert wait_done(client, first.json()["id"])["status"] == "done"
    assert len(client.get("/v1/jobs").json()["jobs"]) == 3


def test_cancel_keeps_measured_items_and_refuses_finished(gated_client: TestClient, gate: RunnerGate) -> None:
    """The first item is measured, the worker is held inside the second (the gate holds modules of its input
    shape, which no other item or calibration graph has) when the job is cancelled."""
    client = gated_client
    first, in_flight = "mbconv_r8x8_c8-8_k3_e3_s1_relu6", "mbconv_r16x16_c8-8_k3_e3_s1_relu6"
    rest = [f"mbconv_r8x8_c8-8_k{k}_e{e}_s1_relu6" for k in (5, 7) for e in (3, 6)]
    ops = [first, in_flight, *rest]
    gate.shape = (1, *parse_spec(in_flight).input_shape)
    job = client.post("/v1/measure", json={"backend": "ort-cpu", "ops": ops}).json()
    gate.wait_entered()  # the worker is timing the second item: the job is running, one item done
    cancelled = client.post(f"/v1/jobs/{job['id']}/cancel", headers=JSON)
    assert cancelled.status_code == 200
    body = cancelled.json()
    assert body["status"] == "cancelled" and body["done"] == 1 and body["pending"] == 0
    assert body["done"] + body["skipped"] + body["cancelled"] + body["failed"] == len(ops)
    gate.release()
    # the worker runs one job at a time: once a later job is done, it has left the cancelled one
    probe = "conv_r16x16_c3-8_k3_s2_relu6"
    assert client.post("/v1/measure", json={"backend": "ort-cpu", "ops": [probe], "wait_s": 60}).json()["done"] == 1
    final = client.get(f"/v1/jobs/{job['id']}").json()
    assert final["status"] == "cancelled" and final["pending"] == 0 and final["done"] == 1
    with client.app.state.service.sessions() as session:
        stored = set(session.scalars(select(Measurement.op_spec)))
    # the item measured before the cancel is kept; nothing after the item in flight was measured
    assert {first, probe} <= stored <= {first, in_flight, probe}
    again = client.post(f"/v1/jobs/{job['id']}/cancel", headers=JSON)
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]


def test_missing_job_is_404(client: TestClient) -> None:
    response = client.get("/v1/jobs/999")
    assert response.status_code == 404 and response.json() == {"detail": "job 999 does not exist", "code": "not_found"}
    assert client.post("/v1/jobs/999/cancel", headers=JSON).status_code == 404


def test_table_export_json_and_csv(client: TestClient) -> None:
    client.post("/v1/measure", json={"backend": "ort-cpu", "ops": SMALL_OPS[:2], "wait_s": 60})
    table = client.get("/v1/table", params={"backend": "ort-cpu"}).json()
    assert table["device"] == "test-device"
    assert sorted(row["op_spec"] for row in table["measurements"]) == sorted(SMALL_OPS[:2])
    csv_text = client.get("/v1/table", params={"format": "csv"}).text
    lines = csv_text.strip().splitlines()
    assert len(lines) == 3 and "op_spec" in lines[0] and "median_ms" in lines[0]


def test_architecture_measured_end_to_end(client: TestClient) -> None:
    from nas_ops.space import load_space

    space = load_space("micro-16")
    arch = space.architecture([0] * len(space.cells()))
    response = client.post("/v1/measure/architecture",
                           json={"backend": "ort-cpu", "architecture": arch.to_dict(), "wait_s": 60})
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["kind"] == "architecture" and job["status"] == "done" and job["total"] == 1 and job["done"] == 1
    assert set(job["result"]) == STAT_KEYS and job["result"]["samples"] >= 1
    assert job["result"]["flagged"] is None and job["result"]["rounds"] == 1  # the fast preset: one round
    numbers = [v for k, v in job["result"].items() if k not in ("flagged", "peak_rss_bytes")]
    assert all(math.isfinite(v) and v >= 0 for v in numbers)  # real timings: form, not size


def test_metrics_exposition(client: TestClient) -> None:
    client.get("/v1/health")
    text = client.get("/v1/metrics").text
    assert "profiler_http_requests_total" in text and 'route="/v1/health"' in text
    assert "profiler_stored_measurements" in text


def test_token_guards_mutations_only(gated_token_client: TestClient) -> None:
    token_client = gated_token_client  # the gate holds the measurement: the accepted job is still unfinished
    body = {"backend": "ort-cpu", "ops": SMALL_OPS[:1]}
    missing = token_client.post("/v1/measure", json=body)
    assert missing.status_code == 401 and missing.json()["code"] == "auth_required"
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = token_client.post("/v1/measure", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["detail"] == "invalid bearer token"
    assert count_rows(token_client, Job) == 0
    ok = token_client.post("/v1/measure", json=body, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 202
    assert token_client.post("/v1/lookup", json=body).status_code == 200  # reads need no token
    assert token_client.post("/v1/jobs/1/cancel", headers=JSON).status_code == 401


BAD_REQUESTS = [
    ("post", "/v1/lookup", {"backend": "ort-cpu", "ops": ["mbconv_r8x8_c8-8_k4_e3_s1_relu6"]}, 422, "ops[0]: op spec field 'kernel'"),
    ("post", "/v1/lookup", {"backend": "ort-cpu", "ops": ["nonsense"]}, 422, "field 'kind'"),
    ("post", "/v1/lookup", {"backend": "ort-cpu", "ops": []}, 422, "ops"),
    ("post", "/v1/lookup", {"backend": "ort-cpu", "ops": "mbconv"}, 422, "ops"),
    ("post", "/v1/lookup", {"backend": "tpu-magic", "ops": SMALL_OPS}, 422, "backend 'tpu-magic' is not served"),
    ("post", "/v1/lookup", {"backend": "ort-cpu", "ops": SMALL_OPS, "batch": 0}, 422, "batch"),
    ("post", "/v1/lookup", {"backend": "ort-cpu", "ops": SMALL_OPS, "batch": 100000}, 422, "batch: 100000 is above"),
    ("post", "/v1/lookup", {"backend": "ort-cpu", "ops": SMALL_OPS, "bogus": 1}, 422, "bogus"),
    ("post", "/v1/lookup", {"backend": "ort-cpu", "ops": SMALL_OPS, "dtype": "int3"}, 422, "dtype"),
    ("post", "/v1/lookup", {"backend": "ort-cpu", "ops": ["mbconv_r512x512_c2048-2048_k11_e8_s1_relu6_skip"]}, 422,
     "channels is above"),
    ("post", "/v1/lookup", {"backend": "ort-cpu", "ops": ["mbconv_r1000x1000_c8-8_k3_e3_s1_relu6"]}, 422,
     "above this service's limit of 512"),
    ("post", "/v1/lookup", {"backend": "ort-cpu", "ops": ["mbconv_r512x512_c512-512_k11_e4_s1_relu6"]}, 422,
     "multiply-adds"),
    ("post", "/v1/measure", {"backend": "ort-cpu", "ops": ["mbconv_r8x8_c8-9_k3_e3_s1_relu6_skip"]}, 422, "'skip'"),
    ("post", "/v1/measure", {"backend": "ort-cpu", "ops": SMALL_OPS, "wait_s": -1}, 422, "wait_s"),
    ("post", "/v1/measure", {"backend": "ort-cpu", "ops": SMALL_OPS, "dtype": "float16"}, 422, "float16 is not measured on ort-cpu"),
    ("post", "/v1/lookup", {"backend": "torch-cpu", "ops": SMALL_OPS, "dtype": "float16"}, 422, "float16 is not measured"),
    ("post", "/v1/measure/architecture", {"backend": "ort-cpu", "architecture": {"format": "x"}}, 422,
     "architecture: architecture field 'format'"),
    ("post", "/v1/measure/architecture", {"backend": "ort-cpu", "architecture": {"first_conv": 3}}, 422,
     "architecture"),
    ("post", "/v1/measure/architecture", {"backend": "ort-cpu"}, 422, "architecture"),
    ("get", "/v1/jobs/abc", None, 422, "job_id"),
    ("get", "/v1/jobs?status=weird", None, 422, "status"),
    ("get", "/v1/jobs?limit=0", None, 422, "limit"),
    ("get", "/v1/table?format=xml", None, 422, "format"),
    ("get", "/v1/table?backend=nope", None, 422, "not served"),
    ("get", "/v1/nowhere", None, 404, "Not Found"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "needle"), BAD_REQUESTS)
def test_bad_input_gets_a_clear_4xx_and_stores_nothing(client: TestClient, method: str, path: str, body: object,
                                                       status: int, needle: str) -> None:
    response = getattr(client, method)(path, json=body) if body is not None else getattr(client, method)(path)
    assert response.status_code == status, response.text
    payload = response.json()
    assert needle in payload["detail"] and payload["code"]
    assert count_rows(client, Job) == 0 and count_rows(client, JobItem) == 0 and count_rows(client, Measurement) == 0


def test_malformed_json_and_oversized_bodies(client: TestClient) -> None:
    broken = client.post("/v1/lookup", content=b"{not json", headers={"content-type": "application/json"})
    assert broken.status_code == 422 and "JSON" in broken.json()["detail"]
    too_many = client.post("/v1/lookup", json={"backend": "ort-cpu", "ops": SMALL_OPS[:1] * 2001})
    assert too_many.status_code == 413 and "limit is 2000" in too_many.json()["detail"]
    huge = client.post("/v1/lookup", content=b"x" * 3_000_000, headers={"content-type": "application/json"})
    assert huge.status_code == 413 and huge.json()["code"] == "too_large"


def test_service_on_postgresql(postgres_url: str) -> None:
    from fastapi.testclient import TestClient as Client

    from latency_db.migrate import upgrade_to_head
    from profiler_service.api.app import create_app

    upgrade_to_head(postgres_url)
    with Client(create_app(make_settings(postgres_url))) as pg_client:
        job = pg_client.post("/v1/measure", json={"backend": "ort-cpu", "ops": SMALL_OPS, "wait_s": 60}).json()
        assert job["status"] == "done" and job["done"] == 3
        found = pg_client.post("/v1/lookup", json={"backend": "ort-cpu", "ops": SMALL_OPS}).json()
        assert set(found["found"]) == set(SMALL_OPS) and found["missing"] == []


def test_jobs_of_another_device_sharing_the_database_are_invisible_and_never_claimed(client: TestClient) -> None:
    from latency_db.context import MeasurementContext
    from latency_db.repository import create_job, get_or_create_device
    from latency_db.transactions import write_session

    state = client.app.state.service
    with write_session(state.sessions) as session:
        other = get_or_create_device(session, "other-board", {"cpu_model": "some ARM core", "cpu_cores": 4})
        foreign = create_job(session, device_id=other.id, kind="ops", context=MeasurementContext(
                             "ort-cpu", 1, "float32", 1, "0" * 64, state.protocol_version), op_specs=SMALL_OPS[:1])
        foreign_id = foreign.id
    state.worker.wake()
    assert client.get(f"/v1/jobs/{foreign_id}").status_code == 404
    assert client.post(f"/v1/jobs/{foreign_id}/cancel", headers=JSON).status_code == 404
    assert client.get("/v1/jobs").json()["jobs"] == []
    own = client.post("/v1/measure", json={"backend": "ort-cpu", "ops": SMALL_OPS[:1], "wait_s": 60}).json()
    assert own["status"] == "done"
    with state.sessions() as session:
        assert session.get(Job, foreign_id).status == "queued"  # the worker of this device left it alone


def test_protocol_presets_are_part_of_the_measurement_identity(service_db: str) -> None:
    """Numbers measured under one preset are never served as another preset's (same database)."""
    from profiler_service.api.app import create_app

    with TestClient(create_app(make_settings(service_db, protocol="fast"))) as fast:
        assert fast.get("/v1/device").json()["protocol"]["version"] == f"{PROTOCOL_VERSION}+fast+duet"
        assert fast.post("/v1/measure", json={"backend": "ort-cpu", "ops": SMALL_OPS[:1], "wait_s": 60}).json()["done"] == 1
    with TestClient(create_app(make_settings(service_db, protocol="warm"))) as warm:
        info = warm.get("/v1/device").json()["protocol"]
        assert info["version"] == f"{PROTOCOL_VERSION}+warm+duet" and info["params"]["cache_flush_kib"] == 0
        lookup = warm.post("/v1/lookup", json={"backend": "ort-cpu", "ops": SMALL_OPS[:1]}).json()
        assert lookup["missing"] == SMALL_OPS[:1] and lookup["protocol_version"] == f"{PROTOCOL_VERSION}+warm+duet"
