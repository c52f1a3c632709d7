"""Does the target steer the search? Mechanisms side by side, without the derive rule's help.

For each mechanism (a set of search options, :data:`MECHANISMS`), each target (a share of the table's [min, max]
range, ``--targets``) and each seed, one search on the same data and table with every other option at its default.
What is read from the run's per-epoch log (:mod:`search_client.nas.search_log`):

- the **argmax ratio** at the end: the table latency of the architecture the search prefers (each cell's most
  probable candidate) over the target; within ``[0.9, 1.1]`` it steers by itself (the derive rule never consulted);
- **Zero cells early**: how many cells' argmax is the Zero op at the end of the first joint epoch, with the
  supernet's validation accuracy then (a collapse to Zero before the weights have learned shows here);
- the argmax network's validation accuracy in the supernet at the end, and the run's wall time.

Every search runs in its own process with one torch thread (``--jobs`` at a time). The report (markdown and
JSON in ``--out-dir``) has one row per run and a summary per mechanism: runs within +-10%, the median |log ratio|,
the median early Zero count. The last line: ``search_steering best=NAME within10=K/N``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, add_search_grid, cpu_model, loadavg, read_search_grid

#: The mechanisms compared: name -> search options over the defaults (``warmup_share``: that share of the epochs
#: spent training weights only, taken from the total, so every mechanism trains as many epochs).
MECHANISMS: dict[str, dict[str, Any]] = {
    "default": {},
    "mul#ratio": {"loss": "mul#ratio", "adaptive": False},
    "mul#ratio+adaptive": {"loss": "mul#ratio", "adaptive": True},
    "sq#log": {"loss": "sq#log", "adaptive": False},
    "sq#log+adaptive": {"loss": "sq#log", "adaptive": True},
    "lagrangian": {"loss": "add#linear", "adaptive": True},
    "warmup+mul#ratio+adaptive": {"loss": "mul#ratio", "adaptive": True, "warmup_share": 0.3},
    "warmup+sq#log+adaptive": {"loss": "sq#log", "adaptive": True, "warmup_share": 0.3},
}
DEFAULT_TABLE = ROOT / "tests" / "search_client" / "data" / "tiny-32.ort-cpu.warm.slow.lut.json"
BAND = 0.1


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.search_steering", description=__doc__.split("\n")[0])
    parser.add_argument("--table", type=Path, default=DEFAULT_TABLE, help="latency table file (tiny-32 fixture)")
    parser.add_argument("--data", default="synthetic:glass:4000", help="--data of the searches")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of every search (warm-up included)")
    parser.add_argument("--mechanisms", default=",".join(MECHANISMS), help=f"from {', '.join(MECHANISMS)}")
    add_search_grid(parser, "0", "seeds of the searches")
    args = parser.parse_args(argv)
    read_search_grid(parser, args)
    args.mechanisms = [m for m in args.mechanisms.split(",") if m]
    unknown = [m for m in args.mechanisms if m not in MECHANISMS]
    if unknown:
        parser.error(f"unknown mechanism(s) {', '.join(unknown)}; known: {', '.join(MECHANISMS)}")
    if args.epochs < 2:
        parser.error("--epochs must be >= 2")
    return args


def search_options(mechanism: str, epochs: int) -> dict[str, Any]:
    """The SearchConfig fields of ``mechanism`` for a run of ``epochs`` epochs in all."""
    options = dict(MECHANISMS[mechanism])
    warmup = round(options.pop("warmup_share", 0.0) * epochs)
    return {**options, "warmup_epochs": warmup, "epochs": epochs - warmup}


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """One search (in a worker process): its steering figures (module docstring)."""
    import torch

    from search_client.nas.config import SearchConfig
    from search_client.nas.search_loop import run_search
    from search_client.table.latency_table import LatencyTable
    from search_client.training.datasets import DataOptions

    torch.set_num_threads(1)
    table = LatencyTable.load(job["table"])
    low, high = table.min_latency()[0], table.max_latency()[0]
    target = low + job["share"] * (high - low)
    options = search_options(job["mechanism"], job["epochs"])
    config = SearchConfig(targets_ms=[target], data=DataOptions(job["data"]), seed=job["seed"], **options)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        result = run_search(config, [table], out)
        summary = json.loads((Path(out) / "summary.json").read_text())
    seconds = time.perf_counter() - started
    history = result.history
    first_joint = next(row for row in history if row["phase"] == "search")
    zeros = [cell.zero_index for cell in table.space.cells()]
    final = history[-1]
    return {
        "mechanism": job["mechanism"], "share": job["share"], "seed": job["seed"], "target_ms": target,
        "argmax_ratio": final["argmax_ratio"], "argmax_choices": final["choices"],
        "early_zero_cells": sum(c == z for c, z in zip(first_joint["choices"], zeros) if z is not None),
        "early_valid_acc": first_joint["valid_acc"], "final_valid_acc": final["valid_acc"],
        "exported_ratio": summary.get("ratio"), "derive_kept_argmax": summary.get("derive_kept_argmax"),
        "strength": final["strength"], "entropy": final["entropy"], "seconds": round(seconds, 1),
    }


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per mechanism: runs whose argmax ratio is within +-BAND, median |log ratio|, median early Zero cells."""
    out = []
    for name in dict.fromkeys(row["mechanism"] for row in rows):
        mine = [row for row in rows if row["mechanism"] == name]
        out.append({
            "mechanism": name, "runs": len(mine),
            "within10": sum(1 - BAND <= row["argmax_ratio"] <= 1 + BAND for row in mine),
            "median_abs_log_ratio": statistics.median(abs(math.log(row["argmax_ratio"])) for row in mine),
            "median_early_zero_cells": statistics.median(row["early_zero_cells"] for row in mine),
            "median_final_valid_acc": statistics.median(row["final_valid_acc"] for row in mine),
        })
    return out


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown: the header a curated report needs, the summary and every run."""
    lines = ["# Search steering: does the target steer the argmax?", "",
             f"- Date: {report['date']}", f"- Command: `{report['command']}`",
             f"- Machine: {report['machine']}", f"- Load: {report['load']}", "",
             "| mechanism | runs | argmax within +-10% | median abs log ratio | median Zero cells after the first "
             "joint epoch | median final valid acc |", "|---|---:|---:|---:|---:|---:|"]
    for s in report["summary"]:
        lines.append(f"| {s['mechanism']} | {s['runs']} | {s['within10']} | {s['median_abs_log_ratio']:.3f} | "
                     f"{s['median_early_zero_cells']:g} | {s['median_final_valid_acc']:.3f} |")
    lines += ["", "| mechanism | target share | seed | argmax ratio | exported ratio | Zero cells early | early acc "
              "| final acc | s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["runs"]:
        exported = "-" if r["exported_ratio"] is None else f"{r['exported_ratio']:.3f}"
        lines.append(f"| {r['mechanism']} | {r['share']:g} | {r['seed']} | {r['argmax_ratio']:.3f} | {exported} | "
                     f"{r['early_zero_cells']} | {r['early_valid_acc']:.3f} | {r['final_valid_acc']:.3f} | "
                     f"{r['seconds']:g} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    jobs = [{"mechanism": m, "share": share, "seed": seed, "epochs": args.epochs, "data": args.data,
             "table": str(args.table)} for seed in args.seeds for share in args.targets for m in args.mechanisms]
    random.Random(0).shuffle(jobs)  # a slow stretch of the machine does not hit one mechanism only
    from rich.progress import Progress

    load = loadavg()
    rows = []
    args.out_dir.mkdir(parents=True, exist_ok=True)
    partial = args.out_dir / "search_steering.partial.jsonl"  # each run as it ends: an interrupted run keeps them
    partial.write_text("")
    with Progress() as progress, ProcessPoolExecutor(args.jobs) as pool:
        task = progress.add_task("searches", total=len(jobs))
        for row in pool.map(run_one, jobs):
            rows.append(row)
            with partial.open("a") as out:
                out.write(json.dumps(row) + "\n")
            progress.advance(task)
    order = {name: k for k, name in enumerate(MECHANISMS)}
    rows.sort(key=lambda r: (order[r["mechanism"]], r["share"], r["seed"]))
    summary = summarise(rows)
    report = {"date": date.today().isoformat(), "machine": f"{cpu_model()}, {args.jobs} search(es) at a time, "
              "1 torch thread each", "command": "python -m benchmarks.search_steering " + " ".join(sys.argv[1:] if argv is None else argv),
              "load": f"load average at the start {load}", "args": {**vars(args), "table": str(args.table),
                                                                      "out_dir": str(args.out_dir)},
              "summary": summary, "runs": rows}
    (args.out_dir / "search_steering.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out_dir / "search_steering.md").write_text(markdown(report))
    for s in summary:
        print(f"{s['mechanism']:>24}: argmax within +-10% {s['within10']}/{s['runs']}, median |log ratio| "
              f"{s['median_abs_log_ratio']:.3f}, Zero cells early {s['median_early_zero_cells']:g}, "
              f"final acc {s['median_final_valid_acc']:.3f}")
    best = max(summary, key=lambda s: (s["within10"], -s["median_abs_log_ratio"]))
    print(f"reports: {args.out_dir / 'search_steering.md'}")
    print(f"search_steering best={best['mechanism']} within10={best['within10']}/{best['runs']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
