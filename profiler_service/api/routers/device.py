"""This device: fingerprint, served backends, protocol, limits and drift (its canary checks)."""

from __future__ import annotations

from fastapi import APIRouter

from latency_db.repository import fingerprint_hash
from profiler_service.api.deps import StateDep
from profiler_service.api.schemas import BackendInfo, DeviceInfo, Drift
from profiler_service.jobs.canaries import drift_view

router = APIRouter(tags=["device"])

LIMIT_FIELDS = ("max_ops_per_request", "max_channels", "max_resolution", "max_batch", "max_op_mflops",
                "max_network_mflops", "max_op_memory_mib", "max_network_memory_mib", "max_wait_s",
                "max_request_bytes", "max_pending_items", "max_architecture_blocks", "max_architecture_bytes")


@router.get("/device", response_model=DeviceInfo, summary="Fingerprint, backends, protocol, limits and drift")
def device(state: StateDep) -> DeviceInfo:
    threads = state.settings.threads
    backends = []
    for name, backend in sorted(state.backends.items()):
        _, env_hash = state.environment(name, threads)
        backends.append(BackendInfo(name=name, options=backend.options, env_hash=env_hash))
    return DeviceInfo(
        name=state.settings.device_name,
        fingerprint=state.fingerprint,
        fingerprint_hash=fingerprint_hash(state.fingerprint),
        protocol=state.protocol.describe(),
        default_threads=threads,
        backends=backends,
        limits={field: getattr(state.settings, field) for field in LIMIT_FIELDS},
        drift=Drift(**drift_view(state.canaries, state.backends)),
    )
