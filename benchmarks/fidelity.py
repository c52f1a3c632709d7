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

Predicted latency of an architecture: the sum of its ops' entries (the prediction rule of docs/CONTRACTS.md),
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

ONNX export: a network round of an ORT backend spends ~0.8 s exporting the 224 network to ONNX, more than its
timed runs. The network of a given architecture is the same module in every round (weights seeded by the protocol),
so its export is kept on disk for the run and reused (keyed by a digest of the module's structure and weights);
the session, warm-up and timed runs are the protocol's as they are. ``--no-export-cache`` exports every round,
as the service does. Table ops are measured exactly as a job measures them (no cache).

Reported per sample: share within +-5% and +-10%, Kendall's tau-b, MAPE, mean signed error, per ground-truth
aggregate; the noise ceiling of the ground truth (Kendall's tau between two rounds, median over pairs; the spread
(max - min) / mean of a network's rounds, median over networks; the split-half tau between the aggregate of the
even and of the odd rounds); the targets with PASS/FAIL (uniform: within10 >= 0.95, tau >= 0.9, within5 >= 0.90;
stratified: tau >= 0.97); the wall time of each phase. A JSON report (every op round and every network round, so
it can be aggregated again later), a Markdown report and a scatter plot of both samples are written to
``--out-dir`` (benchmarks/results by default) as ``fidelity_<backend>_<space>_r<resolution>_s<seed>.{json,md,png}``.
The last printed line is
``fidelity backend=B space=S archs=N within5=F within10=F tau=F mape=F stratified_tau=F targets=PASS|FAIL``
(the uniform sample's headline metrics, then the stratified sample's tau). Exit code 0 when every target passes,
1 when one fails, 2 for a bad backend, space or protocol.

Example: ``.venv/bin/python benchmarks/fidelity.py --backend ort-cpu --space proxyless-mobile --archs 50``
(about 15 minutes on a 2-core machine: 75 ops x 3 rounds and 6 anchors, 100 networks x 24 rounds; see ``--help``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from any directory

from nas_ops.arch import Architecture
from nas_ops.counting import count_flops, space_working_set_bytes, weight_bytes
from nas_ops.export import onnx_bytes
from nas_ops.space import SearchSpace, load_space
from nas_ops.spec import OpSpec, format_spec
from search_client.table.anchors import (
    ANCHOR_PASSES,
    BYTES_PER_MB,
    AnchorFitError,
    AnchorMap,
    anchor_choices,
    default_anchors,
    fit_anchor_map,
    pick_evenly,
    spread_choices,
)
from profiler_service.engine.aggregate import AGGREGATES, aggregate_function
from profiler_service.engine.backends import Backend, get_backend
from profiler_service.engine.backends.base import Runner, random_input
from profiler_service.engine.backends.ort_backend import OrtBackend, OrtRunner
from profiler_service.engine.calibration import CalibrationCache
from profiler_service.engine.duet import (
    DEFAULT_REFERENCE,
    Duet,
    DuetBackend,
    duet_params,
    network_reference,
    op_reference,
)
from profiler_service.engine.duet import middle_architecture as duet_reference_arch  # --duet network
from profiler_service.engine.fingerprint import device_fingerprint, env_hash, environment
from profiler_service.engine.cache_regime import flush_kib, read_core_cache
from profiler_service.engine.presets import PROTOCOL_PRESETS, ResolvedProtocol, ServiceProtocol
from profiler_service.engine.protocol import ProtocolParams, cache_flusher, measure_network_round, measure_op_round
from profiler_service.engine.rounds import round_order, stored_result
from profiler_service.engine.stats import RoundMeasurement, Stats

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SAMPLES = ("uniform", "stratified")
#: Ground-truth aggregates of a network's round medians: "mean" and the engine's aggregates.
TRUTH_AGGREGATES: tuple[str, ...] = ("mean", *AGGREGATES)
#: (sample, metric, lowest passing value).
TARGETS: tuple[tuple[str, str, float], ...] = (
    ("uniform", "within10", 0.95), ("uniform", "tau", 0.9), ("uniform", "within5", 0.90), ("stratified", "tau", 0.97))
NETWORK_TARGET_REL_CI = 0.005  # networks stop on their budget unless their median is this precise
DUET_REFERENCES = ("op", "network")
TRUTH_REFERENCES = ("table", "network")
#: Networks on each side of a round median whose deviations give its drift factor (:func:`drift_factors`): about
#: 2 s of a round on each side at 0.25 s per network. Chosen side by side (2, 3, 4, 6) on the saved proxyless-mobile
#: reports of 12 or more rounds (results/truth_drift_offline.md): 4 raised the truth's split-half tau, each half
#: corrected on its own, by a median +0.029 on torch-cpu (7 of 9 reports) and +0.016 on ort-cpu (11 of 14).
TRUTH_NEIGHBOURS = 4
#: Network rounds of the ground truth. torch-cpu's round medians vary 4-5% (ORT's 2%), so 12 rounds gave its truth a
#: split-half tau of only 0.76-0.82 and its uniform tau stayed under 0.9; 24 rounds of half the budget each (the
#: same 3 s a network) gave 0.90-0.94, and the first 12 of those rounds alone failed runs that all 24 passed
#: (results/fidelity_summary.md, 2026-12-05; results/truth_rounds_offline.md).
NETWORK_ROUNDS = 24
DRIFT_PASSES = 2  # the second pass takes the truths from the rounds the first one corrected
CANDIDATES_PER_ARCH = 80  # stratified sample: candidates drawn per architecture picked (at least 2,000)
Tick = Callable[[str], None]


# --- command line --------------------------------------------------------------------------------------------------
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
                        help="network rounds (each over all networks): the ground truth's moments (NETWORK_ROUNDS: "
                             "fidelity_summary.md, 2026-12-05)")
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
                        help="export every network round to ONNX again (as the service does; much slower)")
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
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="where the reports are written")
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


# --- what is measured, and when ------------------------------------------------------------------------------------
def table_specs(space: SearchSpace) -> list[OpSpec]:
    """Every distinct op an architecture of ``space`` can hold: fixed ops, MBConv candidates, identity blocks."""
    specs: dict[OpSpec, None] = dict.fromkeys(space.fixed_specs())
    for cell in space.cells():
        for index, spec in enumerate(cell.candidates):
            specs.setdefault(cell_spec(cell, index), None)
    return list(specs)


def cell_spec(cell: Any, index: int) -> OpSpec:
    """The op candidate ``index`` of ``cell`` puts in a network: a chosen Zero is an identity block."""
    if index == cell.zero_index:
        return OpSpec("identity", cell.in_chs, cell.in_chs, cell.height, cell.width)
    return cell.candidates[index]


def schedule(table_rounds: int, network_rounds: int) -> list[tuple[str, int]]:
    """The order of the phases: ``("table", k)`` and ``("networks", r)``. Table round 0 first (it selects the
    stratified sample), the last table round after the last network round, the others spread evenly between
    (symmetric in time: module docstring)."""
    if table_rounds < 1 or network_rounds < 1:
        raise ValueError("schedule: needs at least one table round and one network round")
    before = {0: [0]}  # network round index -> table rounds that precede it
    for k in range(1, table_rounds):
        before.setdefault(round(k * network_rounds / (table_rounds - 1)), []).append(k)
    phases: list[tuple[str, int]] = []
    for r in range(network_rounds + 1):
        phases += [("table", k) for k in before.get(r, [])]
        if r < network_rounds:
            phases.append(("networks", r))
    return phases


def table_order(count: int, params: ProtocolParams, seed: int, round_index: int) -> list[int]:
    """The order of table round ``round_index``: a job's order, the benchmark's seed as the job id."""
    return round_order(range(count), seed=params.seed, job_id=seed, round_index=round_index, rounds=params.rounds)


def network_order(count: int, params: ProtocolParams, seed: int, round_index: int, rounds: int) -> list[int]:
    """The order of network round ``round_index``: seeded like a job's (job id ``-1 - seed``, never the table's)."""
    return round_order(range(count), seed=params.seed, job_id=-1 - seed, round_index=round_index, rounds=rounds)


# --- ONNX export cache of the networks -------------------------------------------------------------------------------
def module_digest(module: nn.Module) -> str:
    """A digest of a module's structure and weights: equal digests export to the same ONNX model."""
    digest = hashlib.blake2b(repr(module).encode(), digest_size=20)
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().cpu().numpy())  # the buffer itself, no copy
    return digest.hexdigest()


class ExportCachingOrt(OrtBackend):
    """An ORT backend (same provider, options, name and environment as ``inner``) that exports a module to ONNX
    once and keeps the model in ``directory``; sessions, inputs and timing are the backend's own."""

    def __init__(self, inner: OrtBackend, directory: Path) -> None:
        self.__dict__.update(inner.__dict__)
        self.directory = directory
        self.exports = 0

    def _prepare(self, module: nn.Module, input_shape: tuple[int, int, int, int], dtype: str, threads: int,
                 seed: int) -> Runner:
        path = self.directory / f"{module_digest(module)}_{'x'.join(map(str, input_shape))}.onnx"
        if not path.exists():
            path.write_bytes(onnx_bytes(module, input_shape=input_shape, opset=self.options["opset"]))
            self.exports += 1
        return OrtRunner(self.create_session(path.read_bytes(), threads), random_input(input_shape, seed),
                         self.device)


# --- the table -----------------------------------------------------------------------------------------------------
@dataclass
class TableRounds:
    """The table's ops and every round measured of each (index = table round), and its anchor networks (measured
    in the table rounds; empty without anchoring)."""

    specs: list[OpSpec]
    rounds: list[list[RoundMeasurement]] = field(default_factory=list)  # rounds[i]: the rounds of specs[i]
    anchors: list[Network] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rounds = self.rounds or [[] for _ in self.specs]


@dataclass(frozen=True)
class Table:
    """One aggregate of the table: an entry (ms, the stored median) per op, the flagged ones with their reason,
    and the anchor map fitted on the same aggregate (None: not anchored; ``anchor_error``: why the fit failed)."""

    aggregate: str
    entries: dict[OpSpec, float]
    flagged: dict[OpSpec, str]
    anchor: AnchorMap | None = None
    anchor_error: str | None = None

    def predict_sum(self, arch: Architecture) -> float:
        """The unanchored prediction of ``arch``: the sum of its ops' entries."""
        return sum(self.entries[spec] for spec in arch.specs())

    def predict(self, arch: Architecture) -> float:
        """The predicted latency of ``arch``: the sum, anchored when the table is."""
        total = self.predict_sum(arch)
        return total if self.anchor is None else self.anchor.apply(total, arch_weight_mb(arch))


def aggregate_table(table: TableRounds, params: ProtocolParams, aggregate: str, upto: int | None = None) -> Table:
    """The table as a job stores it (:func:`stored_result`) under ``aggregate``, from the first ``upto`` rounds of
    each op (all by default), anchored on the same aggregate of its anchors' rounds when it has anchors."""
    with_aggregate = ProtocolParams(**{**params.model_dump(), "aggregate": aggregate})
    entries, flagged = {}, {}
    for spec, rounds in zip(table.specs, table.rounds):
        result = stored_result(rounds[:upto], with_aggregate, costs_compute=count_flops(spec) > 0)
        entries[spec] = result.stats.median_ms
        if result.flagged is not None:
            flagged[spec] = result.flagged
    plain = Table(aggregate, entries, flagged)
    if not table.anchors:
        return plain
    anchor_rounds = None if upto is None else upto * ANCHOR_PASSES
    measured = [truth(a.medians()[:anchor_rounds], aggregate, params.aggregate_q) for a in table.anchors]
    try:
        anchor = fit_anchor_map([plain.predict_sum(a.arch) for a in table.anchors], measured,
                                [a.arch.metadata["choices"] for a in table.anchors],
                                [arch_weight_mb(a.arch) for a in table.anchors])
    except AnchorFitError as exc:
        return Table(aggregate, entries, flagged, anchor_error=str(exc))
    return Table(aggregate, entries, flagged, anchor)


def unanchored(table: Table) -> Table:
    """``table`` without its anchor map (the plain sum)."""
    return Table(table.aggregate, table.entries, table.flagged)


def anchor_sample(space: SearchSpace, table: Table, count: int) -> list[Network]:
    """The anchor networks of ``space`` by ``table`` (:func:`anchor_choices`), not yet measured."""
    return [Network("anchor", space.architecture(choices)) for choices in anchor_choices(cell_costs(space, table),
                                                                                       count, cell_weights(space))]


def arch_weight_mb(arch: Architecture) -> float:
    """The weights (MB, float32) of the network of ``arch`` (every op it holds; an identity block has none)."""
    return sum(weight_bytes(spec, "float32") for spec in arch.specs()) / BYTES_PER_MB


def cell_weights(space: SearchSpace) -> list[list[float]]:
    """The weights (MB, float32) of every candidate of every cell (a chosen Zero: its identity block, none)."""
    return [[weight_bytes(cell_spec(cell, j), "float32") / BYTES_PER_MB for j in range(len(cell.candidates))]
            for cell in space.cells()]


def cell_costs(space: SearchSpace, table: Table) -> list[list[float]]:
    """The table's entry of every candidate of every cell (a chosen Zero: its identity block)."""
    return [[table.entries[cell_spec(cell, j)] for j in range(len(cell.candidates))] for cell in space.cells()]


def measure_table_round(table: TableRounds, round_index: int, backend: Backend, args: argparse.Namespace,
                        params: ProtocolParams, calibration: CalibrationCache, tick: Tick) -> None:
    """One table round: every op once, in the round's order."""
    for i in table_order(len(table.specs), params, args.seed, round_index):
        table.rounds[i].append(measure_op_round(table.specs[i], backend, args.batch, "float32", args.threads, params,
                                                calibration))
        tick(f"table round {round_index}")


# --- the networks --------------------------------------------------------------------------------------------------
@dataclass
class Network:
    """One architecture of a sample and its network rounds (index = network round; ``order`` = its place in each
    round's order)."""

    sample: str
    arch: Architecture
    rounds: list[RoundMeasurement] = field(default_factory=list)
    order: list[int] = field(default_factory=list)
    selection_ms: float | None = None  # stratified: the prediction it was picked with (table round 0)
    drift: list[float] = field(default_factory=list)  # each round's drift factor (empty: none; drift_factors)

    def medians(self, rounds: Sequence[int] | None = None, raw: bool = False) -> list[float]:
        """The round medians (ms), of the rounds at ``rounds`` (all by default), each divided by its drift factor
        unless ``raw``."""
        picked = range(len(self.rounds)) if rounds is None else rounds
        factors = self.drift if self.drift and not raw else [1.0] * len(self.rounds)
        return [self.rounds[r].raw.median_ms / factors[r] for r in picked]


def measure_networks_round(networks: Sequence[Network], round_index: int, rounds: int, backend: Backend,
                           args: argparse.Namespace, params: ProtocolParams, tick: Tick) -> None:
    """One network round: every network once, in the round's order."""
    for position, i in enumerate(network_order(len(networks), params, args.seed, round_index, rounds)):
        networks[i].rounds.append(measure_network_round(networks[i].arch, backend, args.batch, "float32",
                                                        args.threads, params))
        networks[i].order.append(position)
        tick(f"network round {round_index}")


def drift_factors(medians: Sequence[Sequence[float]], orders: Sequence[Sequence[int]], neighbours: int,
                  passes: int = DRIFT_PASSES) -> list[list[float]]:
    """The drift factor of every round median of networks measured together (module docstring): ``medians[i][r]``
    of network i in round r, measured at position ``orders[i][r]`` of that round. Each factor is exp of the median
    of ``log(median / truth)`` over the ``neighbours`` networks before and the ``neighbours`` after it in its round
    (fewer at a round's ends), the truth being a network's median over its rounds after the previous pass's factors
    (1 at first); 1 where a round has no other network."""
    logs = np.log(np.asarray(medians, dtype=float))
    positions = np.asarray(orders)
    drift = np.zeros_like(logs)
    for _ in range(passes):
        deviation = logs - np.median(logs - drift, axis=1, keepdims=True)
        updated = np.zeros_like(logs)
        for r in range(logs.shape[1]):
            sequence = np.argsort(positions[:, r], kind="stable")
            seen = deviation[sequence, r]
            for p, i in enumerate(sequence):
                window = np.concatenate([seen[max(0, p - neighbours):p], seen[p + 1:p + 1 + neighbours]])
                updated[i, r] = np.median(window) if window.size else 0.0
        drift = updated
    return np.exp(drift).tolist()


def correct_drift(networks: Sequence[Network], neighbours: int) -> None:
    """Set every network's drift factors (:func:`drift_factors`) from the networks measured in the same rounds;
    ``neighbours`` 0 or a single network: none."""
    if neighbours == 0 or len(networks) < 2:
        return
    factors = drift_factors([n.medians(raw=True) for n in networks], [n.order for n in networks], neighbours)
    for network, row in zip(networks, factors):
        network.drift = row


def uniform_sample(space: SearchSpace, count: int, seed: int) -> list[Architecture]:
    """``count`` uniformly drawn architectures (the benchmark's sample up to protocol 2, same seed, same ones)."""
    rng = random.Random(seed)
    return [space.architecture(space.random_choices(rng)) for _ in range(count)]


def stratified_sample(space: SearchSpace, table: Table, count: int, seed: int
                      ) -> tuple[list[Architecture], list[float], dict[str, Any]]:
    """``count`` architectures whose predictions under ``table`` span the space's min..max (module docstring):
    the architectures, their predictions, and a description of the selection for the report."""
    drawn = spread_choices(cell_costs(space, table), max(2000, CANDIDATES_PER_ARCH * count),
                              random.Random(f"stratified:{seed}"))
    unique = list(dict.fromkeys(map(tuple, drawn)))
    archs = [space.architecture(list(choices)) for choices in unique]
    predicted = [table.predict(arch) for arch in archs]
    picked = pick_evenly(predicted, count)
    selection = {"candidates": len(archs), "candidates_min_ms": min(predicted), "candidates_max_ms": max(predicted),
                 "selected_ms": [predicted[i] for i in picked], "table_rounds_used": 1}
    return [archs[i] for i in picked], [predicted[i] for i in picked], selection


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


def truth(medians: Sequence[float], aggregate: str, q: float) -> float:
    """The ground truth of a network from its round medians: their mean, or the engine's ``aggregate``."""
    return statistics.fmean(medians) if aggregate == "mean" else aggregate_function(aggregate, q)(medians)


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


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def sample_markdown(name: str, sample: dict[str, Any], aggregate: str) -> list[str]:
    """The Markdown section of one sample: metrics per truth, the matrix, the noise ceiling, the networks."""
    lines = ["", f"## {name} sample", "",
             f"Table `{aggregate}` against each ground truth (aggregate of the network rounds' medians):", "",
             "| truth | within5 | within10 | tau | MAPE | mean error | max abs error |",
             "|---|---|---|---|---|---|---|"]
    for truth_name, m in sample["matrix"][aggregate].items():
        lines.append(f"| {truth_name} | {m['within5']:.3f} | {m['within10']:.3f} | {_fmt(m['tau'])} | "
                     f"{m['mape']:.4f} | {m['mean_error']:+.4f} | {m['max_abs_error']:.4f} |")
    lines += ["", "Kendall tau / within10, table aggregate (rows) x truth aggregate (columns):", "",
              "| table \\ truth | " + " | ".join(TRUTH_AGGREGATES) + " |",
              "|---" * (len(TRUTH_AGGREGATES) + 1) + "|"]
    for table_name, row in sample["matrix"].items():
        lines.append(f"| {table_name} | " + " | ".join(f"{_fmt(m['tau'])} / {m['within10']:.2f}"
                                                      for m in row.values()) + " |")
    noise = sample["noise"]
    lines += ["", (f"Noise ceiling: round-to-round tau {_fmt(noise['round_tau'])} (median over pairs), split-half "
                   f"tau {_fmt(noise['split_half_tau'])}, spread of a network's rounds "
                   f"{noise['round_spread']:.4f} (median of (max - min) / mean).")]
    if "raw_truth" in sample:
        m, raw_noise = sample["raw_truth"]["metrics"], sample["raw_truth"]["noise"]
        lines += ["", (f"Against the truth uncorrected for drift: within5 {m['within5']:.3f}, within10 "
                       f"{m['within10']:.3f}, tau {_fmt(m['tau'])}, mean error {m['mean_error']:+.4f}; its split-half "
                       f"tau {_fmt(raw_noise['split_half_tau'])}, round-to-round tau {_fmt(raw_noise['round_tau'])}, "
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
    lines += [f"| {v['sample']} | {v['metric']} | >= {v['target']} | {_fmt(v['value'])} | "
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
            lines.append(f"| {name} | {m['within5']:.3f} | {m['within10']:.3f} | {_fmt(m['tau'])} | "
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
               title=f"{name}: tau {_fmt(m['tau'])}, within10 {m['within10']:.2f}")
        ax.legend(loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- the run -------------------------------------------------------------------------------------------------------
def load(args: argparse.Namespace) -> tuple[Backend, SearchSpace, ResolvedProtocol]:
    """Backend, space (at ``--resolution``) and protocol of the command line; ValueError for a bad one."""
    backend = get_backend(args.backend)
    space = load_space(args.space)
    if args.resolution is not None:
        space = space.with_resolution(args.resolution, args.resolution)
    return backend, space, resolve_protocol(args, space)


def loadavg() -> list[float]:
    """The 1, 5 and 15-minute load averages (other processes share the machine)."""
    return [round(value, 2) for value in os.getloadavg()]


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
    with tempfile.TemporaryDirectory(prefix="fidelity_onnx_") as export_dir, progress_bar() as progress:
        network_backend = backend
        if isinstance(backend, OrtBackend) and not args.no_export_cache:
            network_backend = ExportCachingOrt(backend, Path(export_dir))
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
                  f"tau={_fmt(m['tau'])} mape={m['mape']:.4f} mean_error={m['mean_error']:+.4f}")
        if "unanchored" in sample:
            m = sample["unanchored"]
            print(f"{name:10s} plain sum (unanchored) within5={m['within5']:.3f} within10={m['within10']:.3f} "
                  f"tau={_fmt(m['tau'])} mean_error={m['mean_error']:+.4f}")
        if "raw_truth" in sample:
            m, raw_noise = sample["raw_truth"]["metrics"], sample["raw_truth"]["noise"]
            print(f"{name:10s} uncorrected truth within5={m['within5']:.3f} within10={m['within10']:.3f} "
                  f"tau={_fmt(m['tau'])} mean_error={m['mean_error']:+.4f} split-half tau "
                  f"{_fmt(raw_noise['split_half_tau'])}")
        noise = sample["noise"]
        print(f"{name:10s} ground truth: round-to-round tau {_fmt(noise['round_tau'])}, split-half tau "
              f"{_fmt(noise['split_half_tau'])}, spread of the rounds {noise['round_spread']:.4f} (the noise ceiling)")
    if table.get("anchor") is not None:
        print(f"anchor: measured = {table['anchor']['a_ms']:+.3f} ms + {table['anchor']['b']:.4f} x sum + "
              f"{table['anchor'].get('c_ms_per_mb', 0.0):.4f} x weight MB "
              f"({len(table['anchor']['networks'])} networks)")
    for v in report["targets"]:
        print(f"target {v['sample']} {v['metric']} >= {v['target']}: {_fmt(v['value'])} "
              f"{'PASS' if v['pass'] else 'FAIL'}")
    uniform, stratified = report["samples"]["uniform"]["metrics"], report["samples"]["stratified"]["metrics"]
    print(f"fidelity backend={c['backend']} space={c['space']} archs={c['archs']} within5={uniform['within5']:.3f} "
          f"within10={uniform['within10']:.3f} tau={_fmt(uniform['tau'])} mape={uniform['mape']:.3f} "
          f"stratified_tau={_fmt(stratified['tau'])} targets={'PASS' if report['passed'] else 'FAIL'}")


if __name__ == "__main__":
    raise SystemExit(main())
