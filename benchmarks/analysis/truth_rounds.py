"""Offline: how many network rounds the ground truth needs, from the saved reports of 24 or more rounds (duet op,
proxyless-mobile, made by the current fidelity.py: their config names ``truth_neighbours``); no measurement is
run. Reads the reports in runs/benchmarks and writes truth_rounds.md there.

Per report, the truth (median of the rounds' medians, each round corrected for drift by fidelity.py's default
``TRUTH_NEIGHBOURS``) is recomputed from subsets of the report's own rounds: the first 12, the even 12, the odd 12
and all of them; the predictions are the report's (the anchors are measured apart from the truth's rounds, so they
do not change). Cells: uniform tau / uniform within5 / stratified tau, and PASS when every target holds.

A 12-round subset of a 24-round run is not a 12-round run: its rounds got half the timed runs each
(``--network-budget`` is split over the rounds). It shows what the number of rounds does on the same measurements.
Usage: ``.venv/bin/python -m benchmarks.analysis.truth_rounds`` (under a minute).
"""
from __future__ import annotations

import glob
import json
import os
from pathlib import Path

from benchmarks import fidelity_measure as FM
from benchmarks import fidelity_report as FR
from benchmarks.common import OUT_DIR
from benchmarks.analysis.truth_drift import networks_of

from profiler_service.engine.protocol import ProtocolParams

MIN_ROUNDS = 24
TARGETS = {"u_w10": 0.95, "u_tau": 0.9, "u_w5": 0.9, "s_tau": 0.97}


def subset_figures(report: dict, rounds: range) -> dict[str, float]:
    """The targets' metrics with the truth taken from the report's rounds at ``rounds``."""
    params = ProtocolParams(**report["network_protocol"])
    networks = networks_of(report, rounds)
    FM.correct_drift(networks, FM.TRUTH_NEIGHBOURS)
    out: dict[str, float] = {}
    for sample in FR.SAMPLES:
        picked = [n for n in networks if n.sample == sample]
        m = FR.metrics([n.predicted for n in picked],  # type: ignore[attr-defined]
                      [FM.truth(n.medians(), params.aggregate, params.aggregate_q) for n in picked])
        out[f"{sample[0]}_tau"], out[f"{sample[0]}_w5"], out[f"{sample[0]}_w10"] = m["tau"], m["within5"], \
            m["within10"]
    return out


def cell(f: dict[str, float]) -> str:
    verdict = "PASS" if all(f[key] >= bound for key, bound in TARGETS.items()) else "FAIL"
    return f"{f['u_tau']:.3f} / {f['u_w5']:.2f} / {f['s_tau']:.3f} {verdict}"


def main() -> None:
    rows = []
    for path in sorted(glob.glob(str(OUT_DIR / "fidelity_*-cpu_proxyless-mobile_*duet-op*.json"))):
        report = json.load(open(path))
        n_rounds = min(len(n["rounds"]) for n in report["samples"]["uniform"]["networks"])
        # reports of the current anchors and drift correction only (their config names the neighbours)
        if report["config"].get("duet") != "op" or n_rounds < MIN_ROUNDS or "truth_neighbours" not in report["config"]:
            continue
        subsets = (range(0, 12), range(0, n_rounds, 2), range(1, n_rounds, 2), range(n_rounds))
        cells = [cell(subset_figures(report, s)) for s in subsets]
        noise = report["samples"]["uniform"]["noise"]
        rows.append(f"| {os.path.basename(path)[9:-5]} | {n_rounds} | {noise['round_tau']:.3f} | "
                    + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    lines = ["# How many network rounds the ground truth needs, offline", "",
             f"Script: `benchmarks/results/{Path(__file__).name}` (reads the saved reports of {MIN_ROUNDS} or more "
             "rounds; no measurement).", "",
             "Cells: uniform tau / uniform within5 / stratified tau, PASS when every target holds (uniform within10 "
             ">= 0.95, tau >= 0.9, within5 >= 0.90; stratified tau >= 0.97). The truth is corrected for drift by "
             f"{FM.TRUTH_NEIGHBOURS} neighbours, as in the reports.", "",
             "Round tau: Kendall's tau between two rounds of the uniform sample, median over pairs (how quiet the "
             "machine was during the run).", "",
             "| report | rounds | round tau | first 12 | even 12 | odd 12 | all |", "|---|---|---|---|---|---|---|",
             *rows]
    (OUT_DIR / "truth_rounds.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
