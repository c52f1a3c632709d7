"""Headless Chromium from Debian's packages (``chromium``, ``chromium-driver``), driven by Selenium.

The driver's path is given explicitly, so Selenium Manager never runs and nothing is downloaded at run time.
Where Chromium, its driver or selenium is missing the browser tests skip with the reason; with CI=true they fail
instead (``make test`` installs them in CI through ``make browser-deps``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = Path(os.environ.get("BROWSER_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("BROWSER_CHROMEDRIVER", "/usr/bin/chromedriver"))
#: Wide enough for the tables, tall enough that a section fits in one screenshot.
WINDOW = (1600, 1600)
CHROMIUM_ARGS = (
    "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions",
    "--disable-default-apps", "--mute-audio", "--lang=en-US", "--force-device-scale-factor=1",
)


def browser_unavailable() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.is_file()]
    if missing:
        return (f"headless Chromium is not installed ({', '.join(missing)} missing); install it with "
                "`make browser-deps` as root (apt-get install chromium chromium-driver)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the selenium package is not installed (pip install -e '.[test]')"
    return None


def skip_or_fail(reason: str) -> None:
    """Skip the calling test module with ``reason``; in CI (CI=true) fail instead: the browser tests must run."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"browser tests cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def start_chromium() -> WebDriver:
    """A headless Chromium window of :data:`WINDOW` pixels (the caller quits it)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (*CHROMIUM_ARGS, f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_window_size(*WINDOW)
    return driver
