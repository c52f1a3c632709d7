"""Fixtures of the service tests: an app on a migrated database, served through the ASGI interface.

- ``client`` / ``token_client``: the app (fast protocol, ort-cpu and torch-cpu, no canary checks: their timings
  would pass the gate below; items measured in the service's process, where the gate can hold them: the measuring
  process has tests of its own) on a fresh SQLite file; the
  latter requires the bearer token ``s3cret`` on mutations.
- ``gate``: a :class:`RunnerGate` on the ort-cpu backend: every timing of a module with the gated input shape
  (every module when ``gate.shape`` is None) waits until ``gate.release()``, so a job is provably unfinished
  while the gate is closed. ``gated_client`` / ``gated_token_client``: the app with the gate installed; the gate
  is released before the service stops (its worker is never left waiting).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pytest
from fastapi.testclient import TestClient

from latency_db.migrate import upgrade_to_head
from profiler_service.api.app import create_app
from profiler_service.engine.backends import Runner, get_backend
from profiler_service.settings import ProfilerSettings

GATE_TIMEOUT_S = 120.0

# Small ops that measure in a few milliseconds with the fast protocol.
SMALL_OPS = [
    "mbconv_r8x8_c8-8_k3_e3_s1_relu6_skip",
    "mbconv_r8x8_c8-16_k5_e6_s2_relu6",
    "conv_r16x16_c3-8_k3_s2_relu6",
]


#: The Host of TestClient's requests (http://testserver), a name the services of these tests answer to.
TEST_HOST = "testserver"
#: The content type every POST needs (a cancel too: the service refuses a POST a page of another site could send).
JSON = {"content-type": "application/json"}


def make_settings(db_url: str, **overrides: object) -> ProfilerSettings:
    values = {"db_url": db_url, "backends": "ort-cpu,torch-cpu", "protocol": "fast", "threads": 1,
              "device_name": "test-device", "worker_poll_s": 0.05, "canary_interval_s": 0,
              "allowed_hosts": TEST_HOST, "isolation": "none"}
    values.update(overrides)
    return ProfilerSettings(**values)


@pytest.fixture
def service_db(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'service.db'}"
    upgrade_to_head(url)
    return url


@pytest.fixture
def client(service_db: str) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(service_db))) as test_client:
        yield test_client


@pytest.fixture
def token_client(service_db: str) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(service_db, token="s3cret"))) as test_client:
        yield test_client


class RunnerGate:
    """Holds the timed runs of the gated modules until :meth:`release`; :meth:`wait_entered` returns once the
    worker waits at the gate (it is then inside a measurement: its job is running and unfinished)."""

    def __init__(self) -> None:
        self.shape: tuple[int, ...] | None = None
        self._entered = threading.Event()
        self._opened = threading.Event()

    def holds(self, input_shape: Sequence[int]) -> bool:
        return self.shape is None or tuple(input_shape) == self.shape

    def pass_through(self) -> None:
        """Called by a gated runner before it times: signal arrival, then wait for the gate to open."""
        self._entered.set()
        if not self._opened.wait(GATE_TIMEOUT_S):
            raise RuntimeError(f"test gate still closed after {GATE_TIMEOUT_S:g} s")

    def wait_entered(self, timeout_s: float = GATE_TIMEOUT_S) -> None:
        if not self._entered.wait(timeout_s):
            raise AssertionError(f"no measurement reached the gate within {timeout_s:g} s (is ort-cpu the "
                                 "registry's instance?)")

    def release(self) -> None:
        self._opened.set()


class GatedRunner(Runner):
    """A real runner whose timed runs first pass the gate."""

    def __init__(self, runner: Runner, gate: RunnerGate) -> None:
        self.runner, self.gate = runner, gate

    @property
    def input(self) -> np.ndarray:
        return self.runner.input

    def run(self) -> None:
        self.runner.run()

    def time_runs(self, count: int, before_each: Callable[[], None] | None = None) -> list[float]:
        self.gate.pass_through()
        return self.runner.time_runs(count, before_each)

    def output(self) -> np.ndarray:
        return self.runner.output()

    def close(self) -> None:
        self.runner.close()


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[RunnerGate]:
    gate = RunnerGate()
    backend = get_backend("ort-cpu")  # the registry's instance: the one every service of this process measures on
    prepare = backend.prepare

    def gated_prepare(module, input_shape, dtype, threads, *, seed=0) -> Runner:  # noqa: ANN001
        runner = prepare(module, input_shape, dtype, threads, seed=seed)
        return GatedRunner(runner, gate) if gate.holds(input_shape) else runner

    monkeypatch.setattr(backend, "prepare", gated_prepare)
    yield gate
    gate.release()


def _gated_service(settings: ProfilerSettings, gate: RunnerGate) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client
        gate.release()  # before the service stops: its worker must not wait at the gate


@pytest.fixture
def gated_client(service_db: str, gate: RunnerGate) -> Iterator[TestClient]:
    yield from _gated_service(make_settings(service_db), gate)


@pytest.fixture
def gated_token_client(service_db: str, gate: RunnerGate) -> Iterator[TestClient]:
    yield from _gated_service(make_settings(service_db, token="s3cret"), gate)
