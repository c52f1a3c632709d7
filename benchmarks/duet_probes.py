"""Which duet reference tracks a network's slowdowns? (:mod:`profiler_service.engine.duet`)

``--networks`` random networks of ``--space`` are timed in blocks of ``--block-runs`` runs (each after the cache
flush of ``--cache-flush-kib``), each block right after one block of every candidate reference, round-robin for
``--seconds`` seconds. The candidates:

- ``canary_op``: the small canary op (``mbconv_r16x16_c16-16_k3_e3``), after the flush;
- ``mbconv_op``: the duet's default reference op (:data:`~profiler_service.engine.duet.DEFAULT_REFERENCE`), after
  the flush;
- ``memory_read``: reading the flush buffer itself, timed (a memory-bandwidth probe);
- ``matmul``: a 128x128 float32 matmul in numpy, warm (a compute probe);
- ``network``: the space's network of every cell's middle candidate (``--duet network`` of the fidelity
  benchmark), after the flush.

Per network and candidate: the correlation of the log block medians of network and candidate, and the spread
(p90 / p10 - 1) of the network's block medians raw and divided by the candidate's: the lower the ratio's spread,
the more of the machine's noise a duet with that reference removes. Reports (JSON with every block median, and
Markdown) go to ``--out-dir`` as ``duet_probes_<backend>_<space>_r<resolution>.{json,md}``; the last printed line is
``duet_probes backend=... best=<candidate> raw_spread=... best_spread=...`` (medians over the networks).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from benchmarks.common import OUT_DIR
from nas_ops.network import build_network
from nas_ops.space import SearchSpace, load_space
from profiler_service.engine.backends import get_backend
from profiler_service.engine.backends.base import Backend, Runner
from profiler_service.engine.cache_regime import COLD_FLUSH_KIB
from profiler_service.engine.duet import middle_architecture, network_reference, op_reference
from profiler_service.engine.protocol import cache_flusher

CANARY_OP = "mbconv_r16x16_c16-16_k3_e3_s1_relu6_skip"
MATMUL_SIZE = 128
Probe = Callable[[], list[float]]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (``--help`` lists it)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--backend", default="ort-cpu", help="measurement backend")
    parser.add_argument("--space", default="proxyless-mobile", help="search space: preset name or space file")
    parser.add_argument("--resolution", type=int, default=128, help="square input size")
    parser.add_argument("--networks", type=int, default=3, help="random networks timed")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the round-robin runs")
    parser.add_argument("--block-runs", type=int, default=5, help="runs per block")
    parser.add_argument("--cache-flush-kib", type=int, default=COLD_FLUSH_KIB, help="flush before every run")
    parser.add_argument("--seed", type=int, default=5, help="seed of the random networks")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR, help="where the reports are written")
    args = parser.parse_args(argv)
    for name in ("networks", "block_runs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if not args.seconds > 0 or args.cache_flush_kib < 0:
        parser.error("--seconds must be > 0 and --cache-flush-kib >= 0")
    return args


def timed_calls(call: Callable[[], Any], runs: int) -> list[float]:
    """``runs`` calls of ``call``, each timed on its own (ms)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        call()
        times.append((time.perf_counter_ns() - start) / 1e6)
    return times


def prepare(backend: Backend, module: torch.nn.Module, shape: tuple[int, ...]) -> Runner:
    return backend.prepare(module, shape, "float32", 1)


def probes(backend: Backend, space: SearchSpace, args: argparse.Namespace,
           flush: Callable[[], None] | None) -> tuple[dict[str, Probe], list[Runner]]:
    """The candidate references as functions timing one block, and the runners to close afterwards."""
    runs = args.block_runs
    canary = prepare(backend, *op_reference(CANARY_OP)[:2])
    mbconv = prepare(backend, *op_reference()[:2])
    network = prepare(backend, *network_reference(middle_architecture(space), "middle")[:2])
    buffer = np.ones(max(args.cache_flush_kib, 1) * 256, dtype=np.float32)
    matrix = np.random.default_rng(0).standard_normal((MATMUL_SIZE, MATMUL_SIZE)).astype(np.float32)
    table: dict[str, Probe] = {
        "canary_op": lambda: canary.time_runs(runs, flush),
        "mbconv_op": lambda: mbconv.time_runs(runs, flush),
        "memory_read": lambda: timed_calls(buffer.sum, runs),
        "matmul": lambda: timed_calls(lambda: matrix @ matrix, runs),
        "network": lambda: network.time_runs(runs, flush),
    }
    return table, [canary, mbconv, network]


def spread(values: Sequence[float]) -> float:
    """p90 / p10 - 1 of ``values``."""
    array = np.asarray(values, dtype=np.float64)
    return float(np.percentile(array, 90) / np.percentile(array, 10) - 1)


def summarize(series: dict[str, list[float]]) -> dict[str, Any]:
    """One network's figures: its raw spread, and per candidate the correlation and the ratio's spread."""
    network = np.asarray(series["network_under_test"])
    out: dict[str, Any] = {"median_ms": float(np.median(network)), "raw_spread": spread(network), "candidates": {}}
    for name, values in series.items():
        if name == "network_under_test":
            continue
        probe = np.asarray(values)
        out["candidates"][name] = {"correlation": float(np.corrcoef(np.log(network), np.log(probe))[0, 1]),
                                   "ratio_spread": spread(network / probe)}
    return out


def markdown(report: dict[str, Any]) -> str:
    """The Markdown report: one row per network, one column pair per candidate."""
    c = report["config"]
    names = list(report["networks"][0]["candidates"])
    lines = [f"# Duet references: {c['backend']}, {c['space']} at {c['resolution']}", "",
             (f"{c['networks']} random networks, blocks of {c['block_runs']} runs after a {c['cache_flush_kib']} KiB "
              f"flush, each after one block of every candidate, {report['blocks']} blocks per network in "
              f"{c['seconds']:.0f} s. Spread: p90 / p10 - 1 of the block medians; corr: of their logs."), "",
             "| network | ms | raw spread | " + " | ".join(f"{n}: corr / ratio spread" for n in names) + " |",
             "|---|---|---|" + "---|" * len(names)]
    for i, n in enumerate(report["networks"]):
        cells = [f"{n['candidates'][name]['correlation']:+.2f} / {n['candidates'][name]['ratio_spread']:.3f}"
                 for name in names]
        lines.append(f"| {i} | {n['median_ms']:.3f} | {n['raw_spread']:.3f} | " + " | ".join(cells) + " |")
    lines += ["", f"Best reference (lowest median ratio spread): `{report['best']}`."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the round-robin and write the reports; 2 for a bad backend or space."""
    args = parse_args(argv)
    torch.set_num_threads(1)
    try:
        backend = get_backend(args.backend)
        space = load_space(args.space).with_resolution(args.resolution, args.resolution)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    flush = cache_flusher(args.cache_flush_kib)
    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    shape = (1, 3, args.resolution, args.resolution)
    networks = [prepare(backend, build_network(space.architecture(space.random_choices(rng))).eval(), shape)
                for _ in range(args.networks)]
    candidates, references = probes(backend, space, args, flush)
    series = [{"network_under_test": [], **{name: [] for name in candidates}} for _ in networks]
    try:
        for runner in networks:
            runner.time_runs(args.block_runs, flush)  # warm-up
        for probe in candidates.values():
            probe()
        end = time.perf_counter() + args.seconds
        with Progress(TextColumn("round-robin"), BarColumn(), TimeRemainingColumn(), transient=True) as progress:
            task = progress.add_task("", total=args.seconds)
            while time.perf_counter() < end:
                for runner, record in zip(networks, series):
                    for name, probe in candidates.items():
                        record[name].append(float(np.median(probe())))
                    record["network_under_test"].append(float(np.median(runner.time_runs(args.block_runs, flush))))
                progress.update(task, completed=args.seconds - max(0.0, end - time.perf_counter()))
    finally:
        for runner in (*networks, *references):
            runner.close()
    summaries = [summarize(record) for record in series]
    names = list(candidates)
    best = min(names, key=lambda n: float(np.median([s["candidates"][n]["ratio_spread"] for s in summaries])))
    report = {"config": vars(args) | {"out_dir": str(args.out_dir)}, "blocks": len(series[0]["network_under_test"]),
              "networks": summaries, "best": best, "series": series}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"duet_probes_{args.backend}_{space.name}_r{args.resolution}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    stem.with_suffix(".md").write_text(markdown(report), encoding="utf-8")
    print(markdown(report))
    raw = float(np.median([s["raw_spread"] for s in summaries]))
    best_spread = float(np.median([s["candidates"][best]["ratio_spread"] for s in summaries]))
    print(f"duet_probes backend={args.backend} space={space.name} best={best} raw_spread={raw:.3f} "
          f"best_spread={best_spread:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
