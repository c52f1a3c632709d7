"""The protocol presets: named sets of protocol parameters, each part of the stored protocol version.

- ``auto`` (the service's default): the cache regime of each request follows from what it measures
  (:mod:`profiler_service.engine.cache_regime`): ``warm`` for a working set that fits in the per-core cache,
  ``cold`` otherwise and for a request that gives none.
- ``cold`` (``default`` is its earlier name): always the cold regime; ``warm``: always the warm regime.
- ``fast``: short runs for tests and smoke checks (warm caches, its own version).

A regime's parameters and stored version are the same whichever preset chose it: ``cold`` is ``ProtocolParams()``
stored as ``PROTOCOL_VERSION`` ("4"), ``warm`` is ``cache_flush_kib=0`` stored as "4+warm", ``flush<K>`` (``auto``
only) is ``cache_flush_kib=K`` stored as "4+flush<K>". So rows measured under ``--protocol warm`` are the rows
``auto`` serves to a small network, and a number of one regime is never served as another's.

A service with ``duet`` on measures every regime in a duet (protocol point 11,
:func:`~profiler_service.engine.duet.duet_params`) and stores it with ``+duet`` appended ("4+duet",
"4+warm+duet", "4+flush1024+duet"): duet numbers are never served as plain ones, nor plain ones as duet ones.
The canaries are never timed in a duet (:attr:`ServiceProtocol.canary_base`): they watch the machine's raw speed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from profiler_service.engine.cache_regime import COLD_FLUSH_KIB, CacheInfo, Regime, flush_kib, regime, regimes_of
from profiler_service.engine.duet import DEFAULT_REFERENCE, duet_params
from profiler_service.engine.protocol import PROTOCOL_VERSION, ProtocolParams

PROTOCOL_PRESETS = ("auto", "cold", "default", "warm", "fast")
#: Earlier names of presets (accepted, same meaning).
PRESET_ALIASES = {"default": "cold"}
#: The part of a stored version that says its numbers were measured in a duet.
DUET_SUFFIX = "duet"


def _canonical(preset: str) -> str:
    if preset not in PROTOCOL_PRESETS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOL_PRESETS)}, got {preset!r}")
    return PRESET_ALIASES.get(preset, preset)


def _fixed_params(preset: str) -> ProtocolParams:
    """The parameters of a fixed (non-auto) canonical preset."""
    if preset == "fast":
        return ProtocolParams.fast()
    if preset == "warm":
        return ProtocolParams(cache_flush_kib=0)
    return ProtocolParams()


def _fixed_version(preset: str) -> str:
    return PROTOCOL_VERSION if preset == "cold" else f"{PROTOCOL_VERSION}+{preset}"


def protocol_params_for(preset: str, working_set_bytes: int | None = None,
                        cache: CacheInfo | None = None) -> ProtocolParams:
    """The protocol parameters of a preset (``auto``: of the regime of ``working_set_bytes`` with ``cache``; cold
    without them). Raises ValueError naming the presets for any other name."""
    return ServiceProtocol(preset, cache or CacheInfo(None, "unknown: not given")).for_working_set(
        working_set_bytes).params


def protocol_version_for(preset: str, working_set_bytes: int | None = None,
                         cache: CacheInfo | None = None) -> str:
    """The stored protocol version of a preset (as :func:`protocol_params_for` resolves it): a regime or preset
    other than cold is part of a measurement's identity, so a service never reuses numbers measured under
    another one."""
    return ServiceProtocol(preset, cache or CacheInfo(None, "unknown: not given")).for_working_set(
        working_set_bytes).version


def regime_of_version(version: str) -> Regime:
    """The cache regime a stored version names: its ``+warm`` or ``+flush<K>`` part, ``cold`` for anything else."""
    for part in version.split("+")[1:]:
        try:
            flush_kib(part)
        except ValueError:
            continue
        return part
    return "cold"


def is_duet_version(version: str) -> bool:
    """Whether a stored version says its numbers were measured in a duet (its ``+duet`` part)."""
    return DUET_SUFFIX in version.split("+")[1:]


def with_duet(resolved: ResolvedProtocol, reference: str = DEFAULT_REFERENCE) -> ResolvedProtocol:
    """``resolved`` measured in a duet with ``reference``: its parameters through
    :func:`~profiler_service.engine.duet.duet_params`, ``+duet`` appended to its version."""
    return ResolvedProtocol(duet_params(resolved.params, reference), f"{resolved.version}+{DUET_SUFFIX}",
                            resolved.regime)


@dataclass(frozen=True)
class ResolvedProtocol:
    """The protocol one measurement runs under: its parameters, stored version and cache regime."""

    params: ProtocolParams
    version: str
    regime: Regime


class ServiceProtocol:
    """The protocol a service measures with: a preset, for ``auto`` the cache it compares working sets with, and
    whether it measures in a duet (module docstring)."""

    def __init__(self, preset: str, cache: CacheInfo, duet: bool = False) -> None:
        self.preset = _canonical(preset)
        self.cache = cache
        self.duet = duet

    def _plain(self, working_set_bytes: int | None) -> ResolvedProtocol:
        if self.preset != "auto":
            return self._fixed(self.preset)
        return self._of_regime(regime(working_set_bytes, self.cache))

    def _measured(self, plain: ResolvedProtocol) -> ResolvedProtocol:
        return self._duet_of(plain) if self.duet else plain

    @staticmethod
    @functools.cache
    def _duet_of(plain: ResolvedProtocol) -> ResolvedProtocol:
        return with_duet(plain)

    @staticmethod
    @functools.cache  # every lookup resolves its protocol: build each preset's (immutable) parameters once
    def _fixed(preset: str) -> ResolvedProtocol:
        params = _fixed_params(preset)
        return ResolvedProtocol(params, _fixed_version(preset), "warm" if params.cache_flush_kib == 0 else "cold")

    @staticmethod
    @functools.cache
    def _of_regime(name: Regime) -> ResolvedProtocol:
        """The protocol of a cache regime: its flush, stored as ``PROTOCOL_VERSION`` (cold) or with the regime's
        name as suffix (the cold and warm presets' exactly)."""
        version = PROTOCOL_VERSION if name == "cold" else f"{PROTOCOL_VERSION}+{name}"
        return ResolvedProtocol(ProtocolParams(cache_flush_kib=flush_kib(name)), version, name)

    def for_working_set(self, working_set_bytes: int | None) -> ResolvedProtocol:
        """The protocol of a request measuring (ops of) a network of ``working_set_bytes`` (None: not given)."""
        return self._measured(self._plain(working_set_bytes))

    def for_job(self, submitted_version: str) -> ResolvedProtocol:
        """The protocol a job submitted under ``submitted_version`` is measured under now: its regime (``auto``)
        or this service's fixed preset (as a job resumed under another preset always was), in a duet when this
        service measures in one (whatever the job was submitted under)."""
        if self.preset != "auto":
            return self._measured(self._fixed(self.preset))
        return self._measured(self._of_regime(regime_of_version(submitted_version)))

    @property
    def base(self) -> ResolvedProtocol:
        """The protocol of a request without a working set."""
        return self.for_working_set(None)

    @property
    def canary_base(self) -> ResolvedProtocol:
        """The protocol the canary checks derive theirs from: :attr:`base` without the duet."""
        return self._plain(None)

    def describe(self) -> dict[str, Any]:
        """The ``protocol`` entry of ``/v1/device``: the base version and parameters (a request without a working
        set), the preset, the cache the rule uses, and every regime's version."""
        base = self.base
        regimes = {name: self._measured(self._of_regime(name)).version for name in regimes_of(self.cache)} \
            if self.preset == "auto" else {base.regime: base.version}
        return {"version": base.version, "params": base.params.model_dump(), "preset": self.preset,
                "duet": base.params.duet_reference, "cache": self.cache.as_dict(), "regimes": regimes,
                "rule": "auto: warm when the request's working_set_bytes <= cache.size_bytes; else flush<K>, a "
                        f"cache flush of K KiB, the working set rounded up to a power of two, while K < "
                        f"{COLD_FLUSH_KIB}; else cold (16 MiB flush); cold without working_set_bytes or with an "
                        "unknown cache size"
                        if self.preset == "auto" else f"fixed preset {self.preset}: working_set_bytes is ignored"}
