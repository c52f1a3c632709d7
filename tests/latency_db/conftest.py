"""Fixtures of the latency_db tests: a stored device and the identity of a measurement."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from latency_db.context import MeasurementContext
from latency_db.repository import get_or_create_device
from tests.latency_db.db_test_data import ENV_HASH, FINGERPRINT, make_stats

CONTEXT_FIELDS = tuple(field.name for field in fields(MeasurementContext))


@pytest.fixture
def device_id(session_factory: sessionmaker[Session]) -> int:
    """Id of a committed device."""
    with session_factory.begin() as session:
        return get_or_create_device(session, "test-device", FINGERPRINT).id


@pytest.fixture
def context() -> MeasurementContext:
    """The measurement context shared by most tests."""
    return MeasurementContext(backend="torch-cpu", batch=1, dtype="float32", threads=1, env_hash=ENV_HASH,
                              protocol_version="1")


def split_overrides(context: MeasurementContext, overrides: dict[str, Any]) -> dict[str, Any]:
    """Apply the overrides that name a context field to ``context``; return the rest plus ``context``."""
    fields = {name: overrides.pop(name) for name in list(overrides) if name in CONTEXT_FIELDS}
    return {**overrides, "context": replace(context, **fields)}


@pytest.fixture
def upsert_args(device_id: int, context: MeasurementContext) -> Callable[..., dict[str, Any]]:
    """Build the keyword arguments of upsert_measurement: ``upsert_args(op_spec, median_ms, **overrides)``; an
    override named like a context field (backend, batch, ...) changes the context."""

    def build(op_spec: str, median_ms: float = 1.5, /, **overrides: Any) -> dict[str, Any]:
        args = {
            "device_id": device_id,
            "op_spec": op_spec,
            "environment": {"torch": "2.13.0", "threads": context.threads},
            "protocol_params": {"warmup": 10, "rel_precision": 0.02},
            "stats": make_stats(median_ms),
        }
        return split_overrides(context, {**args, **overrides})

    return build
