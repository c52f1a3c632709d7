"""The device's whole latency table, as JSON or CSV. A row that cannot be read (a stored value that is not a finite
number, a timestamp that does not parse) is left out and counted: ``unreadable`` in JSON, the header
``X-Profiler-Unreadable`` in both."""

from __future__ import annotations

import csv
import io
import json
import re
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response

from latency_db.models import Measurement
from latency_db.repository import export_rows, fingerprint_hash, list_measurements
from latency_db.repository.readable import readable_views
from profiler_service.api.deps import SessionDep, StateDep
from profiler_service.api.lookup_cache import stats_of
from profiler_service.api.params import BatchFilter, ThreadsFilter
from profiler_service.api.schemas import DType
from profiler_service.jobs.canaries import drift_view

#: The header of a table answer (JSON and CSV) with the drift status of its backends (see /v1/device).
DRIFT_HEADER = "X-Profiler-Drift"
#: The header of a table answer (JSON and CSV) with how many rows were left out because they cannot be read.
UNREADABLE_HEADER = "X-Profiler-Unreadable"

#: First characters that make a spreadsheet read a cell as a formula (tab and CR: as LibreOffice and Excel do).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")

router = APIRouter(tags=["latency"])


def csv_cell(value: object) -> object:
    """``value`` as the CSV export writes it: a text that a spreadsheet would run as a formula (``=HYPERLINK(...)``,
    ``+1+cmd|...``, ``@SUM(...)``) gets a leading ``'``, so that it shows as text; a plain number (``-1.5``) stays a
    number. The rows come from a database that other devices write to as well."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and not PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


@router.get(
    "/table", summary="Every stored measurement of this device (JSON or CSV)",
    responses={200: {"content": {"application/json": {}, "text/csv": {}}}},
)
def table(
    state: StateDep,
    session: SessionDep,
    backend: Annotated[str | None, Query(min_length=1, max_length=64, description="only rows of this backend")] = None,
    batch: BatchFilter = None,
    dtype: Annotated[DType | None, Query(description="only rows of this dtype")] = None,
    threads: ThreadsFilter = None,
    format: Literal["json", "csv"] = "json",
) -> Response:
    if backend is not None:
        state.backend(backend)
    measurements = readable_views(list_measurements(session, state.device_id, backend=backend, batch=batch,
                                                    dtype=dtype, threads=threads), _served, "measurement")
    rows = export_rows(measurements)
    drift = drift_view(state.canaries, [backend] if backend is not None else state.backends)
    headers = {DRIFT_HEADER: drift["status"], UNREADABLE_HEADER: str(measurements.unreadable)}
    if format == "csv":
        buffer = io.StringIO()
        columns = list(rows[0]) if rows else ["op_spec"]
        writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: csv_cell(v) for k, v in row.items() if not isinstance(v, (dict, list))} for row in rows)
        return Response(buffer.getvalue(), media_type="text/csv",
                        headers={"Content-Disposition": 'attachment; filename="latency_table.csv"', **headers})
    body = {"device": state.settings.device_name, "fingerprint_hash": fingerprint_hash(state.fingerprint),
            "drift": drift, "measurements": rows, "unreadable": measurements.unreadable}
    return Response(json.dumps(body, default=str), media_type="application/json", headers=headers)


def _served(measurement: Measurement) -> Measurement:
    """The row, once its statistics are what the API serves (finite numbers; ValueError otherwise)."""
    stats_of(measurement)
    return measurement
