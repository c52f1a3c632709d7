"""Hostile input to the REST API: every answer is a clear 4xx with ``{detail, code}``, never a 500, nothing stored.

Each test here reproduces an input of issue 10 that passed validation before (and took a device down, answered 500,
or stored a second key for one op).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from latency_db.models import Job, JobItem, Measurement
from profiler_service.api.app import create_app
from tests.profiler_service.conftest import JSON, make_settings

ZERO_OP = "zero_r512x512_c2048-2048_s1"


@pytest.fixture
def hostile(service_db: str) -> Iterator[TestClient]:
    """A client that answers a server error as a 500 response (instead of raising it in the test)."""
    with TestClient(create_app(make_settings(service_db)), raise_server_exceptions=False) as test_client:
        yield test_client


def stored_rows(client: TestClient) -> int:
    with client.app.state.service.sessions() as session:
        return sum(session.scalar(select(func.count()).select_from(model)) for model in (Job, JobItem, Measurement))


# --- point 3: memory, not only multiply-adds -------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/v1/measure", "/v1/lookup"])
def test_zero_op_over_the_memory_limit_is_refused_before_anything_is_built(hostile: TestClient, path: str) -> None:
    response = hostile.post(path, json={"backend": "ort-cpu", "ops": [ZERO_OP]})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "over_limit"
    assert body["detail"] == (
        f"ops[0] ({ZERO_OP}): measuring it takes up to 29120 MiB (the runtime's 448 MiB + 7 x 4096 MiB of activations "
        "and weights) at batch 1 float32, above this service's per-op memory limit of 2048 MiB (max_op_memory_mib)"
    )
    assert stored_rows(hostile) == 0


def test_identity_op_memory_grows_with_the_batch(hostile: TestClient) -> None:
    # measuring it takes up to 896 MiB at batch 1, which passes the lookup checks; batch 4 makes it 2240 MiB
    op = "identity_r128x128_c512-512"
    assert hostile.post("/v1/lookup", json={"backend": "ort-cpu", "ops": [op]}).status_code == 200
    response = hostile.post("/v1/lookup", json={"backend": "ort-cpu", "ops": [op], "batch": 4})
    assert response.status_code == 422 and "measuring it takes up to 2240 MiB" in response.json()["detail"]


def test_memory_limit_comes_from_the_settings(service_db: str) -> None:
    with TestClient(create_app(make_settings(service_db, max_op_memory_mib=512))) as small:
        op = "mbconv_r128x128_c32-32_k3_e6_s1_relu6"  # measuring it takes up to 664 MiB at batch 1
        response = small.post("/v1/measure", json={"backend": "ort-cpu", "ops": [op]})
        assert response.status_code == 422, response.text
        assert "memory limit of 512 MiB" in response.json()["detail"]
        assert small.get("/v1/device").json()["limits"]["max_op_memory_mib"] == 512


def test_network_memory_limit(service_db: str) -> None:
    from nas_ops.space import load_space

    space = load_space("micro-16")
    arch = space.architecture([0] * len(space.cells())).to_dict()
    arch = space.architecture([0] * len(space.cells())).with_resolution(512, 512).to_dict()
    with TestClient(create_app(make_settings(service_db, max_network_memory_mib=512))) as small:
        response = small.post("/v1/measure/architecture", json={"backend": "ort-cpu", "architecture": arch})
        assert response.status_code == 422, response.text
        assert response.json()["detail"].startswith("architecture: measuring it takes up to ")
        assert "network memory limit of 512 MiB (max_network_memory_mib)" in response.json()["detail"]


# --- point 5: one canonical key per op ---------------------------------------------------------------------------------
CANONICAL = "conv_r16x16_c3-8_k3_s1_relu6"


@pytest.mark.parametrize("spelled", [CANONICAL + " ", "\n" + CANONICAL, CANONICAL + "\u00a0", "\t" + CANONICAL + "\r\n"])
@pytest.mark.parametrize("path", ["/v1/measure", "/v1/lookup"])
def test_non_canonical_spelling_is_refused_naming_the_canonical_form(hostile: TestClient, path: str,
                                                                     spelled: str) -> None:
    response = hostile.post(path, json={"backend": "ort-cpu", "ops": [CANONICAL, spelled]})
    assert response.status_code == 422, response.text
    assert response.json() == {
        "detail": f"ops[1]: op spec field 'spec': {spelled!r} is not canonical; write it as {CANONICAL!r}",
        "code": "not_canonical",
    }
    assert stored_rows(hostile) == 0


def test_only_the_canonical_string_is_stored_and_found(hostile: TestClient) -> None:
    job = hostile.post("/v1/measure", json={"backend": "ort-cpu", "ops": [CANONICAL], "wait_s": 60})
    assert job.status_code == 200, job.text
    with hostile.app.state.service.sessions() as session:
        assert list(session.scalars(select(Measurement.op_spec))) == [CANONICAL]
    found = hostile.post("/v1/lookup", json={"backend": "ort-cpu", "ops": [CANONICAL]}).json()
    assert list(found["found"]) == [CANONICAL] and found["missing"] == []
    assert hostile.post("/v1/measure", json={"backend": "ort-cpu", "ops": [CANONICAL + " "]}).status_code == 422
    with hostile.app.state.service.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1


# --- point 6: integers beyond what the database holds ---------------------------------------------------------------
INT32_MAX, INT64_MAX = 2**31 - 1, 2**63 - 1
TOO_LARGE = [INT32_MAX + 1, INT64_MAX + 1, 10**40]


@pytest.mark.parametrize("value", TOO_LARGE)
@pytest.mark.parametrize("path", ["GET /v1/jobs/{}", "POST /v1/jobs/{}/cancel"])
def test_job_id_beyond_the_id_column_is_a_422(hostile: TestClient, path: str, value: int) -> None:
    method, url = path.split()
    response = hostile.request(method, url.format(value), headers=JSON)
    assert response.status_code == 422, response.text
    assert response.json() == {"detail": f"job_id: Input should be less than or equal to {INT32_MAX}",
                               "code": "invalid_input"}


def test_largest_job_id_of_the_column_is_a_404(hostile: TestClient) -> None:
    assert hostile.get(f"/v1/jobs/{INT32_MAX}").status_code == 404
    assert hostile.post(f"/v1/jobs/{INT32_MAX}/cancel", headers=JSON).status_code == 404


@pytest.mark.parametrize("value", TOO_LARGE)
@pytest.mark.parametrize("name", ["threads", "batch"])
def test_table_filters_beyond_the_column_are_a_422(hostile: TestClient, name: str, value: int) -> None:
    response = hostile.get("/v1/table", params={name: value})
    assert response.status_code == 422, response.text
    assert response.json()["detail"] == f"{name}: Input should be less than or equal to {INT32_MAX}"
    assert hostile.get("/v1/table", params={name: INT32_MAX}).json()["measurements"] == []


@pytest.mark.postgres
def test_integer_bounds_on_postgresql(postgres_url: str) -> None:
    from latency_db.migrate import upgrade_to_head

    upgrade_to_head(postgres_url)
    with TestClient(create_app(make_settings(postgres_url)), raise_server_exceptions=False) as pg:
        for url in (f"/v1/jobs/{INT32_MAX + 1}", f"/v1/table?batch={INT32_MAX + 1}", f"/v1/table?threads={INT32_MAX + 1}"):
            assert pg.get(url).status_code == 422, url
        assert pg.post(f"/v1/jobs/{INT32_MAX + 1}/cancel", headers=JSON).status_code == 422
        assert pg.get(f"/v1/jobs/{INT32_MAX}").status_code == 404  # in range: asked of the database, not found
        assert pg.get(f"/v1/table?batch={INT32_MAX}").json()["measurements"] == []


# --- point 8: a bounded, strictly typed wait ---------------------------------------------------------------------------
@pytest.mark.parametrize(("raw", "needle"), [
    (b"1e309", "wait_s: Input should be a finite number"),
    (b"-1", "wait_s: Input should be greater than or equal to 0"),
    (b"false", "wait_s: Input should be a valid number"),
    (b'"1"', "wait_s: Input should be a valid number"),
    (b"600.5", "wait_s: 600.5 s is above this service's limit of 600 s"),
])
@pytest.mark.parametrize("path", ["/v1/measure", "/v1/measure/architecture"])
def test_wait_s_is_finite_bounded_and_never_coerced(hostile: TestClient, path: str, raw: bytes, needle: str) -> None:
    what = b'"ops": ["' + CANONICAL.encode() + b'"]' if path == "/v1/measure" else b'"architecture": {"x": 1}'
    body = b'{"backend": "ort-cpu", ' + what + b', "wait_s": ' + raw + b"}"
    response = hostile.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert needle in response.json()["detail"]
    assert stored_rows(hostile) == 0


def test_wait_s_up_to_the_limit_is_accepted(service_db: str) -> None:
    with TestClient(create_app(make_settings(service_db, max_wait_s=30))) as client:
        response = client.post("/v1/measure", json={"backend": "ort-cpu", "ops": [CANONICAL], "wait_s": 30})
        assert response.status_code == 200 and response.json()["status"] == "done"
        assert client.get("/v1/device").json()["limits"]["max_wait_s"] == 30


# --- point 10: the body the server reads, and the schema that says what it accepts ---------------------------------
@pytest.mark.parametrize(("field", "raw"), [("batch", b"true"), ("batch", b'"1"'), ("threads", b"false"),
                                            ("threads", b'"2"'), ("batch", b"1.5")])
def test_json_types_are_never_coerced(hostile: TestClient, field: str, raw: bytes) -> None:
    body = b'{"backend": "ort-cpu", "ops": ["' + CANONICAL.encode() + b'"], "' + field.encode() + b'": ' + raw + b"}"
    response = hostile.post("/v1/lookup", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith(f"{field}: Input should be a valid integer")


def test_an_integral_json_number_is_an_integer(hostile: TestClient) -> None:
    response = hostile.post("/v1/lookup", json={"backend": "ort-cpu", "ops": [CANONICAL], "batch": 2.0, "threads": 1.0})
    assert response.status_code == 200 and response.json()["batch"] == 2  # JSON Schema: 2.0 is an integer


@pytest.mark.parametrize("path", ["/v1/measure", "/v1/lookup"])
def test_force_is_a_boolean(hostile: TestClient, path: str) -> None:
    response = hostile.post("/v1/measure", json={"backend": "ort-cpu", "ops": [CANONICAL], "force": "true"})
    assert response.status_code == 422 and response.json()["detail"].startswith("force: Input should be a valid boolean")


@pytest.mark.parametrize(("method", "path", "body", "needle"), [
    ("post", "/v1/lookup", {"backend": "ort-cpu", "ops": [""]}, "ops[0]: String should have at least 1 character"),
    ("get", "/v1/table?backend=", None, "backend: String should have at least 1 character"),
    ("post", "/v1/measure/architecture", {"backend": "ort-cpu", "architecture": {}},
     "architecture: Dictionary should have at least 1 item"),
])
def test_empty_values_are_refused(hostile: TestClient, method: str, path: str, body: object, needle: str) -> None:
    response = hostile.request(method.upper(), path, json=body)
    assert response.status_code == 422 and response.json()["detail"].startswith(needle), response.text


def test_invalid_utf8_body_is_a_422_like_malformed_json(hostile: TestClient) -> None:
    response = hostile.post("/v1/lookup", content=b'{"ops": ["\xff"]}', headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json() == {"detail": "request body: not valid UTF-8, so not JSON (invalid start byte at byte 10)",
                               "code": "invalid_json"}


def test_chunked_body_over_the_limit_is_a_413(hostile: TestClient) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: the size is only known while it streams
        yield b'{"backend": "ort-cpu", "ops": ["'
        for _ in range(300):
            yield b"x" * 10_000
        yield b'"]}'

    response = hostile.post("/v1/lookup", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413, response.text
    assert response.json() == {"detail": "request body larger than 2000000 bytes", "code": "too_large"}


def test_schema_documents_error_bodies_limits_and_the_grammar(hostile: TestClient) -> None:
    from nas_ops.spec import spec_pattern

    schema = hostile.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    assert "HTTPValidationError" not in components and "ValidationError" not in components
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if operation.get("parameters") or operation.get("requestBody"):
                error = operation["responses"]["422"]["content"]["application/json"]["schema"]
                assert error == {"$ref": "#/components/schemas/ErrorBody"}, (method, path)
    measure = schema["paths"]["/v1/measure"]["post"]["responses"]
    assert {"200", "202", "401", "413", "422"} <= set(measure)
    body = components["MeasureRequest"]["properties"]
    assert body["ops"]["items"]["pattern"] == spec_pattern(max_channels=2048, max_resolution=512)
    assert body["ops"]["items"]["minLength"] == 1 and body["ops"]["maxItems"] == 2000
    assert body["backend"]["enum"] == ["ort-cpu", "torch-cpu"] and body["dtype"]["enum"] == ["float32"]
    assert body["batch"]["maximum"] == 256 and body["wait_s"]["maximum"] == 600
    architecture = components["ArchitectureRequest"]["properties"]["architecture"]
    assert architecture["minProperties"] == 1 and len(architecture["anyOf"]) == 2
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


@pytest.mark.parametrize("body", [b"[" * 1000 + b"]" * 1000, b'{"ops": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                                  b'{"a": ' * 5000 + b"1" + b"}" * 5000])
@pytest.mark.parametrize("path", ["/v1/lookup", "/v1/measure", "/v1/measure/architecture"])
def test_deeply_nested_json_is_the_documented_422_invalid_json(hostile: TestClient, path: str, body: bytes) -> None:
    response = hostile.post(path, content=body, headers=JSON)
    assert response.status_code == 422, response.text
    assert response.json() == {"detail": "request body: JSON nested too deeply to parse (no request of this API "
                                         "nests more than a few levels)", "code": "invalid_json"}


def test_malformed_json_is_invalid_json(hostile: TestClient) -> None:
    response = hostile.post("/v1/lookup", content=b"{not json", headers=JSON)
    assert response.status_code == 422 and response.json()["code"] == "invalid_json", response.text
