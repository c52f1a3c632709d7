"""Read-only queries across every device of one database (a fleet of profilers sharing PostgreSQL).

:func:`list_devices` and :func:`device_summaries` list the devices (the latter with what each holds);
:func:`op_on_devices` finds one op's stored measurements on every device. Nothing here writes; like every
repository function they take a Session.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from latency_db.models import OP_SPEC_MAX_LEN, Device, Measurement
from latency_db.repository._checks import check_positive_int, check_text

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


def list_devices(session: Session, *, limit: int = 200) -> list[Device]:
    """The devices, most recently seen first (then by name and id), at most ``limit`` (1..MAX_FLEET_ROWS)."""
    _check_limit(limit)
    stmt = select(Device).order_by(Device.last_seen.desc(), Device.name, Device.id).limit(limit)
    return list(session.scalars(stmt, execution_options={"populate_existing": True}))


def device_summaries(session: Session, *, limit: int = 200) -> list[DeviceSummary]:
    """The devices of :func:`list_devices`, each with its counts.

    Three queries whatever the number of devices: the devices, the counts per device, its distinct backends.
    Raises ValueError for a limit outside 1..MAX_FLEET_ROWS.
    """
    devices = list_devices(session, limit=limit)
    ids = [device.id for device in devices]
    if not ids:
        return []
    counts = {
        device_id: (rows, ops, newest)
        for device_id, rows, ops, newest in session.execute(
            select(Measurement.device_id, func.count(), func.count(func.distinct(Measurement.op_spec)),
                   func.max(Measurement.updated_at))
            .where(Measurement.device_id.in_(ids))
            .group_by(Measurement.device_id)
        )
    }
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
    return summaries


def op_on_devices(
    session: Session,
    op_spec: str,
    *,
    backend: str | None = None,
    batch: int | None = None,
    dtype: str | None = None,
    threads: int | None = None,
    limit: int = 500,
) -> list[tuple[Device, Measurement]]:
    """Every stored measurement of ``op_spec`` on every device, optionally filtered (None = any).

    Ordered by device name, device id, backend, batch, dtype, threads, then newest first; at most ``limit`` rows.
    Raises ValueError naming a bad argument.
    """
    check_text("op_spec", op_spec, OP_SPEC_MAX_LEN)
    _check_limit(limit)
    stmt = select(Device, Measurement).join(Device, Device.id == Measurement.device_id).where(
        Measurement.op_spec == op_spec)
    filters = {Measurement.backend: backend, Measurement.batch: batch, Measurement.dtype: dtype,
               Measurement.threads: threads}
    for column, value in filters.items():
        if value is not None:
            stmt = stmt.where(column == value)
    stmt = stmt.order_by(Device.name, Device.id, Measurement.backend, Measurement.batch, Measurement.dtype,
                         Measurement.threads, Measurement.updated_at.desc(), Measurement.id.desc()).limit(limit)
    return [(device, measurement) for device, measurement in
            session.execute(stmt, execution_options={"populate_existing": True})]

