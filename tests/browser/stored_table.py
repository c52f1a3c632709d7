"""What the browser tests store: a latency table under a live service's own device identity, two more devices of
a fleet on the same database, and a job long by construction.

Rows are written through the latency_db repository (the way the service's worker writes them), in the service's
measurement context as ``GET /v1/device`` reports it, so that ``POST /v1/lookup`` (and the page's heatmap) finds
them. Each row's statistics are distinct, so a number on the page points at exactly one row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from latency_db.connection import make_engine, make_session_factory
from latency_db.context import MeasurementContext
from latency_db.repository import get_or_create_device, upsert_measurement
from latency_db.transactions import write_session
from nas_ops.space import SPACES
from nas_ops.spec import format_spec

#: The heatmap's space: every candidate of micro-16 is stored except these two (they must show as missing).
HEATMAP_SPACE = "micro-16"
LEFT_MISSING = ("mbconv_r16x16_c8-16_k5_e3_s2_relu6", "mbconv_r16x16_c8-16_k7_e6_s2_relu6")
#: An op stored on this device and on the lab board (the fleet's side-by-side view).
SHARED_OP = "mbconv_r16x16_c8-8_k3_e6_s1_relu6_skip"
#: Stored under an environment this device no longer has (a runtime upgrade): in the table, not in lookups.
STALE_ENV_HASH = "0123456789abcdef" * 4
OTHER_DEVICES: dict[str, dict[str, Any]] = {
    "jetson-orin-lab": {"cpu_model": "ARMv8 Processor rev 1 (v8l)", "cpu_cores": 12, "gpu": "Orin",
                        "gpu_count": 1, "os": "Linux"},
    "ci-runner-7": {"cpu_model": "AMD EPYC 7763 64-Core Processor", "cpu_cores": 4, "gpu": None, "gpu_count": 0,
                    "os": "Linux"},
}
LAB_BACKENDS = ("ort-cpu", "torch-cuda")


@dataclass(frozen=True)
class DeviceContext:
    """Where a live service stores its rows (from ``GET /v1/device`` and ``GET /v1/fleet/devices``)."""

    device_id: int
    backend: str
    threads: int
    env_hash: str
    protocol_version: str

    def context(self, *, batch: int = 1, env_hash: str | None = None) -> MeasurementContext:
        return MeasurementContext(self.backend, batch, "float32", self.threads, env_hash or self.env_hash,
                                  self.protocol_version)


def stats(i: int, scale: float = 1.0) -> dict[str, float | int]:
    """Distinct statistics for row ``i``: median 0.0137 + 0.0511 i ms (times ``scale``), p10 < median < p90."""
    median = round((0.0137 + 0.0511 * i) * scale, 6)
    return {"median_ms": median, "mean_ms": round(median * 1.03, 6), "std_ms": round(median * 0.04, 6),
            "min_ms": round(median * 0.91, 6), "p10_ms": round(median * 0.94, 6), "p90_ms": round(median * 1.09, 6),
            "iqr_ms": round(median * 0.07, 6), "samples": 11 + 3 * i}


def table_specs() -> list[str]:
    """The ops stored on this device: micro-16's fixed ops and candidates (but LEFT_MISSING), tiny-32's fixed
    ops (other kinds and resolutions for the filters)."""
    micro = SPACES[HEATMAP_SPACE]
    specs = [format_spec(s) for s in micro.fixed_specs()]
    specs += [format_spec(c) for cell in micro.cells() for c in cell.candidates if c.kind != "zero"]
    specs += [format_spec(s) for s in SPACES["tiny-32"].fixed_specs()]
    return [s for s in dict.fromkeys(specs) if s not in LEFT_MISSING]


def store_table(db_url: str, device: DeviceContext) -> list[str]:
    """Store :func:`table_specs` in the service's context (plus one at batch 8 and one under a stale environment);
    returns the specs stored in the service's context."""
    specs = table_specs()
    engine = make_engine(db_url)
    try:
        with write_session(make_session_factory(engine)) as session:
            for i, spec in enumerate(specs):
                upsert_measurement(session, device_id=device.device_id, context=device.context(), op_spec=spec,
                                   environment={"note": "stored by the browser tests"}, protocol_params={},
                                   stats=stats(i))
            upsert_measurement(session, device_id=device.device_id, context=device.context(batch=8),
                               op_spec=SHARED_OP, environment={}, protocol_params={}, stats=stats(len(specs), 6.0))
            upsert_measurement(session, device_id=device.device_id, context=device.context(env_hash=STALE_ENV_HASH),
                               op_spec=SHARED_OP, environment={}, protocol_params={}, stats=stats(len(specs) + 1))
    finally:
        engine.dispose()
    return specs


def store_other_devices(db_url: str) -> None:
    """Two more devices on the database: a lab board holding SHARED_OP (two backends) and a runner with nothing."""
    engine = make_engine(db_url)
    try:
        with write_session(make_session_factory(engine)) as session:
            for name, fingerprint in OTHER_DEVICES.items():
                device = get_or_create_device(session, name, fingerprint)
                if name != "jetson-orin-lab":
                    continue
                for j, backend in enumerate(LAB_BACKENDS):
                    context = MeasurementContext(backend, 1, "float32", 4, "ee" * 32, "2")
                    upsert_measurement(session, device_id=device.id, context=context, op_spec=SHARED_OP,
                                       environment={}, protocol_params={}, stats=stats(7 + 5 * j, 0.5))
    finally:
        engine.dispose()


def long_job_ops(count: int = 2000) -> list[str]:
    """``count`` distinct 3x3 convolutions at 112x112 with 128-177 channels in and out.

    Each costs at least 112 * 112 * 128 * 128 * 9 = 1.85e9 multiply-adds, and the fast protocol runs it at least
    4 times (1 warm-up + 3 timed runs) on one thread: at an (unreachable) 200e9 multiply-adds per second that is
    37 ms per op, 74 s for 2000 ops. So the job cannot finish within the browser tests (about a minute): it is
    provably unfinished while they watch it, whatever the machine.
    """
    ops = [f"conv_r112x112_c{cin}-{cout}_k3_s1_relu6" for cin in range(128, 168) for cout in range(128, 178)]
    return ops[:count]
