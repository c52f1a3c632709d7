"""Shared database fixtures (reusable by every test folder).

- ``sqlite_url``: URL of an empty SQLite file in the test's tmp_path (not migrated).
- ``postgres_url``: URL of a fresh, randomly named, empty database on the test PostgreSQL server (created for the
  test, dropped after it; not migrated). The server is ``TEST_POSTGRES_URL`` or
  ``postgresql+psycopg://postgres@127.0.0.1:5432/test``. When it is unreachable the test is skipped, or fails when
  the environment variable CI is "true" (CI must run the PostgreSQL tests). Tests using it should carry
  ``@pytest.mark.postgres``.
- ``db_url``: parametrized over "sqlite" and "postgresql" (the latter marked ``postgres``), migrated to head.
- ``db_engine``: an Engine for ``db_url`` (disposed after the test); ``session_factory``: its sessionmaker;
  ``session``: one Session from it (closed after the test; commit what other sessions must see).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from latency_db.connection import make_engine, make_session_factory
from latency_db.connection import sqlite_url as make_sqlite_url
from latency_db.migrate import upgrade_to_head

POSTGRES_SERVER_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _admin_connect_args() -> dict[str, Any]:
    args = make_url(POSTGRES_SERVER_URL).translate_connect_args(username="user", database="dbname")
    return {**args, "connect_timeout": 5, "autocommit": True}


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The test server's URL, after checking that it answers (skip if not; fail when CI=true)."""
    try:
        with psycopg.connect(**_admin_connect_args()) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        message = f"PostgreSQL test server {POSTGRES_SERVER_URL} unreachable: {exc}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return POSTGRES_SERVER_URL


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """URL of a fresh empty database on the test server, dropped (connections closed by force) after the test."""
    name = f"latency_test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(**_admin_connect_args()) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(postgres_server).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(**_admin_connect_args()) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_url(tmp_path: Any) -> str:
    """URL of an empty SQLite file in the test's temporary directory."""
    return make_sqlite_url(tmp_path / "latency.db")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """A database URL migrated to head: a SQLite file, then a fresh PostgreSQL database."""
    fixture = {"sqlite": "sqlite_url", "postgresql": "postgres_url"}[request.param]
    url: str = request.getfixturevalue(fixture)
    upgrade_to_head(url)
    return url


@pytest.fixture
def db_engine(db_url: str) -> Iterator[Engine]:
    """An Engine for ``db_url``, disposed after the test."""
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def session_factory(db_engine: Engine) -> sessionmaker[Session]:
    """The session factory of ``db_engine``."""
    return make_session_factory(db_engine)


@pytest.fixture
def session(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    """One session (closed, uncommitted work rolled back, after the test)."""
    with session_factory() as session:
        yield session
