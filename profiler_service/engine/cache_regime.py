"""Which cache regime a measurement runs in: how much memory is read, untimed, before every run (the cache flush).

The rule (the one definition; :func:`regime`): the flush stands for the rest of the network, which runs between two
calls of an op and reads about the network's working set (weights + peak activations,
:func:`nas_ops.counting.network_memory_bytes`). So:

- ``warm`` (no flush): the working set fits in the cache private to one core; the network runs from that cache,
  call after call, and so do its ops.
- ``flush<K>`` (a flush of K KiB, K the working set rounded up to a power of two): a network larger than the
  private cache but smaller than the cold flush evicts that cache between two calls of an op, and its data comes
  from the shared cache, not from memory; the flush does the same, no more.
- ``cold`` (the protocol's 16 MiB flush, ``ProtocolParams().cache_flush_kib``): a working set of at least 8 MiB
  (rounded up, 16 MiB or more), and a request that gives none or a service whose cache size is unknown.

What a request measures decides, not a preset: the client sends the working set of the network the ops belong to
(``working_set_bytes``); a request without one is measured cold (an op's own working set would not do: a 224x224
network's ops fit in the cache one by one, and the flush exists because in the network they do not).

Why the per-core cache (level 2) decides warm: a network that fits in it runs from it call after call, so a cold
table overestimates it; a network larger than it, even one that fits in the shared cache, meets its ops' data
evicted, so a warm table underestimates it. Why the flush follows the working set between the two: after the cold
flush, every op of a small network pays a call into a cold runtime that the network never pays, often more than
the op's own work, and calibration then leaves such ops at 0; a flush of the network's size leaves the op's data
where the network leaves it. The rule was chosen side by side in the fidelity benchmark; see docs/protocol.md.

The cache size (:func:`read_core_cache`): the largest data or unified cache of level 2 or below that Linux reports
under ``/sys/devices/system/cpu/cpu*/cache``, the smallest over the CPUs (a network that fits the smallest core's
cache fits every core's). Where that is not readable the size is unknown, and says so (:attr:`CacheInfo.source`,
shown in ``/v1/device``): every request is then measured cold. A service can be told the size instead
(``PROFILER_CACHE_KIB``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: A regime's name: ``warm``, ``cold`` or ``flush<K>`` (K KiB, a power of two below :data:`COLD_FLUSH_KIB`).
Regime = str
#: The flush of the cold regime, in KiB: the protocol's default (``ProtocolParams().cache_flush_kib``).
COLD_FLUSH_KIB = 16384
_PARTIAL = re.compile(r"^flush([1-9][0-9]*)$")
SYSFS_CPU = Path("/sys/devices/system/cpu")
#: The deepest cache level counted as private to a core.
PRIVATE_LEVEL = 2
_SIZE = re.compile(r"^\s*(\d+)\s*([KMG]?)\s*$")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


@dataclass(frozen=True)
class CacheInfo:
    """The per-core cache size the rule compares with (None: unknown) and where it comes from (or why unknown)."""

    size_bytes: int | None
    source: str

    def as_dict(self) -> dict[str, Any]:
        """``{"size_bytes": ..., "source": ...}`` (the ``cache`` entry of ``/v1/device``'s protocol)."""
        return {"size_bytes": self.size_bytes, "source": self.source}


def parse_cache_size(text: str) -> int:
    """Bytes of a sysfs cache ``size`` (``"2048K"``, ``"1M"``, ``"512"``); ValueError for anything else."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"cache size: expected e.g. '2048K', got {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2)]


def _cpu_private_cache(cpu: Path) -> tuple[int, int] | None:
    """(size in bytes, level) of the largest data/unified cache of level <= 2 of one CPU; None when it has none."""
    best: tuple[int, int] | None = None
    for index in sorted(cpu.glob("cache/index*")):
        level = int((index / "level").read_text())
        kind = (index / "type").read_text().strip()
        if level > PRIVATE_LEVEL or kind not in ("Data", "Unified"):
            continue
        size = parse_cache_size((index / "size").read_text())
        if best is None or size > best[0]:
            best = (size, level)
    return best


def read_core_cache(root: Path = SYSFS_CPU) -> CacheInfo:
    """The per-core cache of this machine from sysfs (module docstring); unknown, with the reason, when unreadable."""
    cpus = sorted(p for p in root.glob("cpu[0-9]*") if p.is_dir())
    try:
        found = {cpu.name: _cpu_private_cache(cpu) for cpu in cpus}
    except (OSError, ValueError) as exc:
        return CacheInfo(None, f"unknown: {root} unreadable ({type(exc).__name__}: {exc})")
    known = {name: entry for name, entry in found.items() if entry is not None}
    if not known:
        return CacheInfo(None, f"unknown: no data or unified cache of level <= {PRIVATE_LEVEL} under {root}")
    name, (size, level) = min(known.items(), key=lambda item: item[1][0])
    return CacheInfo(size, f"sysfs: L{level} of {name}, {size // 1024} KiB (smallest of {len(known)} CPU(s))")


def configured_cache(kib: int | None, root: Path = SYSFS_CPU) -> CacheInfo:
    """The cache a service uses: ``kib`` when it is set (a setting), else what sysfs says."""
    if kib is not None:
        return CacheInfo(kib * 1024, f"setting: {kib} KiB (PROFILER_CACHE_KIB)")
    return read_core_cache(root)


def regime(working_set_bytes: int | None, cache: CacheInfo) -> Regime:
    """The regime of a network of ``working_set_bytes`` (module docstring): ``warm`` when it fits in the per-core
    cache, ``flush<K>`` when its size rounded up to a power of two of KiB is below :data:`COLD_FLUSH_KIB`, else
    ``cold``; ``cold`` also when the request gives no working set or the cache size is unknown."""
    if working_set_bytes is None or cache.size_bytes is None:
        return "cold"
    if working_set_bytes <= cache.size_bytes:
        return "warm"
    kib = 1 << (-(-working_set_bytes // 1024) - 1).bit_length()  # KiB, rounded up to a power of two (exact)
    return f"flush{kib}" if kib < COLD_FLUSH_KIB else "cold"


def flush_kib(name: Regime) -> int:
    """The KiB a regime reads before every run: 0 warm, :data:`COLD_FLUSH_KIB` cold, K for ``flush<K>``;
    ValueError for any other name."""
    if name == "warm":
        return 0
    if name == "cold":
        return COLD_FLUSH_KIB
    match = _PARTIAL.match(name)
    kib = int(match.group(1)) if match else 0
    if not match or kib & (kib - 1) or kib >= COLD_FLUSH_KIB:
        raise ValueError(f"cache regime: expected warm, cold or flush<K> (K a power of two below "
                         f"{COLD_FLUSH_KIB}), got {name!r}")
    return kib


def regimes_of(cache: CacheInfo) -> list[Regime]:
    """Every regime :func:`regime` can pick with ``cache``: cold, warm and the partial flushes above its size."""
    names: list[Regime] = ["cold"]
    if cache.size_bytes is None:
        return names
    names.append("warm")
    kib = 1
    while kib < COLD_FLUSH_KIB:
        if kib * 1024 > cache.size_bytes:
            names.append(f"flush{kib}")
        kib *= 2
    return names
