"""A database that lost the profiler's schema (dropped and created again empty while the service runs) is a 503
``schema_missing`` naming the missing table on every database route, never a 500 (issue 32, point 7)."""

from __future__ import annotations

import sqlite3

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

from latency_db.migrate import upgrade_to_head
from profiler_service.api.app import create_app
from tests.conftest import _admin_connect_args
from tests.profiler_service.conftest import JSON, SMALL_OPS, make_settings


def recreate_empty(db_url: str) -> None:
    """Drop the database and create it again, empty (SQLite: drop every table of the file)."""
    url = make_url(db_url)
    if url.get_backend_name() == "postgresql":
        with psycopg.connect(**_admin_connect_args()) as admin:
            admin.execute(f'DROP DATABASE "{url.database}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{url.database}"')
        return
    with sqlite3.connect(url.database, timeout=30, isolation_level=None) as conn:
        conn.execute("PRAGMA foreign_keys = OFF")
        conn.execute("BEGIN IMMEDIATE")
        for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            conn.execute(f'DROP TABLE "{table}"')
        conn.execute("COMMIT")


def assert_schema_missing(response, table: str) -> None:  # noqa: ANN001
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "5"
    assert response.json() == {"code": "schema_missing", "detail": f"the database has no profiler schema (table "
                               f"{table} missing): restart the service, which migrates the database at start"}


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_database_recreated_empty_is_503_schema_missing(request: pytest.FixtureRequest, db: str) -> None:
    db_url = request.getfixturevalue({"sqlite": "sqlite_url", "postgresql": "postgres_url"}[db])
    upgrade_to_head(db_url)
    with TestClient(create_app(make_settings(db_url))) as client:
        assert client.get("/v1/jobs").status_code == 200
        recreate_empty(db_url)
        assert_schema_missing(client.get("/v1/jobs"), "jobs")
        assert_schema_missing(client.get("/v1/jobs/1"), "jobs")
        assert_schema_missing(client.get("/v1/fleet/devices"), "devices")
        assert_schema_missing(client.get("/v1/table"), "measurements")
        assert_schema_missing(client.post("/v1/lookup", json={"backend": "ort-cpu", "ops": SMALL_OPS}),
                              "context_versions")
        assert_schema_missing(client.post("/v1/measure", json={"backend": "ort-cpu", "ops": SMALL_OPS}), "devices")
        assert_schema_missing(client.post("/v1/jobs/1/cancel", headers=JSON), "jobs")
        ready = client.get("/v1/ready")
        assert ready.status_code == 503
        assert "the database has no profiler schema (table devices missing)" in ready.json()["database"]
        assert client.get("/v1/health").status_code == 200
