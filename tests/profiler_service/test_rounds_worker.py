"""Protocol 3 in the job worker: an ops job is measured in R interleaved rounds, each in its own seeded order; every
round is stored and the stored value is their robust aggregate; an item is done only with all its rounds; a job
resumed after a kill (or a stop) measures only the rounds it lacks, in the environment of now; architecture jobs
measure their network in rounds too; ``force`` measures again and links the new rounds. Scripted measurements
(fixed values, no timing), on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from latency_db.models import Job, JobItem, Measurement, MeasurementRound, utcnow
from latency_db.repository import claim_next_job, measurement_rounds
from latency_db.transactions import write_session
from nas_ops.space import SPACES
from nas_ops.spec import OpSpec, format_spec
from profiler_service.engine.protocol_presets import protocol_version_for
from profiler_service.engine.protocol import ProtocolParams
from profiler_service.engine.rounds import round_order
from profiler_service.engine.stats import RoundMeasurement
from profiler_service.jobs.store import NETWORK_POSITION, JobStore
from profiler_service.jobs.worker import JobWorker
from tests.profiler_service.jobs_fakes import (
    BACKEND,
    DEADLINE_S,
    Store,
    environment_named,
    get_backend,
    open_store,
    stats,
    wait_for,
)

OPS = [f"mbconv_r8x8_c8-8_k{k}_e{e}_s1_relu6" for k in (3, 5) for e in (3, 6)]
ROUNDS = 3
PARAMS = ProtocolParams.fast().model_copy(update={"rounds": ROUNDS, "affinity": False})
#: Round r of every op measures ROUND_MS[r]: the second round is disturbed (three times slower).
ROUND_MS = (1.0, 3.0, 1.1)


class RoundScript:
    """A scripted measurer: the k-th measurement of an op returns ``values[k]`` (as a round with a calibration
    correction of 0.5 ms on top, which the stored value subtracts; a network's has none: raw ``values[k]`` + 0.5);
    records (who, op) of every call ("network" for a network)."""

    def __init__(self, values: tuple[float, ...] = ROUND_MS, who: str = "worker",
                 before_return: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self.values, self.who, self.before_return = values, who, before_return
        self.calls: list[tuple[str, str]] = []
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, spec: Any, *_: Any, **kwargs: Any) -> RoundMeasurement:
        text = format_spec(spec) if isinstance(spec, OpSpec) else "network"
        with self._lock:
            self.calls.append((self.who, text))
            index = self.counts[text]
            self.counts[text] += 1
        if self.before_return is not None:
            self.before_return(text, kwargs)
        return RoundMeasurement(raw=stats(self.values[index % len(self.values)] + 0.5),
                                correction_ms=0.0 if text == "network" else 0.5, timer_resolution_ms=1e-6)

    def ops(self) -> list[str]:
        return [op for _, op in self.calls]


def rounds_worker(store: Store, measurer: Callable[..., Any], *, env: str = "A", **options: Any) -> JobWorker:
    return JobWorker(sessions=store.sessions, device_id=store.device_id, backends={BACKEND: get_backend(BACKEND)},
                     protocol_params=PARAMS, protocol_version=protocol_version_for("fast"),
                     environment=environment_named(env, (BACKEND,)), poll_s=0.02, measure_op=measurer,
                     measure_network=measurer, **options)


def status(store: Store, job_id: int) -> str:
    with store.sessions() as session:
        return session.get(Job, job_id).status


def run_until_finished(store: Store, worker: JobWorker, *job_ids: int) -> None:
    worker.start()
    try:
        wait_for(lambda: all(status(store, j) in ("done", "failed", "cancelled") for j in job_ids), "jobs finished")
    finally:
        worker.stop()


def stored_rounds(store: Store, op: str) -> list[tuple[int, float]]:
    """(round index, raw median) of the rounds the stored row of ``op`` aggregates."""
    with store.sessions() as session:
        row = session.scalars(select(Measurement).where(Measurement.op_spec == op)).one()
        return [(r.round_index, r.median_ms) for r in measurement_rounds(session, row.id)]


def expected_order(job_id: int, round_index: int) -> list[str]:
    """The ops of a job of OPS in the order of its round ``round_index``."""
    order = round_order(range(len(OPS)), seed=PARAMS.seed, job_id=job_id, round_index=round_index, rounds=ROUNDS)
    return [OPS[p] for p in order]


def test_a_job_measures_its_ops_in_interleaved_rounds_and_stores_their_median(db_url: str) -> None:
    with open_store(db_url) as store:
        job_id = store.submit(OPS)
        measurer = RoundScript()
        run_until_finished(store, rounds_worker(store, measurer), job_id)
        calls = measurer.ops()
        assert len(calls) == ROUNDS * len(OPS)
        for r in range(ROUNDS):  # round after round, each over every op in its own seeded order
            assert calls[r * len(OPS):(r + 1) * len(OPS)] == expected_order(job_id, r)
        assert len({tuple(expected_order(job_id, r)) for r in range(ROUNDS)}) > 1
        with store.sessions() as session:
            rows = {row.op_spec: row for row in session.scalars(select(Measurement))}
            items = session.scalars(select(JobItem).where(JobItem.job_id == job_id)).all()
        assert sorted(rows) == sorted(OPS) and all(item.status == "done" for item in items)
        for op, row in rows.items():
            # the disturbed round (3.0 ms) is left out: the lowest of 1.0, 3.0, 1.1
            assert (row.median_ms, row.rounds, row.flagged) == (pytest.approx(1.0), ROUNDS, None)
            assert row.protocol_params["rounds"] == ROUNDS and row.protocol_params["aggregate"] == "min"
            assert stored_rounds(store, op) == [(r, pytest.approx(ROUND_MS[r] + 0.5)) for r in range(ROUNDS)]


def kill_after(store: Store, job_id: int, done: dict[int, list[int]], env: str = "A") -> None:
    """The state a service killed mid-job leaves: the job running under its expired lease, the rounds
    ``done[round]`` (item positions) stored, no item done."""
    with write_session(store.sessions) as session:
        claim_next_job(session, device_id=store.device_id, owner="killed", lease_s=60,
                       now=utcnow() - timedelta(hours=1))
    killed = JobStore(store.sessions, store.device_id, "killed", 60)
    items = {item.position: item for item in killed.pending_items(job_id)}
    context = store.context(env, "fast")
    for round_index, positions in done.items():
        for position in positions:
            measurement = RoundMeasurement(raw=stats(ROUND_MS[round_index] + 0.5), correction_ms=0.5)
            assert killed.store_round(job_id, items[position].item_id, position, context, round_index, measurement)


def test_a_job_resumed_after_a_kill_measures_only_the_rounds_it_lacks(db_url: str) -> None:
    with open_store(db_url) as store:
        job_id = store.submit(OPS)
        first_of_round_1 = round_order(range(len(OPS)), seed=PARAMS.seed, job_id=job_id, round_index=1,
                                       rounds=ROUNDS)[0]
        kill_after(store, job_id, {0: list(range(len(OPS))), 1: [first_of_round_1]})
        measurer = RoundScript(values=(1.1,))  # this worker measures the rest of round 1, then round 2
        run_until_finished(store, rounds_worker(store, measurer), job_id)
        rest_of_round_1 = [op for op in expected_order(job_id, 1) if op != OPS[first_of_round_1]]
        assert measurer.ops() == [*rest_of_round_1, *expected_order(job_id, 2)]
        for position, op in enumerate(OPS):
            assert [index for index, _ in stored_rounds(store, op)] == [0, 1, 2]  # the killed worker's rounds too
        with store.sessions() as session:  # 1.0 (killed worker), 3.0 (killed worker) or 1.1, and 1.1: lowest 1.0
            assert all(row.median_ms == pytest.approx(1.0) for row in session.scalars(select(Measurement)))
            assert session.get(Job, job_id).status == "done"


def test_rounds_of_another_environment_do_not_count(db_url: str) -> None:
    with open_store(db_url) as store:
        job_id = store.submit(OPS[:2])
        kill_after(store, job_id, {0: [0, 1], 1: [0, 1]}, env="A")  # killed in environment A
        measurer = RoundScript()
        run_until_finished(store, rounds_worker(store, measurer, env="B"), job_id)  # restarted with a new runtime
        assert Counter(measurer.ops()) == Counter({OPS[0]: ROUNDS, OPS[1]: ROUNDS})
        with store.sessions() as session:
            unlinked = session.scalars(select(MeasurementRound).where(MeasurementRound.measurement_id.is_(None))).all()
        assert len(unlinked) == 4  # A's rounds stay with their job, never aggregated into B's numbers


def test_a_stopped_worker_leaves_items_pending_with_their_rounds_and_the_next_one_completes_them(db_url: str
                                                                                              ) -> None:
    entered, gate = threading.Event(), threading.Event()

    def hold_the_sixth(_: str, __: dict[str, Any]) -> None:
        if len(first.calls) == len(OPS) + 2:  # two measurements into round 1
            entered.set()
            assert gate.wait(DEADLINE_S)

    with open_store(db_url) as store:
        job_id = store.submit(OPS)
        first = RoundScript(who="first", before_return=hold_the_sixth)
        worker = rounds_worker(store, first, lease_s=3600)
        worker.start()
        assert entered.wait(DEADLINE_S)
        stopper = threading.Thread(target=worker.stop)
        stopper.start()
        gate.set()
        stopper.join(DEADLINE_S)
        with store.sessions() as session:
            assert set(session.scalars(select(JobItem.status).where(JobItem.job_id == job_id))) == {"pending"}
            assert session.scalar(select(func.count()).select_from(MeasurementRound)) == len(OPS) + 2
            assert session.scalar(select(func.count()).select_from(Measurement)) == 0  # no item done before all
            # its rounds are stored
        second = RoundScript(values=(1.0,), who="second")
        run_until_finished(store, rounds_worker(store, second), job_id)
        assert Counter(first.ops()) + Counter(second.ops()) == Counter({op: ROUNDS for op in OPS})  # each round once


def test_an_item_that_fails_in_a_later_round_fails_and_the_others_are_done(db_url: str) -> None:
    def fail_second_round(op: str, _: dict[str, Any]) -> None:
        if op == OPS[1] and measurer.counts[op] == 2:
            raise RuntimeError("the runtime crashed")

    with open_store(db_url) as store:
        job_id = store.submit(OPS)
        measurer = RoundScript(before_return=fail_second_round)
        run_until_finished(store, rounds_worker(store, measurer), job_id)
        assert measurer.counts[OPS[1]] == 2 and all(measurer.counts[op] == ROUNDS for op in OPS if op != OPS[1])
        with store.sessions() as session:
            items = {item.op_spec: item for item in session.scalars(select(JobItem).where(JobItem.job_id == job_id))}
            assert session.get(Job, job_id).status == "failed"
        assert items[OPS[1]].status == "failed" and "the runtime crashed" in items[OPS[1]].error
        assert {items[op].status for op in OPS if op != OPS[1]} == {"done"}


def test_force_measures_again_and_the_row_aggregates_the_new_rounds(db_url: str) -> None:
    with open_store(db_url) as store:
        first = store.submit(OPS[:1])
        run_until_finished(store, rounds_worker(store, RoundScript()), first)
        skipped = store.submit(OPS[:1])
        lazy = RoundScript()
        run_until_finished(store, rounds_worker(store, lazy), skipped)
        assert lazy.calls == []  # stored: nothing measured without force
        forced = store.submit(OPS[:1], force=True)
        again = RoundScript(values=(2.0, 2.2, 2.1))
        run_until_finished(store, rounds_worker(store, again), forced)
        assert again.ops() == OPS[:1] * ROUNDS
        with store.sessions() as session:
            row = session.scalars(select(Measurement)).one()  # the same row, overwritten
            linked = measurement_rounds(session, row.id)
        assert row.median_ms == pytest.approx(2.0)
        assert {r.job_id for r in linked} == {forced} and len(linked) == ROUNDS


TINY = SPACES["tiny-32"].architecture([0] * len(SPACES["tiny-32"].cells())).to_dict()


def test_an_architecture_job_measures_its_network_in_rounds_and_resumes_with_the_rounds_it_lacks(
        db_url: str) -> None:
    with open_store(db_url) as store:
        whole = store.submit([], kind="architecture", payload=TINY)
        measurer = RoundScript(values=(4.0, 9.0, 4.2))
        run_until_finished(store, rounds_worker(store, measurer), whole)
        with store.sessions() as session:
            job = session.get(Job, whole)
            rounds = session.scalars(select(MeasurementRound).where(MeasurementRound.job_id == whole)
                                     .order_by(MeasurementRound.round_index)).all()
        assert len(measurer.calls) == ROUNDS
        assert job.status == "done" and job.result["median_ms"] == pytest.approx(4.5)  # lowest of 4.5, 9.5, 4.7
        assert (job.result["rounds"], job.result["flagged"]) == (ROUNDS, None)
        assert [(r.position, r.round_index) for r in rounds] == [(NETWORK_POSITION, i) for i in range(ROUNDS)]

        resumed = store.submit([], kind="architecture", payload=TINY)
        with write_session(store.sessions) as session:
            claim_next_job(session, device_id=store.device_id, owner="killed", lease_s=60,
                           now=utcnow() - timedelta(hours=1))
        killed = JobStore(store.sessions, store.device_id, "killed", 60)
        for index, value in enumerate((5.0, 5.2)):
            assert killed.store_round(resumed, None, NETWORK_POSITION, store.context("A", "fast"), index,
                                      RoundMeasurement(raw=stats(value)))
        rest = RoundScript(values=(6.0,))
        run_until_finished(store, rounds_worker(store, rest), resumed)
        assert len(rest.calls) == 1  # only the round it lacked
        with store.sessions() as session:
            assert session.get(Job, resumed).result["median_ms"] == pytest.approx(5.0)  # lowest of 5.0, 5.2, 6.5


def test_a_duet_item_whose_first_rounds_agree_is_stored_without_its_last_round(db_url: str) -> None:
    """Under the median aggregate (a duet's) two agreeing rounds fix the median of three: the third is skipped for
    the settled op and measured for the unsettled ones."""
    params = PARAMS.model_copy(update={"aggregate": "median", "settle_rel": 0.01})
    steady, noisy = OPS[0], OPS[1:]
    with open_store(db_url) as store:
        job_id = store.submit(OPS)

        class Script(RoundScript):
            def __call__(self, spec: Any, *args: Any, **kwargs: Any) -> RoundMeasurement:
                self.values = (1.0, 1.01, 1.0) if format_spec(spec) == steady else (1.0, 1.2, 1.1)
                return super().__call__(spec, *args, **kwargs)

        measurer = Script()
        worker = rounds_worker(store, measurer)
        worker.protocol_params = params
        run_until_finished(store, worker, job_id)
        counts = Counter(measurer.ops())
        assert counts[steady] == 2 and all(counts[op] == ROUNDS for op in noisy)
        with store.sessions() as session:
            rows = {row.op_spec: row for row in session.scalars(select(Measurement))}
        assert (rows[steady].rounds, rows[steady].median_ms) == (2, pytest.approx(1.005))
        assert all(rows[op].rounds == ROUNDS and rows[op].median_ms == pytest.approx(1.1) for op in noisy)
        assert [r for r, _ in stored_rounds(store, steady)] == [0, 1]
