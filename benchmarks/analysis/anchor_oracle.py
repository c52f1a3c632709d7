"""Offline: the most any anchor map could do for the uniform sample's ranking, from the saved reports (duet op,
proxyless-mobile, 12 or more network rounds); no measurement is run. Reads the reports in runs/benchmarks and writes anchor_oracle.md there.

An anchored prediction is ``a + b * sum + c * weight_mb`` (:mod:`search_client.table.anchors`); its ranking of
networks depends only on ``k = c / b`` (``a`` and ``b > 0`` cannot reorder). So the best Kendall tau over ``k``,
taken with the uniform sample's own truth (an oracle no client has), is the ceiling of every choice of anchors,
their number and their fit. Columns: the report's uniform tau (its anchors), the plain sum's (``k = 0``), the
least-squares map fitted on the uniform sample itself, and the best ``k`` on a grid of
``-0.10 .. +0.30`` ms/MB in steps of 0.005; the truth's split-half tau beside (how noisy the truth itself is).
A configuration whose ceiling lies below 0.9 cannot pass the uniform tau target by a better choice of anchors:
its limit is the table's entries (the op alone versus in a network) or the truth's noise.
Usage: ``.venv/bin/python -m benchmarks.analysis.anchor_oracle`` (under a minute).
"""
from __future__ import annotations

import glob
import json
import os

import numpy as np

from benchmarks import fidelity_measure as FM
from benchmarks import fidelity_report as FR
from benchmarks.common import OUT_DIR

from nas_ops.space import SearchSpace, load_space
from nas_ops.spec import format_spec

MIN_ROUNDS = 12
GRID = np.round(np.arange(-0.10, 0.3001, 0.005), 3)


def stored_table(report: dict) -> tuple[SearchSpace, FM.Table]:
    """The report's space at its resolution and its table as stored (the report's aggregate, unanchored)."""
    config, aggregate = report["config"], report["table"]["aggregate"]
    space = load_space(config["space"]).with_resolution(config["resolution"], config["resolution"])
    specs = {format_spec(s): s for s in FM.table_specs(space)}
    entries = {specs[k]: v["stored_ms"][aggregate] for k, v in report["table"]["entries"].items()}
    return space, FM.Table(aggregate, entries, {})


def oracle_row(report: dict) -> dict[str, float]:
    """The uniform sample's taus (report, plain sum, least-squares oracle, best ``k``) and split-half tau."""
    aggregate = report["table"]["aggregate"]
    space, table = stored_table(report)
    networks = report["samples"]["uniform"]["networks"]
    archs = [space.architecture(list(n["choices"])) for n in networks]
    sums = np.array([table.predict_sum(a) for a in archs])
    weights = np.array([FM.arch_weight_mb(a) for a in archs])
    truth = [n["measured_ms"][aggregate] for n in networks]
    design = np.c_[np.ones_like(sums), sums, weights]
    coef, *_ = np.linalg.lstsq(design, np.array(truth), rcond=None)
    best_tau, best_k = max((FR.kendall_tau(list(sums + k * weights), truth), float(k)) for k in GRID)
    anchor = report["table"].get("anchor") or {}
    return dict(report_tau=report["samples"]["uniform"]["metrics"]["tau"],
                report_k=anchor.get("c_ms_per_mb", 0.0) / anchor.get("b", 1.0),
                sum_tau=FR.kendall_tau(list(sums), truth), ols_tau=FR.kendall_tau(list(design @ coef), truth),
                ols_k=coef[2] / coef[1], best_tau=best_tau, best_k=best_k,
                split_half=report["samples"]["uniform"]["noise"]["split_half_tau"])


def main() -> None:
    rows = []
    for path in sorted(glob.glob(str(OUT_DIR / "fidelity_*_proxyless-mobile_*duet-op*.json"))):
        report = json.load(open(path))
        config = report["config"]
        if config.get("rounds", 0) < MIN_ROUNDS or config["backend"] not in ("torch-cpu", "ort-cpu"):
            continue
        rows.append((config["backend"], config["resolution"], config["seed"], config["rounds"],
                     os.path.basename(path)[len("fidelity_"):-len(".json")], oracle_row(report)))
    rows.sort(key=lambda r: r[:4])
    lines = ["# The ceiling of anchoring: uniform tau under the best possible anchor map, offline", "",
             "Script: `python -m benchmarks.analysis.anchor_oracle` (reads the saved reports; no measurement). "
             "k = c / b in ms/MB (the only part of an anchor map that can reorder networks); 'best k' is chosen "
             "on the uniform sample's own truth, so it is an upper bound for any anchors.", "",
             "| report | rounds | report tau (k) | plain sum tau | least-squares on the sample (k) | best k: tau (k) "
             "| truth split-half tau |", "|---|---|---|---|---|---|---|"]
    for backend, resolution, seed, rounds, name, r in rows:
        lines.append(f"| {name} | {rounds} | {r['report_tau']:.3f} ({r['report_k']:+.3f}) | {r['sum_tau']:.3f} | "
                     f"{r['ols_tau']:.3f} ({r['ols_k']:+.3f}) | {r['best_tau']:.3f} ({r['best_k']:+.3f}) | "
                     f"{r['split_half']:.3f} |")
    below = [name for *_, name, r in rows if r["best_tau"] < 0.9]
    lines += ["", f"Reports whose ceiling is below tau 0.9 ({len(below)} of {len(rows)}): "
              + (", ".join(below) or "none") + "."]
    (OUT_DIR / "anchor_oracle.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
