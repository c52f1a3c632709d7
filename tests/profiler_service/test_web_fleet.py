"""The fleet endpoints of the web page: every device of the database, and one op on each of them side by side."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from latency_db.connection import make_engine, make_session_factory
from latency_db.context import MeasurementContext
from latency_db.repository import get_or_create_device, upsert_measurement
from latency_db.transactions import write_session
from profiler_service.api.app import create_app
from tests.latency_db.db_test_data import make_stats
from tests.profiler_service.conftest import make_settings

OP = "mbconv_r16x16_c8-8_k3_e3_s1_relu6_skip"
OTHER_OP = "conv_r16x16_c3-8_k3_s1_relu6"
LAB_FINGERPRINT = {"cpu_model": "ARMv8 Processor rev 1 (v8l)", "cpu_cores": 12, "gpu": "Orin", "gpu_count": 1}
IDLE_FINGERPRINT = {"cpu_model": "Idle Box", "cpu_cores": 4, "gpu": None, "gpu_count": 0}


def store(session: Session, device_id: int, op_spec: str, median_ms: float, *, backend: str = "ort-cpu",
          batch: int = 1, env: str = "ab") -> None:
    context = MeasurementContext(backend, batch, "float32", 1, env * 32, "2")
    upsert_measurement(session, device_id=device_id, context=context, op_spec=op_spec, environment={},
                       protocol_params={}, stats=make_stats(median_ms))


@pytest.fixture
def fleet(db_url: str) -> Iterator[tuple[TestClient, dict[str, int]]]:
    """The service on ``db_url`` with two more devices in its database: a lab board with rows, an idle box."""
    with TestClient(create_app(make_settings(db_url))) as client:
        service = client.app.state.service
        engine = make_engine(db_url)
        try:
            with write_session(make_session_factory(engine)) as session:
                lab = get_or_create_device(session, "lab-board", LAB_FINGERPRINT).id
                idle = get_or_create_device(session, "idle-box", IDLE_FINGERPRINT).id
                store(session, service.device_id, OP, 0.25)
                store(session, lab, OP, 1.5)
                store(session, lab, OP, 0.75, backend="torch-cuda")
                store(session, lab, OP, 2.5, batch=8)
                store(session, lab, OTHER_OP, 0.5, env="cd")
        finally:
            engine.dispose()
        yield client, {"this": service.device_id, "lab": lab, "idle": idle}


def test_fleet_devices_lists_every_device_with_what_it_holds(fleet: tuple[TestClient, dict[str, int]]) -> None:
    client, ids = fleet
    response = client.get("/v1/fleet/devices")
    assert response.status_code == 200, response.text
    devices = {d["id"]: d for d in response.json()["devices"]}
    assert set(devices) == set(ids.values())
    this, lab, idle = devices[ids["this"]], devices[ids["lab"]], devices[ids["idle"]]
    assert [this["this_device"], lab["this_device"], idle["this_device"]] == [True, False, False]
    assert (this["name"], this["measurements"], this["ops"], this["backends"]) == ("test-device", 1, 1, ["ort-cpu"])
    assert (lab["name"], lab["measurements"], lab["ops"], lab["backends"]) == ("lab-board", 4, 2,
                                                                                ["ort-cpu", "torch-cuda"])
    assert lab["fingerprint"] == LAB_FINGERPRINT and len(lab["fingerprint_hash"]) == 64
    assert (idle["measurements"], idle["ops"], idle["backends"], idle["last_measured_at"]) == (0, 0, [], None)
    assert lab["last_measured_at"] is not None and lab["first_seen"] <= lab["last_seen"]
    # most recently seen first: the two devices created after the service's start come before it
    order = [d["id"] for d in response.json()["devices"]]
    assert order.index(ids["idle"]) < order.index(ids["this"])
    assert [d["id"] for d in client.get("/v1/fleet/devices?limit=1").json()["devices"]] == [order[0]]


def test_fleet_op_shows_one_op_on_every_device_side_by_side(fleet: tuple[TestClient, dict[str, int]]) -> None:
    client, ids = fleet
    body = client.get("/v1/fleet/op", params={"spec": OP}).json()
    assert body["op_spec"] == OP
    rows = [(r["device"]["name"], r["backend"], r["batch"], r["stats"]["median_ms"]) for r in body["rows"]]
    assert rows == [("lab-board", "ort-cpu", 1, 1.5), ("lab-board", "ort-cpu", 8, 2.5),
                    ("lab-board", "torch-cuda", 1, 0.75), ("test-device", "ort-cpu", 1, 0.25)]
    assert body["rows"][-1]["device"] == {"id": ids["this"], "name": "test-device", "this_device": True}
    assert body["rows"][0]["stats"] == {**make_stats(1.5), "rounds": None, "flagged": None,
                                       "peak_rss_bytes": None}  # stored before protocol 3
    assert body["missing_on"] == [{"id": ids["idle"], "name": "idle-box", "this_device": False}]

    filtered = client.get("/v1/fleet/op", params={"spec": OP, "backend": "ort-cpu", "batch": 1}).json()
    assert [(r["device"]["name"], r["stats"]["median_ms"]) for r in filtered["rows"]] == [("lab-board", 1.5),
                                                                                          ("test-device", 0.25)]
    only_lab = client.get("/v1/fleet/op", params={"spec": OTHER_OP}).json()
    assert [r["env_hash"] for r in only_lab["rows"]] == ["cd" * 32]
    assert [d["name"] for d in only_lab["missing_on"]] == ["idle-box", "test-device"]
    nowhere = client.get("/v1/fleet/op", params={"spec": "head_r8x8_c16-10"}).json()
    assert nowhere["rows"] == [] and len(nowhere["missing_on"]) == 3


BAD_QUERIES: list[tuple[dict[str, Any], str]] = [
    ({"spec": "mbconv_r16x16_c8-8_k4_e3_s1_relu6_skip"}, "kernel"),
    ({"spec": "mbconv_r16x16_c8-8_k3_e3.0_s1_relu6_skip"}, "write it as 'mbconv_r16x16_c8-8_k3_e3_s1_relu6_skip'"),
    ({"spec": OP + " "}, "spec"),
    ({"spec": "\n" + OP}, "spec"),
    ({"spec": "x" * 129}, "spec"),
    ({"spec": ""}, "spec"),
    ({}, "spec"),
    ({"spec": OP, "batch": 0}, "batch"),
    ({"spec": OP, "batch": 2**63}, "batch"),
    ({"spec": OP, "batch": "1.5"}, "batch"),
    ({"spec": OP, "threads": 257}, "threads"),
    ({"spec": OP, "dtype": "int8"}, "dtype"),
    ({"spec": OP, "backend": ""}, "backend"),
    ({"spec": OP, "limit": 0}, "limit"),
    ({"spec": OP, "limit": 2001}, "limit"),
]


@pytest.mark.parametrize(("params", "named"), BAD_QUERIES)
def test_fleet_op_rejects_bad_input_with_a_message(client: TestClient, params: dict[str, Any], named: str) -> None:
    response = client.get("/v1/fleet/op", params=params)
    assert response.status_code == 422, response.text
    body = response.json()
    assert set(body) == {"detail", "code"} and named in body["detail"], body


def test_fleet_devices_rejects_out_of_range_limits(client: TestClient) -> None:
    for limit in (0, 2001, 2**63, "many"):
        response = client.get("/v1/fleet/devices", params={"limit": limit})
        assert response.status_code == 422 and "limit" in response.json()["detail"], response.text


def test_fleet_answers_503_when_the_database_is_unreachable(client: TestClient) -> None:
    # A PostgreSQL URL whose port nobody listens on: every connection attempt fails at once.
    dead = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=2")
    client.app.state.service.sessions = make_session_factory(dead)
    try:
        for path in ("/v1/fleet/devices", f"/v1/fleet/op?spec={OP}"):
            response = client.get(path)
            assert response.status_code == 503, response.text
            assert response.json()["code"] == "database_unavailable"
            assert response.json()["detail"].startswith("the database is unavailable (")
            assert response.headers["retry-after"] == "5"
    finally:
        dead.dispose()


def test_fleet_endpoints_are_documented_with_models_and_errors(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    for path, model in (("/v1/fleet/devices", "FleetDevices"), ("/v1/fleet/op", "FleetOp")):
        operation = schema["paths"][path]["get"]
        responses = operation["responses"]
        assert responses["200"]["content"]["application/json"]["schema"]["$ref"].endswith(model)
        for status in ("422", "503"):
            assert responses[status]["content"]["application/json"]["schema"]["$ref"].endswith("ErrorBody")
    params = {p["name"]: p["schema"] for p in schema["paths"]["/v1/fleet/op"]["get"]["parameters"]}
    assert params["spec"]["maxLength"] == 128 and "pattern" in params["spec"]
    assert params["limit"]["maximum"] == 2000
    assert params["batch"]["anyOf"][0]["maximum"] == 2**31 - 1
