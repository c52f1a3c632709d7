"""The SQLite default under the search client's traffic: lookups in flight and a measure submit never block
/v1/health and never answer "database is locked" (issue 10, point 2)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text

from latency_db.models import Measurement
from latency_db.transactions import write_session
from profiler_service.api.app import create_app
from tests.profiler_service.conftest import SMALL_OPS, make_settings

#: Generous: on a loaded 2-core machine every request here answers within a second or two.
DEADLINE_S = 20.0
LOOKUP_THREADS = 8
LOOKUPS_PER_THREAD = 5


@pytest.fixture
def load_client(service_db: str) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(service_db))) as test_client:
        yield test_client


def _lookups(client: TestClient, stop: threading.Event) -> list[int]:
    codes = []
    for _ in range(LOOKUPS_PER_THREAD):
        if stop.is_set():
            break
        codes.append(client.post("/v1/lookup", json={"backend": "ort-cpu", "ops": SMALL_OPS}).status_code)
    return codes


def _all_done(futures: list[Future]) -> None:
    done, not_done = wait(futures, timeout=DEADLINE_S)
    assert not not_done, f"{len(not_done)} of {len(futures)} requests unanswered after {DEADLINE_S} s"


def test_lookups_in_flight_and_a_measure_never_block_health(load_client: TestClient) -> None:
    """A lookup's open read transaction (held here) does not stop a measure from creating its job, nor health."""
    state = load_client.app.state.service
    stop = threading.Event()
    with state.sessions() as reader, ThreadPoolExecutor(LOOKUP_THREADS + 4) as pool:
        reader.execute(select(Measurement.id).limit(1)).all()  # a read transaction in flight, snapshot taken
        try:
            lookups = [pool.submit(_lookups, load_client, stop) for _ in range(LOOKUP_THREADS)]
            measure = pool.submit(load_client.post, "/v1/measure", json={"backend": "ort-cpu", "ops": SMALL_OPS[:1]})
            healths = [pool.submit(load_client.get, "/v1/health") for _ in range(3)]
            _all_done([*lookups, measure, *healths])
        finally:
            stop.set()
    assert [health.result().status_code for health in healths] == [200, 200, 200]
    assert measure.result().status_code == 202, measure.result().text
    assert all(code == 200 for future in lookups for code in future.result())


def test_a_measure_waiting_for_the_write_lock_does_not_block_the_event_loop(load_client: TestClient) -> None:
    """While another writer holds SQLite's write lock, the submit waits off the event loop: health and lookups
    answer meanwhile, and the measure is created (202) once the lock is released."""
    state = load_client.app.state.service
    stop = threading.Event()
    with ThreadPoolExecutor(LOOKUP_THREADS + 4) as pool:
        with write_session(state.sessions) as writer:
            writer.execute(text("UPDATE devices SET last_seen = last_seen"))  # the write lock is ours now
            measure = pool.submit(load_client.post, "/v1/measure", json={"backend": "ort-cpu", "ops": SMALL_OPS[:1]})
            try:
                lookups = [pool.submit(_lookups, load_client, stop) for _ in range(LOOKUP_THREADS)]
                healths = [pool.submit(load_client.get, "/v1/health") for _ in range(3)]
                _all_done([*lookups, *healths])
            finally:
                stop.set()
            assert not measure.done()  # still waiting for the lock (nothing else holds it up)
        _all_done([measure])
    assert [health.result().status_code for health in healths] == [200, 200, 200]
    assert all(code == 200 for future in lookups for code in future.result())
    assert measure.result().status_code == 202, measure.result().text
