"""No silent zeros (protocol 3, point 10): an op whose single run is below the timer's resolution is timed in groups
of runs and stored with its real cost; one that stays below (or that calibration floors at 0) is stored flagged
with an upper bound, never as 0 ms; lookups and the table export carry the flag. A scripted backend stands in for
the device: its runs cost a known time on a clock with a known tick, nothing is timed for real."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from torch import nn

from latency_db.connection import make_engine, make_session_factory
from latency_db.context import MeasurementContext
from latency_db.models import Device, Job, Measurement, MeasurementRound
from latency_db.repository import upsert_measurement
from latency_db.transactions import write_session
from nas_ops.spec import parse_spec
from profiler_service.engine.backends import Backend, Runner
from profiler_service.engine.protocol_presets import protocol_params_for, protocol_version_for
from profiler_service.engine.protocol import ProtocolParams, measure_op_round
from profiler_service.engine.stats import RoundMeasurement
from profiler_service.jobs.worker import JobWorker
from tests.profiler_service.jobs_fakes import Store, environment_named, open_store, stats, wait_for

TICK_MS = 0.01  # the scripted clock's resolution
COST_MS = 0.002  # what one run of any module costs: a fifth of a tick
OP = "mbconv_r8x8_c8-8_k3_e3_s1_relu6"


def ticks(duration_ms: float) -> float:
    """What the scripted clock reads for a duration: whole ticks (rounded down)."""
    return math.floor(duration_ms / TICK_MS + 1e-9) * TICK_MS


class CoarseClockRunner(Runner):
    """Each run costs COST_MS; a timing reads whole ticks of TICK_MS, so one run alone reads 0."""

    def __init__(self) -> None:
        self.groups: list[int] = []  # runs per timing of every grouped timing

    @property
    def timer_resolution_ms(self) -> float:
        return TICK_MS

    @property
    def input(self) -> np.ndarray:
        return np.zeros(1, dtype=np.float32)

    def run(self) -> None:
        pass

    def time_runs(self, count: int, before_each: Callable[[], None] | None = None) -> list[float]:
        return [ticks(COST_MS)] * count

    def time_group(self, count: int, runs_per_timing: int,
                   before_each: Callable[[], None] | None = None) -> list[float]:
        self.groups.extend([runs_per_timing] * count)
        return [ticks(COST_MS * runs_per_timing) / runs_per_timing] * count

    def output(self) -> np.ndarray:
        return self.input


class CoarseClockBackend(Backend):
    """A backend whose runners are :class:`CoarseClockRunner`; records them."""

    name = "coarse"
    options: dict = {}

    def __init__(self) -> None:
        self.runners: list[CoarseClockRunner] = []

    @property
    def available(self) -> bool:
        return True

    def environment(self, threads: int) -> dict:
        return {"backend": self.name, "threads": threads}

    def _prepare(self, module: nn.Module, input_shape: tuple, dtype: str, threads: int, seed: int) -> Runner:
        self.runners.append(CoarseClockRunner())
        return self.runners[-1]


#: Uncalibrated, so the op's own cost is what is stored; fast otherwise.
PARAMS = ProtocolParams.fast().model_copy(update={"affinity": False, "calibrate": False})


def test_a_run_below_the_timer_resolution_is_timed_in_groups() -> None:
    backend = CoarseClockBackend()
    assert CoarseClockRunner().time_runs(3) == [0.0] * 3  # one run alone reads as 0 ms: the protocol 2 failure
    measured = measure_op_round(parse_spec(OP), backend, 1, "float32", 1, PARAMS)
    # 100 ticks per timing: 1 ms, i.e. 512 runs of 0.002 ms (the smallest power of two that lasts that long)
    assert measured.runs_per_timing == 512 and measured.timer_resolution_ms == TICK_MS
    assert measured.raw.median_ms == pytest.approx(ticks(0.002 * 512) / 512)
    assert measured.raw.median_ms == pytest.approx(COST_MS, rel=0.01)  # within a tick in 100
    assert set(backend.runners[0].groups[-PARAMS.min_runs:]) == {512}


def job_worker(store: Store, backend: Backend, params: ProtocolParams, measure_op=measure_op_round) -> JobWorker:
    return JobWorker(sessions=store.sessions, device_id=store.device_id, backends={backend.name: backend},
                     protocol_params=params, protocol_version=protocol_version_for("fast"),
                     environment=environment_named("A", (backend.name,)), poll_s=0.02, measure_op=measure_op)


def run_job(store: Store, worker: JobWorker, ops: list[str], backend: str) -> int:
    job_id = store.submit(ops, backend=backend)
    worker.start()
    try:
        wait_for(lambda: job_status(store, job_id) in ("done", "failed"), "the job finished")
    finally:
        worker.stop()
    return job_id


def job_status(store: Store, job_id: int) -> str:
    with store.sessions() as session:
        return session.get(Job, job_id).status


def rows_by_spec(store: Store) -> dict[str, Measurement]:
    with store.sessions() as session:
        return {row.op_spec: row for row in session.scalars(select(Measurement))}


def test_a_job_stores_an_op_below_the_timer_with_its_real_cost(db_url: str) -> None:
    backend = CoarseClockBackend()
    params = PARAMS.model_copy(update={"rounds": 3})
    with open_store(db_url) as store:
        job_id = run_job(store, job_worker(store, backend, params), [OP], backend.name)
        assert job_status(store, job_id) == "done"
        rows = rows_by_spec(store)
        assert rows[OP].median_ms == pytest.approx(COST_MS, rel=0.01) and rows[OP].flagged is None
        assert rows[OP].rounds == 3
        with store.sessions() as session:
            groups = session.scalars(select(MeasurementRound.runs_per_timing)
                                     .where(MeasurementRound.measurement_id == rows[OP].id)).all()
        assert groups == [512, 512, 512]


def test_an_op_that_stays_below_the_timer_is_stored_flagged_with_an_upper_bound(db_url: str) -> None:
    backend = CoarseClockBackend()
    params = PARAMS.model_copy(update={"rounds": 3, "max_runs_per_timing": 4})  # 4 runs: still under one tick
    with open_store(db_url) as store:
        run_job(store, job_worker(store, backend, params), [OP], backend.name)
        row = rows_by_spec(store)[OP]
        assert row.median_ms == pytest.approx(TICK_MS / 4) and row.median_ms > 0
        assert row.flagged.startswith("below_resolution:") and "timings of 4 runs" in row.flagged


def test_an_op_that_calibration_floors_at_zero_is_stored_flagged_never_as_zero(db_url: str) -> None:
    """The protocol 2 failure on micro-16: the boundary correction as large as the sandwich."""

    def floored(*_: object, **__: object) -> RoundMeasurement:
        return RoundMeasurement(raw=stats(0.05), correction_ms=0.06, timer_resolution_ms=1e-6)

    with open_store(db_url) as store:
        worker = job_worker(store, CoarseClockBackend(), protocol_params_for("default"), measure_op=floored)
        run_job(store, worker, [OP], "coarse")
        row = rows_by_spec(store)[OP]
        assert row.median_ms == pytest.approx(0.05) and row.rounds == protocol_params_for("default").rounds
        assert row.flagged.startswith("calibrated_to_zero:")


def test_lookups_and_the_table_export_carry_the_flag(client: TestClient, service_db: str) -> None:
    device = client.get("/v1/device").json()
    env_hash = {b["name"]: b["env_hash"] for b in device["backends"]}["ort-cpu"]
    context = MeasurementContext("ort-cpu", 1, "float32", 1, env_hash, device["protocol"]["version"])
    reason = "below_resolution: 0 ms, not above the timer's resolution"
    engine = make_engine(service_db)
    try:
        with write_session(make_session_factory(engine)) as session:
            device_id = session.scalars(select(Device.id).where(Device.name == device["name"])).one()
            upsert_measurement(session, device_id=device_id, context=context, op_spec=OP, environment={},
                               protocol_params={}, stats=stats(0.0025).as_dict(), rounds=3, flagged=reason)
    finally:
        engine.dispose()
    found = client.post("/v1/lookup", json={"backend": "ort-cpu", "ops": [OP]}).json()["found"]
    assert found[OP]["flagged"] == reason and found[OP]["rounds"] == 3 and found[OP]["median_ms"] == 0.0025
    table = client.get("/v1/table", params={"backend": "ort-cpu"}).json()["measurements"]
    assert [(row["op_spec"], row["flagged"], row["rounds"]) for row in table] == [(OP, reason, 3)]
    rows = list(csv.DictReader(io.StringIO(client.get("/v1/table", params={"format": "csv"}).text)))
    assert [(row["op_spec"], row["flagged"]) for row in rows] == [(OP, reason)]
