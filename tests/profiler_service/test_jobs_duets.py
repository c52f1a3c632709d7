"""The service measuring in a duet (protocol point 11): the protocol and versions of the ``duet`` setting, one
stored baseline per environment shared by every regime and every later duet (another job, another process), and a
whole service whose
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
from profiler_service.engine import duet as duet_module
from profiler_service.engine.cache_regime import COLD_FLUSH_KIB
from profiler_service.engine.duet import BASELINE_BLOCKS, BASELINE_SCHEME, DEFAULT_REFERENCE, DuetBackend, duet_params
from profiler_service.engine.protocol_presets import ServiceProtocol, is_duet_version, regime_of_version
from profiler_service.engine.protocol import PROTOCOL_VERSION, ProtocolParams
from profiler_service.jobs.duets import BASELINE_TRIES, BASELINE_VERSION, DuetPool, baseline_context
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


# --- the pool: one stored baseline per environment, shared by every regime --------------------------------------------
class RegimeMachine(Machine):
    """A fake machine whose runs also depend on the flush before them: ``flushed_kib`` is the last one's size."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed_kib = 0


#: How much slower the fake reference op and the fake module run after a flush of this many KiB than warm.
REFERENCE_REGIME = {0: 1.0, 1024: 1.5, 16384: 2.0}
MODULE_REGIME = {0: 1.0, 1024: 1.25, 16384: 1.6}


class MachineBackend(Backend):
    """Runners on a fake machine: the duet's reference op takes 0.5 ms warm, every other module 2 ms (x its speed,
    x its regime's factor after the machine's last flush)."""

    def __init__(self, machine: RegimeMachine) -> None:
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
        runner = RegimeRunner(self.machine, 0.5 if is_reference else 2.0, "ref" if is_reference else "target",
                              REFERENCE_REGIME if is_reference else MODULE_REGIME)
        self.prepared.append(runner)
        return runner


class RegimeRunner(MachineRunner):
    def __init__(self, machine: RegimeMachine, base_ms: float, name: str, regime: dict[int, float]) -> None:
        super().__init__(machine, base_ms, name)
        self.regime = regime

    def _one_run(self) -> float:
        return super()._one_run() * self.regime[self.machine.flushed_kib]


def fake_flush(machine: RegimeMachine, kib: int):
    def flush() -> None:
        machine.flushed_kib = kib
    return flush


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch) -> RegimeMachine:
    """The machine of a test; the duet's flushes only tell it their size (nothing is read for real)."""
    fake = RegimeMachine()
    monkeypatch.setattr(duet_module, "cache_flusher", lambda kib: fake_flush(fake, kib))
    return fake


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


PARAMS = duet_params(ProtocolParams(affinity=False, cache_flush_kib=COLD_FLUSH_KIB))
WARM = PARAMS.model_copy(update={"cache_flush_kib": 0})
FLUSH1024 = PARAMS.model_copy(update={"cache_flush_kib": 1024})


def target_ms(backend: Backend, machine: RegimeMachine, flush_kib: int = COLD_FLUSH_KIB) -> float:
    """One timed block of a fake module, each run after a flush of ``flush_kib`` (as a job of that regime)."""
    runner = backend.prepare(nn.Identity(), (1, 3, 8, 8), "float32", 1)
    try:
        return runner.time_runs(3, fake_flush(machine, flush_kib))[0]
    finally:
        runner.close()


def stored_baselines(sessions) -> list[tuple[str, str, str, int, float]]:
    with sessions() as session:
        return [(r.op_spec, r.protocol_version, r.env_hash, r.batch, r.median_ms)
                for r in session.scalars(select(CanaryReference))]


def test_the_first_duet_stores_the_one_baseline_and_later_ones_scale_to_it(sessions, machine) -> None:
    first = DuetPool(sessions, device_id=1, clock=machine.clock)
    backend = first.backend(MachineBackend(machine), 1, ENV, "4+duet", PARAMS)
    assert isinstance(backend, DuetBackend) and target_ms(backend, machine) == pytest.approx(3.2)
    # the reference after the cold flush: 0.5 ms x 2.0, under the version key of the shared baselines
    assert stored_baselines(sessions) == [(DEFAULT_REFERENCE, BASELINE_VERSION, ENV, 1, pytest.approx(1.0))]

    # another process, on a machine now 1.6x slower: the stored baseline keeps the table's scale
    machine.speed = 1.6
    second = DuetPool(sessions, device_id=1, clock=machine.clock)
    backend = second.backend(MachineBackend(machine), 1, ENV, "4+duet", PARAMS)
    assert second.baselines() == {("machine", 1, ENV, "4+duet"): pytest.approx(1.0)}
    assert target_ms(backend, machine) == pytest.approx(3.2)  # a plain timing reads 5.12 ms
    # its own measurement of the baseline (1.6 ms) was not stored over the first
    assert [row[-1] for row in stored_baselines(sessions)] == [pytest.approx(1.0)]
    first.close()
    second.close()


def test_a_table_measured_under_load_and_a_network_measured_quiet_in_another_regime_share_one_scale(
        sessions, machine) -> None:
    # lut: the table under 4+flush1024+duet while another job makes the machine 2.2x slower
    machine.speed = 2.2
    loaded = DuetPool(sessions, device_id=1, clock=machine.clock)
    table_op = target_ms(loaded.backend(MachineBackend(machine), 1, ENV, "4+flush1024+duet", FLUSH1024), machine,
                         1024)
    # verify, later, on the quiet machine: the network under 4+warm+duet, by another process
    machine.speed = 1.0
    quiet = DuetPool(sessions, device_id=1, clock=machine.clock)
    network = target_ms(quiet.backend(MachineBackend(machine), 1, ENV, "4+warm+duet", WARM), machine, 0)
    # each reads its regime's quiet latency on ONE scale: the stored baseline (set under the load: 2.2 ms) over
    # the reference's quiet latency after the cold flush (1.0 ms)
    scale = 2.2
    assert table_op == pytest.approx(2.0 * MODULE_REGIME[1024] * scale)
    assert network == pytest.approx(2.0 * MODULE_REGIME[0] * scale)
    assert table_op / network == pytest.approx(MODULE_REGIME[1024] / MODULE_REGIME[0])
    # one stored baseline for both regimes; each regime's duet scales it by its reference's ratio
    assert len(stored_baselines(sessions)) == 1
    assert quiet.baselines() == {("machine", 1, ENV, "4+warm+duet"): pytest.approx(2.2 * 0.5)}
    loaded.close()
    quiet.close()


def test_one_duet_per_context_and_none_without_a_reference(sessions, machine) -> None:
    pool = DuetPool(sessions, device_id=1, clock=machine.clock)
    raw = MachineBackend(machine)
    assert pool.backend(raw, 1, ENV, "4", PARAMS.model_copy(update={"duet_reference": None})) is raw
    pool.backend(raw, 1, ENV, "4+duet", PARAMS)
    pool.backend(raw, 1, ENV, "4+duet", PARAMS)  # the same context: the started duet
    machine.speed = 2.0
    pool.backend(raw, 1, ENV, "4+warm+duet", WARM)  # another regime: the same baseline, converted
    assert pool.baselines() == {("machine", 1, ENV, "4+duet"): pytest.approx(1.0),
                                ("machine", 1, ENV, "4+warm+duet"): pytest.approx(0.5)}
    references = [r for r in raw.prepared if r.name == "ref"]
    assert len(references) == 2
    pool.close()
    assert all(r.closed for r in references)
    assert baseline_context("machine", 1, ENV).protocol_version == BASELINE_VERSION


def test_a_baseline_is_set_from_two_series_that_agree_or_else_from_the_lowest_of_every_try(sessions, machine,
                                                                                          monkeypatch) -> None:
    # a neighbour starts halfway through every start (a warm-up block, then BASELINE_BLOCKS blocks of the cold
    # regime, the duet's own): the two halves disagree in every try, so after the last one the lowest series (the
    # undisturbed half) is stored, and the job is not held back
    original = RegimeRunner.time_runs
    blocks = {"n": 0}

    def disturbed(self, count, before_each=None):
        if self.name == "ref":
            in_start = blocks["n"] % (BASELINE_BLOCKS + 1)
            blocks["n"] += 1
            machine.speed = 1.5 if in_start > BASELINE_BLOCKS // 2 else 1.0
        return original(self, count, before_each)

    monkeypatch.setattr(RegimeRunner, "time_runs", disturbed)
    pool = DuetPool(sessions, device_id=1, clock=machine.clock)
    raw = MachineBackend(machine)
    pool.backend(raw, 1, ENV, "4+duet", PARAMS)
    assert [row[-1] for row in stored_baselines(sessions)] == [pytest.approx(1.0)]  # not the disturbed 1.5
    assert blocks["n"] == BASELINE_TRIES * (BASELINE_BLOCKS + 1)  # every try was made first
    references = [r for r in raw.prepared if r.name == "ref"]
    assert sum(not r.closed for r in references) == 1  # the duet of the last try is kept, the others closed
    pool.close()


def test_two_agreeing_series_set_the_baseline_at_the_first_try(sessions, machine) -> None:
    pool = DuetPool(sessions, device_id=1, clock=machine.clock)
    raw = MachineBackend(machine)
    pool.backend(raw, 1, ENV, "4+duet", PARAMS)
    assert [row[-1] for row in stored_baselines(sessions)] == [pytest.approx(1.0)]
    assert len([r for r in raw.prepared if r.name == "ref"]) == 1
    pool.close()


def test_the_baseline_is_written_through_the_callers_retry_and_a_refused_write_keeps_no_duet(sessions,
                                                                                             machine) -> None:
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
    assert stored_baselines(sessions) == []
    # the next job starts it again, and the write goes through
    pool.backend(raw, 1, ENV, "4+duet", PARAMS, retry=lambda what, operation: operation())
    assert pool.baselines() == {("machine", 1, ENV, "4+duet"): pytest.approx(1.0)}
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
    assert [(r.op_spec, r.protocol_version) for r in references] == [(DEFAULT_REFERENCE, BASELINE_VERSION)]
    state = duet_client.app.state.service
    assert [key[-1] for key in state.worker.duets.baselines()] == [version]
    # the service's environment names the duet's scale: rows on per-regime baselines are never served with these
    assert state.environment("ort-cpu", 1)[0]["duet_baseline"] == BASELINE_SCHEME
    assert {r.env_hash for r in rows} == {state.environment("ort-cpu", 1)[1]}
    found = duet_client.post("/v1/lookup", json={"backend": "ort-cpu", "ops": SMALL_OPS[:2]}).json()
    assert found["protocol_version"] == version and sorted(found["found"]) == sorted(SMALL_OPS[:2])


def test_a_plain_service_never_serves_duet_rows(duet_client: TestClient, service_db: str) -> None:
    job = duet_client.post("/v1/measure", json={"backend": "ort-cpu", "ops": SMALL_OPS[:1], "wait_s": 120}).json()
    assert job["status"] == "done"
    with TestClient(create_app(make_settings(service_db, duet=False))) as plain:
        lookup = plain.post("/v1/lookup", json={"backend": "ort-cpu", "ops": SMALL_OPS[:1]}).json()
    assert lookup["missing"] == SMALL_OPS[:1] and lookup["protocol_version"] == f"{PROTOCOL_VERSION}+fast"
