"""Fixtures of the service tests: an app on a migrated database, served through the ASGI interface."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from latency_db.migrate import upgrade_to_head
from profiler_service.api.app import create_app
from profiler_service.settings import ProfilerSettings

# Small ops that measure in a few milliseconds with the fast protocol.
SMALL_OPS = [
    "mbconv_r8x8_c8-8_k3_e3_s1_relu6_skip",
    "mbconv_r8x8_c8-16_k5_e6_s2_relu6",
    "conv_r16x16_c3-8_k3_s2_relu6",
]


def make_settings(db_url: str, **overrides: object) -> ProfilerSettings:
    values = {"db_url": db_url, "backends": "ort-cpu,torch-cpu", "protocol": "fast", "threads": 1,
              "device_name": "test-device", "worker_poll_s": 0.05}
    values.update(overrides)
    return ProfilerSettings(**values)


@pytest.fixture
def service_db(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'service.db'}"
    upgrade_to_head(url)
    return url


@pytest.fixture
def client(service_db: str) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(service_db))) as test_client:
        yield test_client


@pytest.fixture
def token_client(service_db: str) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(service_db, token="s3cret"))) as test_client:
        yield test_client
