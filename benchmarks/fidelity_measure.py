"""Fidelity benchmark, measurement: the table and network rounds, the samples, drift correction.

The command line and the whole method are described in :mod:`benchmarks.fidelity`."""

from __future__ import annotations

import argparse
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nas_ops.arch import Architecture
from nas_ops.counting import count_flops, weight_bytes
from nas_ops.space import SearchSpace
from nas_ops.spec import OpSpec
from profiler_service.engine.aggregate import aggregate_function
from profiler_service.engine.backends import Backend
from profiler_service.engine.calibration import CalibrationCache
from profiler_service.engine.protocol import (
    ProtocolParams,
    measure_network_round,
    measure_op_round,
)
from profiler_service.engine.rounds import round_order, stored_result
from profiler_service.engine.stats import RoundMeasurement
from search_client.table.anchors import (
    ANCHOR_PASSES,
    BYTES_PER_MB,
    AnchorFitError,
    AnchorMap,
    anchor_choices,
    fit_anchor_map,
    pick_evenly,
    spread_choices,
)

NETWORK_TARGET_REL_CI = 0.005  # networks stop on their budget unless their median is this precise
DUET_REFERENCES = ("op", "network")
TRUTH_REFERENCES = ("table", "network")
#: Networks on each side of a round median whose deviations give its drift factor (:func:`drift_factors`): about
#: 2 s of a round on each side at 0.25 s per network. Chosen side by side (2, 3, 4, 6) on saved reports by the
#: truth's split-half tau (:mod:`benchmarks.analysis.truth_drift`).
TRUTH_NEIGHBOURS = 4
#: Network rounds of the ground truth: its round medians vary by a few percent (more on eager torch than on ORT), and
#: more rounds of a smaller budget each (the same 3 s a network) give a truth that agrees with itself well enough
#: to judge a table by (:mod:`benchmarks.analysis.truth_rounds` compares subsets of the rounds).
NETWORK_ROUNDS = 24
DRIFT_PASSES = 2  # the second pass takes the truths from the rounds the first one corrected
CANDIDATES_PER_ARCH = 80  # stratified sample: candidates drawn per architecture picked (at least 2,000)
Tick = Callable[[str], None]




# --- what is measured, and when ------------------------------------------------------------------------------------
def table_specs(space: SearchSpace) -> list[OpSpec]:
    """Every distinct op an architecture of ``space`` can hold: the fixed ops and each candidate's network op
    (:meth:`nas_ops.space.Cell.network_op`: a chosen Zero is an identity block, measured here because the
    benchmark predicts the networks it measures op by op)."""
    specs: dict[OpSpec, None] = dict.fromkeys(space.fixed_specs())
    for cell in space.cells():
        for index in range(len(cell.candidates)):
            specs.setdefault(cell.network_op(index), None)
    return list(specs)


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
    return [[weight_bytes(cell.network_op(j), "float32") / BYTES_PER_MB for j in range(len(cell.candidates))]
            for cell in space.cells()]


def cell_costs(space: SearchSpace, table: Table) -> list[list[float]]:
    """The table's entry of every candidate of every cell (a chosen Zero: its identity block)."""
    return [[table.entries[cell.network_op(j)] for j in range(len(cell.candidates))] for cell in space.cells()]


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

def truth(medians: Sequence[float], aggregate: str, q: float) -> float:
    """The ground truth of a network from its round medians: their mean, or the engine's ``aggregate``."""
    return statistics.fmean(medians) if aggregate == "mean" else aggregate_function(aggregate, q)(medians)
