"""Read-only queries across every device of one database (a fleet of profilers sharing PostgreSQL).

:func:`list_devices` and :func:`device_summaries` list the devices (the latter with what each holds);
:func:`op_on_devices` finds one op's stored measurements on every device. Nothing here writes; like every
repository function they take a Session. The devices' rows are other profilers' too: a row that cannot be read is
left out and counted (``ReadRows.unreadable``, :mod:`latency_db.repository.readable`), never an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from latency_db.models import OP_SPEC_MAX_LEN, Device, Measurement
from latency_db.repository._checks import check_positive_int, check_text
from latency_db.repository.readable import UNREADABLE_ERRORS, ReadRows, read_rows

#: The most rows one fleet query returns (callers pass a limit up to this).
MAX_FLEET_ROWS = 2000


@dataclass(frozen=True)
class DeviceSummary:
    """A device row and what it holds: stored measurements, distinct op specs, backends, newest measurement."""

    device: Device
    measurements: int
    ops: int
    backends: tuple[str, ...]
    last_measured_at: datetime | None


def _check_limit(limit: int) -> int:
    check_positive_int("limit", limit)
    if limit > MAX_FLEET_ROWS:
        raise ValueError(f"limit: expected an integer in 1..{MAX_FLEET_ROWS}, got {limit!r}")
    return limit


def list_devices(session: Session, *, limit: int = 200) -> ReadRows[Device]:
    """The devices, most recently seen first (then by name and id), at most ``limit`` (1..MAX_FLEET_ROWS)."""
    _check_limit(limit)
    stmt = select(Device).order_by(Device.last_seen.desc(), Device.name, Device.id).limit(limit)
    return read_rows(session, stmt, Device)


def device_summaries(session: Session, *, limit: int = 200) -> ReadRows[DeviceSummary]:
    """The devices of :func:`list_devices`, each with its counts (``unreadable``: the device rows left out).

    Three queries whatever the number of devices: the devices, the counts per device, its distinct backends.
    Raises ValueError for a limit outside 1..MAX_FLEET_ROWS.
    """
    devices = list_devices(session, limit=limit)
    ids = [device.id for device in devices]
    if not ids:
        return ReadRows(unreadable=devices.unreadable)
    counts = _measurement_counts(session, ids)
    backends: dict[int, list[str]] = {}
    for device_id, backend in session.execute(
        select(Measurement.device_id, Measurement.backend).where(Measurement.device_id.in_(ids))
        .group_by(Measurement.device_id, Measurement.backend).order_by(Measurement.backend)
    ):
        backends.setdefault(device_id, []).append(backend)
    summaries = []
    for device in devices:
        rows, ops, newest = counts.get(device.id, (0, 0, None))
        summaries.append(DeviceSummary(device=device, measurements=rows, ops=ops,
                                       backends=tuple(backends.get(device.id, ())),
                                       last_measured_at=newest))
    return ReadRows(summaries, devices.unreadable)


def _measurement_counts(session: Session, ids: list[int]) -> dict[int, tuple[int, int, datetime | None]]:
    """Per device: its measurements, distinct op specs and newest ``updated_at`` (None when a timestamp among its
    rows cannot be read)."""
    counted = (Measurement.device_id, func.count(), func.count(func.distinct(Measurement.op_spec)))
    grouped = select(*counted).where(Measurement.device_id.in_(ids)).group_by(Measurement.device_id)
    try:
        return {device_id: (rows, ops, newest) for device_id, rows, ops, newest in
                session.execute(grouped.add_columns(func.max(Measurement.updated_at)))}
    except UNREADABLE_ERRORS:
        return {device_id: (rows, ops, None) for device_id, rows, ops in session.execute(grouped)}


def op_on_devices(
    session: Session,
    op_spec: str,
    *,
    backend: str | None = None,
    batch: int | None = None,
    dtype: str | None = None,
    threads: int | None = None,
    limit: int = 500,
) -> ReadRows[tuple[Device, Measurement]]:
    """Every stored measurement of ``op_spec`` on every device, optionally filtered (None = any).

    Ordered by device name, device id, backend, batch, dtype, threads, then newest first; at most ``limit`` rows
    (``unreadable``: those left out, their own row or their device's unreadable). Raises ValueError naming a bad
    argument.
    """
    check_text("op_spec", op_spec, OP_SPEC_MAX_LEN)
    _check_limit(limit)
    stmt = select(Measurement).join(Device, Device.id == Measurement.device_id).where(Measurement.op_spec == op_spec)
    filters = {Measurement.backend: backend, Measurement.batch: batch, Measurement.dtype: dtype,
               Measurement.threads: threads}
    for column, value in filters.items():
        if value is not None:
            stmt = stmt.where(column == value)
    stmt = stmt.order_by(Device.name, Device.id, Measurement.backend, Measurement.batch, Measurement.dtype,
                         Measurement.threads, Measurement.updated_at.desc(), Measurement.id.desc()).limit(limit)
    measurements = read_rows(session, stmt, Measurement)
    device_ids = sorted({m.device_id for m in measurements})
    devices = {device.id: device for device in
               read_rows(session, select(Device).where(Device.id.in_(device_ids)).order_by(Device.id), Device)}
    found = [(devices[m.device_id], m) for m in measurements if m.device_id in devices]
    return ReadRows(found, measurements.unreadable + len(measurements) - len(found))
