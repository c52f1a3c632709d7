"""Offline: would an activation-memory term in the anchor map fix torch-cpu's ranking? From the saved reports of 24
or more network rounds (duet op, proxyless-mobile); no measurement is run. Writes activation_term_offline.md next to
this file.

Per report the map ``truth ~ a + b * sum + c * weight_mb (+ d * act_mb)`` is fitted by least squares on the
report's 50 stratified networks (their measured truth) and scored on its 50 uniform networks (out of sample), with
and without ``d``. ``sum``: the unanchored table sum; ``weight_mb``: :func:`fidelity.arch_weight_mb`; ``act_mb``:
the network's expanded activations, the sum over its MBConv cells of ``mid_chs * height * width * 4``
bytes (the tensor a cell's expansion writes; e6 candidates write twice e3's). The stratified networks stand for
anchors a client would measure; 50 of them is far more than the client's 6, so this bounds what the term could do,
it is not a client's fit. Cells: uniform tau / within5 / mean error.
Usage: ``.venv/bin/python benchmarks/results/activation_term_offline.py`` (under a minute).
"""
from __future__ import annotations

import glob
import json
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent.parent), str(HERE.parent), str(HERE)]
import fidelity as F  # noqa: E402
from anchor_oracle_offline import stored_table  # noqa: E402

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
            row = [1.0, table.predict_sum(arch), F.arch_weight_mb(arch)]
            rows.append(row + [activation_mb(cells, n["choices"])] if with_act else row)
        return np.array(rows)

    uniform, stratified = (report["samples"][s]["networks"] for s in ("uniform", "stratified"))
    truth_u = [n["measured_ms"][aggregate] for n in uniform]
    truth_s = np.array([n["measured_ms"][aggregate] for n in stratified])
    out: dict[str, object] = {}
    for key, with_act in (("sum_w", False), ("sum_w_act", True)):
        coef, *_ = np.linalg.lstsq(design(stratified, with_act), truth_s, rcond=None)
        out[key] = F.metrics(list(design(uniform, with_act) @ coef), truth_u)
        if with_act:
            out["d"] = float(coef[3])
    return out


def main() -> None:
    rows = []
    for path in sorted(glob.glob(str(HERE / "fidelity_*_proxyless-mobile_*duet-op*.json"))):
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
             "Script: `benchmarks/results/activation_term_offline.py` (reads the saved 24-round reports; no "
             "measurement). Maps fitted on each report's 50 stratified networks, scored on its 50 uniform ones. "
             "Cells: uniform tau / within5 / mean error.", "",
             "| report | report (6 anchors) | a + b sum + c weight | + d act | d (ms per MB of activations) |",
             "|---|---|---|---|---|"]
    for *_, name, report, s in rows:
        lines.append(f"| {name} | {cell(report['samples']['uniform']['metrics'])} | {cell(s['sum_w'])} | "
                     f"{cell(s['sum_w_act'])} | {s['d']:+.4f} |")
    (HERE / "activation_term_offline.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
