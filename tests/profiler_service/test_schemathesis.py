"""Schemathesis against the app (in-process ASGI) over every endpoint, with a token and every check.

The app runs on a temporary SQLite database with the real routes, limits and validation; its job worker measures
with a scripted measurer (fixed stats, no timing), so that a generated measure job finishes at once and the 200
of a long-poll is exercised too. The run is derandomized (one fixed seed) and bounded by ``max_examples``.

Allowed beyond the schema: a 422 with code ``over_limit`` for schema-valid input (a spec that matches the grammar
can still exceed this device's multiply-add or memory limits, which no pattern can express) or ``invalid_architecture``
(an architecture whose ops do not chain), and a 413 for more ops than ``max_ops_per_request`` (the status for an
oversized request).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import positive_data_acceptance

from sqlalchemy import func, select

from latency_db.migrate import upgrade_to_head
from latency_db.models import Job, Measurement
from profiler_service.api.app import create_app
from profiler_service.jobs.worker import JobWorker
from tests.profiler_service.conftest import make_settings
from tests.profiler_service.jobs_fakes import ScriptedMeasurer, stats

TOKEN = "fuzz-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Codes a schema-valid request may still get: limits of this device (not of the grammar), and an architecture whose
# ops do not chain (each op's input is the previous op's output: no schema can say it).
BEYOND_THE_SCHEMA = {"over_limit", "invalid_architecture"}


class WithoutLifespan:
    """The app for schemathesis's in-process transport: HTTP only, the lifespan is run once by the fixture."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            message = await receive()
            while message["type"] != "lifespan.shutdown":
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                message = await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        await self.app(scope, receive, send)


def scripted_network(*args: Any, **kwargs: Any) -> Any:
    return stats(5.0)


def fuzz_config() -> SchemathesisConfig:
    return SchemathesisConfig.from_dict({
        "seed": 10,
        "headers": AUTH,
        "checks": {"negative_data_rejection": {"expected-statuses": [
            "400", "401", "403", "404", "405", "406", "409", "413", "415", "422"]}},
    })


# The schema is loaded at collection (schemathesis's lazy fixture loader does not work with pytest 9); creating the
# app touches no database: the fixture below migrates it and runs the lifespan.
FUZZ_DIR = Path(tempfile.mkdtemp(prefix="profiler-fuzz-"))
FUZZ_DB = f"sqlite:///{FUZZ_DIR / 'fuzz.db'}"
# Short waits and short jobs keep the run within its time budget (the schema carries these limits as maxima). No
# duet: the worker measures scripted stats, and a duet would time its real reference (after the cold flush too)
# for every thread count the fuzzer sends.
APP = create_app(make_settings(FUZZ_DB, token=TOKEN, backends="ort-cpu", max_wait_s=1.0,
                               max_ops_per_request=16, duet=False))
schema = schemathesis.openapi.from_asgi("/openapi.json", WithoutLifespan(APP), config=fuzz_config())


@pytest.fixture(scope="module", autouse=True)
def running_app() -> Iterator[None]:
    """The app's lifespan (database, device row) with a worker that measures with scripted stats."""
    upgrade_to_head(FUZZ_DB)
    try:
        with TestClient(APP):
            state = APP.state.service
            state.worker.stop()
            state.worker = JobWorker(
                sessions=state.sessions, device_id=state.device_id, backends=state.backends,
                protocol_params=state.protocol_params, protocol_version=state.protocol_version,
                environment=state.environment, poll_s=0.02, measure_op=ScriptedMeasurer(),
                measure_network=scripted_network,
            )
            state.worker.start()
            yield
    finally:
        shutil.rmtree(FUZZ_DIR, ignore_errors=True)


def positive_data_within_device_limits(ctx: Any, response: Any, case: Any) -> bool | None:
    """positive_data_acceptance, except a 422 naming a device limit (see the module docstring)."""
    if response.status_code == 422 and response.json().get("code") in BEYOND_THE_SCHEMA:
        return None
    return positive_data_acceptance(ctx, response, case)


# Deterministic (derandomized) and bounded: about 35 s for every operation on the 2-core CI machine.
settings.register_profile(
    "api-fuzz", max_examples=25, derandomize=True, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
)


@schema.parametrize()
@settings(settings.get_profile("api-fuzz"))
def test_api_conforms_to_its_schema(case: Any) -> None:
    case.call_and_validate(headers=AUTH, excluded_checks=[positive_data_acceptance],
                           additional_checks=[positive_data_within_device_limits])


def test_the_fuzzer_reached_the_worker() -> None:
    """Runs after the fuzzing above: the grammar's pattern made it generate specs that became finished jobs."""
    with APP.state.service.sessions() as session:
        statuses = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        measured = session.scalar(select(func.count()).select_from(Measurement))
    print(f"jobs by status {statuses}, measurements {measured}")
    assert statuses.get("done", 0) >= 1 and measured >= 1, statuses
