"""What a page of another site can make a browser send is refused (profiler_service/api/browser_safety.py): a POST
without a JSON content type or Authorization, a POST from another Origin, a request for a Host that is not one of
the service's names (DNS rebinding); every answer carries nosniff and a CSP that forbids framing; redirects are
paths."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from latency_db.models import Job
from profiler_service.api.app import create_app
from profiler_service.api.browser_safety import HostPolicy, relative_location, split_host
from profiler_service.api.docs import inline_scripts
from profiler_service.cli import app as cli_app
from profiler_service.settings import ProfilerSettings
from tests.profiler_service.conftest import JSON, RunnerGate, make_settings
from typer.testing import CliRunner

EVIL = "https://evil.example"
REBINDING_HOST = "rebind.attacker.example:8000"
OP = "mbconv_r8x8_c8-8_k3_e3_s1_relu6_skip"


def service(db_url: str, **overrides: Any) -> TestClient:
    return TestClient(create_app(make_settings(db_url, **overrides)))


def queued_job(client: TestClient) -> int:
    """A job the worker holds at the gate (queued or running, never finished while the gate is closed)."""
    answer = client.post("/v1/measure", json={"backend": "ort-cpu", "ops": [OP]})
    assert answer.status_code == 202, answer.text
    return answer.json()["id"]


def status_of(client: TestClient, job_id: int) -> str:
    return client.get(f"/v1/jobs/{job_id}").json()["status"]


@pytest.fixture
def held(gated_client: TestClient, gate: RunnerGate) -> Iterator[tuple[TestClient, int]]:
    """A service without a token (the loopback default) and one of its jobs that cannot finish yet."""
    job_id = queued_job(gated_client)
    gate.wait_entered()
    yield gated_client, job_id


# --- 1. POSTs a page of another site could send ---------------------------------------------------------------------

@pytest.mark.parametrize("content_type", [None, "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x"])
def test_a_cancel_without_a_json_content_type_is_refused(held: tuple[TestClient, int],
                                                         content_type: str | None) -> None:
    client, job_id = held
    headers = {"content-type": content_type} if content_type else {}
    refused = client.post(f"/v1/jobs/{job_id}/cancel", headers=headers)
    assert refused.status_code == 415, refused.text
    assert refused.json() == {"code": "json_required", "detail": (
        f"POST /v1/jobs/{job_id}/cancel needs 'Content-Type: application/json' (or an 'Authorization' header): a "
        "page of another site can send neither without asking the service first")}
    assert status_of(client, job_id) == "running"


def test_the_no_cors_fetch_of_another_site_cancels_nothing(held: tuple[TestClient, int]) -> None:
    """What ``fetch(url, {method: "POST", mode: "no-cors"})`` on another site sends: its Origin, no content type."""
    client, job_id = held
    refused = client.post(f"/v1/jobs/{job_id}/cancel", headers={"origin": EVIL})
    assert refused.status_code == 403 and refused.json()["code"] == "origin_refused"
    assert status_of(client, job_id) == "running"


def test_a_json_post_from_another_origin_is_refused_naming_it(held: tuple[TestClient, int]) -> None:
    client, job_id = held
    for origin in (EVIL, "null", "http://testserver:8080", "https://testserver"):
        refused = client.post(f"/v1/jobs/{job_id}/cancel", headers={**JSON, "origin": origin})
        assert refused.status_code == 403, (origin, refused.text)
        assert refused.json() == {"code": "origin_refused", "detail": (
            f"a POST from the page of origin {origin!r} is refused: only this service's own pages, and the origins "
            "of allowed_origins (PROFILER_ALLOWED_ORIGINS), may send one")}
    measure = client.post("/v1/measure", json={"backend": "ort-cpu", "ops": [OP], "force": True},
                          headers={"origin": EVIL})
    assert measure.status_code == 403
    assert status_of(client, job_id) == "running"
    assert len(client.get("/v1/jobs").json()["jobs"]) == 1  # nothing was created


def test_a_json_post_from_the_services_own_page_cancels(held: tuple[TestClient, int]) -> None:
    client, job_id = held
    answer = client.post(f"/v1/jobs/{job_id}/cancel", headers={**JSON, "origin": "http://testserver"})
    assert answer.status_code == 200 and answer.json()["status"] == "cancelled", answer.text
    again = client.post(f"/v1/jobs/{job_id}/cancel", headers={**JSON, "origin": "http://TestServer:80"})
    assert again.json()["code"] == "job_finished"  # the same origin (default port, any case): past the guard


def test_a_json_post_without_origin_cancels(held: tuple[TestClient, int]) -> None:
    client, job_id = held  # curl, the search client: no Origin
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=JSON).status_code == 200
    assert status_of(client, job_id) == "cancelled"


def test_a_cancel_with_the_token_needs_no_content_type(gated_token_client: TestClient, gate: RunnerGate) -> None:
    client = gated_token_client
    job = client.post("/v1/measure", json={"backend": "ort-cpu", "ops": [OP]},
                      headers={"Authorization": "Bearer s3cret"}).json()
    gate.wait_entered()
    for headers in ({}, JSON):  # without the token: the token's 401, with or without the content type
        without_token = client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers)
        assert without_token.status_code == 401 and without_token.json()["code"] == "auth_required"
    answer = client.post(f"/v1/jobs/{job['id']}/cancel", headers={"Authorization": "Bearer s3cret"})
    assert answer.status_code == 200 and answer.json()["status"] == "cancelled"


def test_allowed_origins_may_post(service_db: str) -> None:
    with service(service_db, allowed_origins="https://dash.example, http://10.0.0.9:3000/") as client:
        for origin in ("https://dash.example", "https://dash.example:443", "http://10.0.0.9:3000"):
            answer = client.post("/v1/lookup", json={"backend": "ort-cpu", "ops": [OP]}, headers={"origin": origin})
            assert answer.status_code == 200, (origin, answer.text)
        assert client.post("/v1/lookup", json={"backend": "ort-cpu", "ops": [OP]},
                           headers={"origin": "http://dash.example"}).status_code == 403


def test_an_allowed_origin_that_is_no_origin_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="'https://dash.example/path' is not an origin"):
        ProfilerSettings(allowed_origins="https://dash.example/path")


def test_gets_are_not_checked_for_origin_or_content_type(client: TestClient) -> None:
    assert client.get("/v1/jobs", headers={"origin": EVIL}).status_code == 200


# --- 2. the Host allow-list (DNS rebinding) -------------------------------------------------------------------------

def test_a_rebinding_host_is_refused_naming_the_host_and_the_setting(client: TestClient) -> None:
    for method, path, body in (("POST", "/v1/measure", {"backend": "ort-cpu", "ops": [OP]}),
                               ("GET", "/v1/device", None), ("GET", "/", None), ("GET", "/docs", None)):
        refused = client.request(method, path, json=body, headers={"host": REBINDING_HOST})
        assert refused.status_code == 400, (path, refused.text)
        assert refused.json() == {"code": "host_not_allowed", "detail": (
            "Host 'rebind.attacker.example' is not a name of this service (a DNS-rebinding page would send such a "
            "Host); if clients reach the service by that name, add it to allowed_hosts (serve --allowed-hosts or "
            "PROFILER_ALLOWED_HOSTS)")}
    assert client.get("/v1/jobs").json()["jobs"] == []


@pytest.mark.parametrize(("bind", "allowed", "host", "answers"), [
    ("127.0.0.1", "", "127.0.0.1:8000", True),
    ("127.0.0.1", "", "localhost:1234", True),
    ("127.0.0.1", "", "LOCALHOST", True),
    ("127.0.0.1", "", "[::1]:8000", True),
    ("127.0.0.1", "", "127.0.0.2:8000", False),
    ("127.0.0.1", "", "testserver", False),
    ("10.0.0.5", "", "10.0.0.5:8000", True),  # a specific bind address is a name of the service
    ("cpu-box.lab", "", "cpu-box.lab:8000", True),
    ("0.0.0.0", "", "0.0.0.0:8000", False),  # a wildcard bind names no host
    ("::", "", "[::]:8000", False),
    ("0.0.0.0", "cpu-box,10.0.0.5", "cpu-box:9000", True),
    ("0.0.0.0", "cpu-box,10.0.0.5", "10.0.0.5", True),
    ("0.0.0.0", "cpu-box:8000", "cpu-box:8001", True),  # a name, on any port
    ("0.0.0.0", "cpu-box,10.0.0.5", "cpu-box.attacker.example", False),
    ("0.0.0.0", "*.lab.example", "a.lab.example:8000", True),
    ("0.0.0.0", "*.lab.example", "lab.example.evil", False),
    ("0.0.0.0", "*", "anything.example:1", True),
    ("0.0.0.0", "*", "bad host", False),  # not a host at all
    ("0.0.0.0", "*", "a.example/x@127.0.0.1", False),
    ("0.0.0.0", "*", "127.0.0.1:99999", False),
])
def test_host_allow_list(service_db: str, bind: str, allowed: str, host: str, answers: bool) -> None:
    with service(service_db, host=bind, allowed_hosts=allowed) as client:
        answer = client.get("/v1/health", headers={"host": host})
    assert answer.status_code == (200 if answers else 400), answer.text


def test_split_host() -> None:
    assert split_host("127.0.0.1:8000") == ("127.0.0.1", 8000)
    assert split_host("[::1]") == ("::1", None)
    assert split_host("Example.ORG.") == ("example.org", None)
    assert split_host("a b") is None and split_host("") is None and split_host("x:70000") is None
    policy = HostPolicy("0.0.0.0", ["*.lab.example"])
    assert policy.allows("localhost") and policy.allows("b.lab.example") and not policy.allows("lab.example")


def test_serve_takes_allowed_hosts_and_origins_from_options_and_environment(monkeypatch: pytest.MonkeyPatch,
                                                                            tmp_path) -> None:
    from profiler_service.api import startup

    seen: list[ProfilerSettings] = []

    def stop(settings: ProfilerSettings) -> None:
        seen.append(settings)
        raise startup.StartupError("stopped by the test")

    monkeypatch.setattr(startup, "open_service", stop)
    runner = CliRunner()
    db = f"sqlite:///{tmp_path / 'x.db'}"
    result = runner.invoke(cli_app, ["serve", "--db", db, "--allowed-hosts", "cpu-box, 10.0.0.5",
                                     "--allowed-origins", "https://dash.example"])
    assert result.exit_code == 1 and "stopped by the test" in result.output
    assert seen[-1].allowed_host_names() == ["cpu-box", "10.0.0.5"]
    assert seen[-1].allowed_origin_list() == ["https://dash.example"]
    monkeypatch.setenv("PROFILER_ALLOWED_HOSTS", "*")
    assert runner.invoke(cli_app, ["serve", "--db", db]).exit_code == 1
    assert seen[-1].allowed_host_names() == ["*"]
    assert HostPolicy.of(seen[-1]).allows("any.name.example")
    bad = runner.invoke(cli_app, ["serve", "--db", db, "--allowed-origins", "dash.example"])
    assert bad.exit_code == 2 and "allowed_origins: Value error, 'dash.example' is not an origin" in bad.output


def test_serve_on_every_interface_says_which_names_it_answers(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from profiler_service.api import app as app_module
    from profiler_service.api import server, startup

    class Stub:
        class state:  # noqa: N801
            stopping = None

    monkeypatch.setattr(startup, "open_service", lambda settings: (None, None))
    monkeypatch.setattr(app_module, "create_app", lambda settings, state: Stub())
    monkeypatch.setattr(server, "serve_app", lambda *args: None)
    runner = CliRunner()
    args = ["serve", "--host", "0.0.0.0", "--token", "t", "--db", f"sqlite:///{tmp_path / 'x.db'}"]
    result = runner.invoke(cli_app, args)
    assert result.exit_code == 0, result.output
    assert ("answering requests for 127.0.0.1, localhost, ::1 only; clients that reach this device by another name "
            "or address need it in --allowed-hosts (PROFILER_ALLOWED_HOSTS)") in result.output
    named = runner.invoke(cli_app, [*args, "--allowed-hosts", "cpu-box"])
    assert named.exit_code == 0 and "answering requests for" not in named.output


# --- 3. redirects are paths -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "location"), [("/web", "/web/"), ("/docs/assets", "/docs/assets/")])
def test_redirects_are_relative(service_db: str, path: str, location: str) -> None:
    with service(service_db, allowed_hosts="*") as client:
        answer = client.get(path, headers={"host": "other.example:8000"}, follow_redirects=False)
    assert answer.status_code == 307 and answer.headers["location"] == location


def test_relative_location() -> None:
    assert relative_location("http://evil.example:8000/web/?a=1#x") == "/web/?a=1#x"
    assert relative_location("//evil.example") == "/"
    assert relative_location("http://host//evil.example/x") == "/evil.example/x"
    assert relative_location("/\\evil.example/") == "/evil.example/"
    assert relative_location("/web/") == "/web/"


# --- 4. headers -----------------------------------------------------------------------------------------------------

HEADER_PATHS = ["/", "/web/app.js", "/web/style.css", "/docs", "/docs/assets/swagger-ui-bundle.js",
                "/docs/assets/swagger-ui.css", "/openapi.json", "/v1/health", "/v1/nowhere"]


@pytest.mark.parametrize("path", HEADER_PATHS)
def test_every_answer_says_nosniff_and_may_not_be_framed(client: TestClient, path: str) -> None:
    answer = client.get(path)
    assert answer.status_code in (200, 404), answer.text
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["x-frame-options"] == "DENY"
    policy = answer.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy and "default-src 'self'" in policy


def test_refusals_carry_the_headers_too(client: TestClient) -> None:
    for answer in (client.get("/", headers={"host": REBINDING_HOST}), client.post("/v1/jobs/1/cancel")):
        assert answer.status_code in (400, 415)
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]


def test_the_page_and_the_docs_run_under_their_policies(client: TestClient) -> None:
    """The page has no inline script; the docs' one inline script is allowed by its hash, and nothing else."""
    page = client.get("/")
    assert inline_scripts(page.text) == [] and not re.search(r"\son\w+=", page.text)
    assert "script-src 'self';" in page.headers["content-security-policy"]
    docs = client.get("/docs")
    scripts = inline_scripts(docs.text)
    assert len(scripts) == 1 and "SwaggerUIBundle(" in scripts[0]
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    policy = docs.headers["content-security-policy"]
    assert f"script-src 'self' 'sha256-{digest}';" in policy
    assert "frame-ancestors 'none'" in policy and "connect-src 'self'" in policy
    assert "unsafe-eval" not in policy and "'unsafe-inline'" not in policy.split("script-src")[1].split(";")[0]


def test_job_rows_are_untouched_by_refusals(client: TestClient) -> None:
    client.post("/v1/measure", json={"backend": "ort-cpu", "ops": [OP]}, headers={"origin": EVIL})
    client.post("/v1/measure", content=b'{"backend": "ort-cpu", "ops": ["%s"]}' % OP.encode(),
                headers={"content-type": "text/plain"})
    with client.app.state.service.sessions() as session:
        assert session.query(Job).count() == 0


def test_the_schema_documents_the_refusals(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path, item in paths.items():
        for method, operation in item.items():
            codes = set(operation["responses"])
            assert "400" in codes, (method, path)
            assert ({"403", "415"} <= codes) == (method == "post"), (method, path)


def test_on_a_token_service_a_request_without_the_token_is_a_401_first(token_client: TestClient) -> None:
    """An endpoint that needs the token says so (no page of another site has it); one that needs none (lookup) still
    refuses a POST without the JSON content type."""
    for path in ("/v1/jobs/1/cancel", "/v1/canaries/rebaseline", "/v1/measure"):
        answer = token_client.post(path)
        assert answer.status_code == 401 and answer.json()["code"] == "auth_required", (path, answer.text)
    lookup = token_client.post("/v1/lookup", content=b'{"backend": "ort-cpu", "ops": []}',
                               headers={"content-type": "text/plain"})
    assert lookup.status_code == 415 and lookup.json()["code"] == "json_required"
    assert token_client.post("/v1/jobs/1/cancel", headers={"origin": EVIL}).status_code == 403
