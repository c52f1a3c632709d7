"""Fixtures of the browser tests (see tests/browser/chromium.py for how Chromium is found and started).

- ``browser``: one headless Chromium WebDriver per module (skipped with the reason where Chromium cannot run;
  failing instead when CI=true).
- ``postgres_db``: :class:`PostgresDatabases` on the test server, every one dropped after the module (a fleet
  shares one; a dropped one is the unreachable-database state).
- ``screenshots``: the folder the tests save their screenshots in: a temporary folder, or ``$WEB_SCREENSHOTS_DIR``
  (``WEB_SCREENSHOTS_DIR=docs/screenshots`` refreshes the committed ones; a plain test run never rewrites them).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest
from sqlalchemy.engine import make_url

from latency_db.migrate import upgrade_to_head
from tests.browser.chromium import browser_unavailable, skip_or_fail, start_chromium
from tests.conftest import _admin_connect_args

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver



@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    reason = browser_unavailable()
    if reason is not None:
        skip_or_fail(reason)
    driver = start_chromium()
    try:
        yield driver
    finally:
        driver.quit()


class PostgresDatabases:
    """Fresh databases on the PostgreSQL test server: :meth:`create` one (migrated to head), :meth:`drop` one now
    (its connections closed by force: what a service sees when its database goes away)."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.names: list[str] = []

    def create(self) -> str:
        name = f"latency_web_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(**_admin_connect_args()) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.names.append(name)
        url = make_url(self.server_url).set(database=name).render_as_string(hide_password=False)
        upgrade_to_head(url)
        return url

    def drop(self, url: str) -> None:
        with psycopg.connect(**_admin_connect_args()) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')

    def drop_all(self) -> None:
        with psycopg.connect(**_admin_connect_args()) as conn:
            for name in self.names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def postgres_db(postgres_server: str) -> Iterator[PostgresDatabases]:
    databases = PostgresDatabases(postgres_server)
    try:
        yield databases
    finally:
        databases.drop_all()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chosen = os.environ.get("WEB_SCREENSHOTS_DIR")
    folder = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder
