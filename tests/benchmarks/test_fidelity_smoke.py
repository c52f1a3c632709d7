"""Smoke run of benchmarks/fidelity.py on the micro space, and its rules (schedule, selection, statistics)."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nas_ops.space import load_space
from nas_ops.spec import OpSpec, format_spec
from profiler_service.engine.duet import DEFAULT_REFERENCE
from profiler_service.engine.protocol import ProtocolParams
from profiler_service.engine.rounds import stored_result
from profiler_service.engine.stats import RoundMeasurement, Stats

ROOT = Path(__file__).resolve().parents[2]
from benchmarks import fidelity
from benchmarks import fidelity_measure
from benchmarks import fidelity_report

LAST_LINE = re.compile(r"fidelity backend=(\S+) space=(\S+) archs=(\d+) within5=([\d.]+) within10=([\d.]+) "
                       r"tau=(-?[\d.]+|n/a) mape=([\d.]+) stratified_tau=(-?[\d.]+|n/a) targets=(PASS|FAIL)")
METRICS = {"within5", "within10", "tau", "mape", "mean_error", "max_abs_error"}
ARCHS = 4


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], dict, Path]:
    out = tmp_path_factory.mktemp("fidelity")
    cmd = [sys.executable, "-m", "benchmarks.fidelity", "--backend", "ort-cpu", "--space", "micro-16",
           "--resolution", "12", "--archs", str(ARCHS), "--protocol", "fast", "--rounds", "2", "--table-rounds", "2",
           "--network-budget", "0.04", "--seed", "3", "--out-dir", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, check=False)
    stem = out / "fidelity_ort-cpu_micro-16_r12_s3_duet-op"  # the default: the service's duet
    report = json.loads(stem.with_suffix(".json").read_text()) if stem.with_suffix(".json").exists() else {}
    return done, report, stem


def test_smoke_run_ends_with_the_summary_line_and_exits_by_the_targets(smoke) -> None:
    done, report, _ = smoke
    assert done.returncode in (0, 1), done.stderr
    assert (done.returncode == 0) == report["passed"] == all(v["pass"] for v in report["targets"])
    lines = done.stdout.strip().splitlines()
    match = LAST_LINE.fullmatch(lines[-1])
    assert match, lines[-1]
    assert match.group(1, 2, 3) == ("ort-cpu", "micro-16", str(ARCHS))
    assert match.group(9) == ("PASS" if report["passed"] else "FAIL")
    uniform = report["samples"]["uniform"]["metrics"]
    assert float(match.group(5)) == pytest.approx(uniform["within10"], abs=1e-3)
    for phase in ("table round 0: ", "table round 1: ", "network round 0: ", "network round 1: ", "wall time: "):
        assert any(line.startswith(phase) for line in lines), phase
    verdict_lines = [line for line in lines if line.startswith("target ")]
    assert len(verdict_lines) == 4 and all(line.endswith(("PASS", "FAIL")) for line in verdict_lines)


def test_smoke_report_holds_both_samples_every_aggregate_and_the_noise_ceiling(smoke) -> None:
    _, report, stem = smoke
    assert report["config"]["seed"] == 3 and report["schedule"] == ["T0", "N0", "N1", "T1"]
    assert report["config"]["truth_neighbours"] == fidelity_measure.TRUTH_NEIGHBOURS == 4
    assert report["protocol_version"] == "4+fast+duet" and report["op_protocol"]["rounds"] == 2
    assert [p["phase"] for p in report["phases"]] == ["table round 0", "stratified selection", "network round 0",
                                                      "network round 1", "table round 1"]
    assert set(report["samples"]) == {"uniform", "stratified"}
    for sample in report["samples"].values():
        assert len(sample["networks"]) == ARCHS
        assert set(sample["matrix"]) == {"median", "min", "low_quantile"}
        for row in sample["matrix"].values():
            assert set(row) == {"mean", "median", "min", "low_quantile"}
            assert all(set(m) == METRICS for m in row.values())
        assert sample["metrics"] == sample["matrix"]["median"]["median"]  # the duet's aggregate
        assert set(sample["noise"]) == {"round_tau", "round_spread", "split_half_tau"}
        assert all(isinstance(v, float) for v in sample["noise"].values())
        for network in sample["networks"]:
            assert [r["round"] for r in network["rounds"]] == [0, 1]
            assert all(0 <= r["order"] < 2 * ARCHS and r["raw"]["median_ms"] > 0 for r in network["rounds"])
            assert all(r["drift"] > 0 for r in network["rounds"])  # 8 networks a round: corrected by default
            assert network["measured_ms"]["median"] == pytest.approx(
                sum(r["raw"]["median_ms"] / r["drift"] for r in network["rounds"]) / 2)
        assert set(sample["raw_truth"]) == {"metrics", "noise"} and set(sample["raw_truth"]["metrics"]) == METRICS
    assert [(v["sample"], v["metric"]) for v in report["targets"]] == [
        ("uniform", "within10"), ("uniform", "tau"), ("uniform", "within5"), ("stratified", "tau")]
    assert stem.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = stem.with_suffix(".md").read_text()
    assert "## Targets" in text and "## stratified sample" in text and "| table \\ truth |" in text


def test_smoke_table_keeps_every_op_round_and_can_be_aggregated_again(smoke) -> None:
    _, report, _ = smoke
    table = report["table"]
    specs = fidelity_measure.table_specs(load_space("micro-16").with_resolution(12, 12))
    assert table["ops"] == len(specs) == len(table["entries"]) and table["aggregate"] == "median"  # the duet's
    assert table["flagged"] == table["flagged_by_aggregate"]["min"] >= 0
    params = ProtocolParams(**report["op_protocol"])
    for spec in specs:
        entry = table["entries"][format_spec(spec)]
        assert [r["round"] for r in entry["rounds"]] == [0, 1]
        again = stored_result([fidelity_report.round_from_dict(r) for r in entry["rounds"]], params,
                              costs_compute=entry["costs_compute"])
        assert again.stats.median_ms == pytest.approx(entry["stored_ms"][params.aggregate])


def test_smoke_stratified_sample_spans_the_candidates(smoke) -> None:
    _, report, _ = smoke
    stratified = report["samples"]["stratified"]
    selection = stratified["selection"]
    chosen = selection["selected_ms"]
    assert len(chosen) == ARCHS and chosen == sorted(chosen)
    assert chosen[0] == pytest.approx(selection["candidates_min_ms"])
    assert chosen[-1] == pytest.approx(selection["candidates_max_ms"])
    assert [n["selection_ms"] for n in stratified["networks"]] == chosen
    assert len({tuple(n["choices"]) for n in stratified["networks"]}) == ARCHS


@pytest.mark.parametrize("args", [["--backend", "ort-nothing"], ["--protocol", "slow"]])
def test_bad_backend_or_protocol_exits_with_a_message(tmp_path: Path, args: list[str]) -> None:
    assert fidelity.main([*args, "--out-dir", str(tmp_path)]) == 2
    assert not list(tmp_path.iterdir())


def test_protocols_take_the_preset_the_table_rounds_and_split_the_network_budget() -> None:
    space = load_space("proxyless-mobile")
    args = fidelity.parse_args(["--network-budget", "1.8", "--rounds", "6", "--duet", "none"])
    resolved = fidelity.resolve_protocol(args, space)
    assert (resolved.version, resolved.regime, resolved.params) == ("4", "cold", ProtocolParams())
    op, network = fidelity.protocols(args, resolved.params)
    assert op == ProtocolParams() and op.rounds == 3
    assert not network.calibrate and network.time_budget_s == pytest.approx(0.3)
    assert network.cache_flush_kib == op.cache_flush_kib
    args = fidelity.parse_args(["--protocol", "fast", "--table-rounds", "2", "--no-affinity"])
    resolved = fidelity.resolve_protocol(args, space)
    assert resolved.version == "4+fast+duet"  # the service's default duet
    op, _ = fidelity.protocols(args, resolved.params)
    assert op.rounds == 2 and op.time_budget_s == ProtocolParams.fast().time_budget_s and not op.affinity
    for argv, reference in (["--duet", "network"], "network:proxyless-mobile:middle"), ([], DEFAULT_REFERENCE):
        args = fidelity.parse_args(argv)  # ratios are off both ways: the median, every block
        op, network = fidelity.protocols(args, fidelity.resolve_protocol(args, space).params)
        assert (op.aggregate, op.disturbed_block_rel, network.aggregate, network.disturbed_block_rel) == (
            "median", None, "median", None)
        assert op.duet_reference == network.duet_reference == reference


def test_schedule_is_symmetric_with_table_round_0_first() -> None:
    names = [f"{kind[0].upper()}{i}" for kind, i in fidelity_measure.schedule(3, 6)]
    assert names == ["T0", "N0", "N1", "N2", "T1", "N3", "N4", "N5", "T2"]
    assert [f"{k[0]}{i}" for k, i in fidelity_measure.schedule(1, 2)] == ["t0", "n0", "n1"]
    for table_rounds, network_rounds in [(2, 5), (4, 6), (5, 2)]:
        phases = fidelity_measure.schedule(table_rounds, network_rounds)
        assert phases[0] == ("table", 0) and phases[-1] == ("table", table_rounds - 1)
        assert [i for k, i in phases if k == "table"] == list(range(table_rounds))
        assert [i for k, i in phases if k == "networks"] == list(range(network_rounds))


def test_round_orders_are_seeded_shuffles_distinct_for_table_and_networks() -> None:
    params = ProtocolParams()
    orders = [fidelity_measure.table_order(20, params, 0, r) for r in range(3)]
    assert all(sorted(o) == list(range(20)) for o in orders) and len({tuple(o) for o in orders}) == 3
    assert orders[1] == fidelity_measure.table_order(20, params, 0, 1) != fidelity_measure.table_order(20, params, 1, 1)
    assert fidelity_measure.network_order(20, params, 0, 1, 3) != orders[1]


def test_kendall_tau_b() -> None:
    assert fidelity_report.kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert fidelity_report.kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # one discordant pair of six: (5 - 1) / 6
    assert fidelity_report.kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    # tau-b with a tie in y (scipy.stats.kendalltau gives 0.9128709...)
    assert fidelity_report.kendall_tau([1, 2, 3, 4], [1, 2, 2, 3]) == pytest.approx(0.9128709291752769)
    with pytest.raises(ValueError, match="same length"):
        fidelity_report.kendall_tau([1, 2], [1])


def test_table_specs_hold_fixed_ops_candidates_and_identity_blocks() -> None:
    space = load_space("micro-16")
    specs = fidelity_measure.table_specs(space)
    assert len(specs) == len(set(specs))
    assert set(space.fixed_specs()) <= set(specs)
    assert not any(spec.kind == "zero" for spec in specs)
    for cell in space.cells():
        for index, spec in enumerate(cell.candidates):
            assert (spec in specs) == (index != cell.zero_index)


def _round(median_ms: float, correction_ms: float = 0.0) -> RoundMeasurement:
    return RoundMeasurement(raw=Stats.from_samples([median_ms]), correction_ms=correction_ms,
                            timer_resolution_ms=0.001)


def test_metrics_and_truth_aggregates() -> None:
    m = fidelity_report.metrics([10.8, 18.6], [10.0, 20.0])
    assert m["within10"] == 1.0 and m["within5"] == 0.0 and m["tau"] == 1.0
    assert m["mape"] == pytest.approx(0.075) and m["mean_error"] == pytest.approx(0.005)
    assert fidelity_report.metrics([1.0], [1.0])["tau"] is None
    medians = [4.0, 1.0, 2.0, 9.0]
    assert fidelity_measure.truth(medians, "mean", 0.25) == 4.0 and fidelity_measure.truth(medians, "median", 0.25) == 3.0
    assert fidelity_measure.truth(medians, "min", 0.25) == 1.0
    assert fidelity_measure.truth(medians, "low_quantile", 0.25) == pytest.approx(1.75)


def test_aggregate_table_uses_the_engine_and_counts_flagged_entries() -> None:
    conv = OpSpec("conv", 3, 8, 12, 12, kernel=3, stride=1, act="relu6")
    identity = OpSpec("identity", 8, 8, 12, 12)
    table = fidelity_measure.TableRounds([conv, identity])
    table.rounds = [[_round(0.01, 0.01), _round(0.012, 0.012)], [_round(0.0), _round(0.0)]]
    result = fidelity_measure.aggregate_table(table, ProtocolParams(), "median")
    assert list(result.flagged) == [conv] and result.flagged[conv].startswith("calibrated_to_zero")
    assert result.entries[conv] == pytest.approx(0.011) and result.entries[identity] == 0.0  # an upper bound, not 0
    table.rounds = [[_round(2.0), _round(1.0), _round(4.0)], [_round(0.0)] * 3]
    assert fidelity_measure.aggregate_table(table, ProtocolParams(), "min").entries[conv] == 1.0
    assert fidelity_measure.aggregate_table(table, ProtocolParams(), "median", upto=1).entries[conv] == 2.0


def _network(medians: list[float], arch=None) -> "fidelity_measure.Network":
    arch = arch or load_space("micro-16").architecture([0, 0, 0])
    return fidelity_measure.Network("uniform", arch, rounds=[_round(m) for m in medians], order=list(range(len(medians))))


def test_noise_ceiling_round_tau_spread_and_split_half() -> None:
    # three networks, two rounds: round 2 swaps the ranks of the first two networks
    networks = [_network([1.0, 1.2]), _network([1.1, 1.0]), _network([2.0, 2.0])]
    ceiling = fidelity_report.noise_ceiling(networks, ProtocolParams())
    assert ceiling["round_tau"] == pytest.approx(1 / 3) and ceiling["split_half_tau"] == pytest.approx(1 / 3)
    # spreads 0.2/1.1, 0.1/1.05, 0: the median is 0.1/1.05
    assert ceiling["round_spread"] == pytest.approx(0.1 / 1.05)
    # four rounds: even rounds (0, 2) rank a < b, odd rounds (1, 3) rank b < a
    networks = [_network([1.0, 3.0, 1.0, 3.0]), _network([2.0, 2.5, 2.0, 2.5])]
    ceiling = fidelity_report.noise_ceiling(networks, ProtocolParams())
    assert ceiling["split_half_tau"] == -1.0 and ceiling["round_tau"] == -1.0
    assert fidelity_report.noise_ceiling(networks[:1], ProtocolParams())["round_tau"] is None


def _drifting_rounds(slow: dict[int, range], rounds: int = 5, count: int = 20, factor: float = 1.25
                     ) -> tuple[list[float], list[list[int]], list[list[float]]]:
    """Networks of latency 1..count measured in ``rounds`` seeded orders; in round r the positions ``slow[r]``
    run ``factor`` times slower: (true latencies, orders, round medians)."""
    rng = random.Random(7)
    true = [float(i + 1) for i in range(count)]
    orders: list[list[int]] = [[0] * rounds for _ in range(count)]
    for r in range(rounds):
        for position, i in enumerate(rng.sample(range(count), count)):
            orders[i][r] = position
    medians = [[t * (factor if orders[i][r] in slow.get(r, ()) else 1.0) for r in range(rounds)]
               for i, t in enumerate(true)]
    return true, orders, medians


def test_drift_factors_read_a_slow_stretch_off_the_neighbours() -> None:
    true, orders, medians = _drifting_rounds({2: range(6, 14)})
    factors = fidelity_measure.drift_factors(medians, orders, neighbours=4)
    for i, row in enumerate(factors):
        for r, f in enumerate(row):
            position = orders[i][r]
            if r != 2 or position <= 2 or position >= 17:  # quiet rounds, and far from the stretch
                assert f == pytest.approx(1.0), (i, r)
            elif 9 <= position <= 10:  # 7 or 8 of its 8 neighbours ran in the stretch
                assert f == pytest.approx(1.25), (i, r)
                assert medians[i][r] / f == pytest.approx(true[i])
    _, orders, medians = _drifting_rounds({1: range(20)})
    whole_round = fidelity_measure.drift_factors(medians, orders, neighbours=4)
    assert [row[1] for row in whole_round] == pytest.approx([1.25] * 20)
    assert all(row[r] == pytest.approx(1.0) for row in whole_round for r in (0, 2, 3, 4))


def test_drift_factors_never_take_a_networks_own_rounds() -> None:
    true, orders, medians = _drifting_rounds({})
    medians[5][0] *= 2.0  # one disturbed round of one network: the others' factors and its own stay 1
    factors = fidelity_measure.drift_factors(medians, orders, neighbours=4)
    assert all(f == pytest.approx(1.0) for row in factors for f in row)
    assert fidelity_measure.drift_factors([[1.0, 2.0]], [[0, 0]], neighbours=4) == [[1.0, 1.0]]


def test_correct_drift_sets_the_factors_the_medians_divide_by() -> None:
    true, orders, medians = _drifting_rounds({1: range(20)})
    space = load_space("micro-16")
    networks = [fidelity_measure.Network("uniform", space.architecture([0, 0, 0]), rounds=[_round(m) for m in row],
                                 order=order) for row, order in zip(medians, orders)]
    fidelity_measure.correct_drift(networks, 0)
    assert all(n.drift == [] and n.medians() == n.medians(raw=True) for n in networks)
    fidelity_measure.correct_drift(networks, 4)
    assert all(n.medians() == pytest.approx([t] * 5) for n, t in zip(networks, true))
    assert networks[3].medians(raw=True)[1] == pytest.approx(1.25 * true[3])
    assert fidelity_report.noise_ceiling(networks, ProtocolParams())["round_spread"] == pytest.approx(0.0)
    assert fidelity_report.noise_ceiling(networks, ProtocolParams(), raw=True)["round_spread"] == pytest.approx(0.25 / 1.05)


def test_sample_report_and_verdicts() -> None:
    space = load_space("micro-16")
    archs = [space.architecture(c) for c in ([0, 0, 0], [1, 1, 1], [2, 2, 2])]
    tables = {}
    for name, scale in (("median", 1.0), ("min", 0.9), ("low_quantile", 0.95)):
        entries = {spec: scale for spec in fidelity_measure.table_specs(space)}
        tables[name] = fidelity_measure.Table(name, entries, {})
    networks = [_network([n * 1.0, n * 1.0 + 0.2], arch) for n, arch in zip((len(a.specs()) for a in archs), archs)]
    sample = fidelity_report.sample_report(networks, tables, ProtocolParams())
    assert sample["metrics"] == sample["matrix"]["min"]["min"]
    assert set(sample["matrix"]["min"]) == set(fidelity_report.TRUTH_AGGREGATES)
    assert sample["networks"][0]["predicted_ms"]["min"] == pytest.approx(0.9 * len(archs[0].specs()))
    verdicts = fidelity_report.verdicts({"uniform": {"metrics": {"within10": 1.0, "tau": 0.8, "within5": 0.9}},
                                  "stratified": {"metrics": {"tau": None}}})
    assert [v["pass"] for v in verdicts] == [True, False, True, False]


def test_a_missed_target_exits_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fidelity_report, "TARGETS", (("uniform", "within10", 0.0), ("stratified", "mape", 2.0)))
    argv = ["--space", "micro-16", "--resolution", "8", "--archs", "2", "--protocol", "fast", "--rounds", "1",
            "--network-budget", "0.01", "--out-dir", str(tmp_path)]
    assert fidelity.main(argv) == 1  # a MAPE of 200% or more is never reached
    report = json.loads((tmp_path / "fidelity_ort-cpu_micro-16_r8_s0_duet-op.json").read_text())
    assert [v["pass"] for v in report["targets"]] == [True, False] and report["passed"] is False
    assert report["schedule"] == ["T0", "N0"]
    assert all(s["noise"]["round_tau"] is None for s in report["samples"].values())


def _rounds(*medians: float) -> list[RoundMeasurement]:
    return [RoundMeasurement(raw=Stats.from_samples([m] * 5)) for m in medians]


def test_anchored_table_predicts_through_the_fit_of_its_anchors_rounds() -> None:
    space = load_space("micro-16").with_resolution(12, 12)
    table = fidelity_measure.TableRounds(fidelity_measure.table_specs(space))
    table.rounds = [_rounds(0.1 + 0.01 * i, 0.2 + 0.01 * i) for i in range(len(table.specs))]
    params = ProtocolParams()
    plain = fidelity_measure.aggregate_table(table, params, "min")
    table.anchors = fidelity_measure.anchor_sample(space, plain, 4)
    assert [a.arch.metadata["choices"] for a in table.anchors[:1]] == [
        [min(range(len(c.candidates)), key=lambda j, c=c: (plain.entries[c.network_op(j)], j))
         for c in space.cells()]]
    for anchor in table.anchors:  # anchors 20% slower than the sum plus 0.05 ms; a slower second round
        sum_ms = plain.predict_sum(anchor.arch)
        anchor.rounds = _rounds(0.05 + 1.2 * sum_ms, 2 * (0.05 + 1.2 * sum_ms))
    anchored = fidelity_measure.aggregate_table(table, params, "min")
    assert anchored.anchor.b == pytest.approx(1.2) and anchored.anchor.a_ms == pytest.approx(0.05)
    arch = space.architecture([0] * len(space.cells()))
    assert anchored.predict(arch) == pytest.approx(0.05 + 1.2 * plain.predict(arch))
    assert fidelity_measure.unanchored(anchored).predict(arch) == pytest.approx(plain.predict(arch))
    for anchor in table.anchors:  # anchors that no bias explains: reported, not fitted
        anchor.rounds = _rounds(5.0 / plain.predict_sum(anchor.arch))
    failed = fidelity_measure.aggregate_table(table, params, "min")
    assert failed.anchor is None and "disagree beyond a bias" in failed.anchor_error


def test_anchors_default_to_the_clients_choice_for_the_backend() -> None:
    assert fidelity.parse_args([]).anchors is None
    assert fidelity.parse_args(["--anchors", "0"]).anchors == 0
    with pytest.raises(SystemExit):
        fidelity.parse_args(["--anchors", "1"])


def test_the_markdown_says_when_the_flush_was_not_the_regimes() -> None:
    report = {"cache_regime": "flush1024", "op_protocol": {"cache_flush_kib": 1024}, "config": {"protocol": "auto"}}
    assert fidelity_report._flush_override(report) == ""
    report["op_protocol"]["cache_flush_kib"] = 0
    assert fidelity_report._flush_override(report) == "; but measured with a 0 KiB flush: --cache-flush-kib"
    assert fidelity_report._flush_override({"cache_regime": "warm", "op_protocol": {"cache_flush_kib": 0}}) == ""


def test_duet_runs_name_their_reference_in_the_report_stem_and_the_markdown() -> None:
    assert fidelity.parse_args([]).duet == "op"  # the service's default
    assert fidelity.parse_args(["--duet", "none"]).duet is None
    assert fidelity.parse_args(["--duet", "network"]).duet == "network"
    with pytest.raises(SystemExit):
        fidelity.parse_args(["--duet", "canary"])
    report = {"config": {"backend": "ort-cpu", "space": "micro-16", "resolution": 12, "seed": 3, "duet": "op"},
              "duet": {"reference": "mbconv_r28x28_c40-40_k5_e6_s1_relu6_skip", "baseline_ms": 0.5, "blocks": 10,
                       "scale_p10": 0.9, "scale_median": 1.0, "scale_p90": 1.2}}
    assert fidelity.report_stem(report) == "fidelity_ort-cpu_micro-16_r12_s3_duet-op"
    assert "between two blocks of `mbconv_r28x28_c40-40_k5_e6_s1_relu6_skip`" in fidelity_report._duet_note(report)
    assert "p90 1.200" in fidelity_report._duet_note(report)
    plain = {"config": {**report["config"], "duet": None}, "duet": None}
    assert fidelity.report_stem(plain) == "fidelity_ort-cpu_micro-16_r12_s3" and fidelity_report._duet_note(plain) == ""


def test_the_duet_reference_network_takes_every_cells_middle_candidate() -> None:
    space = load_space("proxyless-mobile").with_resolution(96, 96)
    arch = fidelity.duet_reference_arch(space)
    assert arch.metadata["choices"] == [len(cell.candidates) // 2 for cell in space.cells()]


def test_truth_reference_network_times_the_samples_in_a_second_duet(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        fidelity.parse_args(["--duet", "none", "--truth-reference", "network"])
    cmd = [sys.executable, "-m", "benchmarks.fidelity", "--backend", "ort-cpu", "--space", "micro-16",
           "--resolution", "12", "--archs", "3", "--protocol", "fast", "--rounds", "2", "--table-rounds", "1",
           "--network-budget", "0.02", "--anchors", "0", "--seed", "4", "--truth-reference", "network",
           "--out-dir", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode in (0, 1), done.stderr
    stem = tmp_path / "fidelity_ort-cpu_micro-16_r12_s4_duet-op_truth-network"
    report = json.loads(stem.with_suffix(".json").read_text())
    assert report["config"]["truth_reference"] == "network"
    assert report["duet"]["reference"] == DEFAULT_REFERENCE
    assert report["truth_duet"]["reference"] == "network:micro-16:middle"
    network_rounds = sum(len(network["rounds"]) for name in ("uniform", "stratified")
                         for network in report["samples"][name]["networks"])
    assert network_rounds == 2 * 3 * 2
    assert report["truth_duet"]["blocks"] >= network_rounds  # at least a block in every round of every network
    assert "The samples' networks in a second duet, `network:micro-16:middle`" in stem.with_suffix(".md").read_text()
