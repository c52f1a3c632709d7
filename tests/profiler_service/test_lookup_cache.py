"""POST /v1/lookup through the lookup caches answers exactly what the un-cached path would: the stored stats of
every spec (read again after any write, by any session), the same limits and the same errors.

The un-cached reference is the route's former body: ``parse_ops`` for the checks, ``lookup_measurements`` (ORM
rows) and ``stats_of`` for the answer. Writes go through their own engine, as another process's would.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from latency_db.connection import make_engine, make_session_factory
from latency_db.context import MeasurementContext
from latency_db.repository import lookup_measurements, upsert_measurement
from latency_db.transactions import write_session
from nas_ops.spec import format_spec, parse_spec
from profiler_service.api.app import create_app
from profiler_service.api.errors import ApiError
from profiler_service.api.limits import parse_ops
from profiler_service.api.lookup_cache import CheckedOps, LookupAnswer, StoredStats, stats_of
from profiler_service.api.schemas import LookupResponse
from tests.profiler_service.conftest import make_settings

BACKEND = "ort-cpu"


def spec_pool(count: int) -> list[str]:
    """``count`` distinct canonical specs, small enough for the default limits."""
    specs = []
    for res in (8, 16):
        for cin in (8, 16, 24):
            for cout in (8, 16, 24):
                for kernel in (3, 5, 7):
                    for stride in (1, 2):
                        skip = "_skip" if cin == cout and stride == 1 else ""
                        specs.append(format_spec(parse_spec(
                            f"mbconv_r{res}x{res}_c{cin}-{cout}_k{kernel}_e3_s{stride}_relu6{skip}")))
    assert len(specs) >= count
    return specs[:count]


def random_stats(rng: random.Random) -> dict[str, Any]:
    median = round(rng.uniform(0.01, 20.0), rng.choice((2, 6, 12)))
    return {"median_ms": median, "mean_ms": median * 1.01, "std_ms": median * rng.uniform(0, 0.2),
            "min_ms": median * 0.9, "p10_ms": median * 0.95, "p90_ms": median * 1.1, "iqr_ms": median * 0.07,
            "samples": rng.randint(1, 500)}


class Store:
    """The service's database as another process sees it: its own engine, one committed transaction per write."""

    def __init__(self, url: str, device_id: int) -> None:
        self.engine = make_engine(url)
        self.sessions: sessionmaker[Session] = make_session_factory(self.engine)
        self.device_id = device_id

    def write(self, context: MeasurementContext, op_spec: str, stats: dict[str, Any]) -> None:
        with write_session(self.sessions) as session:
            upsert_measurement(session, device_id=self.device_id, context=context, op_spec=op_spec,
                               environment={"test": "lookup cache"}, protocol_params={}, stats=stats)

    def uncached_answer(self, context: MeasurementContext, ops: list[str], other_fields: dict[str, Any]) -> dict:
        """The answer of the un-cached path (ORM rows, stats_of), in the JSON form the API serves."""
        with self.sessions() as session:
            rows = lookup_measurements(session, device_id=self.device_id, context=context, op_specs=ops)
        found = {op_spec: stats_of(row) for op_spec, row in rows.items()}
        missing = list(dict.fromkeys(op for op in ops if op not in found))
        return LookupResponse(**context.as_dict(), **other_fields, found=found, missing=missing).model_dump(
            mode="json")


@pytest.fixture
def service(db_url: str) -> Iterator[tuple[TestClient, Store]]:
    """The service on a migrated SQLite file, then on a PostgreSQL database (``db_url``), and its store."""
    with TestClient(create_app(make_settings(db_url, backends=BACKEND))) as client:
        store = Store(db_url, client.app.state.service.device_id)
        try:
            yield client, store
        finally:
            store.engine.dispose()


def context_of(client: TestClient, batch: int = 1) -> MeasurementContext:
    return client.app.state.service.context(BACKEND, batch, "float32", None)


def lookup(client: TestClient, ops: list[str], **extra: Any) -> dict:
    response = client.post("/v1/lookup", json={"backend": BACKEND, "ops": ops, **extra})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return response.json()


def beyond_the_cache(answer: dict) -> dict[str, Any]:
    """The answer's fields that are neither the context nor found/missing (e.g. drift): not the cache's."""
    return {k: v for k, v in answer.items() if k not in {*MeasurementContext.__dataclass_fields__, "found", "missing"}}


def test_answers_equal_the_uncached_path_on_random_tables(service: tuple[TestClient, Store]) -> None:
    client, store = service
    rng = random.Random(20261201)
    pool = spec_pool(80)
    contexts = {batch: context_of(client, batch) for batch in (1, 2)}
    for op_spec in rng.sample(pool, 40):  # a table over two contexts
        store.write(contexts[rng.choice((1, 2))], op_spec, random_stats(rng))
    for step in range(30):
        if step % 3:  # a write between lookups: a new row or an update, in either context
            store.write(contexts[rng.choice((1, 2))], rng.choice(pool), random_stats(rng))
        batch = rng.choice((1, 2))
        ops = rng.sample(pool, rng.randint(1, 60))
        ops += rng.sample(ops, rng.randint(0, len(ops) // 3))  # duplicates
        rng.shuffle(ops)
        answer = lookup(client, ops, batch=batch)
        assert answer == store.uncached_answer(contexts[batch], ops, beyond_the_cache(answer)), step
        LookupResponse.model_validate(answer)


def test_a_row_written_by_another_session_is_seen_by_the_next_lookup(service: tuple[TestClient, Store]) -> None:
    client, store = service
    context = context_of(client)
    stored, new = spec_pool(2)
    store.write(context, stored, {**random_stats(random.Random(1)), "median_ms": 1.0})
    first = lookup(client, [stored, new])
    assert first["found"][stored]["median_ms"] == 1.0 and first["missing"] == [new]
    assert lookup(client, [stored, new]) == first  # from the cache: nothing was written

    store.write(context, new, {**random_stats(random.Random(2)), "median_ms": 2.0})  # a new row
    store.write(context, stored, {**random_stats(random.Random(3)), "median_ms": 3.0})  # an update
    second = lookup(client, [stored, new])
    assert second["found"][stored]["median_ms"] == 3.0 and second["found"][new]["median_ms"] == 2.0
    assert second["missing"] == []
    assert second == store.uncached_answer(context, [stored, new], beyond_the_cache(second))


@pytest.fixture
def limited_client(sqlite_url: str) -> Iterator[TestClient]:
    from latency_db.migrate import upgrade_to_head

    upgrade_to_head(sqlite_url)
    settings = make_settings(sqlite_url, backends=BACKEND, max_op_memory_mib=480.0, max_ops_per_request=50)
    with TestClient(create_app(settings)) as client:
        yield client


SMALL = "conv_r16x16_c3-8_k3_s1_relu6"  # fine at batch 1 (a bound of 448 MiB); 481 MiB at batch 256, over the 480 MiB limit
BAD_REQUESTS = [
    [SMALL, "conv_r16x16_c3-8_k4_s1_relu6"],  # invalid_op at index 1
    [SMALL, SMALL + " "],  # not_canonical
    [SMALL, "nonsense"],
    [SMALL, "conv_r512x512_c3-2048_k3_s1_relu6"],  # over the memory limit at batch 1
    [SMALL] * 51,  # more ops than max_ops_per_request: 413
]


def expected_error(client: TestClient, ops: list[str], batch: int) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse_ops(client.app.state.service.settings, ops, batch, "float32")
    return caught.value


@pytest.mark.parametrize("ops", BAD_REQUESTS)
def test_errors_are_those_of_parse_ops_cold_and_cached(limited_client: TestClient, ops: list[str]) -> None:
    error = expected_error(limited_client, ops, 1)
    for attempt in ("cold", "after the valid ops were cached"):
        response = limited_client.post("/v1/lookup", json={"backend": BACKEND, "ops": ops})
        assert (response.status_code, response.json()) == (error.status,
                                                          {"detail": error.detail, "code": error.code}), attempt
        lookup(limited_client, [SMALL])


def test_a_spec_checked_at_one_batch_is_checked_again_at_another(limited_client: TestClient) -> None:
    assert lookup(limited_client, [SMALL])["missing"] == [SMALL]
    error = expected_error(limited_client, [SMALL], 256)
    response = limited_client.post("/v1/lookup", json={"backend": BACKEND, "ops": [SMALL], "batch": 256})
    assert response.status_code == 422 and response.json() == {"detail": error.detail, "code": "over_limit"}


def test_the_first_bad_op_is_named_even_after_its_neighbours_were_cached(limited_client: TestClient) -> None:
    ops = spec_pool(6)
    lookup(limited_client, ops)
    bad = [*ops[:3], "conv_r16x16_c3-8_k4_s1_relu6", *ops[3:], "nonsense"]
    response = limited_client.post("/v1/lookup", json={"backend": BACKEND, "ops": bad})
    assert response.status_code == 422 and response.json()["detail"].startswith("ops[3]: ")


def test_bounded_caches_still_answer_exactly(service: tuple[TestClient, Store]) -> None:
    client, store = service
    state = client.app.state.service
    rng = random.Random(7)
    pool = spec_pool(30)
    contexts = [context_of(client, batch) for batch in (1, 2, 3)]
    for op_spec in pool[:20]:
        store.write(rng.choice(contexts), op_spec, random_stats(rng))
    checked, stored = CheckedOps(state.settings, max_entries=5), StoredStats(max_contexts=2, max_specs=7)
    for step in range(20):
        context = rng.choice(contexts)
        ops = rng.sample(pool, rng.randint(1, 12))
        checked.check(ops, context.batch, context.dtype)
        with state.sessions() as session:
            answer = LookupAnswer.of(stored.fragments(session, state.device_id, context, ops))
        body = LookupResponse.model_validate_json(answer.json({**context.as_dict(), "drift": {"status": "off"}}))
        expected = store.uncached_answer(context, ops, {"drift": {"status": "off"}})
        assert body.model_dump(mode="json") == expected, step
        if step % 4 == 0:
            store.write(context, rng.choice(pool), random_stats(rng))


def test_the_schema_still_documents_the_lookup_response(client: TestClient) -> None:
    ok = client.get("/openapi.json").json()["paths"]["/v1/lookup"]["post"]["responses"]["200"]
    assert ok["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/LookupResponse"}
