"""Fidelity of the latency table: does the sum of per-op latencies predict a whole network's latency?

For N random architectures of a search space, on one backend and thread count:

- the table: every distinct op of the space (stem, first block, mix, head, every MBConv candidate of every cell,
  and the identity block that a chosen Zero becomes) measured ONCE with ``measure_op``; its wall time is the
  table-build time;
- predicted latency of an architecture: the sum of the stored medians of all its ops (the prediction rule of
  docs/CONTRACTS.md);
- measured latency: ``measure_network`` of the whole network, same backend and threads, in ``--rounds`` rounds
  over all architectures (each with its share of ``--network-budget``), alternately in forward and reverse
  order, half of them before the table is built and half after it; the measured latency is the mean of the
  rounds' medians. Slow drifts of the machine's speed (other processes, frequency) then hit the table and the
  networks alike instead of biasing one against the other.

Reported: share of architectures within +-5% and +-10%, Kendall's tau-b, MAPE, mean signed error, the table-build
time, and how well the measured ground truth agrees with itself (Kendall's tau between two rounds, the spread of a
network's rounds: the ceiling that machine noise puts on tau); a JSON and a Markdown report and a scatter plot (predicted vs measured, y = x and +-10% lines) are written to
``--out-dir`` (benchmarks/results by default) as ``fidelity_<backend>_<space>_r<resolution>.{json,md,png}``.
The last printed line is ``fidelity backend=B space=S archs=N within5=F within10=F tau=F mape=F``.

Example: ``.venv/bin/python benchmarks/fidelity.py --backend ort-cpu --space proxyless-mobile --archs 50``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from any directory

from nas_ops.arch import Architecture
from nas_ops.space import SearchSpace, load_space
from nas_ops.spec import OpSpec, format_spec
from profiler_service.engine.backends import Backend, get_backend
from profiler_service.engine.fingerprint import device_fingerprint, env_hash, environment
from profiler_service.engine.calibration import CalibrationCache
from profiler_service.engine.protocol import (
    PROTOCOL_VERSION,
    ProtocolParams,
    Stats,
    measure_network,
    measure_op,
)

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (``--help`` lists it)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--backend", default="ort-cpu", help="measurement backend (e.g. ort-cpu, torch-cpu)")
    parser.add_argument("--space", default="proxyless-mobile", help="search space: preset name or space file")
    parser.add_argument("--resolution", type=int, default=None, help="square input size (default: the space's)")
    parser.add_argument("--archs", type=int, default=50, help="number of random architectures")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random architectures")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads")
    parser.add_argument("--batch", type=int, default=1, help="batch size")
    parser.add_argument("--op-budget", type=float, default=None, help="time budget (s) of one op's timed runs")
    parser.add_argument("--network-budget", type=float, default=2.0,
                        help="time budget (s) of one network's timed runs, split over the rounds")
    parser.add_argument("--rounds", type=int, default=4,
                        help="measurement rounds over all networks (half before the table, half after it)")
    parser.add_argument("--cache-flush-kib", type=int, default=None,
                        help="protocol cache_flush_kib for ops and networks (default: the protocol's)")
    parser.add_argument("--no-affinity", action="store_true", help="do not pin the measuring thread to fixed cores")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: the 'fast' protocol for ops and networks (numbers with little precision)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="where the reports are written")
    args = parser.parse_args(argv)
    for name in ("archs", "threads", "batch", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    return args


def protocols(args: argparse.Namespace) -> tuple[ProtocolParams, ProtocolParams]:
    """(op protocol, network protocol) from the command line; networks are never calibrated."""
    if args.quick:
        fast = {**ProtocolParams.fast().model_dump(), "affinity": not args.no_affinity}
        return ProtocolParams(**fast), ProtocolParams(**{**fast, "calibrate": False})
    common: dict[str, Any] = {"affinity": not args.no_affinity}
    if args.cache_flush_kib is not None:
        common["cache_flush_kib"] = args.cache_flush_kib
    op = ProtocolParams(**common) if args.op_budget is None else ProtocolParams(time_budget_s=args.op_budget, **common)
    network = ProtocolParams(calibrate=False, time_budget_s=args.network_budget / args.rounds, target_rel_ci=0.005,
                             **common)
    return op, network


def table_specs(space: SearchSpace) -> list[OpSpec]:
    """Every distinct op an architecture of ``space`` can hold: fixed ops, MBConv candidates, identity blocks."""
    specs: dict[OpSpec, None] = dict.fromkeys(space.fixed_specs())
    for cell in space.cells():
        for index, spec in enumerate(cell.candidates):
            if index == cell.zero_index:  # a chosen Zero is an identity block in the network
                spec = OpSpec("identity", cell.in_chs, cell.in_chs, cell.height, cell.width)
            specs.setdefault(spec, None)
    return list(specs)


@dataclass
class Row:
    """One architecture: its choices, predicted latency (ms) and the network's measurement rounds."""

    choices: list[int]
    predicted_ms: float
    rounds: list[Stats]

    @property
    def measured_ms(self) -> float:
        """Mean of the rounds' medians."""
        return sum(stats.median_ms for stats in self.rounds) / len(self.rounds)

    @property
    def error(self) -> float:
        """Signed relative error of the prediction."""
        return self.predicted_ms / self.measured_ms - 1


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b of two equally long sequences (ties counted as in scipy's default)."""
    if len(x) != len(y) or len(x) < 2:
        raise ValueError("kendall_tau: needs two sequences of the same length >= 2")
    concordant = discordant = ties_x = ties_y = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return (concordant - discordant) / denominator if denominator else 0.0


def round_agreement(rows: Sequence[Row]) -> dict[str, float]:
    """How well the ground truth agrees with itself: the median over pairs of rounds of Kendall's tau between
    their medians (``round_tau``), and the median over architectures of the rounds' spread, (max - min) / mean
    (``round_spread``). A prediction cannot rank the networks much better than two measurements of them agree, so
    a ``tau`` under target next to a low ``round_tau`` is the machine's noise, not the table's."""
    n_rounds = min(len(row.rounds) for row in rows)
    per_round = [[row.rounds[r].median_ms for row in rows] for r in range(n_rounds)]
    taus = [kendall_tau(per_round[a], per_round[b]) for a in range(n_rounds) for b in range(a + 1, n_rounds)]
    spreads = [(max(m) - min(m)) / (sum(m) / len(m)) for m in ([s.median_ms for s in row.rounds] for row in rows)]
    return {"round_tau": statistics.median(taus) if taus else float("nan"),
            "round_spread": statistics.median(spreads)}


def summarize(rows: Sequence[Row]) -> dict[str, float]:
    """within5 / within10 (fractions), tau, MAPE and mean signed error (fractions), and :func:`round_agreement`."""
    errors = [row.error for row in rows]
    predicted = [row.predicted_ms for row in rows]
    measured = [row.measured_ms for row in rows]
    return {
        "within5": sum(abs(e) <= 0.05 for e in errors) / len(errors),
        "within10": sum(abs(e) <= 0.10 for e in errors) / len(errors),
        "tau": kendall_tau(predicted, measured) if len(rows) >= 2 else float("nan"),
        "mape": sum(abs(e) for e in errors) / len(errors),
        "mean_error": sum(errors) / len(errors),
        "max_abs_error": max(abs(e) for e in errors),
        **(round_agreement(rows) if len(rows) >= 2 else {"round_tau": float("nan"), "round_spread": float("nan")}),
    }


def build_table(specs: Sequence[OpSpec], backend: Backend, args: argparse.Namespace,
                params: ProtocolParams) -> tuple[dict[OpSpec, Stats], float]:
    """Measure every spec once; return the table and its wall time (s)."""
    start = time.perf_counter()
    calibration = CalibrationCache()  # the table's ops share their calibration values
    table = {spec: measure_op(spec, backend, args.batch, "float32", args.threads, params, calibration)
             for spec in specs}
    return table, time.perf_counter() - start


def plot(rows: Sequence[Row], title: str, path: Path) -> None:
    """Scatter of predicted vs measured with y = x and +-10% lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [row.measured_ms for row in rows]
    predicted = [row.predicted_ms for row in rows]
    low, high = min(measured + predicted) * 0.95, max(measured + predicted) * 1.05
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.plot([low, high], [low, high], "k-", lw=1, label="y = x")
    ax.plot([low, high], [low * 1.1, high * 1.1], "k--", lw=0.8, label="+-10%")
    ax.plot([low, high], [low * 0.9, high * 0.9], "k--", lw=0.8)
    ax.scatter(measured, predicted, s=14, alpha=0.8)
    ax.set(xlim=(low, high), ylim=(low, high), xlabel="measured network latency (ms, median)",
           ylabel="predicted: sum of per-op medians (ms)", title=title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(report: dict[str, Any]) -> str:
    """The Markdown report."""
    m, c = report["metrics"], report["config"]
    lines = [
        f"# Fidelity: {c['backend']}, {c['space']} at {c['resolution']}, {c['threads']} thread(s), batch {c['batch']}",
        "",
        (f"{c['archs']} random architectures (seed {c['seed']}), each network measured in {c['rounds']} rounds; "
         f"protocol {report['protocol_version']}{' (quick)' if c['quick'] else ''}."),
        "",
        "| metric | value |",
        "|---|---|",
        f"| within +-5% | {m['within5']:.3f} |",
        f"| within +-10% | {m['within10']:.3f} |",
        f"| Kendall tau | {m['tau']:.3f} |",
        f"| MAPE | {m['mape']:.4f} |",
        f"| mean signed error | {m['mean_error']:+.4f} |",
        f"| max abs error | {m['max_abs_error']:.4f} |",
        f"| ground truth: Kendall tau between two rounds (median over pairs) | {m['round_tau']:.3f} |",
        f"| ground truth: spread of a network's rounds, (max - min) / mean (median) | {m['round_spread']:.4f} |",
        f"| table: ops | {report['table']['ops']} |",
        f"| table: build time (s) | {report['table']['build_s']:.1f} |",
        f"| networks: measure time (s) | {report['networks_s']:.1f} |",
        "",
        (f"Conditions: {report['conditions']['cpu_model']}, {report['conditions']['cpu_cores']} cores, load average "
         f"{report['conditions']['loadavg_start']} at start and {report['conditions']['loadavg_end']} at the end "
         "(other processes share the machine)."),
        "",
        "| # | predicted (ms) | measured (ms, mean of the rounds' medians) | error |",
        "|---|---|---|---|",
    ]
    for i, row in enumerate(report["architectures"]):
        lines.append(f"| {i} | {row['predicted_ms']:.3f} | {row['measured_ms']:.3f} | {row['error']:+.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write its reports; 0 on success, 2 for a bad backend or space."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        backend = get_backend(args.backend)
        space = load_space(args.space)
        if args.resolution is not None:
            space = space.with_resolution(args.resolution, args.resolution)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    resolution = space.input_size[0]
    op_params, network_params = protocols(args)
    loadavg_start = os.getloadavg() if hasattr(os, "getloadavg") else None

    rng = random.Random(args.seed)
    archs: list[Architecture] = [space.architecture(space.random_choices(rng)) for _ in range(args.archs)]
    rounds: list[list[Stats]] = [[] for _ in archs]
    networks_s = 0.0

    def measure_round(order: Sequence[int]) -> None:
        nonlocal networks_s
        start = time.perf_counter()
        for i in order:
            rounds[i].append(measure_network(archs[i], backend, args.batch, "float32", args.threads, network_params))
        networks_s += time.perf_counter() - start

    # network rounds, alternately forward and reverse, with the table in the middle
    forward, reverse = range(len(archs)), range(len(archs) - 1, -1, -1)
    for r in range(args.rounds // 2):
        measure_round(forward if r % 2 == 0 else reverse)
    specs = table_specs(space)
    table, build_s = build_table(specs, backend, args, op_params)
    print(f"table: {len(specs)} ops measured in {build_s:.1f} s ({build_s / len(specs):.2f} s per op)")
    for r in range(args.rounds // 2, args.rounds):
        measure_round(forward if r % 2 == 0 else reverse)
    rows = []
    for i, arch in enumerate(archs):
        rows.append(Row(arch.metadata["choices"], sum(table[spec].median_ms for spec in arch.specs()), rounds[i]))
        print(f"arch {i:3d}: predicted {rows[-1].predicted_ms:8.3f} ms  measured {rows[-1].measured_ms:8.3f} ms  "
              f"error {rows[-1].error:+.3f}")
    metrics = summarize(rows)

    # the reports
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"fidelity_{backend.name}_{space.name}_r{resolution}"
    env = environment(backend, args.threads)
    report = {
        "config": {"backend": backend.name, "space": space.name, "resolution": resolution, "archs": args.archs,
                   "seed": args.seed, "threads": args.threads, "batch": args.batch, "rounds": args.rounds,
                   "quick": args.quick},
        "protocol_version": PROTOCOL_VERSION,
        "op_protocol": op_params.model_dump(),
        "network_protocol": network_params.model_dump(),
        "environment": env,
        "env_hash": env_hash(env),
        "conditions": {"cpu_model": device_fingerprint()["cpu_model"], "cpu_cores": os.cpu_count(),
                       "python": platform.python_version(), "loadavg_start": loadavg_start,
                       "loadavg_end": os.getloadavg() if hasattr(os, "getloadavg") else None},
        "metrics": metrics,
        "table": {"ops": len(specs), "build_s": build_s,
                  "entries": {format_spec(spec): stats.as_dict() for spec, stats in table.items()}},
        "networks_s": networks_s,
        "architectures": [{"choices": row.choices, "predicted_ms": row.predicted_ms, "measured_ms": row.measured_ms,
                           "rounds": [stats.as_dict() for stats in row.rounds], "error": row.error}
                          for row in rows],
    }
    (args.out_dir / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (args.out_dir / f"{stem}.md").write_text(markdown(report), encoding="utf-8")
    plot(rows, f"{backend.name}, {space.name} @{resolution}, {args.threads} thr", args.out_dir / f"{stem}.png")
    print(f"reports: {args.out_dir / stem}.{{json,md,png}}")
    print(f"table build: {build_s:.1f} s for {len(specs)} ops; networks: {networks_s:.1f} s")
    print(f"ground truth: round-to-round tau {metrics['round_tau']:.3f}, spread of the rounds "
          f"{metrics['round_spread']:.4f} (the noise ceiling of tau)")
    print(f"fidelity backend={backend.name} space={space.name} archs={len(rows)} within5={metrics['within5']:.3f} "
          f"within10={metrics['within10']:.3f} tau={metrics['tau']:.3f} mape={metrics['mape']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
