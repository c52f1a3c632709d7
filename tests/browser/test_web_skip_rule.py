"""Where Chromium is missing the browser tests skip with the reason; with CI=true they fail instead."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_browser_tests(ci: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["BROWSER_CHROMIUM"] = "/nonexistent/chromium"
    env["COLUMNS"] = "400"  # pytest shortens summary lines to the terminal width
    if ci:
        env["CI"] = "true"
    # --noconftest: the rule lives in the module itself; the fixtures (and their imports) are not needed
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "--noconftest",
                           "tests/browser/test_web_browser.py"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def test_missing_chromium_skips_with_the_reason_locally() -> None:
    result = run_browser_tests(ci=False)
    # 5: "no tests collected", pytest's code for a module skipped as a whole (0 in a run with other tests)
    assert result.returncode in (0, 5), result.stdout + result.stderr
    assert "1 skipped" in result.stdout and "error" not in result.stdout and "/nonexistent/chromium missing" in result.stdout
    assert "make browser-deps" in result.stdout


def test_missing_chromium_fails_in_ci() -> None:
    result = run_browser_tests(ci=True)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "browser tests cannot run in CI" in result.stdout and "/nonexistent/chromium missing" in result.stdout
