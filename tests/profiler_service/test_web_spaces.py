"""The search-space endpoints of the web page: the presets, and a space's cells with every candidate's op spec."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from nas_ops.counting import space_working_set_bytes
from nas_ops.space import SPACES
from nas_ops.spec import format_spec
from profiler_service.api.app import create_app
from profiler_service.engine.cache_regime import CacheInfo
from profiler_service.engine.protocol import PROTOCOL_VERSION
from profiler_service.engine.protocol_presets import ServiceProtocol
from tests.profiler_service.conftest import make_settings


def test_spaces_lists_every_preset(client: TestClient) -> None:
    body = client.get("/v1/spaces").json()
    assert [s["name"] for s in body["spaces"]] == list(SPACES)
    tiny = next(s for s in body["spaces"] if s["name"] == "tiny-32")
    assert tiny["input_size"] == [32, 32] and tiny["cell_count"] == len(SPACES["tiny-32"].cells())
    assert tiny["candidate_names"] == [c.name for c in SPACES["tiny-32"].candidates] + ["Zero"]


def test_space_gives_each_cell_and_its_candidate_specs(client: TestClient) -> None:
    body = client.get("/v1/spaces/micro-16").json()
    space = SPACES["micro-16"]
    assert [f["role"] for f in body["fixed"]] == ["stem", "first_block", "head"]
    assert [f["spec"] for f in body["fixed"]] == [format_spec(s) for s in space.fixed_specs()]
    assert len(body["cells"]) == 3
    for cell, expected in zip(body["cells"], space.cells()):
        assert cell["candidates"] == [format_spec(c) for c in expected.candidates]
        assert cell["candidate_names"] == list(expected.candidate_names)
        assert cell["zero_index"] == expected.zero_index
        assert (cell["in_chs"], cell["out_chs"], cell["height"], cell["stride"]) == (
            expected.in_chs, expected.out_chs, expected.height, expected.stride)
    assert [c["zero_index"] for c in body["cells"]] == [6, 6, None]


def test_space_moves_to_another_resolution(client: TestClient) -> None:
    body = client.get("/v1/spaces/tiny-32", params={"resolution": 64}).json()
    moved = SPACES["tiny-32"].with_resolution(64, 64)
    assert body["input_size"] == [64, 64]
    assert body["cells"][0]["candidates"] == [format_spec(c) for c in moved.cells()[0].candidates]


@pytest.mark.parametrize(("path", "status", "named"), [
    ("/v1/spaces/no-such-space", 422, "'proxyless-mobile'"),
    ("/v1/spaces/Tiny_32", 422, "name"),
    ("/v1/spaces/tiny-32?resolution=7", 422, "resolution"),
    ("/v1/spaces/tiny-32?resolution=1025", 422, "resolution"),
    ("/v1/spaces/tiny-32?resolution=9223372036854775808", 422, "resolution"),
])
def test_space_rejects_unknown_names_and_bad_resolutions(client: TestClient, path: str, status: int,
                                                         named: str) -> None:
    response = client.get(path)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"detail", "code"} and named in response.json()["detail"]


def test_a_space_says_its_working_set_and_the_regime_this_device_gives_it(service_db: str) -> None:
    tiny = SPACES["tiny-32"]
    working_set = space_working_set_bytes(tiny, 1, "float32")
    small_cache_kib = working_set // 1024 // 2  # the typical network does not fit: a flush
    with TestClient(create_app(make_settings(service_db, protocol="auto", cache_kib=small_cache_kib))) as client:
        body = client.get("/v1/spaces/tiny-32").json()
        protocol = ServiceProtocol("auto", CacheInfo(small_cache_kib * 1024, "test"), True).for_working_set(
            working_set)
        assert body["working_set_bytes"] == working_set
        assert (body["regime"], body["protocol_version"]) == (protocol.regime, protocol.version)
        assert body["regime"].startswith("flush") and body["protocol_version"].endswith("+duet")
        # the lookup of the rows lut stores for this space answers under the same version
        lookup = client.post("/v1/lookup", json={"backend": "ort-cpu", "ops": [body["fixed"][0]["spec"]],
                                                 "working_set_bytes": working_set}).json()
        assert lookup["protocol_version"] == body["protocol_version"]
        moved = client.get("/v1/spaces/tiny-32", params={"resolution": 64}).json()
        assert moved["working_set_bytes"] == space_working_set_bytes(tiny.with_resolution(64, 64), 1, "float32")
    with TestClient(create_app(make_settings(service_db, protocol="auto", cache_kib=1 << 20))) as client:
        body = client.get("/v1/spaces/tiny-32").json()  # a 1 GiB cache holds it: warm
        assert (body["regime"], body["protocol_version"]) == ("warm", f"{PROTOCOL_VERSION}+warm+duet")


def test_a_space_gives_the_working_set_of_the_asked_batch_and_dtype(service_db: str) -> None:
    """lut measures a batch-4 table with the batch-4 network's working set: the space says the same one, and a
    batch above the service's limit is refused like any request's."""
    tiny = SPACES["tiny-32"]
    with TestClient(create_app(make_settings(service_db, protocol="auto", max_batch=8))) as client:
        body = client.get("/v1/spaces/tiny-32", params={"batch": 4, "dtype": "float16"}).json()
        assert body["working_set_bytes"] == space_working_set_bytes(tiny, 4, "float16")
        assert body["working_set_bytes"] != space_working_set_bytes(tiny, 1, "float32")
        refused = client.get("/v1/spaces/tiny-32", params={"batch": 9})
        assert refused.status_code == 422 and "limit of 8" in refused.json()["detail"]
