"""Fixtures of the latency_db tests: a stored device and the identity of a measurement."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from latency_db.repository import get_or_create_device
from tests.latency_db.db_test_data import ENV_HASH, FINGERPRINT, make_stats


@pytest.fixture
def device_id(session_factory: sessionmaker[Session]) -> int:
    """Id of a committed device."""
    with session_factory.begin() as session:
        return get_or_create_device(session, "test-device", FINGERPRINT).id


@pytest.fixture
def context(device_id: int) -> dict[str, Any]:
    """The measurement context (identity without the op spec) shared by most tests."""
    return {
        "device_id": device_id,
        "backend": "torch-cpu",
        "batch": 1,
        "dtype": "float32",
        "threads": 1,
        "env_hash": ENV_HASH,
        "protocol_version": "1",
    }


@pytest.fixture
def upsert_args(context: dict[str, Any]) -> Callable[..., dict[str, Any]]:
    """Build the keyword arguments of upsert_measurement: ``upsert_args(op_spec, median_ms, **overrides)``."""

    def build(op_spec: str, median_ms: float = 1.5, /, **overrides: Any) -> dict[str, Any]:
        args = {
            **context,
            "op_spec": op_spec,
            "environment": {"torch": "2.13.0", "threads": context["threads"]},
            "protocol_params": {"warmup": 10, "rel_precision": 0.02},
            "stats": make_stats(median_ms),
        }
        args.update(overrides)
        return args

    return build
