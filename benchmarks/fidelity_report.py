"""Fidelity benchmark, statistics and reports: metrics, the noise ceiling, targets, markdown, plot.

The command line and the whole method are described in :mod:`benchmarks.fidelity`."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.fidelity_measure import Network, Table, truth
from profiler_service.engine.aggregate import AGGREGATES
from profiler_service.engine.cache_regime import flush_kib
from profiler_service.engine.protocol import (
    ProtocolParams,
)
from profiler_service.engine.stats import RoundMeasurement, Stats

SAMPLES = ("uniform", "stratified")
#: Ground-truth aggregates of a network's round medians: "mean" and the engine's aggregates.
TRUTH_AGGREGATES: tuple[str, ...] = ("mean", *AGGREGATES)
#: (sample, metric, lowest passing value).
TARGETS: tuple[tuple[str, str, float], ...] = (
    ("uniform", "within10", 0.95), ("uniform", "tau", 0.9), ("uniform", "within5", 0.90), ("stratified", "tau", 0.97))


# --- statistics ----------------------------------------------------------------------------------------------------
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


def metrics(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, float | None]:
    """within5 / within10 (fractions), Kendall's tau (None under 2 networks), MAPE, mean signed and max absolute
    relative error of ``predicted`` against ``measured``."""
    errors = [p / m - 1 for p, m in zip(predicted, measured)]
    return {
        "within5": sum(abs(e) <= 0.05 for e in errors) / len(errors),
        "within10": sum(abs(e) <= 0.10 for e in errors) / len(errors),
        "tau": kendall_tau(predicted, measured) if len(errors) >= 2 else None,
        "mape": sum(abs(e) for e in errors) / len(errors),
        "mean_error": sum(errors) / len(errors),
        "max_abs_error": max(abs(e) for e in errors),
    }


def noise_ceiling(networks: Sequence[Network], params: ProtocolParams, raw: bool = False) -> dict[str, float | None]:
    """How well the ground truth (corrected for drift unless ``raw``) agrees with itself (None where undefined:
    under 2 networks or 2 rounds):

    - ``round_tau``: Kendall's tau between the medians of two rounds, median over pairs of rounds;
    - ``round_spread``: (max - min) / mean of a network's round medians, median over networks;
    - ``split_half_tau``: tau between the protocol's aggregate of the even rounds and of the odd rounds.

    A prediction cannot rank the networks much better than two measurements of them agree."""
    n_rounds = min(len(n.rounds) for n in networks)
    spreads = [(max(m) - min(m)) / statistics.fmean(m) for m in (n.medians(raw=raw) for n in networks)]
    ceiling: dict[str, float | None] = {"round_tau": None, "round_spread": statistics.median(spreads),
                                        "split_half_tau": None}
    if len(networks) < 2 or n_rounds < 2:
        return ceiling
    per_round = [[n.medians([r], raw)[0] for n in networks] for r in range(n_rounds)]
    ceiling["round_tau"] = statistics.median(kendall_tau(per_round[a], per_round[b])
                                             for a in range(n_rounds) for b in range(a + 1, n_rounds))
    halves = [[truth(n.medians(range(start, n_rounds, 2), raw), params.aggregate, params.aggregate_q)
               for n in networks]
              for start in (0, 1)]
    ceiling["split_half_tau"] = kendall_tau(*halves)
    return ceiling


def sample_report(networks: Sequence[Network], tables: dict[str, Table], params: ProtocolParams,
                  raw: bool = False) -> dict[str, Any]:
    """A sample's figures: the matrix of metrics (table aggregate x truth aggregate), the headline (the protocol's
    aggregate for both), the noise ceiling, and every network with its predictions, truths (corrected for drift
    unless ``raw``) and rounds (with their drift factors)."""
    measured = {name: [truth(n.medians(raw=raw), name, params.aggregate_q) for n in networks]
                for name in TRUTH_AGGREGATES}
    predicted = {name: [table.predict(n.arch) for n in networks] for name, table in tables.items()}
    matrix = {t: {g: metrics(predicted[t], measured[g]) for g in TRUTH_AGGREGATES} for t in tables}
    rows = []
    for i, n in enumerate(networks):
        rows.append({"choices": n.arch.metadata["choices"], "selection_ms": n.selection_ms,
                     "predicted_ms": {t: predicted[t][i] for t in tables},
                     "measured_ms": {g: measured[g][i] for g in TRUTH_AGGREGATES},
                     "error": predicted[params.aggregate][i] / measured[params.aggregate][i] - 1,
                     "rounds": [{"round": r, "order": n.order[r], "drift": n.drift[r] if n.drift else 1.0,
                                 **round_to_dict(m)} for r, m in enumerate(n.rounds)]})
    return {"metrics": matrix[params.aggregate][params.aggregate], "matrix": matrix,
            "noise": noise_ceiling(networks, params, raw), "networks": rows}


def verdicts(samples: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target of :data:`TARGETS` with the sample's headline value and whether it passes."""
    out = []
    for sample, metric, target in TARGETS:
        value = samples[sample]["metrics"][metric]
        out.append({"sample": sample, "metric": metric, "target": target, "value": value,
                    "pass": value is not None and value >= target})
    return out


# --- reports -------------------------------------------------------------------------------------------------------
def round_to_dict(measurement: RoundMeasurement) -> dict[str, Any]:
    """A round as stored in the JSON report (:func:`round_from_dict` reads it back)."""
    return {"raw": measurement.raw.as_dict(), "correction_ms": measurement.correction_ms,
            "runs_per_timing": measurement.runs_per_timing, "timer_resolution_ms": measurement.timer_resolution_ms}


def round_from_dict(data: dict[str, Any]) -> RoundMeasurement:
    """A round of the JSON report, to aggregate a report again (e.g. with :func:`stored_result`)."""
    return RoundMeasurement(raw=Stats(**data["raw"]), correction_ms=data["correction_ms"],
                            runs_per_timing=data["runs_per_timing"], timer_resolution_ms=data["timer_resolution_ms"])


def fmt(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def sample_markdown(name: str, sample: dict[str, Any], aggregate: str) -> list[str]:
    """The Markdown section of one sample: metrics per truth, the matrix, the noise ceiling, the networks."""
    lines = ["", f"## {name} sample", "",
             f"Table `{aggregate}` against each ground truth (aggregate of the network rounds' medians):", "",
             "| truth | within5 | within10 | tau | MAPE | mean error | max abs error |",
             "|---|---|---|---|---|---|---|"]
    for truth_name, m in sample["matrix"][aggregate].items():
        lines.append(f"| {truth_name} | {m['within5']:.3f} | {m['within10']:.3f} | {fmt(m['tau'])} | "
                     f"{m['mape']:.4f} | {m['mean_error']:+.4f} | {m['max_abs_error']:.4f} |")
    lines += ["", "Kendall tau / within10, table aggregate (rows) x truth aggregate (columns):", "",
              "| table \\ truth | " + " | ".join(TRUTH_AGGREGATES) + " |",
              "|---" * (len(TRUTH_AGGREGATES) + 1) + "|"]
    for table_name, row in sample["matrix"].items():
        lines.append(f"| {table_name} | " + " | ".join(f"{fmt(m['tau'])} / {m['within10']:.2f}"
                                                      for m in row.values()) + " |")
    noise = sample["noise"]
    lines += ["", (f"Noise ceiling: round-to-round tau {fmt(noise['round_tau'])} (median over pairs), split-half "
                   f"tau {fmt(noise['split_half_tau'])}, spread of a network's rounds "
                   f"{noise['round_spread']:.4f} (median of (max - min) / mean).")]
    if "raw_truth" in sample:
        m, raw_noise = sample["raw_truth"]["metrics"], sample["raw_truth"]["noise"]
        lines += ["", (f"Against the truth uncorrected for drift: within5 {m['within5']:.3f}, within10 "
                       f"{m['within10']:.3f}, tau {fmt(m['tau'])}, mean error {m['mean_error']:+.4f}; its split-half "
                       f"tau {fmt(raw_noise['split_half_tau'])}, round-to-round tau {fmt(raw_noise['round_tau'])}, "
                       f"spread {raw_noise['round_spread']:.4f}.")]
    if "selection" in sample:
        s = sample["selection"]
        lines += ["", (f"Selected from {s['candidates']} candidates predicted {s['candidates_min_ms']:.3f} to "
                       f"{s['candidates_max_ms']:.3f} ms by table round 0.")]
    lines += ["", "| # | predicted (ms) | measured (ms) | error |", "|---|---|---|---|"]
    for i, row in enumerate(sample["networks"]):
        lines.append(f"| {i} | {row['predicted_ms'][aggregate]:.3f} | {row['measured_ms'][aggregate]:.3f} | "
                     f"{row['error']:+.3f} |")
    return lines


def _flush_override(report: dict[str, Any]) -> str:
    """The note of the Markdown report's protocol line when ``--cache-flush-kib`` replaced the regime's flush."""
    used = report["op_protocol"]["cache_flush_kib"]
    if used == flush_kib(report["cache_regime"]):
        return ""
    return f"; but measured with a {used} KiB flush: --cache-flush-kib"


def _duet_note(report: dict[str, Any]) -> str:
    """The Markdown report's sentence on the duet (empty without one)."""
    duet, truth_duet = report.get("duet"), report.get("truth_duet")
    if not duet:
        return ""
    note = (f" Duet: every block timed between two blocks of `{duet['reference']}` (baseline "
            f"{duet['baseline_ms']:.4f} ms) and scaled by baseline / reference: {duet['blocks']} blocks, scale "
            f"p10 {duet['scale_p10']:.3f}, median {duet['scale_median']:.3f}, p90 {duet['scale_p90']:.3f}.")
    if truth_duet:
        note += (f" The samples' networks in a second duet, `{truth_duet['reference']}` (baseline "
                 f"{truth_duet['baseline_ms']:.4f} ms): {truth_duet['blocks']} blocks, scale p10 "
                 f"{truth_duet['scale_p10']:.3f}, median {truth_duet['scale_median']:.3f}, p90 "
                 f"{truth_duet['scale_p90']:.3f}.")
    return note


def _drift_note(config: dict[str, Any]) -> str:
    """The Markdown report's sentence on the truth's drift correction (empty without one)."""
    neighbours = config.get("truth_neighbours", 0)
    if not neighbours:
        return ""
    return (f" Network rounds corrected for drift by their {neighbours} neighbours on each side in the round's "
            "order; the figures against the uncorrected truth are beside.")


def markdown(report: dict[str, Any]) -> str:
    """The Markdown report."""
    c, table = report["config"], report["table"]
    lines = [
        f"# Fidelity: {c['backend']}, {c['space']} at {c['resolution']}, {c['threads']} thread(s), batch {c['batch']}",
        "",
        (f"Two samples of {c['archs']} architectures (seed {c['seed']}): uniform and stratified. Table: {table['ops']} "
         f"ops in {c['table_rounds']} rounds, aggregate `{table['aggregate']}` ({table['flagged']} flagged); "
         f"networks in {c['rounds']} rounds of {c['network_budget_s'] / c['rounds']:.2f} s; protocol "
         f"{report['protocol_version']} (preset `{c['protocol']}`, {report['cache_regime']} caches"
         f"{_flush_override(report)}). "
         f"Schedule: {' '.join(report['schedule'])}.{_duet_note(report)}{_drift_note(c)}"),
        "", "## Targets", "", "| sample | metric | target | value | verdict |", "|---|---|---|---|---|",
    ]
    lines += [f"| {v['sample']} | {v['metric']} | >= {v['target']} | {fmt(v['value'])} | "
              f"{'PASS' if v['pass'] else 'FAIL'} |" for v in report["targets"]]
    anchor = table.get("anchor")
    if anchor is not None:
        errors = [n["predicted_ms"] / n["measured_ms"] - 1 for n in anchor["networks"]]
        lines += ["", "## Anchor", "", (f"{len(anchor['networks'])} anchor networks, {table['aggregate']} of "
                                        f"{c['table_rounds']} rounds each: measured = {anchor['a_ms']:+.3f} ms + "
                                        f"{anchor['b']:.4f} x sum + {anchor.get('c_ms_per_mb', 0.0):.4f} x weight MB "
                                        f"({anchor['method']}); the plain sum was "
                                        f"{min(errors):+.3f} to {max(errors):+.3f} off them.")]
        lines += ["", "| sample | plain sum: within5 | within10 | tau | mean error |", "|---|---|---|---|---|"]
        for name in SAMPLES:
            m = report["samples"][name]["unanchored"]
            lines.append(f"| {name} | {m['within5']:.3f} | {m['within10']:.3f} | {fmt(m['tau'])} | "
                         f"{m['mean_error']:+.4f} |")
    for name in SAMPLES:
        lines += sample_markdown(name, report["samples"][name], table["aggregate"])
    conditions = report["conditions"]
    lines += ["", "## Phases", "", "| phase | wall time (s) |", "|---|---|"]
    lines += [f"| {p['phase']} | {p['wall_s']:.1f} |" for p in report["phases"]]
    lines += ["", (f"Conditions: {conditions['cpu_model']}, {conditions['cpu_cores']} cores, load average "
                   f"{conditions['loadavg_start']} at start and {conditions['loadavg_end']} at the end (other "
                   "processes share the machine).")]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], title: str, path: Path) -> None:
    """Both samples' predicted vs measured (the protocol's aggregate) with y = x and +-10% lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    aggregate = report["table"]["aggregate"]
    fig, axes = plt.subplots(1, len(SAMPLES), figsize=(11, 5.5))
    for ax, name in zip(axes, SAMPLES):
        sample = report["samples"][name]
        measured = [row["measured_ms"][aggregate] for row in sample["networks"]]
        predicted = [row["predicted_ms"][aggregate] for row in sample["networks"]]
        low, high = min(measured + predicted) * 0.95, max(measured + predicted) * 1.05
        ax.plot([low, high], [low, high], "k-", lw=1, label="y = x")
        ax.plot([low, high], [low * 1.1, high * 1.1], "k--", lw=0.8, label="+-10%")
        ax.plot([low, high], [low * 0.9, high * 0.9], "k--", lw=0.8)
        ax.scatter(measured, predicted, s=14, alpha=0.8)
        m = sample["metrics"]
        ax.set(xlim=(low, high), ylim=(low, high), xlabel=f"measured network latency (ms, {aggregate} of rounds)",
               ylabel=f"predicted: sum of per-op {aggregate}s (ms)",
               title=f"{name}: tau {fmt(m['tau'])}, within10 {m['within10']:.2f}")
        ax.legend(loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


