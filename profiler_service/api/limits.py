"""Validation of what a request asks the device to build, against the service's limits.

Every check here runs before anything is built or allocated: a request over a limit is a 422 naming the limit.
"""

from __future__ import annotations

from collections.abc import Sequence

from nas_ops.arch import Architecture
from nas_ops.counting import count_flops, op_memory_bytes
from nas_ops.spec import NonCanonicalSpec, OpSpec, parse_canonical_spec
from profiler_service.engine.backends import Backend
from profiler_service.api.errors import ApiError, bad_request
from profiler_service.isolation.footprint import COPIES, RUNTIME_BYTES, network_peak_bytes, op_peak_bytes
from profiler_service.settings import ProfilerSettings

MIB = 1 << 20
OVER_LIMIT = "over_limit"


def over_limit(detail: str) -> ApiError:
    """422 for a well-formed request that asks for more than this service allows."""
    return bad_request(detail, OVER_LIMIT)


def check_batch(settings: ProfilerSettings, batch: int) -> None:
    if batch > settings.max_batch:
        raise over_limit(f"batch: {batch} is above this service's limit of {settings.max_batch}")


def check_dtype(backend: Backend, dtype: str) -> None:
    """The dtype must be one the backend measures (float16: torch-cuda only)."""
    if dtype not in backend.dtypes:
        raise bad_request(f"dtype: {dtype} is not measured on {backend.name} (it measures {', '.join(backend.dtypes)})",
                          "unsupported_dtype")


def check_wait(settings: ProfilerSettings, wait_s: float) -> None:
    """A long-poll of at most ``max_wait_s``."""
    if wait_s > settings.max_wait_s:
        raise over_limit(f"wait_s: {wait_s:g} s is above this service's limit of {settings.max_wait_s:g} s")


def _mib(n_bytes: int) -> str:
    return f"{n_bytes / MIB:.0f} MiB" if n_bytes >= MIB else f"{n_bytes / MIB:.2f} MiB"


def check_spec_limits(settings: ProfilerSettings, spec: OpSpec, batch: int, dtype: str, where: str) -> None:
    """Channels, resolution, per-op multiply-adds and per-op memory (batch and dtype included) within the limits.

    The memory limit applies to every kind, zero and identity included: they cost no multiply-adds, but their
    tensors take memory like any other op's. It is checked against the bound of the measuring process's real peak
    (:func:`~profiler_service.isolation.footprint.op_peak_bytes`), the quantity the limit bounds while it measures.
    """
    chans = max(spec.in_chs, spec.out_chs if spec.kind != "head" else 0, spec.mid_chs)
    if chans > settings.max_channels:
        raise over_limit(f"{where}: {chans} channels is above this service's limit of {settings.max_channels}")
    if max(spec.height, spec.width) > settings.max_resolution:
        raise over_limit(
            f"{where}: resolution {spec.height}x{spec.width} is above this service's limit of {settings.max_resolution}"
        )
    mflops = count_flops(spec) * batch / 1e6
    if mflops > settings.max_op_mflops:
        raise over_limit(
            f"{where}: {mflops:.0f} M multiply-adds at batch {batch} is above this service's per-op limit of "
            f"{settings.max_op_mflops:.0f} M"
        )
    peak = op_peak_bytes(spec, batch, dtype)
    if peak > settings.max_op_memory_mib * MIB:
        raise over_limit(
            f"{where}: measuring it takes up to {_mib(peak)} (the runtime's {_mib(RUNTIME_BYTES)} + "
            f"{COPIES[spec.kind]} x {_mib(op_memory_bytes(spec, batch, dtype))} of activations and weights) at batch "
            f"{batch} {dtype}, above this service's per-op memory limit of {settings.max_op_memory_mib:g} MiB "
            "(max_op_memory_mib)"
        )


def parse_ops(settings: ProfilerSettings, ops: Sequence[str], batch: int, dtype: str) -> list[OpSpec]:
    """Parse and check every op of a request; the first bad one gives a 422 naming its index and field."""
    check_ops_request(settings, ops, batch)
    return [parse_op(settings, i, text, batch, dtype) for i, text in enumerate(ops)]


def check_ops_request(settings: ProfilerSettings, ops: Sequence[str], batch: int) -> None:
    """What :func:`parse_ops` checks before any op: the number of ops (413) and the batch."""
    if len(ops) > settings.max_ops_per_request:
        raise ApiError(413, "too_many_ops",
                       f"ops: {len(ops)} op specs in one request; the limit is {settings.max_ops_per_request}")
    check_batch(settings, batch)


def parse_canonical_op(text: str, where: str) -> OpSpec:
    """The op spec ``text`` names when it is valid and spelled canonically (only canonical strings are looked up or
    stored: one key per op); else a 422 prefixed with ``where``: ``not_canonical`` (the message gives the canonical
    spelling) or ``invalid_op`` (it names the bad field)."""
    try:
        return parse_canonical_spec(text)
    except NonCanonicalSpec as exc:
        raise bad_request(f"{where}: {exc}", "not_canonical") from None
    except ValueError as exc:
        raise bad_request(f"{where}: {exc}", "invalid_op") from None


def parse_op(settings: ProfilerSettings, index: int, text: str, batch: int, dtype: str) -> OpSpec:
    """Op ``index`` of a request parsed and checked: canonical spelling, then the per-op limits (422 naming it)."""
    spec = parse_canonical_op(text, f"ops[{index}]")
    check_spec_limits(settings, spec, batch, dtype, f"ops[{index}] ({text})")
    return spec


def check_architecture(settings: ProfilerSettings, arch: Architecture, batch: int, dtype: str) -> None:
    """Every op within the per-op limits and the whole network within the network limits."""
    check_batch(settings, batch)
    for i, spec in enumerate(arch.specs()):
        check_spec_limits(settings, spec, batch, dtype, f"architecture op {i} ({spec})")
    mflops = count_flops(arch) * batch / 1e6
    if mflops > settings.max_network_mflops:
        raise over_limit(
            f"architecture: {mflops:.0f} M multiply-adds at batch {batch} is above this service's limit of "
            f"{settings.max_network_mflops:.0f} M"
        )
    peak = network_peak_bytes(arch, batch, dtype)
    if peak > settings.max_network_memory_mib * MIB:
        raise over_limit(
            f"architecture: measuring it takes up to {_mib(peak)} at batch {batch} {dtype}, above this service's "
            f"network memory limit of {settings.max_network_memory_mib:g} MiB (max_network_memory_mib)"
        )
