"""Offline: would an activation-memory term in the anchor map fix torch-cpu's ranking? From the saved reports of 24
or more network rounds (duet op, proxyless-mobile); no measurement is run. Reads the reports in runs/benchmarks and writes activation_term.md there.

Per report the map ``truth ~ a + b * sum + c * weight_mb (+ d * act_mb)`` is fitted by least squares on the
report's 50 stratified networks (their measured truth) and scored on its 50 uniform networks (out of sample), with
and without ``d``. ``sum``: the unanchored table sum; ``weight_mb``: :func:`measure.arch_weight_mb`; ``act_mb``:
the network's expanded activations, the sum over its MBConv cells of ``mid_chs * height * width * 4``
bytes (the tensor a cell's expansion writes; e6 candidates write twice e3's). The stratified networks stand for
anchors a client would measure; 50 of them is far more than the client's 6, so this bounds what the term could do,
it is not a client's fit. Cells: uniform tau / within5 / mean error.
Usage: ``.venv/bin/python -m benchmarks.analysis.activation_term`` (under a minute).
"""
from __future__ import annotations

import glob
import json
import os

import numpy as np

from benchmarks import fidelity_measure as FM
from benchmarks import fidelity_report as FR
from benchmarks.common import OUT_DIR
from benchmarks.analysis.anchor_oracle import stored_table

MIN_ROUNDS = 24
BYTES_PER_MB = 1e6


def activation_mb(cells: list, choices: list[int]) -> float:
    """The expanded activations (MB) the MBConv cells of ``choices`` write."""
    ops = (cell.candidates[j] for cell, j in zip(cells, choices))
    return sum(o.mid_chs * o.height * o.width * 4 for o in ops if o.kind == "mbconv") / BYTES_PER_MB


def scores(report: dict) -> dict[str, object]:
    """Uniform metrics of the stratified-fitted map without and with ``d``, and ``d`` (ms/MB)."""
    aggregate = report["table"]["aggregate"]
    space, table = stored_table(report)
    cells = space.cells()

    def design(networks: list[dict], with_act: bool) -> np.ndarray:
        rows = []
        for n in networks:
            arch = space.architecture(list(n["choices"]))
            row = [1.0, table.predict_sum(arch), FM.arch_weight_mb(arch)]
            rows.append(row + [activation_mb(cells, n["choices"])] if with_act else row)
        return np.array(rows)

    uniform, stratified = (report["samples"][s]["networks"] for s in ("uniform", "stratified"))
    truth_u = [n["measured_ms"][aggregate] for n in uniform]
    truth_s = np.array([n["measured_ms"][aggregate] for n in stratified])
    out: dict[str, object] = {}
    for key, with_act in (("sum_w", False), ("sum_w_act", True)):
        coef, *_ = np.linalg.lstsq(design(stratified, with_act), truth_s, rcond=None)
        out[key] = FR.metrics(list(design(uniform, with_act) @ coef), truth_u)
        if with_act:
            out["d"] = float(coef[3])
    return out


def main() -> None:
    rows = []
    for path in sorted(glob.glob(str(OUT_DIR / "fidelity_*_proxyless-mobile_*duet-op*.json"))):
        report = json.load(open(path))
        config = report["config"]
        if config.get("rounds", 0) < MIN_ROUNDS:
            continue
        rows.append((config["backend"], config["resolution"], config["seed"],
                     os.path.basename(path)[len("fidelity_"):-len(".json")], report, scores(report)))
    rows.sort(key=lambda r: r[:3])

    def cell(m: dict) -> str:
        return f"{m['tau']:.3f} / {m['within5']:.2f} / {m['mean_error'] * 100:+.1f}%"

    lines = ["# An activation-memory term in the anchor map, offline", "",
             "Script: `python -m benchmarks.analysis.activation_term` (reads the saved 24-round reports; no "
             "measurement). Maps fitted on each report's 50 stratified networks, scored on its 50 uniform ones. "
             "Cells: uniform tau / within5 / mean error.", "",
             "| report | report (6 anchors) | a + b sum + c weight | + d act | d (ms per MB of activations) |",
             "|---|---|---|---|---|"]
    for *_, name, report, s in rows:
        lines.append(f"| {name} | {cell(report['samples']['uniform']['metrics'])} | {cell(s['sum_w'])} | "
                     f"{cell(s['sum_w_act'])} | {s['d']:+.4f} |")
    (OUT_DIR / "activation_term.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
