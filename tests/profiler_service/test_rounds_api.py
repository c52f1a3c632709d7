"""Protocol 3 through the API: a row measured under protocol 2 is never served as protocol 3 (a lookup misses it, a
measure job measures the op again under 3) and stays stored as it was."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import select

from latency_db.connection import make_engine, make_session_factory
from latency_db.context import MeasurementContext
from latency_db.models import Device, Measurement
from latency_db.repository import upsert_measurement
from latency_db.transactions import write_session
from tests.profiler_service.conftest import SMALL_OPS
from tests.profiler_service.jobs_fakes import stats


def test_a_protocol_2_row_is_never_served_as_protocol_3(client: TestClient, service_db: str) -> None:
    device = client.get("/v1/device").json()
    assert device["protocol"]["version"] == "4+fast+duet"
    env_hash = {b["name"]: b["env_hash"] for b in device["backends"]}["ort-cpu"]
    old = MeasurementContext("ort-cpu", 1, "float32", 1, env_hash, "2+fast+duet")  # same op, runtime and preset
    engine = make_engine(service_db)
    sessions = make_session_factory(engine)
    try:
        with write_session(sessions) as session:
            device_id = session.scalars(select(Device.id).where(Device.name == device["name"])).one()
            upsert_measurement(session, device_id=device_id, context=old, op_spec=SMALL_OPS[0], environment={},
                               protocol_params={}, stats=stats(9.0).as_dict())
        lookup = client.post("/v1/lookup", json={"backend": "ort-cpu", "ops": SMALL_OPS[:1]}).json()
        assert lookup["missing"] == SMALL_OPS[:1] and lookup["protocol_version"] == "4+fast+duet"
        job = client.post("/v1/measure", json={"backend": "ort-cpu", "ops": SMALL_OPS[:1], "wait_s": 60}).json()
        assert (job["status"], job["done"], job["skipped"]) == ("done", 1, 0)  # measured, not skipped
        with sessions() as session:
            rows = {row.protocol_version: row for row in session.scalars(select(Measurement))}
        assert sorted(rows) == ["2+fast+duet", "4+fast+duet"]
        assert rows["2+fast+duet"].median_ms == 9.0 and rows["2+fast+duet"].rounds is None  # kept as it was
        assert rows["4+fast+duet"].rounds == 1
        found = client.post("/v1/lookup", json={"backend": "ort-cpu", "ops": SMALL_OPS[:1]}).json()["found"]
        assert found[SMALL_OPS[0]]["rounds"] == 1 and found[SMALL_OPS[0]]["median_ms"] != 9.0
    finally:
        engine.dispose()
