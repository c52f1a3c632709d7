"""The service measuring in a duet (protocol point 11): the protocol and versions of the ``duet`` setting, one
stored baseline per context shared by every later duet (another job, another process), and a whole service whose
table, lookups and network measurements are stored and served under the duet's own version."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from torch import nn

from latency_db.connection import make_engine, make_session_factory
from latency_db.migrate import upgrade_to_head
from latency_db.models import CanaryReference, Measurement
from latency_db.repository import get_or_create_device
from latency_db.transactions import write_session
from nas_ops.space import load_space
from nas_ops.spec import parse_spec
from profiler_service.api.app import create_app
from profiler_service.engine.backends.base import Backend, Runner
from profiler_service.engine.cache_regime import CacheInfo
from profiler_service.engine.duet import DEFAULT_REFERENCE, DuetBackend, duet_params
from profiler_service.engine.protocol_presets import ServiceProtocol, is_duet_version, regime_of_version
from profiler_service.engine.protocol import PROTOCOL_VERSION, ProtocolParams
from profiler_service.jobs.duets import DuetPool, baseline_context
from tests.profiler_service.conftest import SMALL_OPS, make_settings
from tests.profiler_service.machine_fakes import Machine, MachineRunner

REFERENCE_SHAPE = (1, *parse_spec(DEFAULT_REFERENCE).input_shape)
L2 = CacheInfo(2 << 20, "test")
ENV = "e" * 64  # an environment hash


# --- the protocol of the duet setting -------------------------------------------------------------------------------
def test_a_duet_service_stores_every_regime_under_its_own_version() -> None:
    auto = ServiceProtocol("auto", L2, duet=True)
    warm, cold = auto.for_working_set(64 << 10), auto.for_working_set(None)
    assert (warm.version, warm.regime) == (f"{PROTOCOL_VERSION}+warm+duet", "warm")
    assert (cold.version, cold.regime) == (f"{PROTOCOL_VERSION}+duet", "cold")
    assert auto.for_working_set(3 << 20).version == f"{PROTOCOL_VERSION}+flush4096+duet"
    for resolved in (warm, cold):
        assert resolved.params.duet_reference == DEFAULT_REFERENCE
        assert resolved.params.aggregate == "median" and resolved.params.disturbed_block_rel is None
    # the regime's flush is kept; the plain service's protocol is unchanged
    assert warm.params.cache_flush_kib == 0 and cold.params.cache_flush_kib == ProtocolParams().cache_flush_kib
    plain = ServiceProtocol("auto", L2).for_working_set(64 << 10)
    assert plain.version == f"{PROTOCOL_VERSION}+warm" and plain.params.duet_reference is None
    assert ServiceProtocol("fast", L2, duet=True).base.version == f"{PROTOCOL_VERSION}+fast+duet"


def test_jobs_and_canaries_under_a_duet_service() -> None:
    auto = ServiceProtocol("auto", L2, duet=True)
    # a job keeps its regime and is measured in the duet, also one submitted before the service measured in one
    assert auto.for_job(f"{PROTOCOL_VERSION}+warm+duet").version == f"{PROTOCOL_VERSION}+warm+duet"
    assert auto.for_job(f"{PROTOCOL_VERSION}+flush1024").version == f"{PROTOCOL_VERSION}+flush1024+duet"
    # the canaries watch the raw speed: never in a duet
    assert auto.canary_base.version == PROTOCOL_VERSION and auto.canary_base.params.duet_reference is None
    described = auto.describe()
    assert described["duet"] == DEFAULT_REFERENCE and described["version"] == f"{PROTOCOL_VERSION}+duet"
    assert described["regimes"]["warm"] == f"{PROTOCOL_VERSION}+warm+duet"
    assert ServiceProtocol("auto", L2).describe()["duet"] is None


@pytest.mark.parametrize(("version", "regime", "duet"), [
    ("4", "cold", False), ("4+duet", "cold", True), ("4+warm+duet", "warm", True),
    ("4+flush1024+duet", "flush1024", True), ("4+fast+duet", "cold", True), ("4+warm", "warm", False),
])
def test_a_version_names_its_regime_and_its_duet(version: str, regime: str, duet: bool) -> None:
    assert regime_of_version(version) == regime and is_duet_version(version) is duet


def test_duet_params_are_validated_protocol_params() -> None:
    params = duet_params(ProtocolParams(rounds=5), "some-reference")
    assert params.rounds == 5 and params.duet_reference == "some-reference"
    with pytest.raises(ValueError, match="duet_reference"):
        ProtocolParams(duet_reference="")


# --- the pool: one stored baseline per context ------------------------------------------------------------------------
class MachineBackend(Backend):
    """Runners on a fake machine: the duet's reference op takes 0.5 ms, every other module 2 ms (x its speed)."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.name = "machine"
        self.options = {}
        self.prepared: list[MachineRunner] = []

    @property
    def available(self) -> bool:
        return True

    def environment(self, threads: int) -> dict:
        return {"backend": self.name, "threads": threads}

    def _prepare(self, module: nn.Module, input_shape: tuple, dtype: str, threads: int, seed: int) -> Runner:
        is_reference = tuple(input_shape) == REFERENCE_SHAPE
        runner = MachineRunner(self.machine, 0.5 if is_reference else 2.0, "ref" if is_reference else "target")
        self.prepared.append(runner)
        return runner


@pytest.fixture
def sessions(tmp_path) -> Iterator[sessionmaker[Session]]:
    """A migrated database holding device 1."""
    url = f"sqlite:///{tmp_path / 'duets.db'}"
    upgrade_to_head(url)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    with write_session(factory) as session:
        assert get_or_create_device(session, "machine", {"cpu_model": "fake"}).id == 1
    try:
        yield factory
    finally:
        engine.dispose()


PARAMS = duet_params(ProtocolParams(affinity=False, cache_flush_kib=0))


def target_ms(backend: Backend) -> float:
    runner = backend.prepare(nn.Identity(), (1, 3, 8, 8), "float32", 1)
    try:
        return runner.time_runs(3)[0]
    finally:
        runner.close()


def test_the_first_duet_of_a_context_stores_its_baseline_and_later_ones_scale_to_it(sessions) -> None:
    machine = Machine()
    first = DuetPool(sessions, device_id=1, clock=machine.clock)
    backend = first.backend(MachineBackend(machine), 1, ENV, "4+duet", PARAMS)
    assert isinstance(backend, DuetBackend) and target_ms(backend) == pytest.approx(2.0)
    with sessions() as session:
        rows = session.scalars(select(CanaryReference)).all()
    assert [(r.op_spec, r.protocol_version, r.env_hash, r.batch, r.median_ms) for r in rows] == [
        (DEFAULT_REFERENCE, "4+duet", ENV, 1, pytest.approx(0.5))]

    # another process, on a machine now 1.6x slower: the stored baseline keeps the table's scale
    machine.speed = 1.6
    second = DuetPool(sessions, device_id=1, clock=machine.clock)
    backend = second.backend(MachineBackend(machine), 1, ENV, "4+duet", PARAMS)
    assert second.baselines() == {("machine", 1, ENV, "4+duet"): pytest.approx(0.5)}
    assert target_ms(backend) == pytest.approx(2.0)  # a plain timing reads 3.2 ms
    # its own measurement of the baseline (0.8 ms) was not stored over the first
    with sessions() as session:
        assert [r.median_ms for r in session.scalars(select(CanaryReference))] == [pytest.approx(0.5)]
    first.close()
    second.close()


def test_one_duet_per_context_and_none_without_a_reference(sessions) -> None:
    machine = Machine()
    pool = DuetPool(sessions, device_id=1, clock=machine.clock)
    raw = MachineBackend(machine)
    assert pool.backend(raw, 1, ENV, "4", PARAMS.model_copy(update={"duet_reference": None})) is raw
    pool.backend(raw, 1, ENV, "4+duet", PARAMS)
    pool.backend(raw, 1, ENV, "4+duet", PARAMS)  # the same context: the started duet
    machine.speed = 2.0
    pool.backend(raw, 1, ENV, "4+warm+duet", PARAMS)  # another version: its own baseline
    assert pool.baselines() == {("machine", 1, ENV, "4+duet"): pytest.approx(0.5),
                                ("machine", 1, ENV, "4+warm+duet"): pytest.approx(1.0)}
    references = [r for r in raw.prepared if r.name == "ref"]
    assert len(references) == 2
    pool.close()
    assert all(r.closed for r in references)
    assert baseline_context("machine", 1, ENV, "4+duet").batch == 1


def test_the_baseline_is_written_through_the_callers_retry_and_a_refused_write_keeps_no_duet(sessions) -> None:
    machine = Machine()
    pool = DuetPool(sessions, device_id=1, clock=machine.clock)
    raw = MachineBackend(machine)
    asked: list[str] = []

    def refusing(what, operation):
        asked.append(what)
        raise RuntimeError("the database is gone")

    with pytest.raises(RuntimeError, match="the database is gone"):
        pool.backend(raw, 1, ENV, "4+duet", PARAMS, retry=refusing)
    assert asked == ["storing the duet's baseline"] and pool.baselines() == {}
    assert [r.closed for r in raw.prepared if r.name == "ref"] == [True]  # its reference released
    with sessions() as session:
        assert session.scalars(select(CanaryReference)).all() == []
    # the next job starts it again, and the write goes through
    pool.backend(raw, 1, ENV, "4+duet", PARAMS, retry=lambda what, operation: operation())
    assert pool.baselines() == {("machine", 1, ENV, "4+duet"): pytest.approx(0.5)}
    pool.close()


# --- a whole service in a duet ----------------------------------------------------------------------------------------
@pytest.fixture
def duet_client(service_db: str) -> Iterator[TestClient]:
    """The service as it starts by default: in a duet."""
    with TestClient(create_app(make_settings(service_db))) as test_client:
        yield test_client


def test_a_duet_service_measures_stores_and_serves_under_its_version(duet_client: TestClient,
                                                                     service_db: str) -> None:
    version = f"{PROTOCOL_VERSION}+fast+duet"
    device = duet_client.get("/v1/device").json()
    assert device["protocol"]["version"] == version and device["protocol"]["duet"] == DEFAULT_REFERENCE
    job = duet_client.post("/v1/measure", json={"backend": "ort-cpu", "ops": SMALL_OPS[:2], "wait_s": 120}).json()
    assert (job["status"], job["done"], job["protocol_version"]) == ("done", 2, version)
    space = load_space("micro-16")
    arch = space.architecture([0] * len(space.cells()))
    network = duet_client.post("/v1/measure/architecture", json={"backend": "ort-cpu", "architecture": arch.to_dict(),
                                                                 "wait_s": 120}).json()
    assert network["status"] == "done" and network["result"]["median_ms"] > 0
    engine = make_engine(service_db)
    try:
        with make_session_factory(engine)() as session:
            rows = session.scalars(select(Measurement)).all()
            references = session.scalars(select(CanaryReference)).all()
    finally:
        engine.dispose()
    assert sorted(r.op_spec for r in rows) == sorted(SMALL_OPS[:2])
    assert {r.protocol_version for r in rows} == {version}
    assert all(r.protocol_params["duet_reference"] == DEFAULT_REFERENCE and r.protocol_params["aggregate"] == "median"
               for r in rows)
    # one baseline for the ops and the network: they share its scale
    assert [(r.op_spec, r.protocol_version) for r in references] == [(DEFAULT_REFERENCE, version)]
    state = duet_client.app.state.service
    assert list(state.worker.duets.baselines().values()) == [pytest.approx(references[0].median_ms)]
    found = duet_client.post("/v1/lookup", json={"backend": "ort-cpu", "ops": SMALL_OPS[:2]}).json()
    assert found["protocol_version"] == version and sorted(found["found"]) == sorted(SMALL_OPS[:2])


def test_a_plain_service_never_serves_duet_rows(duet_client: TestClient, service_db: str) -> None:
    job = duet_client.post("/v1/measure", json={"backend": "ort-cpu", "ops": SMALL_OPS[:1], "wait_s": 120}).json()
    assert job["status"] == "done"
    with TestClient(create_app(make_settings(service_db, duet=False))) as plain:
        lookup = plain.post("/v1/lookup", json={"backend": "ort-cpu", "ops": SMALL_OPS[:1]}).json()
    assert lookup["missing"] == SMALL_OPS[:1] and lookup["protocol_version"] == f"{PROTOCOL_VERSION}+fast"
