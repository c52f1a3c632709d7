"""The cache-regime rule: the per-core cache read from a scripted sysfs tree, the rule, the presets built on it, and
which side of this project's 2 MiB L2 the preset spaces' working sets fall on (analytic: nothing is timed)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from nas_ops.counting import network_memory_bytes, space_working_set_bytes
from nas_ops.space import load_space
from profiler_service.engine.cache_regime import (
    COLD_FLUSH_KIB,
    CacheInfo,
    configured_cache,
    flush_kib,
    parse_cache_size,
    read_core_cache,
    regime,
    regimes_of,
)
from profiler_service.engine.protocol_presets import (
    PROTOCOL_PRESETS,
    ServiceProtocol,
    protocol_params_for,
    protocol_version_for,
    regime_of_version,
)
from profiler_service.engine.protocol import PROTOCOL_VERSION, ProtocolParams
from profiler_service.settings import ProfilerSettings

MIB = 1 << 20
L2 = CacheInfo(2 * MIB, "scripted: 2 MiB")
L2_512K = CacheInfo(512 * 1024, "scripted: 512 KiB")  # a CPU with 512 KiB L2 per core, 32 MiB L3
UNKNOWN = CacheInfo(None, "unknown: scripted")
# A CPU with L1d 48K, L1i 64K, L2 2048K per core, L3 480 MiB shared, as sysfs lists its caches.
CPU_CACHES = [(1, "Data", "48K"), (1, "Instruction", "64K"), (2, "Unified", "2048K"), (3, "Unified", "491520K")]


def write_cpu(root: Path, cpu: str, caches: list[tuple[int, str, str]]) -> None:
    for number, (level, kind, size) in enumerate(caches):
        index = root / cpu / "cache" / f"index{number}"
        index.mkdir(parents=True)
        (index / "level").write_text(f"{level}\n")
        (index / "type").write_text(f"{kind}\n")
        (index / "size").write_text(f"{size}\n")


@pytest.mark.parametrize(("text", "expected"), [("2048K", 2 * MIB), ("1M", MIB), ("512", 512), ("1G", 1 << 30),
                                                 (" 48K\n", 48 * 1024)])
def test_cache_sizes_parse(text: str, expected: int) -> None:
    assert parse_cache_size(text) == expected


@pytest.mark.parametrize("text", ["", "2048KB", "K", "-1K", "1.5M"])
def test_bad_cache_sizes_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="cache size"):
        parse_cache_size(text)


def test_the_per_core_cache_is_the_level_2_one(tmp_path: Path) -> None:
    write_cpu(tmp_path, "cpu0", CPU_CACHES)
    write_cpu(tmp_path, "cpu1", CPU_CACHES)
    (tmp_path / "cpufreq").mkdir()  # not a CPU
    cache = read_core_cache(tmp_path)
    assert cache.size_bytes == 2 * MIB
    assert cache.source.startswith("sysfs: L2 of cpu0, 2048 KiB") and "2 CPU(s)" in cache.source


def test_the_smallest_core_counts(tmp_path: Path) -> None:
    write_cpu(tmp_path, "cpu0", CPU_CACHES)
    write_cpu(tmp_path, "cpu1", [(1, "Data", "32K"), (2, "Unified", "1024K")])
    assert read_core_cache(tmp_path).size_bytes == MIB


def test_without_a_level_2_cache_the_level_1_data_cache_counts(tmp_path: Path) -> None:
    write_cpu(tmp_path, "cpu0", [(1, "Data", "32K"), (1, "Instruction", "1M"), (3, "Unified", "8M")])
    cache = read_core_cache(tmp_path)
    assert cache.size_bytes == 32 * 1024 and "L1" in cache.source


def test_an_unreadable_cache_is_unknown_and_says_why(tmp_path: Path) -> None:
    assert read_core_cache(tmp_path / "absent").size_bytes is None
    (tmp_path / "cpu0").mkdir()
    cache = read_core_cache(tmp_path)
    assert cache.size_bytes is None and cache.source.startswith("unknown: no data or unified cache")
    write_cpu(tmp_path, "cpu1", [(2, "Unified", "lots")])
    broken = read_core_cache(tmp_path)
    assert broken.size_bytes is None and "unreadable" in broken.source and "lots" in broken.source


def test_a_configured_size_wins_over_sysfs(tmp_path: Path) -> None:
    write_cpu(tmp_path, "cpu0", CPU_CACHES)
    assert configured_cache(512, tmp_path) == CacheInfo(512 * 1024, "setting: 512 KiB (PROFILER_CACHE_KIB)")
    assert configured_cache(None, tmp_path).size_bytes == 2 * MIB


def test_the_rule() -> None:
    assert regime(2 * MIB, L2) == "warm"
    assert regime(1, L2) == "warm"
    # larger than the private cache: a flush of the working set, rounded up to a power of two of KiB
    assert regime(2 * MIB + 1, L2) == "flush4096"
    assert regime(4 * MIB, L2) == "flush4096"
    assert regime(8 * MIB, L2) == "flush8192"
    assert regime(8 * MIB + 1, L2) == "cold"  # rounds up to the cold flush itself
    assert regime(50 * MIB, L2) == "cold"
    assert regime(513 * 1024, L2_512K) == "flush1024"
    assert regime(None, L2) == "cold"  # no working set: cold, as before the rule
    assert regime(1, UNKNOWN) == "cold"  # unknown cache: cold


def test_each_regime_names_its_flush() -> None:
    assert (flush_kib("warm"), flush_kib("cold"), flush_kib("flush1024")) == (0, COLD_FLUSH_KIB, 1024)
    assert COLD_FLUSH_KIB == ProtocolParams().cache_flush_kib  # the cold regime is the protocol's default
    for bad in ("hot", "flush1000", "flush0", "flush16384", "flush-1", "flush", "4+warm"):
        with pytest.raises(ValueError, match="expected warm, cold or flush<K>"):
            flush_kib(bad)
    assert regimes_of(L2_512K) == ["cold", "warm", "flush1024", "flush2048", "flush4096", "flush8192"]
    assert regimes_of(UNKNOWN) == ["cold"]
    # every regime the rule picks is listed, and each lists a flush the rule can pick
    sizes = [1 << k for k in range(10, 30)] + [(1 << k) + 1 for k in range(10, 30)]
    assert {regime(size, L2_512K) for size in sizes} == set(regimes_of(L2_512K))


def test_a_partial_flush_has_its_own_parameters_and_version() -> None:
    auto = ServiceProtocol("auto", L2_512K)
    partial = auto.for_working_set(734 * 1024)  # tiny-32's typical network
    assert (partial.regime, partial.version, partial.params) == (
        "flush1024", f"{PROTOCOL_VERSION}+flush1024", ProtocolParams(cache_flush_kib=1024))
    assert auto.for_job(f"{PROTOCOL_VERSION}+flush1024") == partial  # a resumed job keeps its flush
    assert regime_of_version(f"{PROTOCOL_VERSION}+flush1024") == "flush1024"
    assert regime_of_version(f"{PROTOCOL_VERSION}+flush1000") == "cold"  # not a regime's version
    # a fixed preset ignores it, as it ignores warm
    assert ServiceProtocol("cold", L2_512K).for_working_set(734 * 1024).version == PROTOCOL_VERSION


def test_auto_picks_the_regime_and_its_stored_version() -> None:
    auto = ServiceProtocol("auto", L2)
    warm, cold = auto.for_working_set(MIB), auto.for_working_set(16 * MIB)
    assert (warm.regime, warm.version, warm.params) == ("warm", f"{PROTOCOL_VERSION}+warm",
                                                        ProtocolParams(cache_flush_kib=0))
    assert (cold.regime, cold.version, cold.params) == ("cold", PROTOCOL_VERSION, ProtocolParams())
    assert auto.for_working_set(None) == cold == auto.base
    # the regimes are the forced presets' exactly: rows of --protocol warm are the rows auto serves warm
    assert warm == ServiceProtocol("warm", UNKNOWN).base
    assert cold == ServiceProtocol("cold", UNKNOWN).base == ServiceProtocol("default", UNKNOWN).base


def test_fixed_presets_ignore_the_working_set() -> None:
    for preset in ("cold", "default", "warm", "fast"):
        protocol = ServiceProtocol(preset, L2)
        assert protocol.for_working_set(1) == protocol.for_working_set(1 << 40) == protocol.base
    assert ServiceProtocol("fast", L2).base.version == f"{PROTOCOL_VERSION}+fast"


def test_a_job_keeps_the_regime_it_was_submitted_in() -> None:
    auto = ServiceProtocol("auto", UNKNOWN)  # even where the cache is unknown now: the version says the regime
    assert auto.for_job(f"{PROTOCOL_VERSION}+warm").regime == "warm"
    assert auto.for_job("2+warm").version == f"{PROTOCOL_VERSION}+warm"  # measured under the protocol of now
    assert auto.for_job(PROTOCOL_VERSION).regime == "cold"
    assert ServiceProtocol("cold", L2).for_job(f"{PROTOCOL_VERSION}+warm").regime == "cold"  # a forced preset wins
    assert regime_of_version(f"{PROTOCOL_VERSION}+fast") == "cold"


def test_describe_reports_the_cache_and_the_regimes() -> None:
    described = ServiceProtocol("auto", UNKNOWN).describe()
    assert described["cache"] == {"size_bytes": None, "source": "unknown: scripted"}
    assert described["regimes"] == {"cold": PROTOCOL_VERSION}  # an unknown cache: everything cold
    assert described["version"] == PROTOCOL_VERSION and described["preset"] == "auto"
    regimes = ServiceProtocol("auto", L2).describe()["regimes"]
    assert regimes == {"cold": PROTOCOL_VERSION, "warm": f"{PROTOCOL_VERSION}+warm",
                       "flush4096": f"{PROTOCOL_VERSION}+flush4096", "flush8192": f"{PROTOCOL_VERSION}+flush8192"}
    assert ServiceProtocol("warm", L2).describe()["regimes"] == {"warm": f"{PROTOCOL_VERSION}+warm"}


def test_unknown_presets_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="auto, cold, default, warm, fast"):
        ServiceProtocol("hot", L2)
    with pytest.raises(ValueError, match="protocol must be one of"):
        ProfilerSettings(protocol="hot")
    assert ProfilerSettings().protocol == "auto" and "auto" in PROTOCOL_PRESETS


def test_the_module_functions_follow_the_same_rule() -> None:
    assert protocol_version_for("auto") == PROTOCOL_VERSION
    assert protocol_version_for("auto", MIB, L2) == f"{PROTOCOL_VERSION}+warm"
    assert protocol_params_for("auto", MIB, L2).cache_flush_kib == 0
    assert protocol_params_for("default").cache_flush_kib == ProtocolParams().cache_flush_kib


@pytest.mark.parametrize(("space", "resolution", "expected"), [
    ("micro-16", None, "warm"), ("tiny-32", None, "warm"), ("proxyless-mobile", None, "cold"),
    ("proxyless-mobile", 128, "cold"), ("proxyless-cpu", None, "cold"), ("proxyless-gpu", None, "cold"),
])
def test_the_preset_spaces_fall_on_the_measured_side_of_a_2_mib_l2(space: str, resolution: int | None,
                                                                  expected: str) -> None:
    loaded = load_space(space)
    if resolution is not None:
        loaded = loaded.with_resolution(resolution, resolution)
    working_set = space_working_set_bytes(loaded)
    assert regime(working_set, L2) == expected
    # far from the boundary: every one of 100 other random networks of the space is on the same side
    rng = random.Random(1)
    sizes = [network_memory_bytes(loaded.architecture(loaded.random_choices(rng)), 1, "float32") for _ in range(100)]
    assert {regime(size, L2) for size in sizes} == {expected}


@pytest.mark.parametrize(("space", "expected", "networks"), [
    ("micro-16", "warm", {"warm"}), ("tiny-32", "flush1024", {"warm", "flush1024"}),
    ("proxyless-mobile", "cold", {"cold"}), ("proxyless-gpu", "cold", {"cold"}),
])
def test_the_preset_spaces_on_a_512_kib_l2(space: str, expected: str, networks: set[str]) -> None:
    # tiny-32 (0.45-0.86 MiB) does not fit a 512 KiB L2: its table takes a 1 MiB flush, not the 16 MiB one
    loaded = load_space(space)
    assert regime(space_working_set_bytes(loaded), L2_512K) == expected
    rng = random.Random(1)
    sizes = [network_memory_bytes(loaded.architecture(loaded.random_choices(rng)), 1, "float32") for _ in range(100)]
    assert {regime(size, L2_512K) for size in sizes} == networks


def test_a_local_measurement_of_a_space_takes_its_regime(monkeypatch: pytest.MonkeyPatch) -> None:
    import profiler_service.engine.cache_regime as cache_regime
    from profiler_service.cli import local_protocol

    monkeypatch.setattr(cache_regime, "read_core_cache", lambda root=None: L2)
    assert local_protocol("auto", "micro-16", 1, "float32").version == f"{PROTOCOL_VERSION}+warm"
    assert local_protocol("auto", "proxyless-mobile", 1, "float32").version == PROTOCOL_VERSION
    assert local_protocol("auto", None, 1, "float32").version == PROTOCOL_VERSION  # ops alone: cold
    assert local_protocol("warm", "proxyless-mobile", 1, "float32").version == f"{PROTOCOL_VERSION}+warm"
