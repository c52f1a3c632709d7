"""The profiler's page in headless Chromium against live services on PostgreSQL.

Two real ``proxyless-profiler serve`` processes (started together): the *fleet* service, whose database holds a
stored table under its own device identity and two more devices, with a token; and a *bare* service on an empty
database of its own, for the empty table and then, its database dropped, the unreachable database. Every number
the page shows is compared with what the API answers; screenshots of each view go to docs/screenshots/.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.chromium import browser_unavailable, skip_or_fail

if (_reason := browser_unavailable()) is not None:
    skip_or_fail(_reason)

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

from tests.browser.conftest import PostgresDatabases  # noqa: E402
from tests.browser.page import (  # noqa: E402
    by_id,
    definitions,
    open_page,
    read_rows,
    save_screenshot,
    save_window,
    text_of,
    wait_for,
)
from tests.browser.stored_table import (  # noqa: E402
    HEATMAP_SPACE,
    LEFT_MISSING,
    OTHER_DEVICES,
    SHARED_OP,
    DeviceContext,
    long_job_ops,
    store_other_devices,
    store_table,
)
from tests.live import LiveProfiler  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.live, pytest.mark.postgres]

TOKEN = "web-test-token"
FLEET_DEVICE = "web-test-device"
BARE_DEVICE = "bare-device"
STAT_KEYS = ("median_ms", "p10_ms", "p90_ms", "iqr_ms")


@dataclass(frozen=True)
class Services:
    fleet: LiveProfiler
    bare: LiveProfiler
    fleet_context: DeviceContext


def get(service: LiveProfiler, path: str, **params: Any) -> Any:
    response = httpx.get(service.url + path, params=params, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def services(postgres_db: PostgresDatabases, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    logs = tmp_path_factory.mktemp("web-services")
    fleet = LiveProfiler(postgres_db.create(), logs / "fleet.log",
                         extra_args=("--token", TOKEN, "--device-name", FLEET_DEVICE))
    bare = LiveProfiler(postgres_db.create(), logs / "bare.log", extra_args=("--device-name", BARE_DEVICE))
    try:
        with ThreadPoolExecutor(2) as pool:  # each start imports torch and onnxruntime: start both at once
            for started in [pool.submit(service.start) for service in (fleet, bare)]:
                started.result()
        device = get(fleet, "/v1/device")
        this = next(d for d in get(fleet, "/v1/fleet/devices")["devices"] if d["this_device"])
        backend = device["backends"][0]
        # rows stored as lut stores a table of the heatmap's space: in the regime of its typical network
        regime_version = get(fleet, f"/v1/spaces/{HEATMAP_SPACE}")["protocol_version"]
        context = DeviceContext(this["id"], backend["name"], device["default_threads"], backend["env_hash"],
                                regime_version)
        store_table(fleet.db_url, context)
        store_other_devices(fleet.db_url)
        yield Services(fleet, bare, context)
    finally:
        fleet.stop()
        bare.stop()


def api_table(service: LiveProfiler) -> list[dict[str, Any]]:
    return get(service, "/v1/table", format="json")["measurements"]


def page_table(driver: WebDriver) -> dict[int, dict[str, Any]]:
    return {int(row["attrs"]["id"]): row["cells"] for row in read_rows(driver, "#table-rows tbody tr[data-id]")}


def assert_row_shows(cells: dict[str, Any], row: dict[str, Any]) -> None:
    """One table row of the page against the API's row: the same numbers, as shown and as held."""
    for key in STAT_KEYS:
        assert cells[key]["text"] == f"{row[key]:.4f}", (key, cells[key], row[key])
        assert float(cells[key]["value"]) == row[key], (key, cells[key], row[key])
    for key in ("op_spec", "backend", "dtype", "protocol_version"):
        assert cells[key]["text"] == row[key]
    for key in ("batch", "threads", "samples"):
        assert cells[key]["text"] == str(row[key])
    assert row["env_hash"].startswith(cells["env_hash"]["text"])


def visible_specs(driver: WebDriver) -> list[str]:
    return [cells["op_spec"]["text"] for cells in page_table(driver).values()]


def shows(text: str, value: Any) -> bool:
    """Whether a definition's text on the page is the API's JSON value (as JavaScript writes it)."""
    if value is None:
        return text == "\u2014"
    if isinstance(value, bool):
        return text == str(value).lower()
    if isinstance(value, (int, float)):
        return float(text) == value
    if isinstance(value, (dict, list)):
        return json.loads(text) == value
    return text == value


def test_device_view_shows_what_the_api_reports(browser: WebDriver, services: Services, screenshots: Path) -> None:
    device = get(services.fleet, "/v1/device")
    open_page(browser, services.fleet.url)
    assert by_id(browser, "device-title").text == FLEET_DEVICE == device["name"]
    cards = browser.find_elements(By.CSS_SELECTOR, "#device-body .card")
    assert [c.find_element(By.TAG_NAME, "h3").text for c in cards] == [
        "Identity", "Fingerprint", "Backends", "Limits", "Readiness and drift"]
    identity = definitions(browser, "#device-body .card:nth-child(1) > dl")
    assert identity == {"name": device["name"], "fingerprint hash": device["fingerprint_hash"],
                        "default threads": str(device["default_threads"]), "protocol": device["protocol"]["version"]}
    params = definitions(browser, "#device-body .card:nth-child(1) details")
    assert params.keys() == device["protocol"]["params"].keys()
    assert all(shows(params[k], v) for k, v in device["protocol"]["params"].items())
    fingerprint = definitions(browser, "#device-body .card:nth-child(2)")
    assert fingerprint.keys() == device["fingerprint"].keys()
    assert all(shows(fingerprint[k], v) for k, v in device["fingerprint"].items()), fingerprint
    limits = definitions(browser, "#device-body .card:nth-child(4)")
    assert limits.keys() == device["limits"].keys()
    assert all(shows(limits[k], v) for k, v in device["limits"].items()), limits
    for backend in device["backends"]:
        row = browser.find_element(By.CSS_SELECTOR, f'#device-backends tr[data-backend="{backend["name"]}"]')
        assert row.find_elements(By.TAG_NAME, "td")[1].text == backend["env_hash"]
    # A consistent snapshot: the startup canary check may finish (drift unchecked -> ok) while the page loads.
    for _ in range(5):
        ready = httpx.get(services.fleet.url + "/v1/ready", timeout=10).json()
        open_page(browser, services.fleet.url)
        readiness = definitions(browser, "#device-readiness")
        if httpx.get(services.fleet.url + "/v1/ready", timeout=10).json() == ready:
            break
    else:
        pytest.fail("the readiness kept changing while the page loaded it")
    assert readiness.keys() == ready.keys() and readiness["status"] == "ready"
    assert all(shows(readiness[k], v) for k, v in ready.items()), readiness
    save_screenshot(browser, "device", screenshots / "device.png")


def test_table_shows_every_stored_row_then_filters_and_sorts(browser: WebDriver, services: Services,
                                                             screenshots: Path) -> None:
    # A consistent snapshot: the API's table before and after the page loaded it are the same.
    for _ in range(5):
        before = api_table(services.fleet)
        open_page(browser, services.fleet.url)
        shown = page_table(browser)
        if api_table(services.fleet) == before:
            break
    else:
        pytest.fail("the table kept changing while the page loaded it")
    rows = {row["id"]: row for row in before}
    assert set(shown) == set(rows) and len(rows) >= 15
    for row_id, cells in shown.items():
        assert_row_shows(cells, rows[row_id])
    assert text_of(browser, "table-count") == f"{len(rows)} of {len(rows)} stored measurements shown"
    assert not by_id(browser, "table-message").is_displayed()

    # filters: kind, resolution, spec text (each against the same rule applied to the API's rows)
    Select(by_id(browser, "filter-kind")).select_by_visible_text("conv")
    assert sorted(visible_specs(browser)) == sorted(r["op_spec"] for r in before if r["op_spec"].startswith("conv_"))
    Select(by_id(browser, "filter-kind")).select_by_visible_text("mbconv")
    Select(by_id(browser, "filter-resolution")).select_by_visible_text("16x16")
    expected = [r["op_spec"] for r in before if r["op_spec"].startswith("mbconv_r16x16_")]
    assert sorted(visible_specs(browser)) == sorted(expected) and expected
    by_id(browser, "filter-spec").send_keys("k5_e6")
    expected = [s for s in expected if "k5_e6" in s]
    assert sorted(visible_specs(browser)) == sorted(expected) and expected
    assert text_of(browser, "table-count") == f"{len(expected)} of {len(rows)} stored measurements shown"
    by_id(browser, "filter-spec").send_keys("_nothing_like_it")
    assert visible_specs(browser) == []
    assert "No stored measurement matches these filters." in by_id(browser, "table-rows").text
    by_id(browser, "filter-spec").clear()
    Select(by_id(browser, "filter-kind")).select_by_visible_text("all")
    Select(by_id(browser, "filter-resolution")).select_by_visible_text("all")
    Select(by_id(browser, "filter-backend")).select_by_visible_text(services.fleet_context.backend)
    assert len(page_table(browser)) == sum(r["backend"] == services.fleet_context.backend for r in before)
    Select(by_id(browser, "filter-backend")).select_by_visible_text("all")

    # sorting by a column, both ways
    header = browser.find_element(By.CSS_SELECTOR, '#table-rows th[data-key="median_ms"]')
    header.click()
    medians = [float(c["median_ms"]["value"]) for c in read_rows_cells(browser)]
    assert medians == sorted(r["median_ms"] for r in before) and header.get_attribute("aria-sort") == "ascending"
    save_screenshot(browser, "table", screenshots / "table.png")
    header.click()
    medians = [float(c["median_ms"]["value"]) for c in read_rows_cells(browser)]
    assert medians == sorted((r["median_ms"] for r in before), reverse=True)
    assert header.get_attribute("aria-sort") == "descending"
    browser.find_element(By.CSS_SELECTOR, '#table-rows th[data-key="op_spec"]').click()
    assert [c["op_spec"]["text"] for c in read_rows_cells(browser)] == sorted(r["op_spec"] for r in before)

    # the download links are /v1/table's, with the chosen backend
    csv_url = by_id(browser, "download-csv").get_attribute("href")
    json_url = by_id(browser, "download-json").get_attribute("href")
    assert csv_url.startswith(services.fleet.url + "/v1/table?format=csv")
    assert json_url.startswith(services.fleet.url + "/v1/table?format=json")
    exported = list(csv.DictReader(io.StringIO(httpx.get(csv_url, timeout=10).text)))
    assert sorted(int(r["id"]) for r in exported) == sorted(rows)
    assert httpx.get(json_url, timeout=10).json()["measurements"] == before


def read_rows_cells(driver: WebDriver) -> list[dict[str, Any]]:
    """The table's rows in the order shown."""
    return [row["cells"] for row in read_rows(driver, "#table-rows tbody tr[data-id]")]


def test_heatmap_shows_stored_medians_and_marks_missing_entries(browser: WebDriver, services: Services,
                                                                screenshots: Path) -> None:
    """The heatmap asks for the rows of the space's own regime (its typical network's working set), as lut stores
    a table: a space measured by lut shows as stored, only the entries left out as missing."""
    space = get(services.fleet, f"/v1/spaces/{HEATMAP_SPACE}")
    candidates = [s for cell in space["cells"] for i, s in enumerate(cell["candidates"]) if i != cell["zero_index"]]
    context = services.fleet_context
    lookup = httpx.post(services.fleet.url + "/v1/lookup", timeout=10, json={
        "backend": context.backend, "batch": 1, "dtype": "float32", "threads": context.threads,
        "working_set_bytes": space["working_set_bytes"], "ops": list(dict.fromkeys(candidates))}).json()
    assert lookup["protocol_version"] == space["protocol_version"] == context.protocol_version
    open_page(browser, services.fleet.url)
    # the page picks the space whose candidates this device holds most of
    wait_for(browser, lambda d: Select(by_id(d, "heatmap-space")).first_selected_option.text == HEATMAP_SPACE
             and d.find_elements(By.CSS_SELECTOR, "#heatmap-grid td[data-spec]"), "the micro-16 heatmap")
    cells = browser.execute_script("""return [...document.querySelectorAll('#heatmap-grid tbody tr')].map(
        (tr) => [...tr.querySelectorAll('td:not(.spec)')].map((td) => ({spec: td.dataset.spec ?? null,
        value: td.dataset.value ?? null, text: td.textContent, cls: td.className})));""")
    assert len(cells) == len(space["cells"])
    shown_missing = set()
    for row, cell in zip(cells, space["cells"]):
        by_name = dict(zip(space["candidate_names"], row))
        for i, name in enumerate(cell["candidate_names"]):
            td = by_name[name]
            if i == cell["zero_index"]:
                assert (td["cls"], td["text"]) == ("zero", "0")
                continue
            spec = cell["candidates"][i]
            assert td["spec"] == spec
            if spec in lookup["found"]:
                median = lookup["found"][spec]["median_ms"]
                assert td["text"] == f"{median:.4f}" and float(td["value"]) == median
            else:
                assert (td["cls"], td["text"]) == ("missing", "missing")
                shown_missing.add(spec)
        assert all(by_name[n]["cls"] == "na" for n in space["candidate_names"] if n not in cell["candidate_names"])
    assert shown_missing == set(LEFT_MISSING) == set(lookup["missing"])
    entries = len(candidates)
    assert by_id(browser, "heatmap-stored").text == f"{entries - len(LEFT_MISSING)} of {entries}"
    assert by_id(browser, "heatmap-missing").text == str(len(LEFT_MISSING))
    save_screenshot(browser, "heatmap", screenshots / "heatmap.png")


def test_fleet_view_lists_every_device_and_one_op_side_by_side(browser: WebDriver, services: Services,
                                                               screenshots: Path) -> None:
    devices = get(services.fleet, "/v1/fleet/devices")["devices"]
    open_page(browser, services.fleet.url)
    rows = {int(r["attrs"]["deviceId"]): r for r in read_rows(browser, "#fleet-devices tbody tr")}
    assert set(rows) == {d["id"] for d in devices} and len(devices) == 1 + len(OTHER_DEVICES)
    for device in devices:
        cells = rows[device["id"]]["cells"]
        assert cells["name"]["text"] == device["name"]
        assert (cells["measurements"]["text"], cells["ops"]["text"]) == (str(device["measurements"]),
                                                                         str(device["ops"]))
        assert ("this-device" in rows[device["id"]]["cls"]) == device["this_device"]
    assert f"{len(devices)} devices share this database." in text_of(browser, "fleet-message")

    spec_box = by_id(browser, "fleet-op-spec")
    spec_box.send_keys(SHARED_OP.replace("_e6_", "_e6.0_"))
    by_id(browser, "fleet-op-show").click()
    wait_for(browser, lambda d: f"write it as '{SHARED_OP}'" in text_of(d, "fleet-op-message"),
             "that the spec is not canonical")
    spec_box.clear()
    spec_box.send_keys(SHARED_OP)
    by_id(browser, "fleet-op-show").click()
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#fleet-op-rows tbody tr"), "the op's rows")
    side_by_side = get(services.fleet, "/v1/fleet/op", spec=SHARED_OP)
    shown = [row["cells"] for row in read_rows(browser, "#fleet-op-rows tbody tr")]
    assert len(shown) == len(side_by_side["rows"]) >= 4
    assert len({row["device"]["name"] for row in side_by_side["rows"]}) == 2
    for cells, row in zip(shown, side_by_side["rows"]):
        assert cells["device"]["text"] == row["device"]["name"]
        for key in STAT_KEYS:
            assert cells[key]["text"] == f"{row['stats'][key]:.4f}"
            assert float(cells[key]["value"]) == row["stats"][key]
    assert [d["name"] for d in side_by_side["missing_on"]] == ["ci-runner-7"]
    assert text_of(browser, "fleet-op-missing") == "Not measured on: ci-runner-7."
    save_screenshot(browser, "fleet", screenshots / "fleet.png")


def job_row(driver: WebDriver, job_id: int) -> dict[str, Any] | None:
    rows = read_rows(driver, f'#jobs-rows tbody tr[data-job-id="{job_id}"]')
    return rows[0]["cells"] if rows else None


def test_running_job_shows_live_progress_and_cancels_only_with_the_token(browser: WebDriver, services: Services,
                                                                         screenshots: Path) -> None:
    ops = long_job_ops()
    submitted = httpx.post(services.fleet.url + "/v1/measure", timeout=60, headers={"Authorization": f"Bearer {TOKEN}"},
                           json={"backend": services.fleet_context.backend, "ops": ops})
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    open_page(browser, services.fleet.url)

    # live progress: the page polls; the count of measured items grows without a reload
    first = wait_for(browser, lambda d: (row := job_row(d, job_id)) and row["status"]["text"] == "running" and row,
                     "the job running")
    assert first["total"]["text"] == str(len(ops))
    seen = int(first["done"]["text"])
    later = wait_for(browser, lambda d: (row := job_row(d, job_id)) and int(row["done"]["text"]) > seen and row,
                     "the job's progress move")
    job = get(services.fleet, f"/v1/jobs/{job_id}")
    assert job["status"] == "running" and job["total"] == len(ops)
    assert seen < int(later["done"]["text"]) <= job["done"] < len(ops)
    save_screenshot(browser, "jobs", screenshots / "jobs-running.png")

    # cancel: the page asks for the token; without it (or with a wrong one) nothing changes
    browser.find_element(By.CSS_SELECTOR, f'#jobs-rows button.cancel[data-job-id="{job_id}"]').click()
    wait_for(browser, lambda d: by_id(d, "cancel-dialog").is_displayed(), "the cancel dialog")
    assert by_id(browser, "cancel-job-id").text == f"#{job_id}"
    by_id(browser, "cancel-confirm").click()
    wait_for(browser, lambda d: "needs its bearer token" in text_of(d, "cancel-message"), "that a token is needed")
    assert "read-only" in text_of(browser, "cancel-message")
    assert get(services.fleet, f"/v1/jobs/{job_id}")["status"] == "running"
    by_id(browser, "cancel-token").send_keys("not-the-token")
    by_id(browser, "cancel-confirm").click()
    wait_for(browser, lambda d: "refused the token" in text_of(d, "cancel-message"), "the refused token")
    assert "invalid bearer token" in text_of(browser, "cancel-message")
    assert get(services.fleet, f"/v1/jobs/{job_id}")["status"] == "running"
    save_screenshot(browser, "jobs", screenshots / "token-refused.png")

    by_id(browser, "cancel-token").clear()
    by_id(browser, "cancel-token").send_keys(TOKEN)
    by_id(browser, "cancel-confirm").click()
    wait_for(browser, lambda d: f"Job #{job_id} is cancelled" in text_of(d, "job-message"), "the cancelled job")
    assert not by_id(browser, "cancel-dialog").is_displayed()
    cancelled = get(services.fleet, f"/v1/jobs/{job_id}")
    assert cancelled["status"] == "cancelled" and cancelled["pending"] == 0
    wait_for(browser, lambda d: (row := job_row(d, job_id)) and row["status"]["text"] == "cancelled", "the row cancelled")
    assert not browser.find_elements(By.CSS_SELECTOR, f'#jobs-rows button.cancel[data-job-id="{job_id}"]')
    browser.find_element(By.CSS_SELECTOR, f'#jobs-rows a[data-open-job="{job_id}"]').click()
    detail = wait_for(browser, lambda d: read_rows(d, f'#job-detail .card[data-job-id="{job_id}"]'), "the job's detail")
    assert detail[0]["cells"]["status"]["text"] == "cancelled"
    assert detail[0]["cells"]["cancelled"]["text"] == str(cancelled["cancelled"])
    assert detail[0]["cells"]["done"]["text"] == str(cancelled["done"])
    save_screenshot(browser, "jobs", screenshots / "job-cancelled.png")


def test_unknown_job_gets_a_message(browser: WebDriver, services: Services, screenshots: Path) -> None:
    missing = httpx.get(services.fleet.url + "/v1/jobs/999999", timeout=10)
    assert missing.status_code == 404
    open_page(browser, services.fleet.url)
    by_id(browser, "job-open-id").send_keys("999999" + Keys.ENTER)
    wait_for(browser, lambda d: "Unknown job #999999" in text_of(d, "job-message"), "the unknown job")
    assert missing.json()["detail"] in text_of(browser, "job-message")
    assert not by_id(browser, "job-detail").is_displayed()
    save_screenshot(browser, "jobs", screenshots / "unknown-job.png")


def test_empty_table_then_an_unreachable_database(browser: WebDriver, services: Services, screenshots: Path,
                                                   postgres_db: PostgresDatabases) -> None:
    bare = services.bare
    assert api_table(bare) == []
    open_page(browser, bare.url)
    assert by_id(browser, "device-title").text == BARE_DEVICE
    message = by_id(browser, "table-message")
    assert "No measurements are stored on this device yet" in message.text and "empty" in message.get_attribute("class")
    assert text_of(browser, "table-count") == "0 of 0 stored measurements shown"
    assert "No jobs on this device yet" in by_id(browser, "jobs-rows").text
    assert "Only this device uses this database" in text_of(browser, "fleet-message")
    assert by_id(browser, "heatmap-stored").text.startswith("0 of ")
    assert not by_id(browser, "banner").is_displayed()
    save_window(browser, screenshots / "empty-table.png")

    postgres_db.drop(bare.db_url)
    assert httpx.get(bare.url + "/v1/table", timeout=10).status_code >= 500
    open_page(browser, bare.url)
    banner = wait_for(browser, lambda d: text_of(d, "banner"), "the banner")
    assert banner.startswith("The database is unreachable: the service runs, but it cannot read or write")
    for section in ("table-message", "heatmap-message", "jobs-message", "fleet-message"):
        assert text_of(browser, section) == "The database is unreachable, so this cannot be shown now.", section
    assert by_id(browser, "device-title").text == BARE_DEVICE  # what needs no database still shows
    assert "Traceback" not in browser.page_source
    save_window(browser, screenshots / "database-unreachable.png")


def test_the_api_docs_render_under_their_content_security_policy(browser: WebDriver, services: Services,
                                                                  screenshots: Path) -> None:
    """/docs (Swagger UI, served offline) runs its inline script and lists the API's operations while its CSP
    forbids every other inline script and every other origin."""
    answer = httpx.get(services.fleet.url + "/docs", timeout=10)
    assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
    browser.get(services.fleet.url + "/docs")
    operations = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"),
                          "Swagger UI's operations")
    paths = {element.text.replace("\u200b", "") for element in operations}
    assert {"/v1/health", "/v1/measure", "/v1/jobs/{job_id}/cancel"} <= paths
    errors = [entry for entry in browser.get_log("browser") if "Content Security Policy" in entry.get("message", "")]
    assert errors == []
    save_window(browser, screenshots / "api-docs.png")
