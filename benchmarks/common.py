"""Helpers every benchmark shares: where reports go, and the machine a figure was measured on."""

from __future__ import annotations

import argparse
import os
import platform
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Default folder of every benchmark's raw reports (JSON, per-run markdown, plots): ignored by git, so running a
#: benchmark never changes the tree. Curated reports are copied to ``benchmarks/results/`` by hand.
OUT_DIR = ROOT / "runs" / "benchmarks"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what the platform module knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        match = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.MULTILINE)
        if match:
            return match.group(1).strip()
    return platform.processor() or platform.machine()


def status_kib(field: str) -> int:
    """A ``kB`` field of this process's /proc/self/status (``VmRSS``, ``VmHWM``, ...)."""
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field}: peak RSS cannot be measured on this system")
    return int(match.group(1))


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded: the cores are shared, and what else ran is part of a figure."""
    return [round(value, 2) for value in os.getloadavg()]


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment for a child that runs a benchmark module (``python -m benchmarks.NAME``): the
    repository root leads PYTHONPATH, so the child imports this package from any working directory."""
    paths = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), **extra}


def add_search_grid(parser: argparse.ArgumentParser, seeds: str, seeds_help: str) -> None:
    """The options of a benchmark that runs searches over targets and seeds in worker processes: ``--targets``
    (shares of the table's [min, max]), ``--seeds``, ``--jobs`` and ``--out-dir``; :func:`read_search_grid` turns
    the first two into lists."""
    parser.add_argument("--targets", default="0.25,0.5,0.75", help="targets as shares of the table's [min, max]")
    parser.add_argument("--seeds", default=seeds, help=seeds_help)
    parser.add_argument("--jobs", type=int, default=2, help="processes at a time (one core each)")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR, help="where the reports are written")


def read_search_grid(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``args.targets`` and ``args.seeds`` as lists (floats in (0, 1), ints); a parser error otherwise."""
    try:
        args.targets = [float(t) for t in args.targets.split(",")]
        args.seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError as exc:
        parser.error(f"--targets and --seeds are comma-separated numbers: {exc}")
    if not all(0 < t < 1 for t in args.targets) or args.jobs < 1:
        parser.error("every target share must be in (0, 1) and --jobs >= 1")
