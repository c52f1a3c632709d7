"""Validation of what a request asks the device to build, against the service's limits."""

from __future__ import annotations

from collections.abc import Sequence

from nas_ops.arch import Architecture
from nas_ops.counting import count_flops
from nas_ops.spec import OpSpec, parse_spec
from profiler_service.engine.backends import Backend
from profiler_service.api.errors import ApiError, bad_request
from profiler_service.settings import ProfilerSettings


def check_batch(settings: ProfilerSettings, batch: int) -> None:
    if batch > settings.max_batch:
        raise bad_request(f"batch: {batch} is above this service's limit of {settings.max_batch}")


def check_dtype(backend: Backend, dtype: str) -> None:
    """The dtype must be one the backend measures (float16: torch-cuda only)."""
    if dtype not in backend.dtypes:
        raise bad_request(f"dtype: {dtype} is not measured on {backend.name} (it measures {', '.join(backend.dtypes)})")


def check_spec_limits(settings: ProfilerSettings, spec: OpSpec, batch: int, where: str) -> None:
    """Channels, resolution and per-op multiply-adds (batch included) within the limits."""
    chans = max(spec.in_chs, spec.out_chs if spec.kind != "head" else 0, spec.mid_chs)
    if chans > settings.max_channels:
        raise bad_request(f"{where}: {chans} channels is above this service's limit of {settings.max_channels}")
    if max(spec.height, spec.width) > settings.max_resolution:
        raise bad_request(
            f"{where}: resolution {spec.height}x{spec.width} is above this service's limit of {settings.max_resolution}"
        )
    mflops = count_flops(spec) * batch / 1e6
    if mflops > settings.max_op_mflops:
        raise bad_request(
            f"{where}: {mflops:.0f} M multiply-adds at batch {batch} is above this service's per-op limit of "
            f"{settings.max_op_mflops:.0f} M"
        )


def parse_ops(settings: ProfilerSettings, ops: Sequence[str], batch: int) -> list[OpSpec]:
    """Parse and check every op of a request; the first bad one gives a 422 naming its index and field."""
    if len(ops) > settings.max_ops_per_request:
        raise ApiError(413, "too_many_ops",
                       f"ops: {len(ops)} op specs in one request; the limit is {settings.max_ops_per_request}")
    check_batch(settings, batch)
    specs = []
    for i, text in enumerate(ops):
        try:
            spec = parse_spec(text)
        except ValueError as exc:
            raise bad_request(f"ops[{i}]: {exc}") from None
        check_spec_limits(settings, spec, batch, f"ops[{i}] ({text})")
        specs.append(spec)
    return specs


def check_architecture(settings: ProfilerSettings, arch: Architecture, batch: int) -> None:
    """Every op within the per-op limits and the whole network within the network limit."""
    check_batch(settings, batch)
    for i, spec in enumerate(arch.specs()):
        check_spec_limits(settings, spec, batch, f"architecture op {i} ({spec})")
    mflops = count_flops(arch) * batch / 1e6
    if mflops > settings.max_network_mflops:
        raise bad_request(
            f"architecture: {mflops:.0f} M multiply-adds at batch {batch} is above this service's limit of "
            f"{settings.max_network_mflops:.0f} M"
        )
