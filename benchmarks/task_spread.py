"""Does the architecture matter on a task? Random networks of a space trained with one budget, accuracy vs latency.

A search can only be told from a random draw on data where the networks of the space differ in accuracy. This
benchmark draws ``--networks`` architectures uniformly from ``--space`` (``space.random_choices(random.Random(
--seed))``, one draw after another from one generator), trains each from scratch with ONE fixed budget
(:func:`search_client.training.train.train_architecture`: ``--epochs`` over ``--images`` images of the task, 20%
of each class held out, batch ``--batch-size``, lr ``--lr``, training and data seed ``--train-seed`` for every
network: the same images, split and batch order for all) and reports each network's held-out top-1 and its
predicted latency from a latency table file (``--table``; by default the tiny-32 fixture measured on this
project's 2-core VM, ``tests/search_client/data/tiny-32.ort-cpu.warm.fast.lut.json``).

``--task`` is a named generated task (``glass``: the data source ``synthetic:NAME:IMAGES``,
:mod:`search_client.training.synthetic_tasks`) or any in-memory source (``digits``, ``synthetic:IMAGES``, a
``.npz`` file) to compare with.

The default budget (3 epochs over 4,000 images, 3,200 of them trained on, batch 64, TrainConfig's lr 0.05) is
the one whose figures are in benchmarks/results/task_spread.md: 10 random tiny-32 networks in 5.5-6 minutes of one
core of this project's 2-core VM (a network's time depends on its first stage: 20-50 s).

Reported: every network's choices, accuracy, latency and training time; best, worst, best - worst (points), the
chance level (1 / classes), Spearman's and Kendall's rank correlation of accuracy with latency, the wall time of
the whole run, and whether the targets hold: best - worst >= 10 points, worst >= 20% (clearly above chance),
best <= 98%, Spearman > 0 (0.5 or more is the aim). Networks train one after another in this process, or in
``--jobs`` processes at once (``--threads`` torch threads each; the default 1 thread, 1 job is the budget's
reference: one core).

Writes ``task_spread_<task>_s<seed>.json`` and ``.md`` to ``--out-dir`` (runs/benchmarks by default); the last
printed line is ``task_spread task=T seed=S networks=N best=X worst=X spread=X spearman=X kendall=X wall_s=X
cpu_s=X targets=met|NOT met`` (``cpu_s``: the trainings' CPU time, summed; with ``--jobs 1 --threads 1`` the
one core's time whatever else runs on the machine, which ``wall_s`` is not).

Example: ``.venv/bin/python -m benchmarks.task_spread --seed 1`` (glass, the default budget, the second
architecture sample).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import random
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from benchmarks.common import OUT_DIR, ROOT, cpu_model, loadavg
from search_client.training.synthetic_tasks import TASK_DEFAULT_SAMPLES, TASKS

DEFAULT_TABLE = ROOT / "tests" / "search_client" / "data" / "tiny-32.ort-cpu.warm.fast.lut.json"
DEFAULT_TASK = "glass"
DEFAULT_EPOCHS = 3
DEFAULT_IMAGES = TASK_DEFAULT_SAMPLES
#: The targets on the spread of the random networks' accuracies (fractions, not points).
TARGET_SPREAD = 0.10
TARGET_WORST = 0.20
TARGET_BEST = 0.98
TARGET_SPEARMAN = 0.0
AIM_SPEARMAN = 0.5


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.task_spread", description=__doc__.split("\n")[0])
    parser.add_argument("--task", default=DEFAULT_TASK,
                        help=f"a named synthetic task ({', '.join(TASKS)}) or an in-memory source "
                             "(digits, synthetic:N, FILE.npz)")
    parser.add_argument("--space", default="tiny-32", help="search space (name or file)")
    parser.add_argument("--table", type=Path, default=DEFAULT_TABLE, help="latency table file of the space")
    parser.add_argument("--networks", type=int, default=10, help="random architectures to train")
    parser.add_argument("--seed", type=int, default=0, help="seed of the architecture sample")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="epochs of every network")
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES,
                        help="images of a named task (train and held-out together)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=None, help="starting lr (default: TrainConfig's)")
    parser.add_argument("--train-seed", type=int, default=0,
                        help="training and data seed of every network (weights, task, split, batch order)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per training")
    parser.add_argument("--jobs", type=int, default=1, help="trainings run at once, each in its own process")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR, help="where the reports are written")
    args = parser.parse_args(argv)
    for name in ("networks", "epochs", "images", "batch_size", "threads", "jobs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: must be >= 1")
    if args.seed < 0 or args.train_seed < 0:
        parser.error("--seed and --train-seed: must be >= 0")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        parser.error("--lr: must be a positive number")
    if not args.table.is_file():
        parser.error(f"--table: {args.table} does not exist")
    return args


def data_source(task: str, images: int) -> str:
    """The ``--data`` source of ``task``: ``synthetic:NAME:IMAGES`` for a named task, else ``task`` itself."""
    return f"synthetic:{task}:{images}" if task in TASKS else task


def draw_architectures(space: Any, networks: int, seed: int) -> list[list[int]]:
    """``networks`` architectures drawn uniformly per cell, one after another from ``random.Random(seed)``."""
    rng = random.Random(seed)
    return [space.random_choices(rng) for _ in range(networks)]


def train_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train one architecture with the run's budget (``job``: space, choices, config fields, threads); its
    held-out top-1 and seconds. Runs in this process or in a worker process."""
    import torch

    from nas_ops.space import load_space
    from search_client.training.datasets import DataOptions
    from search_client.training.train import TrainConfig, train_architecture

    torch.set_num_threads(job["threads"])
    space = load_space(job["space"])
    arch = space.architecture(job["choices"])
    extra = {"lr": job["lr"]} if job["lr"] is not None else {}
    config = TrainConfig(data=DataOptions(job["source"]), epochs=job["epochs"], batch_size=job["batch_size"],
                         seed=job["train_seed"], **extra)
    start, cpu_start = time.perf_counter(), time.process_time()
    result = train_architecture(arch, config)
    return {"index": job["index"], "top1": result.top1, "valid_loss": result.valid_loss,
            "train_acc": result.history[-1]["train_acc"], "seconds": time.perf_counter() - start,
            "cpu_s": time.process_time() - cpu_start,
            "valid_images": result.data["valid_images"], "train_images": result.data["train_images"],
            "classes": arch.num_classes, "lr": config.lr}


def rank_correlations(accuracy: Sequence[float], latency: Sequence[float]) -> dict[str, float | None]:
    """Spearman's rho and Kendall's tau-b of accuracy with latency (None where undefined: fewer than 2 networks or
    a constant series)."""
    from scipy.stats import kendalltau, spearmanr

    if len(accuracy) < 2 or len(set(accuracy)) < 2 or len(set(latency)) < 2:
        return {"spearman": None, "kendall": None}
    rho = float(spearmanr(accuracy, latency).statistic)
    tau = float(kendalltau(accuracy, latency).statistic)
    return {"spearman": None if math.isnan(rho) else rho, "kendall": None if math.isnan(tau) else tau}


def summarise(rows: list[dict[str, Any]], classes: int) -> dict[str, Any]:
    """Best, worst, spread, chance, the rank correlations and whether each target holds."""
    acc = [r["top1"] for r in rows]
    lat = [r["latency_ms"] for r in rows]
    best, worst = max(acc), min(acc)
    corr = rank_correlations(acc, lat)
    spearman = corr["spearman"]
    targets = {
        "spread": {"value": best - worst, "min": TARGET_SPREAD, "met": best - worst >= TARGET_SPREAD},
        "worst": {"value": worst, "min": TARGET_WORST, "met": worst >= TARGET_WORST},
        "best": {"value": best, "max": TARGET_BEST, "met": best <= TARGET_BEST},
        "spearman": {"value": spearman, "min_exclusive": TARGET_SPEARMAN, "aim": AIM_SPEARMAN,
                     "met": spearman is not None and spearman > TARGET_SPEARMAN},
    }
    return {"best": best, "worst": worst, "spread": best - worst, "mean": sum(acc) / len(acc),
            "chance": 1.0 / classes, "classes": classes, **corr, "targets": targets,
            "all_met": all(t["met"] for t in targets.values())}


def _fmt(value: float | None, digits: int = 3) -> str:
    return "nan" if value is None else f"{value:.{digits}f}"


def summary_line(report: dict[str, Any]) -> str:
    """The last printed line: the figures and whether every target holds."""
    s = report["summary"]
    return (f"task_spread task={report['task']} seed={report['seed']} networks={len(report['networks'])} "
            f"best={s['best']:.4f} worst={s['worst']:.4f} spread={s['spread']:.4f} spearman={_fmt(s['spearman'])} "
            f"kendall={_fmt(s['kendall'])} wall_s={report['wall_s']:.1f} cpu_s={report['cpu_s']:.1f} "
            f"targets={'met' if s['all_met'] else 'NOT met'}")


def write_markdown(report: dict[str, Any], path: Path) -> None:
    s, b, m = report["summary"], report["budget"], report["machine"]
    t = s["targets"]
    verdict = {True: "met", False: "NOT met"}
    lines = [
        f"# Task spread: {report['task']} ({report['space']}, architecture seed {report['seed']})", "",
        f"Data `{report['source']}` ({b['train_images']} train / {b['valid_images']} held-out images, "
        f"{s['classes']} classes, chance {s['chance']:.1%}); every network {b['epochs']} epochs, batch "
        f"{b['batch_size']}, lr {b['lr']}, training seed {b['train_seed']}. Latency: `{report['table']}`. "
        f"Machine: {m['cpu']}, {m['cores']} cores, {b['jobs']} job(s) x {b['threads']} thread(s); load average "
        f"before {m['load_before'][0]:.2f}, after {m['load_after'][0]:.2f}. Wall time {report['wall_s']:.1f} s; the "
        f"trainings' CPU time {report['cpu_s']:.1f} s (data generation included, process start-up not).", "",
        "| # | choices | latency ms | top-1 | train acc | seconds | CPU s |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in sorted(report["networks"], key=lambda r: r["latency_ms"]):
        lines.append(f"| {r['index']} | {' '.join(r['choice_names'])} | {r['latency_ms']:.4f} | {r['top1']:.4f} | "
                     f"{r['train_acc']:.4f} | {r['seconds']:.1f} | {r['cpu_s']:.1f} |")
    lines += [
        "", "## Spread", "",
        f"- best {s['best']:.4f}, worst {s['worst']:.4f}, mean {s['mean']:.4f}, chance {s['chance']:.4f}",
        f"- best - worst: {100 * s['spread']:.1f} points (target >= {100 * TARGET_SPREAD:.0f}: "
        f"{verdict[t['spread']['met']]})",
        f"- worst >= {TARGET_WORST:.0%}: {verdict[t['worst']['met']]}; best <= {TARGET_BEST:.0%}: "
        f"{verdict[t['best']['met']]}",
        f"- rank correlation of accuracy with latency: Spearman {_fmt(s['spearman'])}, Kendall "
        f"{_fmt(s['kendall'])} (target > 0: {verdict[t['spearman']['met']]}; aim >= {AIM_SPEARMAN})", "",
        f"`{summary_line(report)}`", "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


def _progress() -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=Console(), transient=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Draw, train and report (module docstring); returns the report."""
    from nas_ops.space import load_space
    from search_client.table.latency_table import LatencyTable

    space = load_space(args.space)
    table = LatencyTable.load(args.table)
    if table.space.name != space.name or table.n_cells != len(space.cells()):
        raise SystemExit(f"task_spread: table {args.table} is of space {table.space.name}, not {space.name}")
    source = data_source(args.task, args.images)
    drawn = draw_architectures(space, args.networks, args.seed)
    jobs = [{"index": i, "space": args.space, "choices": choices, "source": source, "epochs": args.epochs,
             "batch_size": args.batch_size, "lr": args.lr, "train_seed": args.train_seed, "threads": args.threads}
            for i, choices in enumerate(drawn)]
    load_before = loadavg()
    start = time.perf_counter()
    results: dict[int, dict[str, Any]] = {}
    with _progress() as progress:
        bar = progress.add_task(f"{args.task} seed {args.seed}", total=len(jobs))
        if args.jobs == 1:
            for job in jobs:
                results[job["index"]] = train_one(job)
                progress.advance(bar)
        else:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
                for future in as_completed([pool.submit(train_one, job) for job in jobs]):
                    done = future.result()
                    results[done["index"]] = done
                    progress.advance(bar)
    wall = time.perf_counter() - start
    rows = []
    for i, choices in enumerate(drawn):
        r = results[i]
        names = [cell.candidate_names[c] for cell, c in zip(space.cells(), choices)]
        rows.append({**r, "choices": choices, "choice_names": names, "latency_ms": table.latency_of(choices)})
    classes = rows[0]["classes"]
    first = rows[0]
    report = {
        "benchmark": "task_spread", "task": args.task, "source": source, "space": space.name, "seed": args.seed,
        "table": str(args.table.resolve().relative_to(ROOT)) if args.table.resolve().is_relative_to(ROOT)
        else str(args.table),
        "budget": {"epochs": args.epochs, "images": args.images, "batch_size": args.batch_size, "lr": first["lr"],
                   "train_seed": args.train_seed, "train_images": first["train_images"],
                   "valid_images": first["valid_images"], "threads": args.threads, "jobs": args.jobs},
        "networks": rows, "summary": summarise(rows, classes), "wall_s": wall,
        "cpu_s": sum(r["cpu_s"] for r in rows),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "load_before": load_before,
                    "load_after": loadavg(), "python": platform.python_version()},
    }
    report["summary_line"] = summary_line(report)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    for r in report["networks"]:
        print(f"network {r['index']}: {' '.join(r['choice_names'])} latency {r['latency_ms']:.4f} ms "
              f"top-1 {r['top1']:.4f} ({r['seconds']:.1f} s)", flush=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"task_spread_{Path(args.task).stem.replace(':', '-')}_s{args.seed}"
    (args.out_dir / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    write_markdown(report, args.out_dir / f"{stem}.md")
    print(report["summary_line"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
