"""The demo (``make demo``): the whole job on the embedded default, from a fresh clone.

1. start a local profiler process (SQLite file, ``ort-cpu``, 1 thread) on a free loopback port;
2. build the latency table of a small search space on this device (every entry measured through a job);
3. run a short device-specific ProxylessNAS search on ``digits`` with a target between the space's min and max,
   with the search's own defaults (the architecture lr scaled to the run's length);
4. verify the derived network end to end on the device (predicted vs measured);
5. retrain the derived network from scratch and report its accuracy;
6. print a summary and write it as ``summary.json``; the profiler is stopped whatever happens.

``--quick`` is the reduced-size mode that CI runs (smaller space, fewer epochs, the fast protocol).

Running it again on the same ``--out`` replaces the previous run's ``search/`` directory and summary, and reuses the
latency database (the table's entries are then looked up, not measured again).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from nas_ops.arch_files import load_architecture
from nas_ops.space import load_space
from search_client.cli.progress import JobBars, SearchBars
from search_client.device.client import LatencyClient
from search_client.device.local_profiler import LocalProfiler
from search_client.nas.config import SearchConfig
from search_client.nas.search_log import uniform_entropy
from search_client.nas.search_loop import run_search
from search_client.plots.search_curves import plot_search_result
from search_client.plots.table_heatmap import plot_table_heatmap
from search_client.table.latency_table import build_table
from search_client.training.datasets import DataOptions
from search_client.training.train import TrainConfig, train_architecture

console = Console(stderr=True)
BACKEND = "ort-cpu"


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of one demo run."""

    space: str
    epochs: int
    warmup_epochs: int
    retrain_epochs: int
    protocol: str
    target_fraction: float  # where the target sits between the space's min (0) and max (1) latency


FULL = DemoPlan(space="tiny-32", epochs=12, warmup_epochs=4, retrain_epochs=6, protocol="auto", target_fraction=0.4)
QUICK = DemoPlan(space="micro-16", epochs=2, warmup_epochs=1, retrain_epochs=2, protocol="fast", target_fraction=0.4)


def step(title: str) -> None:
    console.rule(f"[bold]{title}")


def fresh_search_dir(out_dir: Path) -> Path:
    """``out_dir/search``, emptied of a previous demo run's search (a search refuses a directory that holds one)."""
    search_dir = out_dir / "search"
    if search_dir.exists():
        console.print(f"replacing the previous demo run's {search_dir}", soft_wrap=True, markup=False,
                      highlight=False)
        shutil.rmtree(search_dir)
    return search_dir


def run_demo(out_dir: Path, plan: DemoPlan, seed: int = 0) -> dict[str, Any]:
    """Run every step and return the summary (also written to ``out_dir/summary.json``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    search_dir = fresh_search_dir(out_dir)
    started = time.perf_counter()
    space = load_space(plan.space)
    profiler = LocalProfiler(f"sqlite:///{out_dir.resolve() / 'latency.db'}", out_dir / "profiler.log",
                             backends=BACKEND, threads=1, protocol=plan.protocol,
                             extra_args=("--device-name", "demo-device"), env={"PROFILER_TOKEN": ""})
    with profiler:
        step(f"1/4 latency table of {plan.space} on this device ({BACKEND}, profiler at {profiler.url})")
        with LatencyClient(profiler.url) as client:
            t0 = time.perf_counter()
            with JobBars(console=console) as bars:
                table = build_table(client, space, backend=BACKEND, progress=bars)
            table_s = time.perf_counter() - t0
            table.save(out_dir / "table.json")
            plot_table_heatmap(table, out_dir / "table.png")
            low, _ = table.min_latency()
            high, _ = table.max_latency()
            target = round(low + plan.target_fraction * (high - low), 6)
            console.print(f"table: {len(table.stats)} ops in {table_s:.1f} s; space min {low:.3f} ms, "
                          f"max {high:.3f} ms; target {target:.3f} ms")

            step(f"2/4 ProxylessNAS search on digits ({plan.warmup_epochs} warm-up + {plan.epochs} epochs)")
            # the search's defaults: everything else as `proxyless-search search` would run it
            config = SearchConfig(targets_ms=[target], data=DataOptions("digits"), epochs=plan.epochs,
                                  warmup_epochs=plan.warmup_epochs, seed=seed)
            with SearchBars(console=console) as bars:
                result = run_search(config, [table], search_dir, callbacks=bars)
            plot_search_result(result)
            arch_path = result.files["arch"]
            derived = load_architecture(arch_path)
            predicted = table.latency_of(result.choices)

            step("3/4 verify the derived network on the device")
            measured = client.measure_architecture(derived, BACKEND)["median_ms"]

    step(f"4/4 retrain the derived network from scratch ({plan.retrain_epochs} epochs)")
    trained = train_architecture(derived, TrainConfig(data=DataOptions("digits"), epochs=plan.retrain_epochs,
                                                      seed=seed))
    summary = {
        "space": plan.space,
        "backend": BACKEND,
        "device": table.device.get("name"),
        "table_ops": len(table.stats),
        "table_build_s": round(table_s, 2),
        "space_min_ms": round(low, 6),
        "space_max_ms": round(high, 6),
        "target_ms": target,
        "target_error": round((predicted - target) / target, 4),
        "derived_from": "argmax" if result.derived.from_argmax else "most probable within the target",
        "argmax_target_error": round(result.derived.argmax_ratio - 1.0, 4),
        "entropy_uniform": round(uniform_entropy([cell.n_paths for cell in result.supernet.cells]), 4),
        "entropy_final": round(result.history[-1]["entropy"], 4),
        "architecture": [cell.candidate_names[c] for cell, c in zip(space.cells(), result.choices)],
        "choices": list(result.choices),
        "predicted_ms": round(predicted, 6),
        "measured_ms": round(measured, 6),
        "prediction_error": round((predicted - measured) / measured, 4),
        "retrained_top1": round(trained.top1, 4),
        "files": {"table": str(out_dir / "table.json"), "heatmap": str(out_dir / "table.png"),
                  "search": str(search_dir), "architecture": str(arch_path)},
        "wall_s": round(time.perf_counter() - started, 1),
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    view = Table(title="proxyless-hw demo: summary")
    view.add_column("item")
    view.add_column("value")
    for key, value in summary.items():
        view.add_row(key, json.dumps(value) if isinstance(value, (dict, list)) else str(value))
    Console().print(view)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo_output"), help="where every file goes")
    parser.add_argument("--quick", action="store_true", help="reduced-size run (what CI runs)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        summary = run_demo(args.out, QUICK if args.quick else FULL, seed=args.seed)
    except (ValueError, RuntimeError, OSError) as exc:
        console.print(f"error: {exc}", markup=False, highlight=False)
        return 1
    print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
