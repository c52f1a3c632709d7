"""A claimed job is measured where the worker is NOW: a backend no longer served fails the job with a clear error
(and never starves later jobs); a job resumed in another environment stores its rows under the environment they
were measured in (issue 10, point 9)."""

from __future__ import annotations

from sqlalchemy import select

from latency_db.models import Job, JobItem, Measurement
from latency_db.repository import upsert_measurement
from latency_db.transactions import write_session
from profiler_service.engine.protocol_presets import protocol_params_for, protocol_version_for
from tests.profiler_service.jobs_fakes import (
    ScriptedMeasurer,
    Store,
    env_hash_of,
    make_worker,
    open_store,
    stats,
    wait_for,
)

OPS = ["mbconv_r8x8_c8-8_k3_e3_s1_relu6", "mbconv_r8x8_c8-8_k5_e3_s1_relu6"]
LATER = ["conv_r16x16_c3-8_k3_s2_relu6"]


def finished(store: Store, *job_ids: int) -> bool:
    with store.sessions() as session:
        return all(session.get(Job, job_id).status in ("done", "failed", "cancelled") for job_id in job_ids)


def test_a_job_whose_backend_is_no_longer_served_fails_and_later_jobs_still_run(db_url: str) -> None:
    with open_store(db_url) as store:
        gone = store.submit(OPS, backend="torch-cpu")  # submitted while the service still served torch-cpu
        later = store.submit(LATER)
        measurer = ScriptedMeasurer()
        worker = make_worker(store, measurer, backends=("ort-cpu",))  # restarted with --backends ort-cpu
        worker.start()
        try:
            wait_for(lambda: finished(store, gone, later), "both jobs finished")
        finally:
            worker.stop()
        message = "backend 'torch-cpu' is no longer served by this device (served: ort-cpu)"
        with store.sessions() as session:
            job = session.get(Job, gone)
            assert (job.status, job.error) == ("failed", message)
            items = session.scalars(select(JobItem).where(JobItem.job_id == gone)).all()
            assert [(item.status, item.error) for item in items] == [("failed", message)] * len(OPS)
            assert session.get(Job, later).status == "done"
        assert [spec for _, spec in measurer.calls] == LATER


def test_a_resumed_job_is_measured_and_stored_in_the_current_environment(db_url: str) -> None:
    """Job created under environment A (fast protocol); the service restarted with environment B (warm preset):
    every op is measured again, even one stored under A, and stored with B's hash and version."""
    with open_store(db_url) as store:
        job_id = store.submit(OPS, env="A", protocol="fast")
        with write_session(store.sessions) as session:  # OPS[0] was measured under A before the restart
            old = upsert_measurement(session, device_id=store.device_id, context=store.context("A", "fast"),
                                     op_spec=OPS[0], environment={"env": "A"}, protocol_params={},
                                     stats=stats(9.0).as_dict())
            old_id = old.id
        measurer = ScriptedMeasurer(median_ms=2.0)
        worker = make_worker(store, measurer, env="B", protocol="warm")
        worker.start()
        try:
            wait_for(lambda: finished(store, job_id), "the job finished")
        finally:
            worker.stop()
        rounds = protocol_params_for("warm").rounds  # every op measured in each round, nothing reused from A
        assert sorted(spec for _, spec in measurer.calls) == sorted(OPS * rounds)
        with store.sessions() as session:
            assert session.get(Job, job_id).status == "done"
            rows = session.scalars(select(Measurement).where(Measurement.id != old_id)).all()
            assert sorted(row.op_spec for row in rows) == sorted(OPS)
            for row in rows:
                assert (row.env_hash, row.protocol_version) == (env_hash_of("B"), protocol_version_for("warm"))
                assert row.environment == {"env": "B", "backend": "ort-cpu", "threads": 1}
                assert row.protocol_params == protocol_params_for("warm").model_dump()
                assert row.median_ms == 2.0
            kept = session.get(Measurement, old_id)
            assert (kept.env_hash, kept.median_ms) == (env_hash_of("A"), 9.0)
            items = session.scalars(select(JobItem).where(JobItem.job_id == job_id)).all()
            assert {item.measurement_id for item in items} == {row.id for row in rows}
