"""Does the search beat random architectures at equal latency?

For each gradient estimator (``--estimators``: binary, reinforce), target (a share of the table's [min, max]
range, ``--targets``) and seed (``--seeds``), one search with default options on ``--data``; its derived
(exported) network is retrained from scratch. Against it, ``--random`` architectures drawn uniformly from the space
and kept only when their table latency lies within ``+-window`` of the derived network's (rejection sampling: an
exact draw from the uniform distribution restricted to that latency window), each retrained with the same budget
(``--train-epochs``, the same data, split and training seed). Every network is scored on a test set generated
apart from the training data (the same task at seed ``TEST_SEED_OFFSET + seed``), which neither the search nor
the retraining saw.

Per search the report gives the searched network's test accuracy, the random networks' median and best, and the
searched network's percentile among them (the share of random networks it beats, ties counted half); per
estimator, how many searches beat the median random network and the median percentile. A plot shows accuracy
against table latency (the random clouds, the searched networks, the targets). Searches and trainings run in
``--jobs`` processes with one torch thread each. The last line:
``search_vs_random wins=K/N median_percentile=P`` (the first estimator's).
"""

from __future__ import annotations

import argparse
import json
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

DEFAULT_TABLE = ROOT / "tests" / "search_client" / "data" / "tiny-32.ort-cpu.warm.slow.lut.json"
#: The test set of seed s is the task generated at seed TEST_SEED_OFFSET + s: other images than the training data.
TEST_SEED_OFFSET = 10_000
#: Draws of the rejection sampling at most, per search (a window nothing falls in is an error, not a smaller set).
MAX_DRAWS = 2_000_000


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.search_vs_random", description=__doc__.split("\n")[0])
    parser.add_argument("--table", type=Path, default=DEFAULT_TABLE, help="latency table file (tiny-32 fixture)")
    parser.add_argument("--data", default="synthetic:glass:4000", help="--data of the searches and trainings")
    parser.add_argument("--test-data", default=None,
                        help="the test set's source (default: --data, generated at another seed)")
    parser.add_argument("--search-epochs", type=int, default=10, help="epochs of each search")
    parser.add_argument("--train-epochs", type=int, default=10, help="epochs of each retraining (every network)")
    parser.add_argument("--estimators", default="binary,reinforce", help="--grad-estimator values to compare")
    parser.add_argument("--random", type=int, default=10, help="random networks per search")
    parser.add_argument("--window", type=float, default=0.03, help="relative latency window of the random networks")
    add_search_grid(parser, "0,1", "seeds of the searches (and of their networks' training)")
    args = parser.parse_args(argv)
    read_search_grid(parser, args)
    args.estimators = [e for e in args.estimators.split(",") if e]
    if args.random < 1 or not 0 < args.window < 1:
        parser.error("--random must be >= 1 and --window in (0, 1)")
    if args.search_epochs < 1 or args.train_epochs < 1:
        parser.error("--search-epochs and --train-epochs must be >= 1")
    return args


def search(job: dict[str, Any]) -> dict[str, Any]:
    """One search with default options (in a worker process): its derived network and how it was derived."""
    import torch

    from search_client.nas.config import SearchConfig
    from search_client.nas.search_loop import run_search
    from search_client.table.latency_table import LatencyTable
    from search_client.training.datasets import DataOptions

    torch.set_num_threads(1)
    table = LatencyTable.load(job["table"])
    low, high = table.min_latency()[0], table.max_latency()[0]
    target = low + job["share"] * (high - low)
    config = SearchConfig(targets_ms=[target], data=DataOptions(job["data"]), seed=job["seed"],
                          epochs=job["epochs"], grad_estimator=job["estimator"])
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        result = run_search(config, [table], out)
        summary = json.loads((Path(out) / "summary.json").read_text())
    return {**{k: job[k] for k in ("estimator", "share", "seed")}, "target_ms": target,
            "choices": list(result.choices), "latency_ms": table.latency_of(result.choices),
            "argmax_ratio": result.history[-1]["argmax_ratio"], "derive_kept_argmax": summary.get(
                "derive_kept_argmax"), "search_s": round(time.perf_counter() - started, 1)}


def random_within(table: Any, latency_ms: float, window: float, count: int, rng: random.Random,
                  exclude: Sequence[int]) -> list[list[int]]:
    """``count`` distinct architectures drawn uniformly from the space whose table latency is within ``window``
    (relative) of ``latency_ms``, ``exclude`` left out; ValueError when :data:`MAX_DRAWS` draws do not find them."""
    found: dict[tuple[int, ...], None] = {}
    for _ in range(MAX_DRAWS):
        choices = table.space.random_choices(rng)
        if list(choices) != list(exclude) and abs(table.latency_of(choices) / latency_ms - 1) <= window:
            found[tuple(choices)] = None
            if len(found) == count:
                return [list(c) for c in found]
    raise ValueError(f"only {len(found)} of {count} architectures within +-{window:.0%} of {latency_ms:.4g} ms in "
                     f"{MAX_DRAWS} draws")


def train(job: dict[str, Any]) -> dict[str, Any]:
    """One network retrained from scratch (in a worker process) and scored on the test set."""
    import torch

    from search_client.table.latency_table import LatencyTable
    from search_client.training.datasets import DataOptions
    from search_client.training.memory_sources import load_memory_source
    from search_client.training.train import TrainConfig, evaluate, train_architecture

    torch.set_num_threads(1)
    table = LatencyTable.load(job["table"])
    arch = table.space.architecture(job["choices"])
    started = time.perf_counter()
    result = train_architecture(arch, TrainConfig(data=DataOptions(job["data"]), epochs=job["epochs"],
                                                  seed=job["seed"]))
    test = load_memory_source(job["test_data"], arch.input_size, arch.in_chs, seed=TEST_SEED_OFFSET + job["seed"])
    batches = ((test.x[i:i + 256], test.y[i:i + 256]) for i in range(0, len(test.y), 256))
    _, test_acc = evaluate(result.network, batches)
    return {**job, "valid_acc": result.top1, "test_acc": test_acc, "train_s": round(time.perf_counter() - started, 1)}


def percentile(value: float, others: Sequence[float]) -> float:
    """The share of ``others`` below ``value`` (ties count half), in percent."""
    return 100.0 * sum(1.0 if o < value else 0.5 if o == value else 0.0 for o in others) / len(others)


def plot(report: dict[str, Any], path: Path) -> None:
    """Test accuracy against table latency: each search's random cloud, the searched networks, the targets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    markers = {"binary": "*", "reinforce": "P"}
    for row in report["searches"]:
        ax.scatter([r["latency_ms"] for r in row["random"]], [r["test_acc"] for r in row["random"]], s=12,
                   color="0.6", alpha=0.7)
        ax.scatter([row["latency_ms"]], [row["test_acc"]], s=140, marker=markers.get(row["estimator"], "o"),
                   color="C3" if row["estimator"] == "binary" else "C0", edgecolor="k", zorder=3)
    for target in sorted({row["target_ms"] for row in report["searches"]}):
        ax.axvline(target, color="C2", lw=0.8, ls="--")
    ax.scatter([], [], s=12, color="0.6", label="random networks at the searched network's latency (+-3%)")
    for name, marker in markers.items():
        if any(row["estimator"] == name for row in report["searches"]):
            ax.scatter([], [], s=140, marker=marker, color="C3" if name == "binary" else "C0", edgecolor="k",
                       label=f"searched ({name})")
    ax.plot([], [], color="C2", lw=0.8, ls="--", label="targets")
    ax.set_xlabel("table latency (ms)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Searched vs random architectures at equal latency")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown (header, per-estimator summary, one row per search)."""
    lines = ["# Search vs random architectures at equal latency", "", f"- Date: {report['date']}",
             f"- Command: `{report['command']}`", f"- Machine: {report['machine']}", f"- Load: {report['load']}", "",
             "| estimator | searches | beat the median random | median percentile |", "|---|---:|---:|---:|"]
    for s in report["summary"]:
        lines.append(f"| {s['estimator']} | {s['searches']} | {s['wins']} | {s['median_percentile']:.0f} |")
    lines += ["", "| estimator | target share | seed | argmax ratio | latency ms | searched acc | random median | "
              "random best | percentile |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["searches"]:
        lines.append(f"| {r['estimator']} | {r['share']:g} | {r['seed']} | {r['argmax_ratio']:.3f} | "
                     f"{r['latency_ms']:.4f} | {r['test_acc']:.3f} | {r['random_median']:.3f} | "
                     f"{r['random_best']:.3f} | {r['percentile']:.0f} |")
    lines += ["", "![accuracy against latency](search_vs_random.png)"]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    from rich.progress import Progress

    from search_client.table.latency_table import LatencyTable

    args = parse_args(argv)
    table = LatencyTable.load(args.table)
    load = loadavg()
    common = {"table": str(args.table), "data": args.data}
    search_jobs = [{**common, "estimator": e, "share": share, "seed": seed, "epochs": args.search_epochs}
                   for e in args.estimators for share in args.targets for seed in args.seeds]
    with Progress() as progress, ProcessPoolExecutor(args.jobs) as pool:
        task = progress.add_task("searches", total=len(search_jobs))
        searches = []
        for row in pool.map(search, search_jobs):
            searches.append(row)
            progress.advance(task)
        train_jobs = []
        for k, row in enumerate(searches):
            rng = random.Random(f"random-{row['estimator']}-{row['share']}-{row['seed']}")
            archs = [row["choices"], *random_within(table, row["latency_ms"], args.window, args.random, rng,
                                                    row["choices"])]
            train_jobs += [{**common, "search": k, "kind": "searched" if i == 0 else "random", "choices": choices,
                            "latency_ms": table.latency_of(choices), "seed": row["seed"], "epochs": args.train_epochs,
                            "test_data": args.test_data or args.data} for i, choices in enumerate(archs)]
        task = progress.add_task("trainings", total=len(train_jobs))
        trained = []
        for row in pool.map(train, train_jobs):
            trained.append(row)
            progress.advance(task)
    for k, row in enumerate(searches):
        mine = [t for t in trained if t["search"] == k]
        randoms = [t for t in mine if t["kind"] == "random"]
        searched = next(t for t in mine if t["kind"] == "searched")
        accs = [t["test_acc"] for t in randoms]
        kept = ("choices", "latency_ms", "test_acc", "epochs", "seed")
        row.update(test_acc=searched["test_acc"], trained={k2: searched[k2] for k2 in ("epochs", "seed")},
                   random=[{k2: t[k2] for k2 in kept} for t in randoms],
                   random_median=statistics.median(accs), random_best=max(accs),
                   percentile=percentile(searched["test_acc"], accs))
    summary = [{"estimator": e, "searches": len(mine), "wins": sum(r["test_acc"] > r["random_median"] for r in mine),
                "median_percentile": statistics.median(r["percentile"] for r in mine)}
               for e in args.estimators for mine in [[r for r in searches if r["estimator"] == e]]]
    report = {"date": date.today().isoformat(), "command": "python -m benchmarks.search_vs_random " +
              " ".join(sys.argv[1:] if argv is None else argv), "machine": f"{cpu_model()}, {args.jobs} process(es) at a time, 1 torch thread "
              "each", "load": f"load average at the start {load}",
              "args": {**vars(args), "table": str(args.table), "out_dir": str(args.out_dir)},
              "summary": summary, "searches": searches}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "search_vs_random.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out_dir / "search_vs_random.md").write_text(markdown(report))
    plot(report, args.out_dir / "search_vs_random.png")
    for s in summary:
        print(f"{s['estimator']:>10}: beat the median random network in {s['wins']}/{s['searches']}, median "
              f"percentile {s['median_percentile']:.0f}")
    print(f"reports: {args.out_dir / 'search_vs_random.md'}")
    first = summary[0]
    print(f"search_vs_random wins={first['wins']}/{first['searches']} "
          f"median_percentile={first['median_percentile']:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
