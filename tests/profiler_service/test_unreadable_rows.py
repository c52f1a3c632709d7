"""Rows of a shared database that cannot be read (another profiler, another version, or a hand wrote them) are left
out of the answers and counted, never a 500 for everyone; a stored NaN is never served as null (issue 32, point 7).
SQLite and PostgreSQL: each has its own ways to hold a malformed value."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.engine import make_url

from latency_db.connection import make_engine
from latency_db.repository import get_or_create_device
from latency_db.stats import STATS_KEYS
from latency_db.transactions import begin_write, write_session
from profiler_service.api.app import create_app
from tests.profiler_service.conftest import SMALL_OPS, make_settings

#: Per dialect: values of a JSON column that are not an object, of a float column that are no finite number, and of
#: a timestamp column that is no timestamp (PostgreSQL's types refuse the last, and JSON that does not parse).
MALFORMED = {
    "sqlite": {"json": ["'[1, 2, 3]'", "'not json {'", "'\"text\"'"], "float": ["'abc'", "9e999", "-9e999"],
               "timestamp": ["'yesterday'"]},
    "postgresql": {"json": ["'[1, 2, 3]'", "'\"text\"'", "'null'"], "float": ["'NaN'", "'Infinity'"],
                   "timestamp": []},
}


def dialect(db_url: str) -> str:
    return make_url(db_url).get_backend_name()


def execute(db_url: str, statement: str, **params: object) -> None:
    engine = make_engine(db_url)
    try:
        with begin_write(engine) as connection:
            connection.execute(text(statement), params)
    finally:
        engine.dispose()


@pytest.fixture
def service(db_url: str) -> Iterator[TestClient]:
    """The service with one finished job of three measured ops, and a second device in the database."""
    with TestClient(create_app(make_settings(db_url))) as client:
        job = client.post("/v1/measure", json={"backend": "ort-cpu", "ops": SMALL_OPS, "wait_s": 60})
        assert job.status_code == 200 and job.json()["done"] == len(SMALL_OPS), job.text
        with write_session(client.app.state.service.sessions) as session:
            get_or_create_device(session, "other-device", {"cpu": "Other CPU"})
        yield client


def test_a_device_row_that_cannot_be_read_is_left_out_of_the_fleet(service: TestClient, db_url: str) -> None:
    malformed = MALFORMED[dialect(db_url)]
    for value in [*malformed["json"], *[None] * bool(malformed["timestamp"])]:
        column, value = ("fingerprint", value) if value is not None else ("last_seen", malformed["timestamp"][0])
        execute(db_url, f"UPDATE devices SET {column} = {value} WHERE name = 'other-device'")
        fleet = service.get("/v1/fleet/devices")
        assert fleet.status_code == 200, (value, fleet.text)
        assert [d["name"] for d in fleet.json()["devices"]] == ["test-device"] and fleet.json()["unreadable"] == 1
        op = service.get("/v1/fleet/op", params={"spec": SMALL_OPS[0]})
        assert op.status_code == 200 and [r["device"]["name"] for r in op.json()["rows"]] == ["test-device"]
        execute(db_url, "UPDATE devices SET fingerprint = '{\"cpu\": \"Other CPU\"}', last_seen = first_seen "
                "WHERE name = 'other-device'")
    assert service.get("/v1/fleet/devices").json()["unreadable"] == 0


def test_a_job_whose_result_is_not_stats_is_left_out_of_the_list(service: TestClient, db_url: str) -> None:
    second = service.post("/v1/measure", json={"backend": "ort-cpu", "ops": SMALL_OPS[:1], "force": True,
                                               "wait_s": 60}).json()
    malformed = MALFORMED[dialect(db_url)]
    results = [*malformed["json"][:1], "'{\"median_ms\": \"fast\"}'", "'{\"median_ms\": 1}'"]
    for result in results:
        execute(db_url, f"UPDATE jobs SET result = {result} WHERE id = :id", id=second["id"])
        jobs = service.get("/v1/jobs")
        assert jobs.status_code == 200, (result, jobs.text)
        assert [job["id"] for job in jobs.json()["jobs"]] == [second["id"] - 1] and jobs.json()["unreadable"] == 1
        one = service.get(f"/v1/jobs/{second['id']}")
        assert one.status_code == 409 and one.json()["code"] == "unreadable_row", one.text
        assert one.json()["detail"].startswith(f"job {second['id']} is stored in a form this service cannot read (")


def test_a_measurement_that_is_no_finite_number_is_never_served(service: TestClient, db_url: str) -> None:
    malformed = MALFORMED[dialect(db_url)]
    for value in malformed["float"]:
        execute(db_url, f"UPDATE measurements SET median_ms = {value}, p90_ms = {value} WHERE op_spec = :spec",
                spec=SMALL_OPS[0])
        execute(db_url, "UPDATE context_versions SET version = version + 1")  # as every write of a row does
        table = service.get("/v1/table")
        assert table.status_code == 200, (value, table.text)
        assert sorted(row["op_spec"] for row in table.json()["measurements"]) == sorted(SMALL_OPS[1:])
        assert table.json()["unreadable"] == 1 and table.headers["x-profiler-unreadable"] == "1"
        csv = service.get("/v1/table", params={"format": "csv"})
        assert csv.status_code == 200 and SMALL_OPS[0] not in csv.text and csv.headers["x-profiler-unreadable"] == "1"
        lookup = service.post("/v1/lookup", json={"backend": "ort-cpu", "ops": SMALL_OPS})
        assert lookup.status_code == 200, lookup.text
        assert lookup.json()["missing"] == SMALL_OPS[:1] and lookup.json()["unreadable"] == 1
        assert sorted(lookup.json()["found"]) == sorted(SMALL_OPS[1:])
        op = service.get("/v1/fleet/op", params={"spec": SMALL_OPS[0]})
        assert op.status_code == 200 and op.json()["rows"] == [] and op.json()["unreadable"] == 1
        served = [*table.json()["measurements"], *lookup.json()["found"].values()]
        assert all(isinstance(stats[key], (int, float)) for stats in served for key in STATS_KEYS)  # never null
        # a new measurement replaces the row (and the lookup's cache sees the write)
        again = service.post("/v1/measure", json={"backend": "ort-cpu", "ops": SMALL_OPS[:1], "force": True,
                                                  "wait_s": 60})
        assert again.status_code == 200 and again.json()["done"] == 1
        assert service.post("/v1/lookup", json={"backend": "ort-cpu", "ops": SMALL_OPS}).json()["unreadable"] == 0
