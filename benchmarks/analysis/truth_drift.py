"""Offline: the ground truth corrected for drift by K neighbours (fidelity.py --truth-neighbours), K = 0, 2, 3, 4, 6,
recomputed from the network rounds of every saved proxyless-mobile fidelity report (duet op, >= 12 rounds) with
fidelity.py's own functions; no measurement is run. Reads the reports in runs/benchmarks and writes truth_drift.md there.

Per report and K: the uniform sample's tau / within5 / mean error against the corrected truth (the report's own
predictions), the stratified tau, and the truth's split-half tau two ways: corrected once over all rounds (what a
report shows) and with each half of the rounds corrected on its own (no round of one half enters the other's
factors). Usage: ``.venv/bin/python -m benchmarks.analysis.truth_drift`` (about a minute).
"""
from __future__ import annotations

import glob
import json
import os
import statistics
from pathlib import Path

from benchmarks import fidelity_measure as FM
from benchmarks import fidelity_report as FR
from benchmarks.common import OUT_DIR
from nas_ops.space import load_space
from profiler_service.engine.protocol import ProtocolParams

KS = (0, 2, 3, 4, 6)
BACKENDS = ("ort-cpu", "torch-cpu")


def networks_of(report: dict, rounds: range | None = None) -> list[FM.Network]:
    """Both samples' networks of a report (their rounds, or the rounds at ``rounds``), with predictions attached."""
    c = report["config"]
    space = load_space(c["space"]).with_resolution(c["resolution"], c["resolution"])
    out = []
    for sample in FR.SAMPLES:
        for row in report["samples"][sample]["networks"]:
            picked = [row["rounds"][r] for r in (rounds or range(len(row["rounds"])))]
            network = FM.Network(sample, space.architecture(list(row["choices"])),
                                rounds=[FR.round_from_dict(x) for x in picked], order=[x["order"] for x in picked])
            network.predicted = row["predicted_ms"]["median"]  # type: ignore[attr-defined]
            out.append(network)
    return out


def figures(report: dict, k: int) -> dict[str, float]:
    params = ProtocolParams(**report["network_protocol"])
    networks = networks_of(report)
    FM.correct_drift(networks, k)
    out = {}
    for sample in FR.SAMPLES:
        picked = [n for n in networks if n.sample == sample]
        m = FR.metrics([n.predicted for n in picked], [FM.truth(n.medians(), params.aggregate, params.aggregate_q)
                                                      for n in picked])
        out[f"{sample[0]}_tau"], out[f"{sample[0]}_w5"], out[f"{sample[0]}_err"] = m["tau"], m["within5"], \
            m["mean_error"]
    uniform = [n for n in networks if n.sample == "uniform"]
    out["split"] = FR.noise_ceiling(uniform, params)["split_half_tau"]
    n_rounds = min(len(n.rounds) for n in networks)
    halves = []
    for start in (0, 1):
        half = networks_of(report, range(start, n_rounds, 2))
        FM.correct_drift(half, k)
        halves.append([FM.truth(n.medians(), params.aggregate, params.aggregate_q) for n in half
                       if n.sample == "uniform"])
    out["split_indep"] = FR.kendall_tau(*halves)
    return out


def main() -> None:
    rows, deltas = [], {(b, k): [] for b in BACKENDS for k in KS[1:]}
    for path in sorted(glob.glob(str(OUT_DIR / "fidelity_*-cpu_proxyless-mobile_*duet-op*.json"))):
        report = json.load(open(path))
        c = report["config"]
        nets = report["samples"]["uniform"]["networks"]
        if c.get("duet") != "op" or c["backend"] not in BACKENDS or c.get("truth_reference", "table") != "table" \
                or min(len(n["rounds"]) for n in nets) < 12:
            continue
        base = figures(report, 0)
        cells = []
        for k in KS:
            f = base if k == 0 else figures(report, k)
            cells.append(f"{f['u_tau']:.3f} / {f['u_w5']:.2f} / {f['split']:.3f} / {f['split_indep']:.3f}")
            if k:
                deltas[(c["backend"], k)].append({key: f[key] - base[key] for key in f})
        rows.append(f"| {os.path.basename(path)[9:-5]} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    lines = ["# The ground truth corrected for drift by its neighbours, offline (fidelity --truth-neighbours K)", "",
             f"Script: `benchmarks/results/{Path(__file__).name}` (reads the saved reports; no measurement).", "",
             "Cells: uniform tau / uniform within5 / split-half tau of the truth (corrected over all rounds) / "
             "split-half tau with each half corrected on its own. K = 0 is the uncorrected truth.", "",
             "| report | " + " | ".join(f"K={k}" for k in KS) + " |", "|---" * (len(KS) + 1) + "|", *rows, "",
             "Change against K = 0, median over the reports (and how many of them went up):", "",
             "| backend, K | reports | uniform tau | uniform within5 | stratified tau | split-half | split-half "
             "(halves apart) |", "|---|---|---|---|---|---|---|"]
    for (backend, k), found in deltas.items():
        if not found:
            continue
        def cell(key: str) -> str:
            values = [d[key] for d in found]
            return f"{statistics.median(values):+.3f} ({sum(v > 0 for v in values)} up)"
        lines.append(f"| {backend}, K={k} | {len(found)} | {cell('u_tau')} | {cell('u_w5')} | {cell('s_tau')} | "
                     f"{cell('split')} | {cell('split_indep')} |")
    (OUT_DIR / "truth_drift.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
