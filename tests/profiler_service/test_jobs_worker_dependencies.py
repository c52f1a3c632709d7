"""The worker runs on what it needs (sessions, device, backends, protocol, environment resolver), not on the
service state; jobs and rows carry one MeasurementContext; the protocol presets live with the protocol."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from latency_db.context import MeasurementContext
from latency_db.models import Job, Measurement
from profiler_service.engine.protocol_presets import PROTOCOL_PRESETS, protocol_params_for, protocol_version_for
from profiler_service.engine.protocol import PROTOCOL_VERSION, ProtocolParams
from tests.profiler_service.jobs_fakes import ScriptedMeasurer, make_worker, open_store, wait_for

OPS = ["conv_r16x16_c3-8_k3_s2_relu6", "mbconv_r8x8_c8-8_k3_e3_s1_relu6_skip"]


def test_a_worker_without_a_service_measures_a_job_in_its_context(db_url: str) -> None:
    measured: list[tuple[str, str, float]] = []
    measurer = ScriptedMeasurer(median_ms=2.5)
    with open_store(db_url) as store:
        job_id = store.submit(OPS)
        worker = make_worker(store, measurer, on_measured=lambda backend, kind, s: measured.append((backend, kind, s)))
        worker.start()
        try:
            def finished() -> bool:
                with store.sessions() as session:
                    return session.get(Job, job_id).status == "done"

            wait_for(finished, "job done")
        finally:
            worker.stop()
        with store.sessions() as session:
            job = session.get(Job, job_id)
            rows = session.scalars(select(Measurement).order_by(Measurement.op_spec)).all()
            assert job.context == store.context()
            assert sorted(row.op_spec for row in rows) == sorted(OPS)
            for row in rows:
                assert MeasurementContext(row.backend, row.batch, row.dtype, row.threads, row.env_hash,
                                          row.protocol_version) == store.context()
                assert row.median_ms == 2.5
                assert row.protocol_params == ProtocolParams.fast().model_dump()
                assert row.environment == {"env": "A", "backend": "ort-cpu", "threads": 1}
    assert sorted(spec for _, spec in measurer.calls) == sorted(OPS)
    assert [(backend, kind) for backend, kind, _ in measured] == [("ort-cpu", "op")] * 2


def test_the_protocol_presets_live_with_the_protocol() -> None:
    assert PROTOCOL_PRESETS == ("auto", "cold", "default", "warm", "fast")
    assert protocol_version_for("default") == PROTOCOL_VERSION
    assert protocol_version_for("warm") == f"{PROTOCOL_VERSION}+warm"
    assert protocol_params_for("warm").cache_flush_kib == 0
    assert protocol_params_for("fast") == ProtocolParams.fast()
    assert protocol_params_for("default") == ProtocolParams()
    for bad in (protocol_params_for, protocol_version_for):
        with pytest.raises(ValueError, match="protocol must be one of auto, cold, default, warm, fast, got 'turbo'"):
            bad("turbo")
