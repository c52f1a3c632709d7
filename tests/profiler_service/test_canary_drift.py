"""Drift detection (protocol 3, issue 13 point 5): canary ops measured at the worker's start, every interval and
before a job are compared with their stored values; beyond the threshold the device reports drift in /v1/device,
/v1/ready (still 200), lookups and the table export; ``force`` re-measures. A backend whose speed changes on
command stands in for throttling: its runs take scripted times, nothing is timed for real, clocks are fakes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner
from sqlalchemy import select
from torch import nn

from latency_db.connection import make_engine, make_session_factory
from latency_db.models import CanaryReference, Job, Measurement
from nas_ops.spec import OpSpec, format_spec
from profiler_service.api.app import create_app
from profiler_service.cli import app as cli_app
from profiler_service.engine.backends import Runner, get_backend
from profiler_service.engine.canary import CANARY_SPECS, REESTABLISH_CHECKS, compare, is_drift, measure_canaries
from profiler_service.engine.protocol_presets import protocol_version_for
from profiler_service.engine.protocol import ProtocolParams
from profiler_service.engine.stats import RoundMeasurement
from profiler_service.settings import ProfilerSettings
from profiler_service.jobs.canaries import CanariesUnsettled, CanaryWatch, drift_view
from profiler_service.jobs.worker import JobWorker
from tests.profiler_service.conftest import JSON, SMALL_OPS, make_settings
from tests.profiler_service.jobs_fakes import BACKEND, Store, environment_named, open_store, stats, wait_for
from tests.profiler_service.machine_fakes import FakeClock

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
PARAMS = ProtocolParams.fast().model_copy(update={"rounds": 3, "affinity": False})


# --- the comparison --------------------------------------------------------------------------------------------
def test_drift_is_a_move_of_the_canaries_beyond_the_threshold_either_way() -> None:
    assert not is_drift(1.0, 0.1) and not is_drift(1.1, 0.1) and not is_drift(1 / 1.1, 0.1)
    assert is_drift(1.11, 0.1) and is_drift(0.9, 0.1)  # slower, or faster than the stored values
    reference = {"a": 1.0, "b": 2.0, "c": 4.0}
    report = compare({"a": 1.05, "b": 3.0, "c": 6.0}, reference, backend="ort-cpu", threshold_rel=0.1,
                     reason="job", checked_at=NOW)
    assert [r.ratio for r in report.readings] == [pytest.approx(1.05), 1.5, 1.5]
    assert report.ratio == 1.5 and report.drifting  # the median over the canaries
    quiet = compare({"a": 1.3, "b": 2.0, "c": 4.1}, reference, backend="ort-cpu", threshold_rel=0.1,
                    reason="interval", checked_at=NOW)
    assert quiet.ratio == pytest.approx(1.025) and not quiet.drifting  # one canary off is not the device
    body = report.as_dict()
    assert body["checked_at"] == NOW.isoformat() and body["canaries"][1] == {
        "op": "b", "reference_ms": 2.0, "current_ms": 3.0, "ratio": 1.5}


@pytest.mark.parametrize(("current", "reference", "message"), [
    ({"a": 1.0}, {}, "no stored value for a"), ({}, {"a": 1.0}, "any canary"),
    ({"a": 0.0}, {"a": 1.0}, "must be > 0"), ({"a": 1.0}, {"a": 0.0}, "must be > 0"),
])
def test_compare_refuses_what_cannot_be_compared(current: dict, reference: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compare(current, reference, backend="b", threshold_rel=0.1, reason="start", checked_at=NOW)
    with pytest.raises(ValueError, match="reason"):
        compare({"a": 1.0}, {"a": 1.0}, backend="b", threshold_rel=0.1, reason="whenever", checked_at=NOW)


def test_a_check_measures_the_canaries_in_interleaved_rounds_and_aggregates_them() -> None:
    calls: list[str] = []
    values = {spec: iter([1.0, 5.0, 1.2]) for spec in CANARY_SPECS}  # the second round is disturbed

    def measure(spec: str) -> RoundMeasurement:
        calls.append(spec)
        return RoundMeasurement(raw=stats(next(values[spec])))

    current = measure_canaries(CANARY_SPECS, measure, PARAMS, check_id=4)
    assert current == {spec: pytest.approx(1.0) for spec in CANARY_SPECS}  # the protocol's aggregate: lowest
    assert [sorted(calls[i:i + 3]) for i in (0, 3, 6)] == [sorted(CANARY_SPECS)] * 3  # round after round


# --- the watch ---------------------------------------------------------------------------------------------------
def watch_on(store: Store, clock: FakeClock, **options: Any) -> CanaryWatch:
    values = {"interval_s": 600.0, "before_job_s": 60.0, "threshold_rel": 0.1, **options}
    return CanaryWatch(sessions=store.sessions, device_id=store.device_id, protocol_version="3+fast", threads=1,
                       clock=clock, **values)


class SpeedScript:
    """A scripted measurer of canaries (and ops): every op takes ``base_ms * speed``; records what it measured."""

    def __init__(self, base_ms: float = 0.4) -> None:
        self.base_ms, self.speed = base_ms, 1.0
        self.calls: list[str] = []

    def __call__(self, spec: Any, *_: Any, **__: Any) -> RoundMeasurement:
        self.calls.append(format_spec(spec) if isinstance(spec, OpSpec) else spec)
        return RoundMeasurement(raw=stats(self.base_ms * self.speed), timer_resolution_ms=1e-6)


def test_the_watch_knows_when_a_check_is_due(db_url: str) -> None:
    clock = FakeClock(1000.0)
    with open_store(db_url) as store:
        watch = watch_on(store, clock)
        assert watch.due(BACKEND, "start") and watch.due(BACKEND, "job") and watch.due(BACKEND, "interval")
        watch.check(BACKEND, "start", "ab" * 32, SpeedScript(), PARAMS)
        assert not watch.due(BACKEND, "start") and not watch.due(BACKEND, "job")
        clock.now += 60
        assert watch.due(BACKEND, "job") and not watch.due(BACKEND, "interval")
        clock.now += 540
        assert watch.due(BACKEND, "interval")
        with pytest.raises(ValueError, match="reason"):
            watch.due(BACKEND, "sometimes")


def test_the_first_check_stores_the_references_and_later_ones_are_compared_with_them(db_url: str) -> None:
    with open_store(db_url) as store:
        watch = watch_on(store, FakeClock(1000.0))
        assert watch.status([BACKEND]).status == "unchecked"
        assert drift_view(None, [BACKEND]) == {"status": "off", "threshold_rel": None, "backends": []}
        measurer = SpeedScript()
        first = watch.check(BACKEND, "start", "ab" * 32, measurer, PARAMS)
        assert first.ratio == 1.0 and not first.drifting and watch.status([BACKEND]).status == "ok"
        assert len(measurer.calls) == 2 * len(CANARY_SPECS) * PARAMS.rounds  # two measurements set the references
        measurer.speed = 1.5  # throttled
        slow = watch.check(BACKEND, "job", "ab" * 32, measurer, PARAMS)
        assert slow.ratio == pytest.approx(1.5) and slow.drifting
        assert len(measurer.calls) == 4 * len(CANARY_SPECS) * PARAMS.rounds  # a drift is measured twice
        view = drift_view(watch, [BACKEND])
        assert view["status"] == "drift" and view["backends"][0]["ratio"] == pytest.approx(1.5)
        with store.sessions() as session:  # the references were never overwritten
            assert sorted(session.scalars(select(CanaryReference.median_ms))) == [pytest.approx(0.4)] * 3
        fresh = watch.check(BACKEND, "interval", "cd" * 32, measurer, PARAMS)  # a new runtime: a new reference
        assert fresh.ratio == 1.0 and watch.status([BACKEND]).status == "ok"


class DisturbedScript(SpeedScript):
    """A :class:`SpeedScript` whose measurement number ``disturbed`` (0-based, a measurement = every canary in
    every round) runs ``factor`` times slower: a client started on the same core for a moment."""

    def __init__(self, disturbed: int, factor: float, per_measurement: int) -> None:
        super().__init__()
        self.disturbed, self.factor, self.per_measurement = disturbed, factor, per_measurement

    def __call__(self, spec: Any, *args: Any, **kwargs: Any) -> RoundMeasurement:
        measurement = len(self.calls) // self.per_measurement
        self.speed = self.factor if measurement == self.disturbed else 1.0
        return super().__call__(spec, *args, **kwargs)


def test_a_disturbed_first_measurement_stores_no_reference(db_url: str) -> None:
    per = len(CANARY_SPECS) * PARAMS.rounds
    with open_store(db_url) as store:
        watch = watch_on(store, FakeClock(1000.0))
        measurer = DisturbedScript(disturbed=0, factor=1.48, per_measurement=per)
        with pytest.raises(CanariesUnsettled, match=r"disagree \(0.676x\)"):
            watch.check(BACKEND, "start", "ab" * 32, measurer, PARAMS)
        with store.sessions() as session:
            assert session.scalars(select(CanaryReference)).all() == []
        assert watch.status([BACKEND]).status == "unchecked" and not watch.due(BACKEND, "start")
        report = watch.check(BACKEND, "job", "ab" * 32, measurer, PARAMS)  # the next due check settles them
        assert report.ratio == 1.0 and not report.drifting
        with store.sessions() as session:
            assert sorted(session.scalars(select(CanaryReference.median_ms))) == [pytest.approx(0.4)] * 3


def test_one_disturbed_check_is_taken_back_by_its_repeat(db_url: str) -> None:
    per = len(CANARY_SPECS) * PARAMS.rounds
    with open_store(db_url) as store:
        watch = watch_on(store, FakeClock(1000.0))
        measurer = DisturbedScript(disturbed=2, factor=0.75, per_measurement=per)  # after the two at start
        watch.check(BACKEND, "start", "ab" * 32, measurer, PARAMS)
        report = watch.check(BACKEND, "interval", "ab" * 32, measurer, PARAMS)
        assert report.ratio == 1.0 and not report.drifting and watch.status([BACKEND]).status == "ok"
        assert len(measurer.calls) == 4 * per  # the disturbed measurement and its repeat


def test_a_reference_set_under_load_is_replaced_by_agreeing_quiet_checks(db_url: str) -> None:
    with open_store(db_url) as store:
        watch = watch_on(store, FakeClock(1000.0))
        measurer = SpeedScript()
        measurer.speed = 2.0  # another job runs while the references are set: both measurements agree, slow
        watch.check(BACKEND, "start", "ab" * 32, measurer, PARAMS)
        measurer.speed = 1.0  # the machine is quiet again
        quiet = [watch.check(BACKEND, "interval", "ab" * 32, measurer, PARAMS) for _ in range(REESTABLISH_CHECKS)]
        assert [r.drifting for r in quiet] == [True] * (REESTABLISH_CHECKS - 1) + [False]
        assert all(r.reestablished is None for r in quiet[:-1]) and quiet[-2].ratio == pytest.approx(0.5)
        assert quiet[-1].ratio == pytest.approx(1.0) and "re-established" in quiet[-1].reestablished
        assert "loaded" in drift_view(watch, [BACKEND])["backends"][0]["reestablished"]
        assert watch.status([BACKEND]).status == "ok"
        with store.sessions() as session:
            assert sorted(session.scalars(select(CanaryReference.median_ms))) == [pytest.approx(0.4)] * 3
        later = watch.check(BACKEND, "interval", "ab" * 32, measurer, PARAMS)
        assert later.ratio == pytest.approx(1.0) and later.reestablished is None


def test_a_slowdown_or_disagreeing_fast_checks_keep_the_reference(db_url: str) -> None:
    with open_store(db_url) as store:
        watch = watch_on(store, FakeClock(1000.0))
        measurer = SpeedScript()
        watch.check(BACKEND, "start", "ab" * 32, measurer, PARAMS)
        measurer.speed = 1.5  # throttled, for many checks: drift, never a new reference
        slow = [watch.check(BACKEND, "interval", "ab" * 32, measurer, PARAMS) for _ in range(5)]
        assert all(r.drifting and r.reestablished is None for r in slow)
        for speed in (0.5, 0.7, 0.5, 0.7):  # faster, but the checks do not agree with each other
            measurer.speed = speed
            report = watch.check(BACKEND, "interval", "ab" * 32, measurer, PARAMS)
            assert report.drifting and report.reestablished is None
        with store.sessions() as session:
            assert sorted(session.scalars(select(CanaryReference.median_ms))) == [pytest.approx(0.4)] * 3


def test_a_rebaseline_on_request_replaces_the_references_at_the_next_check(db_url: str) -> None:
    with open_store(db_url) as store:
        watch = watch_on(store, FakeClock(1000.0))
        measurer = SpeedScript()
        watch.check(BACKEND, "start", "ab" * 32, measurer, PARAMS)
        measurer.speed = 1.05  # within the threshold: no drift, yet the user wants today's values
        assert not watch.due(BACKEND, "interval")
        watch.request_rebaseline([BACKEND])
        assert watch.due(BACKEND, "interval")
        report = watch.check(BACKEND, "interval", "ab" * 32, measurer, PARAMS)
        assert report.ratio == pytest.approx(1.0) and "on request" in report.reestablished
        assert not watch.due(BACKEND, "interval")
        with store.sessions() as session:
            assert sorted(session.scalars(select(CanaryReference.median_ms))) == [pytest.approx(0.42)] * 3


# --- the worker runs the checks --------------------------------------------------------------------------------
def test_the_worker_checks_at_start_and_before_a_job_and_reports_a_slowdown(db_url: str) -> None:
    clock = FakeClock(1000.0)
    with open_store(db_url) as store:
        watch = watch_on(store, clock, before_job_s=0.0)
        measurer = SpeedScript()
        worker = JobWorker(sessions=store.sessions, device_id=store.device_id,
                           backends={BACKEND: get_backend(BACKEND)}, protocol_params=PARAMS,
                           protocol_version=protocol_version_for("fast"), environment=environment_named("A"),
                           poll_s=0.02, measure_op=measurer, canaries=watch)
        worker.start()
        try:
            wait_for(lambda: watch.status([BACKEND]).status == "ok", "the check at start")
            assert measurer.calls == [spec for spec in measurer.calls if spec in CANARY_SPECS]
            measurer.speed = 2.0  # a neighbour arrived
            job_id = store.submit(SMALL_OPS[:1])
            wait_for(lambda: job_done(store, job_id), "the job finished")
            assert watch.status([BACKEND]).status == "drift"
            assert watch.status([BACKEND]).reports[0].reason == "job"
            checked = 2 * len(CANARY_SPECS) * PARAMS.rounds  # start: two to set the references; a drift: two
            assert measurer.calls[checked:2 * checked] == [c for c in measurer.calls[checked:2 * checked]
                                                           if c in CANARY_SPECS]  # before the job's op
            assert measurer.calls[2 * checked:] == SMALL_OPS[:1] * PARAMS.rounds
        finally:
            worker.stop()


def job_done(store: Store, job_id: int) -> bool:
    with store.sessions() as session:
        return session.get(Job, job_id).status == "done"


# --- the API shows it ----------------------------------------------------------------------------------------------
class SpeedRunner(Runner):
    """A runner whose runs take ``speed[0] * (0.01 ms + 1e-5 ms per parameter)``: scripted, no real timing."""

    def __init__(self, module: nn.Module, speed: list[float]) -> None:
        self.cost_ms = 0.01 + 1e-5 * sum(p.numel() for p in module.parameters())
        self.speed = speed

    @property
    def input(self) -> np.ndarray:
        return np.zeros(1, dtype=np.float32)

    def run(self) -> None:
        pass

    def time_runs(self, count: int, before_each: Callable[[], None] | None = None) -> list[float]:
        return [self.cost_ms * self.speed[0]] * count

    def output(self) -> np.ndarray:
        return self.input


@pytest.fixture
def speed(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The speed factor of the ort-cpu backend's scripted runs (a one-element list, changed by the test)."""
    factor = [1.0]
    backend = get_backend("ort-cpu")
    monkeypatch.setattr(backend, "prepare", lambda module, *_, **__: SpeedRunner(module, factor))
    return factor


def canary_settings(service_db: str, duet: bool) -> ProfilerSettings:
    return make_settings(service_db, backends="ort-cpu", canary_interval_s=3600.0, canary_before_job_s=0.0,
                         duet=duet)


@pytest.fixture
def canary_client(service_db: str, speed: list[float]) -> Iterator[TestClient]:
    """A plain service (no duet): its stored values follow the device's speed."""
    with TestClient(create_app(canary_settings(service_db, duet=False))) as client:
        yield client


@pytest.fixture
def duet_canary_client(service_db: str, speed: list[float]) -> Iterator[TestClient]:
    """A service with the default duet."""
    with TestClient(create_app(canary_settings(service_db, duet=True))) as client:
        yield client


def drift_of(client: TestClient) -> dict[str, Any]:
    return client.get("/v1/device").json()["drift"]


def test_the_device_reports_drift_everywhere_and_force_measures_again(canary_client: TestClient,
                                                                      speed: list[float], service_db: str) -> None:
    client = canary_client
    wait_for(lambda: drift_of(client)["status"] != "unchecked", "the canary check at start")
    start = drift_of(client)
    assert start["status"] == "ok" and start["threshold_rel"] == pytest.approx(0.1)
    assert start["backends"][0]["reason"] == "start" and start["backends"][0]["ratio"] == 1.0
    assert {c["op"] for c in start["backends"][0]["canaries"]} == set(CANARY_SPECS)
    body = {"backend": "ort-cpu", "ops": SMALL_OPS[:1], "wait_s": 60}
    assert client.post("/v1/measure", json=body).json()["status"] == "done"

    speed[0] = 1.6  # throttled: every run of the device takes 1.6 times as long
    assert client.post("/v1/measure", json={**body, "ops": SMALL_OPS[1:2]}).json()["status"] == "done"
    drift = drift_of(client)
    assert drift["status"] == "drift" and drift["backends"][0]["reason"] == "job"
    assert drift["backends"][0]["ratio"] == pytest.approx(1.6) and drift["backends"][0]["drifting"] is True
    ready = client.get("/v1/ready")
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "database": "ok", "worker": "ok",
                                                         "drift": "drift"}
    lookup = client.post("/v1/lookup", json={"backend": "ort-cpu", "ops": SMALL_OPS[:1]}).json()
    assert lookup["drift"]["status"] == "drift" and SMALL_OPS[0] in lookup["found"]
    table = client.get("/v1/table")
    assert table.headers["X-Profiler-Drift"] == "drift" and table.json()["drift"]["status"] == "drift"
    assert client.get("/v1/table", params={"format": "csv"}).headers["X-Profiler-Drift"] == "drift"

    before = stored_median(service_db, SMALL_OPS[0])
    again = client.post("/v1/measure", json={**body, "force": True}).json()  # measure again at today's speed
    assert again["status"] == "done" and again["done"] == 1
    assert stored_median(service_db, SMALL_OPS[0]) == pytest.approx(before * 1.6)

    speed[0] = 1.0  # the neighbour left
    client.post("/v1/measure", json={**body, "ops": SMALL_OPS[2:], "wait_s": 60})
    assert drift_of(client)["status"] == "ok"
    assert client.get("/v1/ready").json()["drift"] == "ok"


def test_a_duet_service_reports_the_drift_and_stores_values_the_drift_does_not_move(
        duet_canary_client: TestClient, speed: list[float], service_db: str) -> None:
    client = duet_canary_client
    wait_for(lambda: drift_of(client)["status"] != "unchecked", "the canary check at start")
    body = {"backend": "ort-cpu", "ops": SMALL_OPS[:1], "wait_s": 60}
    assert client.post("/v1/measure", json=body).json()["protocol_version"].endswith("+duet")
    before = stored_median(service_db, SMALL_OPS[0])
    speed[0] = 1.6  # throttled: the reference op slows down with the op
    again = client.post("/v1/measure", json={**body, "force": True}).json()
    assert again["status"] == "done" and again["done"] == 1
    assert drift_of(client)["status"] == "drift"  # the canaries are timed plain: the drift is still seen
    assert stored_median(service_db, SMALL_OPS[0]) == pytest.approx(before)  # plain: before * 1.6


def stored_median(db_url: str, op: str) -> float:
    engine = make_engine(db_url)
    try:
        with make_session_factory(engine)() as session:
            return session.scalars(select(Measurement.median_ms).where(Measurement.op_spec == op)).one()
    finally:
        engine.dispose()


def test_a_rebaseline_on_purpose_through_the_api_and_the_cli(canary_client: TestClient, speed: list[float],
                                                             service_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    client = canary_client
    wait_for(lambda: drift_of(client)["status"] != "unchecked", "the canary check at start")
    speed[0] = 0.5  # the references were set while the device was loaded
    refused = client.post("/v1/canaries/rebaseline", json={"backend": "no-such-backend"})
    assert refused.status_code == 422 and refused.json()["code"] == "unknown_backend"
    answer = client.post("/v1/canaries/rebaseline", json={"backend": "ort-cpu"})
    assert answer.status_code == 202 and answer.json() == {"status": "scheduled", "backends": ["ort-cpu"]}
    wait_for(lambda: (drift_of(client)["backends"][0]["reestablished"] or "").endswith("(rebaseline)"),
             "the re-baseline")
    assert drift_of(client)["status"] == "ok" and drift_of(client)["backends"][0]["ratio"] == pytest.approx(1.0)
    # without a server: the command works on the settings' database for this device
    speed[0] = 0.8
    monkeypatch.setenv("PROFILER_DEVICE_NAME", "test-device")
    monkeypatch.setenv("PROFILER_THREADS", "1")
    monkeypatch.setenv("PROFILER_PROTOCOL", "fast")
    monkeypatch.setenv("PROFILER_DUET", "false")  # the service's settings: the same environment
    monkeypatch.setenv("PROFILER_ISOLATION", "none")  # measured here, where the test's speed applies
    result = CliRunner().invoke(cli_app, ["rebaseline", "--backend", "ort-cpu", "--db", service_db])
    assert result.exit_code == 0, result.output
    assert "ort-cpu: canary references re-established" in result.output
    engine = make_engine(service_db)
    try:
        with make_session_factory(engine)() as session:
            medians = list(session.scalars(select(CanaryReference.median_ms).where(
                CanaryReference.op_spec == CANARY_SPECS[0])))
    finally:
        engine.dispose()
    reference_0 = next(c for c in drift_of(client)["backends"][0]["canaries"] if c["op"] == CANARY_SPECS[0])
    assert medians == [pytest.approx(reference_0["reference_ms"] * 0.8 / 0.5)]


def test_a_rebaseline_without_canaries_is_refused(client: TestClient) -> None:
    answer = client.post("/v1/canaries/rebaseline", headers=JSON)
    assert answer.status_code == 409 and answer.json()["code"] == "canaries_off"


def test_without_canaries_the_device_says_so(client: TestClient) -> None:
    assert client.get("/v1/device").json()["drift"] == {"status": "off", "threshold_rel": None, "backends": []}
    assert client.get("/v1/ready").json()["drift"] == "off"
    lookup = client.post("/v1/lookup", json={"backend": "ort-cpu", "ops": SMALL_OPS[:1]}).json()
    assert lookup["drift"]["status"] == "off"


def test_settings_bound_the_canary_knobs() -> None:
    for bad in ({"canary_interval_s": -1}, {"canary_drift_rel": 0}, {"canary_before_job_s": -5}):
        with pytest.raises(ValueError):
            make_settings("sqlite://", **bad)
