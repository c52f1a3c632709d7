"""Offline: how much the table's own rounds limit the prediction, from the saved reports (duet op, proxyless-mobile,
made by the current fidelity.py: their config names ``truth_neighbours``); no measurement is run. Writes
Reads the reports in runs/benchmarks and writes table_rounds.md there.

Per report, the table is aggregated again (:func:`measure.aggregate_table`, as a job stores it) from the first 1,
2 and 3 of its rounds, each anchored on the same rounds of its anchor networks, and compared with the report's
ground truth (unchanged). The last column is the truth's split-half tau: when it is well above the prediction's tau,
the prediction (table and anchor map), not the truth, sets the ceiling. A table of all 3 rounds reproduces the
report's headline (checked). Usage: ``.venv/bin/python -m benchmarks.analysis.table_rounds`` (under a
minute).
"""
from __future__ import annotations

import glob
import json
import os
from pathlib import Path

from benchmarks import fidelity_measure as FM
from benchmarks import fidelity_report as FR
from benchmarks.common import OUT_DIR

from nas_ops.space import SearchSpace, load_space
from nas_ops.spec import format_spec
from profiler_service.engine.protocol import ProtocolParams


def table_rounds(report: dict, space: SearchSpace) -> FM.TableRounds:
    """The report's table: every op's rounds and every anchor network's rounds."""
    entries = report["table"]["entries"]
    specs = FM.table_specs(space)
    table = FM.TableRounds(specs, [[FR.round_from_dict(r) for r in entries[format_spec(s)]["rounds"]] for s in specs])
    anchor = report["table"]["anchor"]
    for network, rounds in zip(anchor["networks"], anchor["rounds"]):
        table.anchors.append(FM.Network("anchor", space.architecture(list(network["choices"])),
                                       [FR.round_from_dict(r) for r in rounds]))
    return table


def figures(report: dict, space: SearchSpace, table: FM.Table) -> dict[str, dict]:
    """The metrics of ``table``'s predictions against the report's truth, per sample."""
    aggregate = report["network_protocol"]["aggregate"]
    out = {}
    for sample in FR.SAMPLES:
        networks = report["samples"][sample]["networks"]
        out[sample] = FR.metrics([table.predict(space.architecture(list(n["choices"]))) for n in networks],
                                [n["measured_ms"][aggregate] for n in networks])
    return out


def cell(f: dict[str, dict]) -> str:
    u = f["uniform"]
    return (f"{u['tau']:.3f} / {u['within5']:.2f} / {u['mape'] * 100:.1f}% / {u['mean_error'] * 100:+.1f}% / "
            f"{f['stratified']['tau']:.3f}")


def main() -> None:
    rows = []
    for path in sorted(glob.glob(str(OUT_DIR / "fidelity_*-cpu_proxyless-mobile_*duet-op*.json"))):
        report = json.load(open(path))
        config = report["config"]
        if config.get("duet") != "op" or "truth_neighbours" not in config or not report["table"]["anchor"]:
            continue
        space = load_space(config["space"]).with_resolution(config["resolution"], config["resolution"])
        rounds = table_rounds(report, space)
        params = ProtocolParams(**report["op_protocol"])
        n = len(rounds.rounds[0])
        cells = [figures(report, space, FM.aggregate_table(rounds, params, params.aggregate, upto))
                 for upto in range(1, n + 1)]
        reported = report["samples"]["uniform"]["metrics"]["tau"]
        assert abs(cells[-1]["uniform"]["tau"] - reported) < 1e-9, (path, cells[-1]["uniform"]["tau"], reported)
        noise = report["samples"]["uniform"]["noise"]
        rows.append(f"| {os.path.basename(path)[9:-5]} | {config['rounds']} | "
                    + " | ".join(cell(c) for c in cells) + f" | {noise['split_half_tau']:.3f} |")
        print(rows[-1], flush=True)
    lines = ["# How much the table's rounds limit the prediction, offline", "",
             f"Script: `benchmarks/results/{Path(__file__).name}` (reads the saved reports; no measurement).", "",
             "Cells: uniform tau / uniform within5 / uniform MAPE / uniform mean error / stratified tau, the table "
             "aggregated from its first 1, 2 or 3 rounds (anchored on the same rounds of its anchors) against the "
             "report's ground truth. Truth split-half: Kendall's tau between the truths of the even and the odd "
             "network rounds (uniform sample).", "",
             "| report | network rounds | table round 0 | rounds 0-1 | rounds 0-2 (the report) | truth split-half |",
             "|---|---|---|---|---|---|", *rows]
    (OUT_DIR / "table_rounds.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
