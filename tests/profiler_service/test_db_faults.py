"""The API when the database fails: unreachable or full is a 503 with Retry-After and a ``{detail, code}`` body,
never a 500; /v1/ready says not ready when the store cannot take a write (issue 10, point 7)."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlalchemy.engine import make_url

import latency_db.repository.health as store_health
from latency_db.migrate import upgrade_to_head
from profiler_service.api.app import create_app
from tests.conftest import _admin_connect_args
from tests.profiler_service.conftest import SMALL_OPS, make_settings

MANY_OPS = [f"conv_r16x16_c3-{n}_k3_s1_relu6" for n in range(1, 301)]  # a job whose items need new pages


def assert_unavailable(response, needle: str) -> None:  # noqa: ANN001
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "5"
    body = response.json()
    assert set(body) == {"detail", "code"} and body["code"] == "database_unavailable"
    assert body["detail"].startswith("the database is unavailable (") and needle in body["detail"]
    assert "SELECT" not in body["detail"] and "INSERT" not in body["detail"]  # no SQL shown


def assert_names_no_database(text: str, *secrets: str | None) -> None:
    for secret in secrets:
        assert not secret or secret not in text, (secret, text)


def on_every_new_connection(client: TestClient, pragma: str) -> None:
    """Run ``pragma`` on every connection the service opens from now on (the pool is emptied first), its readiness
    probe's included."""
    state = client.app.state.service
    for engine in (state.engine, state.probe_engine):

        @event.listens_for(engine, "connect")
        def _apply(dbapi_connection, _record) -> None:  # noqa: ANN001
            dbapi_connection.execute(pragma)

        engine.dispose()


@pytest.fixture
def sqlite_client(service_db: str) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(service_db))) as client:
        yield client


def test_a_full_sqlite_database_answers_503_and_reads_go_on(sqlite_client: TestClient) -> None:
    state = sqlite_client.app.state.service
    with state.engine.connect() as conn:
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar_one()
    on_every_new_connection(sqlite_client, f"PRAGMA max_page_count = {pages}")  # the file may not grow: full
    full = sqlite_client.post("/v1/measure", json={"backend": "ort-cpu", "ops": MANY_OPS})
    assert_unavailable(full, "database or disk is full")
    assert sqlite_client.post("/v1/lookup", json={"backend": "ort-cpu", "ops": SMALL_OPS}).status_code == 200
    assert sqlite_client.get("/v1/jobs").json()["jobs"] == []  # nothing half-written
    assert sqlite_client.get("/v1/health").status_code == 200


def test_ready_is_503_when_the_disk_is_full(sqlite_client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    assert sqlite_client.get("/v1/ready").status_code == 200
    monkeypatch.setattr(store_health, "free_bytes", lambda folder: 3 * 2**20)
    ready = sqlite_client.get("/v1/ready")
    assert ready.status_code == 503
    assert ready.json()["status"] == "unavailable"
    assert ready.json()["database"] == "not writable: the database's disk is full: 3 MiB free, 32 MiB needed"


def test_ready_is_503_when_the_store_is_read_only(sqlite_client: TestClient) -> None:
    on_every_new_connection(sqlite_client, "PRAGMA query_only = ON")
    ready = sqlite_client.get("/v1/ready")
    assert ready.status_code == 503
    assert ready.json()["database"] == "error: OperationalError: attempt to write a readonly database"
    assert sqlite_client.post("/v1/lookup", json={"backend": "ort-cpu", "ops": SMALL_OPS}).status_code == 200
    refused = sqlite_client.post("/v1/measure", json={"backend": "ort-cpu", "ops": SMALL_OPS})
    assert_unavailable(refused, "attempt to write a readonly database")


def _allow_connections(database: str, allowed: bool) -> None:
    with psycopg.connect(**_admin_connect_args()) as admin:
        admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {str(allowed).lower()}')
        if not allowed:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = %s AND pid <> pg_backend_pid()", (database,))


@pytest.mark.postgres
def test_an_unreachable_postgresql_answers_503_then_recovers(postgres_url: str) -> None:
    upgrade_to_head(postgres_url)
    database = make_url(postgres_url).database
    with TestClient(create_app(make_settings(postgres_url))) as client:
        assert client.get("/v1/jobs").status_code == 200
        _allow_connections(database, False)  # the database goes away (connections killed, new ones refused)
        try:
            jobs = client.get("/v1/jobs")
            assert_unavailable(jobs, "OperationalError: ")
            url = make_url(postgres_url)  # the database's address and name are not the caller's business
            assert_names_no_database(jobs.json()["detail"], url.host, str(url.port or 5432), database, url.username)
            assert_names_no_database(client.get("/v1/ready").json()["database"], url.host, database)
            assert_unavailable(client.post("/v1/lookup", json={"backend": "ort-cpu", "ops": SMALL_OPS}),
                               "OperationalError")
            assert_unavailable(client.post("/v1/measure", json={"backend": "ort-cpu", "ops": SMALL_OPS}),
                               "OperationalError")
            ready = client.get("/v1/ready")
            assert ready.status_code == 503 and ready.json()["database"].startswith("error: OperationalError")
            assert client.get("/v1/health").status_code == 200
        finally:
            _allow_connections(database, True)
        assert client.get("/v1/jobs").status_code == 200
        assert client.get("/v1/ready").status_code == 200


# what psycopg says when a PostgreSQL server cannot be used: its host, port, database and user
PG_REFUSED = ('connection failed: connection to server at "10.20.30.40", port 6543 failed: FATAL:  database '
              '"fleet_secret" is not currently accepting connections')
PG_DOWN = ('connection failed: connection to server at "db.internal.example" (10.20.30.40), port 6543 failed: '
           'Connection refused\n\tIs the server running on that host and accepting TCP/IP connections?')
PG_AUTH = 'connection failed: FATAL:  password authentication failed for user "fleet_user"'


@pytest.mark.parametrize(("message", "reason"), [
    (PG_REFUSED, "OperationalError: the database does not accept connections"),
    (PG_DOWN, "OperationalError: the database server refused the connection"),
    (PG_AUTH, "OperationalError: the database refused this service's credentials"),
    ('could not translate host name "db.internal.example" to address', "OperationalError"),
    ("database or disk is full", "OperationalError: database or disk is full"),
])
def test_a_503_names_the_problem_never_the_database(sqlite_client: TestClient, monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture, message: str,
                                                    reason: str) -> None:
    from sqlalchemy.exc import OperationalError

    import profiler_service.api.routers.jobs as jobs_router

    class DriverError(Exception):
        pass

    DriverError.__name__ = "OperationalError"

    def unreachable(*args: object, **kwargs: object) -> None:
        raise OperationalError("SELECT jobs.id FROM jobs", {}, DriverError(message))

    monkeypatch.setattr(jobs_router, "list_jobs", unreachable)
    with caplog.at_level("WARNING"):
        answer = sqlite_client.get("/v1/jobs")
    assert_unavailable(answer, reason)
    assert answer.json()["detail"] == f"the database is unavailable ({reason}); retry in 5 s"
    assert_names_no_database(answer.text, "10.20.30.40", "6543", "fleet_secret", "db.internal.example", "fleet_user")
    assert message.splitlines()[0][:100] in caplog.text  # the log keeps the driver's message
