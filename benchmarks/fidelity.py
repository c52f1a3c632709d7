"""Fidelity of the latency table: does the sum of per-op latencies predict a whole network's latency?

On one backend and thread count, for two samples of ``--archs`` architectures of a search space:

- ``uniform``: architectures drawn uniformly (one random candidate per cell, seeded by ``--seed``);
- ``stratified``: architectures whose predicted latencies span the space from its fastest to its slowest network.
  Many candidate architectures are drawn, each with its own bias toward cheap or expensive choices (per cell a
  candidate near a random position on the cell's cheap..expensive ranking), plus the all-cheapest and the
  all-most-expensive ones (the space's minimum and maximum, since a prediction is a sum over cells); the ones
  nearest to ``--archs`` evenly spaced latencies from that minimum to that maximum are picked.

The table is built as a service job builds it (protocol 3, the ``--protocol`` preset resolved as a service resolves
it for the space: ``auto`` picks the warm or cold cache regime by the working set of the space's typical network
and this machine's per-core cache): every distinct op of the space
(stem, first block, mix, head, every MBConv candidate of every cell, and the identity block a chosen Zero becomes)
measured in ``--table-rounds`` rounds (default: the protocol's ``rounds``), each round over all ops in its own
seeded order (:func:`~profiler_service.engine.rounds.round_order`, the benchmark's seed as the job id), one
calibration cache for the whole table; an op's entry is :func:`~profiler_service.engine.rounds.stored_result` of its
rounds (the protocol's aggregate; flagged entries are upper bounds, counted in the report). Every op round is kept,
so the table is also aggregated each other way (median, min, low quantile of the rounds). As the service does by
default, every block of ops and networks is timed in a duet (``--duet op``, :mod:`profiler_service.engine.duet`:
between two blocks of a fixed reference op, stored relative to them, the rounds aggregated by their median);
``--duet none`` measures plain timings (``serve --no-duet``), ``--duet network`` with a network of the space as the
reference. Table and networks share one duet (one baseline).

Predicted latency of an architecture: the sum of its ops' entries (the prediction rule of docs/architecture.md),
anchored as the search client anchors a table (:mod:`search_client.table.anchors`): ``--anchors`` networks from the
space's cheapest to its most expensive (by table round 0) are measured end to end in every table round (after its
ops, with the network protocol, in the client's ``ANCHOR_PASSES`` passes: 2 x 3 anchor rounds), and the
prediction is ``a + b * sum + c * weight_mb`` fitted as the client fits it (Theil-Sen without the weight term,
Huber with it) on their aggregated latencies (each table aggregate is fitted on the same aggregate of the anchors'
rounds). The anchors are never in a sample. ``--anchors`` defaults to the client's default for the backend
(:func:`~search_client.table.anchors.default_anchors`: 6, 4 of them weight contrasts), so the headline is the table
a user of the client gets; the report keeps the plain sum's figures beside (``unanchored``). A table whose anchors
no bias explains (:class:`~search_client.table.anchors.AnchorFitError`) is reported unanchored, with the error, and
fails its targets.
Measured latency: ``measure_network_round`` of the whole network in ``--rounds`` rounds, each over all networks of
both samples in a fresh seeded order, each with ``--network-budget / --rounds`` seconds of timed runs. The ground
truth of a network is an aggregate of its rounds' medians: the mean (the benchmark's figure up to protocol 2), the
median, the min or the low quantile (the protocol's ``aggregate_q``); the headline compares the table and the
ground truth aggregated the protocol's way, and the report holds the whole matrix (table aggregate x truth
aggregate). ``--truth-reference network`` times the samples' networks in a second duet whose reference is the
space's middle network (its baseline measured right after the table's, so both share one moment's scale); the
anchors stay in the table's duet, as the service measures them.

Drift in the ground truth (``--truth-neighbours K``, default :data:`TRUTH_NEIGHBOURS`; 0 turns it off): a network
round measures every network once, one after the other, so a slow stretch of the machine a few seconds long
slows the networks measured in it, whichever they are. Each round median is divided by a drift factor read off
the networks measured just before and after it: the median of their ``log(round median / their truth)`` over
the K networks on each side in that round's order (:func:`drift_factors`; two passes, the truths taken from the
corrected rounds). A network's own rounds never enter its factors, and the median of the factors of a quiet
round is 1, so the scale stays the measured one (unlike ``--truth-reference network``, no second baseline). The
report keeps the figures against the uncorrected truth beside (``raw_truth``) and every round's factor.

Drift: the stratified sample needs a table to be chosen, so table round 0 comes first and selects it (its
single-round table); then network rounds and the remaining table rounds alternate symmetrically, the last table
round after the last network round: with 3 table and 6 network rounds ``T0 N0 N1 N2 T1 N3 N4 N5 T2``. The pattern
is symmetric in time, so a slow linear drift of the machine moves the table's median round (T1) and mean and the
networks' median and mean alike, and both samples are measured in the same rounds. (A single table round cannot be
centred; it comes first.)

ONNX export: an ORT backend keeps its exports in memory, as in the service
(:mod:`profiler_service.engine.backends.export_cache`): a network or op of a given spec is the same module in every
round (weights seeded by the protocol), so it is exported once; the benchmark's cache holds every network of both
samples (:data:`NETWORK_EXPORT_CACHE_BYTES`), since each round cycles through them all. ``--no-export-cache``
exports every round.

Reported per sample: share within +-5% and +-10%, Kendall's tau-b, MAPE, mean signed error, per ground-truth
aggregate; the noise ceiling of the ground truth (Kendall's tau between two rounds, median over pairs; the spread
(max - min) / mean of a network's rounds, median over networks; the split-half tau between the aggregate of the
even and of the odd rounds); the targets with PASS/FAIL (uniform: within10 >= 0.95, tau >= 0.9, within5 >= 0.90;
stratified: tau >= 0.97); the wall time of each phase. A JSON report (every op round and every network round, so
it can be aggregated again later), a Markdown report and a scatter plot of both samples are written to
``--out-dir`` (runs/benchmarks by default) as ``fidelity_<backend>_<space>_r<resolution>_s<seed>.{json,md,png}``.
The last printed line is
``fidelity backend=B space=S archs=N within5=F within10=F tau=F mape=F stratified_tau=F targets=PASS|FAIL``
(the uniform sample's headline metrics, then the stratified sample's tau). Exit code 0 when every target passes,
1 when one fails, 2 for a bad backend, space or protocol.

Example: ``.venv/bin/python -m benchmarks.fidelity --backend ort-cpu --space proxyless-mobile --archs 50``
(about 15 minutes on a 2-core machine: 75 ops x 3 rounds and 6 anchors, 100 networks x 24 rounds; see ``--help``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from benchmarks.common import OUT_DIR, loadavg
from benchmarks.fidelity_measure import (
    DUET_REFERENCES,
    NETWORK_ROUNDS,
    NETWORK_TARGET_REL_CI,
    TRUTH_NEIGHBOURS,
    TRUTH_REFERENCES,
    Network,
    Table,
    TableRounds,
    aggregate_table,
    anchor_sample,
    correct_drift,
    measure_networks_round,
    measure_table_round,
    schedule,
    stratified_sample,
    table_specs,
    unanchored,
    uniform_sample,
)
from benchmarks.fidelity_report import (
    SAMPLES,
    fmt,
    markdown,
    plot,
    round_to_dict,
    sample_report,
    verdicts,
)
from nas_ops.counting import count_flops, space_working_set_bytes
from nas_ops.space import SearchSpace, load_space
from nas_ops.spec import format_spec
from profiler_service.engine.aggregate import AGGREGATES
from profiler_service.engine.backends import Backend, get_backend
from profiler_service.engine.backends.export_cache import ExportCache
from profiler_service.engine.backends.ort_backend import OrtBackend
from profiler_service.engine.cache_regime import read_core_cache
from profiler_service.engine.calibration import CalibrationCache
from profiler_service.engine.duet import (
    DEFAULT_REFERENCE,
    Duet,
    DuetBackend,
    duet_params,
    network_reference,
    op_reference,
)
from profiler_service.engine.duet import (
    middle_architecture as duet_reference_arch,  # --duet network
)
from profiler_service.engine.fingerprint import (
    device_fingerprint,
    env_hash,
    environment,
)
from profiler_service.engine.protocol_presets import (
    PROTOCOL_PRESETS,
    ResolvedProtocol,
    ServiceProtocol,
)
from profiler_service.engine.protocol import (
    ProtocolParams,
    cache_flusher,
)
from search_client.table.anchors import (
    ANCHOR_PASSES,
    default_anchors,
)


# --- command line --------------------------------------------------------------------------------------------------
#: The export cache of a run: the 100 networks of both samples and the table's ops (a mobile network exports to
#: tens of MB), so a round that cycles through them never exports one again.
NETWORK_EXPORT_CACHE_BYTES = 8 * 2**30


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (``--help`` lists it)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--backend", default="ort-cpu", help="measurement backend (e.g. ort-cpu, torch-cpu)")
    parser.add_argument("--space", default="proxyless-mobile", help="search space: preset name or space file")
    parser.add_argument("--resolution", type=int, default=None, help="square input size (default: the space's)")
    parser.add_argument("--archs", type=int, default=50, help="architectures per sample (uniform, stratified)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples and of the round orders")
    parser.add_argument("--rounds", type=int, default=NETWORK_ROUNDS,
                        help="network rounds (each over all networks): the ground truth's moments")
    parser.add_argument("--table-rounds", type=int, default=None, help="table rounds (default: the protocol's)")
    parser.add_argument("--protocol", default="default",
                        help=f"protocol preset: {', '.join(PROTOCOL_PRESETS)} (auto: by the space's working set)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads")
    parser.add_argument("--batch", type=int, default=1, help="batch size")
    parser.add_argument("--network-budget", type=float, default=3.0,
                        help="seconds of timed runs of one network, split over its rounds (24 rounds: 0.125 s each, "
                             "at least the protocol's min_runs)")
    parser.add_argument("--op-budget", type=float, default=None,
                        help="seconds of timed runs of one op per table round (default: the preset's time_budget_s)")
    parser.add_argument("--cache-flush-kib", type=int, default=None,
                        help="protocol cache_flush_kib for ops and networks (default: the preset's)")
    parser.add_argument("--no-affinity", action="store_true", help="do not pin the measuring thread to fixed cores")
    parser.add_argument("--no-export-cache", action="store_true",
                        help="export every op and network round to ONNX again (much slower)")
    parser.add_argument("--anchors", type=int, default=None,
                        help="anchor networks the table is fitted on (0: the plain sum); default: the search "
                             "client's (6)")
    parser.add_argument("--duet", choices=(*DUET_REFERENCES, "none"), default="op",
                        help="time every block of ops and networks between two blocks of a reference and store it "
                             "relative to them (profiler_service.engine.duet): 'op', a fixed mid-size MBConv (what "
                             "the service does by default), 'network', the space's network of every cell's middle "
                             "candidate, or 'none' (plain timings, serve --no-duet); reports of a duet get a "
                             "_duet-<reference> suffix")
    parser.add_argument("--truth-reference", choices=TRUTH_REFERENCES, default="table",
                        help="the duet the samples' networks (the ground truth) are timed in: 'table', the table's "
                             "(--duet; the anchors always are), or 'network', a second duet whose reference is the "
                             "space's middle network (a reference that moves as a network does: engine.duet's "
                             "docstring); reports get a _truth-network suffix")
    parser.add_argument("--truth-neighbours", type=int, default=TRUTH_NEIGHBOURS,
                        help="divide each network round by the drift its neighbours in that round's order saw, "
                             "this many on each side (0: the uncorrected truth; module docstring)")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR, help="where the reports are written")
    args = parser.parse_args(argv)
    if args.duet == "none":
        args.duet = None
    if args.truth_reference == "network" and args.duet is None:
        parser.error("--truth-reference network needs a duet (--duet op or network)")
    if args.truth_neighbours < 0:
        parser.error("--truth-neighbours must be >= 0")
    for name in ("archs", "threads", "batch", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.anchors is not None and (args.anchors == 1 or args.anchors < 0):
        parser.error("--anchors must be 0 (no anchoring) or >= 2")
    if args.table_rounds is not None and args.table_rounds < 1:
        parser.error("--table-rounds must be >= 1")
    if args.op_budget is not None and not 0 < args.op_budget <= 600:
        parser.error("--op-budget must be in (0, 600] seconds")
    if not 0 < args.network_budget / args.rounds <= 600:
        parser.error("--network-budget / --rounds must be in (0, 600] seconds")
    return args


def resolve_protocol(args: argparse.Namespace, space: SearchSpace) -> ResolvedProtocol:
    """The preset of ``--protocol`` as a service resolves it for ``space`` (``auto``: by the working set of the
    space's typical network and this machine's per-core cache), in a duet unless ``--duet none``; ValueError for an
    unknown preset."""
    working_set = space_working_set_bytes(space, args.batch, "float32")
    duet = getattr(args, "duet", None) is not None
    return ServiceProtocol(args.protocol, read_core_cache(), duet).for_working_set(working_set)


def protocols(args: argparse.Namespace, preset: ProtocolParams) -> tuple[ProtocolParams, ProtocolParams]:
    """(op protocol, network protocol): the ``preset`` with the command line's rounds, flush and affinity;
    networks are not calibrated and get ``--network-budget / --rounds`` seconds per round. Under ``--duet`` the
    rounds are aggregated by their median and no block is set aside: a block scaled by its reference is off in
    either direction (a disturbed reference block makes it look fast), so the one-sided rules of the plain
    protocol (the lowest round, blocks far above the fastest dropped) would pick the outliers below."""
    base = (duet_params(preset, duet_label(args)) if getattr(args, "duet", None) else preset).model_dump()
    base["affinity"] = not args.no_affinity
    if args.cache_flush_kib is not None:
        base["cache_flush_kib"] = args.cache_flush_kib
    if args.table_rounds is not None:
        base["rounds"] = args.table_rounds
    if getattr(args, "op_budget", None) is not None:
        base["time_budget_s"] = args.op_budget
    op = ProtocolParams(**base)
    network = ProtocolParams(**{**base, "calibrate": False, "time_budget_s": args.network_budget / args.rounds,
                                "target_rel_ci": NETWORK_TARGET_REL_CI})
    return op, network


# --- the run -------------------------------------------------------------------------------------------------------
def load(args: argparse.Namespace) -> tuple[Backend, SearchSpace, ResolvedProtocol]:
    """Backend, space (at ``--resolution``) and protocol of the command line; ValueError for a bad one."""
    backend = get_backend(args.backend)
    space = load_space(args.space)
    if args.resolution is not None:
        space = space.with_resolution(args.resolution, args.resolution)
    return backend, space, resolve_protocol(args, space)


def progress_bar() -> Progress:
    """The progress bar of the measuring phases (stdout, cleared when done)."""
    return Progress(TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=Console(), transient=True)


def run_phases(phases_plan: Sequence[tuple[str, int]], args: argparse.Namespace, backend: Backend,
               space: SearchSpace, op_params: ProtocolParams, network_params: ProtocolParams,
               duet: Duet | None = None, truth_duet: Duet | None = None
               ) -> tuple[TableRounds, list[Network], list[dict[str, Any]], dict[str, Any]]:
    """Measure the table and network rounds of ``phases_plan`` (selecting the stratified sample after table round
    0), every op and network timed in ``duet`` when one is given (the samples' networks in ``truth_duet`` when one
    is given): the table's rounds, the networks of both samples with their rounds, each phase's wall time, and the
    stratified selection."""
    table = TableRounds(table_specs(space))
    networks = [Network("uniform", arch) for arch in uniform_sample(space, args.archs, args.seed)]
    phases: list[dict[str, Any]] = []
    selection: dict[str, Any] = {}
    calibration = CalibrationCache()  # the table is one job: its ops share their calibration values
    if isinstance(backend, OrtBackend):  # every network of both samples kept: each round cycles through them all
        backend.export_cache = ExportCache(0 if args.no_export_cache else NETWORK_EXPORT_CACHE_BYTES)
    with progress_bar() as progress:
        network_backend = backend
        truth_backend = network_backend if truth_duet is None else DuetBackend(network_backend, truth_duet)
        if duet is not None:  # one reference and baseline for the table and its anchors (and the truth by default)
            backend, network_backend = DuetBackend(backend, duet), DuetBackend(network_backend, duet)
            truth_backend = network_backend if truth_duet is None else truth_backend
        task = progress.add_task("measuring", total=op_params.rounds * len(table.specs) + args.rounds * 2 * args.archs)

        def tick(description: str) -> None:
            progress.update(task, advance=1, description=description)

        for kind, index in phases_plan:
            phase_start = time.perf_counter()
            if kind == "table":
                measure_table_round(table, index, backend, args, op_params, calibration, tick)
                if index == 0 and args.anchors:  # the anchors, chosen by the first table round
                    table.anchors = anchor_sample(space, aggregate_table(table, op_params, op_params.aggregate, 1),
                                                  args.anchors)
                    progress.update(task, total=progress.tasks[task].total
                                    + op_params.rounds * ANCHOR_PASSES * len(table.anchors))
                for anchor_pass in range(ANCHOR_PASSES if table.anchors else 0):
                    measure_networks_round(table.anchors, index * ANCHOR_PASSES + anchor_pass,
                                           op_params.rounds * ANCHOR_PASSES, network_backend, args, network_params,
                                           tick)
                label, what = f"table round {index}", f"{len(table.specs)} ops, {len(table.anchors)} anchors"
            else:
                measure_networks_round(networks, index, args.rounds, truth_backend, args, network_params, tick)
                label, what = f"network round {index}", f"{len(networks)} networks"
            phases.append({"phase": label, "wall_s": time.perf_counter() - phase_start})
            print(f"{label}: {what} in {phases[-1]['wall_s']:.1f} s")
            if kind == "table" and index == 0:  # the stratified sample, chosen with the first table round
                phase_start = time.perf_counter()
                archs, chosen_ms, selection = stratified_sample(
                    space, aggregate_table(table, op_params, op_params.aggregate, upto=1), args.archs, args.seed)
                networks += [Network("stratified", arch, selection_ms=ms) for arch, ms in zip(archs, chosen_ms)]
                phases.append({"phase": "stratified selection", "wall_s": time.perf_counter() - phase_start})
                print(f"stratified: {len(archs)} of {selection['candidates']} candidates, predicted "
                      f"{selection['candidates_min_ms']:.3f} to {selection['candidates_max_ms']:.3f} ms")
    return table, networks, phases, selection


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write its reports: 0 when every target passes, 1 when one fails, 2 for a bad
    backend, space or protocol."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        backend, space, protocol = load(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.anchors is None:
        args.anchors = default_anchors()
    op_params, network_params = protocols(args, protocol.params)
    started, loadavg_start = time.perf_counter(), loadavg()
    phases_plan = schedule(op_params.rounds, args.rounds)
    duet = start_duet(backend, space, args, op_params, network_params) if args.duet else None
    truth_duet = None
    try:
        if args.truth_reference == "network":  # its baseline right after the table's: one moment, one scale
            truth_duet = start_duet(backend, space, args, op_params, network_params, reference="network")
        table, networks, phases, selection = run_phases(phases_plan, args, backend, space, op_params,
                                                        network_params, duet, truth_duet)
    finally:
        for opened in (duet, truth_duet):
            if opened is not None:
                opened.close()
    correct_drift(networks, args.truth_neighbours)
    tables = {name: aggregate_table(table, op_params, name) for name in AGGREGATES}
    samples = {name: sample_report([n for n in networks if n.sample == name], tables, network_params)
               for name in SAMPLES}
    if args.truth_neighbours:  # the uncorrected truth's figures beside
        headline = {op_params.aggregate: tables[op_params.aggregate]}
        for name in SAMPLES:
            raw = sample_report([n for n in networks if n.sample == name], headline, network_params, raw=True)
            samples[name]["raw_truth"] = {"metrics": raw["metrics"], "noise": raw["noise"]}
    if table.anchors:  # the plain sum's figures beside the anchored headline
        plain = {op_params.aggregate: unanchored(tables[op_params.aggregate])}
        for name in SAMPLES:
            samples[name]["unanchored"] = sample_report([n for n in networks if n.sample == name], plain,
                                                        network_params)["metrics"]
    samples["stratified"]["selection"] = selection
    targets = verdicts(samples)
    if tables[op_params.aggregate].anchor_error is not None:  # the anchored table a client would refuse
        print(f"anchor fit failed: {tables[op_params.aggregate].anchor_error}", file=sys.stderr)
        targets = [{**v, "pass": False} for v in targets]
    report = build_report(args, backend, space, protocol, (op_params, network_params), table, tables, samples,
                          targets, phases_plan, phases, loadavg_start, time.perf_counter() - started)
    report["duet"] = None if duet is None else duet.describe()
    report["truth_duet"] = None if truth_duet is None else truth_duet.describe()
    write_reports(report, args.out_dir)
    print_summary(report, args.out_dir)
    return 0 if all(v["pass"] for v in targets) else 1


def duet_label(args: argparse.Namespace, reference: str | None = None) -> str:
    """The name of a duet's reference (``--duet``'s unless ``reference`` is given): the op's spec, or
    ``network:<--space>:middle``."""
    kind = args.duet if reference is None else reference
    return f"network:{args.space}:middle" if kind == "network" else DEFAULT_REFERENCE


def start_duet(backend: Backend, space: SearchSpace, args: argparse.Namespace, op_params: ProtocolParams,
               network_params: ProtocolParams, reference: str | None = None) -> Duet:
    """The duet of ``--duet`` (or of ``reference``, 'op' or 'network'): the reference prepared on ``backend`` and
    its baseline measured after the protocol's cache flush (ops and networks share it, so they must share the
    flush)."""
    if op_params.cache_flush_kib != network_params.cache_flush_kib:
        raise ValueError("--duet: ops and networks must be measured with the same cache flush")
    kind = args.duet if reference is None else reference
    if kind == "network":
        reference_module = network_reference(duet_reference_arch(space), duet_label(args, kind), args.batch)
    else:
        reference_module = op_reference()
    return Duet.start(backend, args.threads, reference_module, seed=op_params.seed,
                      before_each=cache_flusher(op_params.cache_flush_kib))


def report_stem(report: dict[str, Any]) -> str:
    """``fidelity_<backend>_<space>_r<resolution>_s<seed>``, ``_duet-<op|network>`` appended for a duet run,
    ``_truth-network`` for a truth timed against the network reference."""
    c = report["config"]
    suffix = f"_duet-{c['duet']}" if c.get("duet") else ""
    suffix += "_truth-network" if c.get("truth_reference") == "network" else ""
    return f"fidelity_{c['backend']}_{c['space']}_r{c['resolution']}_s{c['seed']}{suffix}"


def build_report(args: argparse.Namespace, backend: Backend, space: SearchSpace, protocol: ResolvedProtocol,
                 params: tuple[ProtocolParams, ProtocolParams], table: TableRounds, tables: dict[str, Table],
                 samples: dict[str, dict[str, Any]], targets: list[dict[str, Any]],
                 phases_plan: Sequence[tuple[str, int]], phases: list[dict[str, Any]], loadavg_start: Any,
                 wall_s: float) -> dict[str, Any]:
    """The JSON report (file format: the keys below; every op round and every network round is kept)."""
    env = environment(backend, args.threads)
    op_params, network_params = params
    headline = tables[op_params.aggregate]
    return {
        "config": {"backend": backend.name, "space": space.name, "resolution": space.input_size[0],
                   "archs": args.archs, "seed": args.seed, "threads": args.threads, "batch": args.batch,
                   "rounds": args.rounds, "table_rounds": op_params.rounds, "protocol": args.protocol,
                   "network_budget_s": args.network_budget, "export_cache": not args.no_export_cache,
                   "anchors": args.anchors, "duet": args.duet, "truth_reference": args.truth_reference,
                   "truth_neighbours": args.truth_neighbours},
        "protocol_version": protocol.version,
        "cache_regime": protocol.regime,
        "op_protocol": op_params.model_dump(),
        "network_protocol": network_params.model_dump(),
        "environment": env,
        "env_hash": env_hash(env),
        "conditions": {"cpu_model": device_fingerprint()["cpu_model"], "cpu_cores": os.cpu_count(),
                       "python": platform.python_version(), "loadavg_start": loadavg_start,
                       "loadavg_end": loadavg()},
        "schedule": [f"{'T' if kind == 'table' else 'N'}{index}" for kind, index in phases_plan],
        "phases": phases,
        "wall_s": wall_s,
        "table": {
            "ops": len(table.specs), "aggregate": op_params.aggregate, "flagged": len(headline.flagged),
            "flagged_by_aggregate": {name: len(t.flagged) for name, t in tables.items()},
            "build_s": sum(p["wall_s"] for p in phases if p["phase"].startswith("table")),
            "anchor": None if headline.anchor is None else {
                **headline.anchor.as_dict(),
                "by_aggregate": {name: {"a_ms": t.anchor.a_ms, "b": t.anchor.b, "c_ms_per_mb": t.anchor.c_ms_per_mb}
                                 for name, t in tables.items()
                                 if t.anchor is not None},
                "rounds": [[round_to_dict(m) for m in a.rounds] for a in table.anchors]},
            "entries": {format_spec(spec): {
                "costs_compute": count_flops(spec) > 0,
                "stored_ms": {name: t.entries[spec] for name, t in tables.items()},
                "flagged": {name: t.flagged[spec] for name, t in tables.items() if spec in t.flagged},
                "rounds": [{"round": r, **round_to_dict(m)} for r, m in enumerate(rounds)],
            } for spec, rounds in zip(table.specs, table.rounds)},
        },
        "samples": samples,
        "targets": targets,
        "passed": all(v["pass"] for v in targets),
        "anchor_error": headline.anchor_error,
    }


def write_reports(report: dict[str, Any], out_dir: Path) -> None:
    """``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / report_stem(report)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    stem.with_suffix(".md").write_text(markdown(report), encoding="utf-8")
    c = report["config"]
    plot(report, f"{c['backend']}, {c['space']} @{c['resolution']}, {c['threads']} thr, seed {c['seed']}",
         stem.with_suffix(".png"))


def print_summary(report: dict[str, Any], out_dir: Path) -> None:
    """The closing lines; the last one is the ``fidelity ...`` line of the module docstring."""
    c, table = report["config"], report["table"]
    print(f"reports: {out_dir / report_stem(report)}.{{json,md,png}}")
    networks_s = sum(p["wall_s"] for p in report["phases"] if p["phase"].startswith("network"))
    print(f"wall time: table {table['build_s']:.1f} s ({table['ops']} ops x {c['table_rounds']} rounds, "
          f"{table['flagged']} flagged), networks {networks_s:.1f} s ({2 * c['archs']} x {c['rounds']} rounds), "
          f"total {report['wall_s']:.1f} s")
    for name in SAMPLES:
        sample = report["samples"][name]
        for truth_name, m in sample["matrix"][table["aggregate"]].items():
            print(f"{name:10s} truth={truth_name:12s} within5={m['within5']:.3f} within10={m['within10']:.3f} "
                  f"tau={fmt(m['tau'])} mape={m['mape']:.4f} mean_error={m['mean_error']:+.4f}")
        if "unanchored" in sample:
            m = sample["unanchored"]
            print(f"{name:10s} plain sum (unanchored) within5={m['within5']:.3f} within10={m['within10']:.3f} "
                  f"tau={fmt(m['tau'])} mean_error={m['mean_error']:+.4f}")
        if "raw_truth" in sample:
            m, raw_noise = sample["raw_truth"]["metrics"], sample["raw_truth"]["noise"]
            print(f"{name:10s} uncorrected truth within5={m['within5']:.3f} within10={m['within10']:.3f} "
                  f"tau={fmt(m['tau'])} mean_error={m['mean_error']:+.4f} split-half tau "
                  f"{fmt(raw_noise['split_half_tau'])}")
        noise = sample["noise"]
        print(f"{name:10s} ground truth: round-to-round tau {fmt(noise['round_tau'])}, split-half tau "
              f"{fmt(noise['split_half_tau'])}, spread of the rounds {noise['round_spread']:.4f} (the noise ceiling)")
    if table.get("anchor") is not None:
        print(f"anchor: measured = {table['anchor']['a_ms']:+.3f} ms + {table['anchor']['b']:.4f} x sum + "
              f"{table['anchor'].get('c_ms_per_mb', 0.0):.4f} x weight MB "
              f"({len(table['anchor']['networks'])} networks)")
    for v in report["targets"]:
        print(f"target {v['sample']} {v['metric']} >= {v['target']}: {fmt(v['value'])} "
              f"{'PASS' if v['pass'] else 'FAIL'}")
    uniform, stratified = report["samples"]["uniform"]["metrics"], report["samples"]["stratified"]["metrics"]
    print(f"fidelity backend={c['backend']} space={c['space']} archs={c['archs']} within5={uniform['within5']:.3f} "
          f"within10={uniform['within10']:.3f} tau={fmt(uniform['tau'])} mape={uniform['mape']:.3f} "
          f"stratified_tau={fmt(stratified['tau'])} targets={'PASS' if report['passed'] else 'FAIL'}")


if __name__ == "__main__":
    raise SystemExit(main())
