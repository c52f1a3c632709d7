"""benchmarks/readme_path.py's pieces that need no live service: its networks and its report (the run itself is
the README's own commands, which tests/search_client/test_documented_commands.py and the live tests cover)."""

from __future__ import annotations

from pathlib import Path

from benchmarks import readme_path
from nas_ops.arch_files import load_architecture
from nas_ops.space import load_space


def test_random_networks_are_seeded_architectures_of_the_space(tmp_path: Path) -> None:
    (tmp_path / "first").mkdir()
    (tmp_path / "again").mkdir()
    paths = readme_path.random_networks("micro-16", 4, seed=3, work=tmp_path / "first")
    again = readme_path.random_networks("micro-16", 4, seed=3, work=tmp_path / "again")
    space = load_space("micro-16")
    choices = [load_architecture(p).metadata["choices"] for p in paths]
    assert choices == [load_architecture(p).metadata["choices"] for p in again]
    assert all(len(c) == len(space.cells()) for c in choices) and len({tuple(c) for c in choices}) > 1


def test_the_report_names_its_date_command_machine_and_load() -> None:
    report = {"date": "2026-01-01", "command": "python -m benchmarks.readme_path", "load_during_lut": "core 0 busy",
              "machine": {"cpu": "cpu", "cores": 2, "core_cache_kib": 512}, "loadavg": {"lut": [1.0, 1.0, 1.0]},
              "luts": [{"space": "tiny-32", "seconds": 10.0, "min_ms": 0.05, "max_ms": 0.3}],
              "verifies": [{"arch": "a.json", "regime": "warm", "predicted_ms": 0.1, "measured_ms": 0.1,
                            "relative_error": -0.031}],
              "summary": "readme_path verify_within10=1/1 worst=-3.1% lut_s=nan"}
    text = readme_path.markdown(report)
    head = text.splitlines()[:8]
    assert any(line.startswith("- Date: 2026-01-01") for line in head)
    assert any("Machine: cpu, 2 cores, per-core cache 512 KiB" in line for line in head)
    assert "| a.json | warm | 0.1000 | 0.1000 | -3.10% |" in text
