"""Reading the profiler's page in a WebDriver: open it, wait for what a person would wait for, read tables."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

#: How long a test waits for the page to show something (generous: the machine may be loaded).
WAIT_S = 30.0

T = TypeVar("T")

# The cells of each row of a table body: {key: {text, value, cls}} by the cells' data-key or data-field.
_READ_ROWS = """
const [selector] = arguments;
return [...document.querySelectorAll(selector)].map((tr) => {
  const cells = {};
  for (const td of tr.querySelectorAll("[data-key], [data-field]")) {
    const key = td.dataset.key || td.dataset.field;
    if (!(key in cells)) cells[key] = { text: td.textContent, value: td.dataset.value ?? null, cls: td.className };
  }
  return { attrs: { ...tr.dataset }, cls: tr.className, cells };
});
"""


def wait_for(driver: WebDriver, condition: Callable[[WebDriver], T], what: str, timeout: float = WAIT_S) -> T:
    """Poll ``condition`` until it returns something truthy (returned); fail naming ``what`` after ``timeout``."""
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition, f"the page never showed {what}")


def open_page(driver: WebDriver, base_url: str) -> None:
    """Load the page and wait until its script has loaded every section once."""
    driver.get(base_url + "/")
    wait_for(driver, lambda d: d.execute_script("return document.body.dataset.ready") == "yes",
             "its sections loaded")


def by_id(driver: WebDriver, element_id: str) -> WebElement:
    return driver.find_element(By.ID, element_id)


def text_of(driver: WebDriver, element_id: str) -> str:
    """The element's text as shown (empty when hidden)."""
    element = by_id(driver, element_id)
    return element.text if element.is_displayed() else ""


def read_rows(driver: WebDriver, selector: str) -> list[dict[str, Any]]:
    """Every row matching ``selector``: ``{"attrs": tr data-*, "cls": class, "cells": {key: {text, value, cls}}}``."""
    return driver.execute_script(_READ_ROWS, selector)


def definitions(driver: WebDriver, selector: str) -> dict[str, str]:
    """The ``<dd data-key>`` texts under ``selector``, by key (hidden ones included)."""
    return driver.execute_script(
        "return Object.fromEntries([...document.querySelectorAll(arguments[0] + ' dd[data-key]')]"
        ".map((dd) => [dd.dataset.key, dd.textContent]));", selector)


def save_window(driver: WebDriver, path: Path) -> Path:
    """A screenshot of the window, scrolled to the top of the page."""
    driver.execute_script("window.scrollTo(0, 0);")
    if not driver.save_screenshot(str(path)):
        raise AssertionError(f"the screenshot was not written to {path}")
    return path


def save_screenshot(driver: WebDriver, element_id: str, path: Path) -> Path:
    """A screenshot of one section of the page (scrolled into view)."""
    element = by_id(driver, element_id)
    driver.execute_script("arguments[0].scrollIntoView({block: 'start'});", element)
    if not element.screenshot(str(path)):
        raise AssertionError(f"the screenshot of #{element_id} was not written to {path}")
    return path
