"""Which cache regime a measurement runs in: ``cold`` (the protocol's cache flush before every run) or ``warm``.

The rule (the one definition; :func:`regime`): a network whose working set (weights + peak activations,
:func:`nas_ops.counting.network_memory_bytes`) fits in the cache private to one core runs from that cache, call after
call, and so do its ops: they are timed with warm caches. A larger network evicts each op's weights before the op
runs again: its ops are timed cold, after the flush. What a request measures decides, not a preset: the client sends
the working set of the network the ops belong to (``working_set_bytes``); a request without one is measured cold,
as every request was before the field existed (an op's own working set would not do: a 224x224 network's ops fit
in the cache one by one, and the flush exists because in the network they do not).

Why the per-core cache (level 2) and not the last level: on this project's 2-core x86 VM (2 MiB L2 per core, 480
MiB shared L3, ort-cpu, 1 thread) tables of the 16x16/32x32 spaces (micro-16, tiny-32: 0.1-0.9 MiB) predict random
and derived networks within +5% warm and +4% to +18% over cold, while the 224x224 spaces (proxyless-*: 15-50 MiB,
which fit in that L3) are about 0% off cold and -4% (ort-cpu) to -19% (torch-cpu) off warm (protocol point 5). The
shared level does not discriminate; the private one does.

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
from typing import Any, Literal

Regime = Literal["cold", "warm"]
REGIMES: tuple[Regime, ...] = ("cold", "warm")
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
    """``warm`` when the working set fits in the per-core cache; ``cold`` when it does not, when the request gives
    no working set, or when the cache size is unknown (the flush: what every measurement did before the rule)."""
    if working_set_bytes is None or cache.size_bytes is None:
        return "cold"
    return "warm" if working_set_bytes <= cache.size_bytes else "cold"
