"""The protocol presets: named sets of protocol parameters, each part of the stored protocol version."""

from __future__ import annotations

from profiler_service.engine.protocol import PROTOCOL_VERSION, ProtocolParams

PROTOCOL_PRESETS = ("default", "warm", "fast")


def protocol_params_for(preset: str) -> ProtocolParams:
    """The protocol parameters of a preset.

    ``default``: the full protocol, caches flushed before every run (networks whose working set exceeds the
    cache, like the ImageNet-size spaces); ``warm``: the same with warm caches (small networks that fit in the
    cache, like the 32x32 presets); ``fast``: short runs for tests and smoke checks.
    Raises ValueError naming the presets for any other name.
    """
    if preset == "fast":
        return ProtocolParams.fast()
    if preset == "warm":
        return ProtocolParams(cache_flush_kib=0)
    if preset == "default":
        return ProtocolParams()
    raise ValueError(f"protocol must be one of {', '.join(PROTOCOL_PRESETS)}, got {preset!r}")


def protocol_version_for(preset: str) -> str:
    """The stored protocol version: a preset other than the default is part of a measurement's identity, so a
    service never reuses numbers measured under another preset."""
    if preset not in PROTOCOL_PRESETS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOL_PRESETS)}, got {preset!r}")
    return PROTOCOL_VERSION if preset == "default" else f"{PROTOCOL_VERSION}+{preset}"
