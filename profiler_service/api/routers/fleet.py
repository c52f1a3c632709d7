"""The fleet: every device of the database this service uses, and one op's latency on each of them side by side.

Several profilers (one per device) can share one PostgreSQL database; these read-only endpoints look across all of
them. On a service with its own SQLite file the fleet is this one device. A database that does not answer is the
app's 503 with Retry-After (``profiler_service.api.db_errors``). A row another profiler wrote that cannot be read
(a fingerprint that is not a JSON object, stats that are not numbers) is left out and counted in ``unreadable``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from latency_db.models import OP_SPEC_MAX_LEN, Device, Measurement
from latency_db.repository.fleet import MAX_FLEET_ROWS, DeviceSummary, device_summaries, list_devices, op_on_devices
from latency_db.repository.readable import readable_views
from nas_ops.spec import format_spec
from profiler_service.api.deps import SessionDep, StateDep
from profiler_service.api.limits import parse_canonical_op
from profiler_service.api.routers.lookup import stats_of
from profiler_service.api.schemas import (
    SPEC_PATTERN,
    DeviceRef,
    DType,
    ErrorBody,
    FleetDevice,
    FleetDevices,
    FleetOp,
    FleetOpRow,
)

router = APIRouter(prefix="/fleet", tags=["fleet"])

#: The largest batch/threads a filter may name (the database's integer columns are 32-bit).
MAX_INT_FILTER = 2**31 - 1

ERRORS: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorBody, "description": "a parameter is malformed or out of range"},
    503: {"model": ErrorBody, "description": "the database is unreachable (see Retry-After)"},
}


@router.get("/devices", response_model=FleetDevices, responses=ERRORS,
            summary="Every device of the database: last seen, how many ops it holds, its backends")
def fleet_devices(
    session: SessionDep,
    state: StateDep,
    limit: Annotated[int, Query(ge=1, le=MAX_FLEET_ROWS, description="at most this many devices")] = 200,
) -> FleetDevices:
    def view(s: DeviceSummary) -> FleetDevice:
        return FleetDevice(
            id=s.device.id, name=s.device.name, this_device=s.device.id == state.device_id,
            fingerprint_hash=s.device.fingerprint_hash, fingerprint=s.device.fingerprint,
            first_seen=s.device.first_seen, last_seen=s.device.last_seen, measurements=s.measurements, ops=s.ops,
            backends=list(s.backends), last_measured_at=s.last_measured_at,
        )

    devices = readable_views(device_summaries(session, limit=limit), view, "device")
    return FleetDevices(devices=devices, unreadable=devices.unreadable)


@router.get("/op", response_model=FleetOp, responses=ERRORS,
            summary="One op's stored latency on every device of the database, side by side")
def fleet_op(
    session: SessionDep,
    state: StateDep,
    spec: Annotated[str, Query(min_length=1, max_length=OP_SPEC_MAX_LEN,
                               json_schema_extra={"pattern": SPEC_PATTERN},
                               description="the op spec, in canonical form",
                               examples=["mbconv_r56x56_c24-24_k3_e6_s1_relu6_skip"])],
    backend: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    batch: Annotated[int | None, Query(ge=1, le=MAX_INT_FILTER)] = None,
    dtype: DType | None = None,
    threads: Annotated[int | None, Query(ge=1, le=256)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_FLEET_ROWS, description="at most this many rows")] = 500,
) -> FleetOp:
    op_spec = format_spec(parse_canonical_op(spec, "spec"))
    found = op_on_devices(session, op_spec, backend=backend, batch=batch, dtype=dtype, threads=threads, limit=limit)
    devices = list_devices(session, limit=MAX_FLEET_ROWS)

    def ref(device_id: int, name: str) -> DeviceRef:
        return DeviceRef(id=device_id, name=name, this_device=device_id == state.device_id)

    def row(pair: tuple[Device, Measurement]) -> FleetOpRow:
        device, m = pair
        return FleetOpRow(device=ref(device.id, device.name), backend=m.backend, batch=m.batch, dtype=m.dtype,
                          threads=m.threads, protocol_version=m.protocol_version, env_hash=m.env_hash,
                          stats=stats_of(m), updated_at=m.updated_at)

    rows = readable_views(found, row, "measurement")
    holding = {device.id for device, _ in found}
    missing = sorted((ref(d.id, d.name) for d in devices if d.id not in holding), key=lambda r: (r.name, r.id))
    return FleetOp(op_spec=op_spec, rows=rows, missing_on=missing, unreadable=rows.unreadable + devices.unreadable)
