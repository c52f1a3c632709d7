"""Writer used by the concurrency tests, in threads and in spawned processes (a module of its own so that
spawn can import it without pytest)."""

from __future__ import annotations

import threading
from multiprocessing.synchronize import Barrier as ProcessBarrier

from latency_db.connection import make_engine, make_session_factory
from latency_db.context import MeasurementContext
from latency_db.repository import get_or_create_device, upsert_measurement
from latency_db.transactions import write_session

FINGERPRINT = {"cpu": "Concurrent CPU", "cores": 2}
CONTEXT = MeasurementContext(backend="torch-cpu", batch=1, dtype="float32", threads=1, env_hash="ef" * 32,
                             protocol_version="1")


def op_spec(i: int) -> str:
    """The i-th op spec written by every writer."""
    return f"mbconv_r32x32_c{100 + i}-{100 + i}_k5_e6_s1_relu6_skip"


def write_all(url: str, n_keys: int, writer: int, barrier: threading.Barrier | ProcessBarrier) -> None:
    """Create the shared device and upsert ``n_keys`` measurements, one transaction each, all writers at once.

    The median written by ``writer`` is ``writer + 1`` ms, so the final row shows which writer was last.
    """
    engine = make_engine(url)
    try:
        factory = make_session_factory(engine)
        barrier.wait(timeout=60)
        with write_session(factory) as session:
            device_id = get_or_create_device(session, "concurrent", FINGERPRINT).id
        for i in range(n_keys):
            median = float(writer + 1)
            with write_session(factory) as session:
                upsert_measurement(
                    session,
                    device_id=device_id,
                    context=CONTEXT,
                    op_spec=op_spec(i),
                    environment={"writer": writer},
                    protocol_params={},
                    stats={
                        "median_ms": median, "mean_ms": median, "std_ms": 0.0, "min_ms": median,
                        "p10_ms": median, "p90_ms": median, "iqr_ms": 0.0, "samples": 10,
                    },
                )
    finally:
        engine.dispose()
