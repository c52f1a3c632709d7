"""Duet measurement: a module's blocks scaled by a reference timed around them cancel a change of the machine's
speed; the wrapper backend times every runner it prepares that way."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from nas_ops.blocks import build_op
from nas_ops.space import load_space
from nas_ops.spec import parse_spec
from profiler_service.engine.backends import get_backend
from profiler_service.engine.backends.base import Runner
from profiler_service.engine.duet import (
    DEFAULT_REFERENCE,
    MIN_REFERENCE_RUNS,
    Duet,
    DuetBackend,
    DuetRunner,
    network_reference,
    op_reference,
)
from profiler_service.engine.fingerprint import env_hash
from profiler_service.engine.protocol import ProtocolParams, time_runner
from tests.profiler_service.machine_fakes import Machine, MachineRunner


def duet_of(machine: Machine, target_ms: float = 2.0, reference_ms: float = 0.5) -> tuple[DuetRunner, Duet]:
    duet = Duet(MachineRunner(machine, reference_ms, "ref"), baseline_ms=reference_ms, run_wall_s=reference_ms / 1e3,
                clock=machine.clock)
    return duet.wrap(MachineRunner(machine, target_ms, "target")), duet


def test_a_change_of_speed_cancels_in_the_duet() -> None:
    machine = Machine()
    runner, duet = duet_of(machine)
    assert runner.time_runs(4) == pytest.approx([2.0] * 4)
    machine.speed = 1.8  # the whole machine slows down
    assert runner.time_runs(4) == pytest.approx([2.0] * 4)
    assert runner.target.time_runs(1) == pytest.approx([3.6])  # what a plain timing would have stored
    assert duet.scales == pytest.approx([1.0, 1 / 1.8])
    assert duet.describe()["blocks"] == 2 and duet.describe()["scale_p90"] == pytest.approx(1.0, rel=0.1)


def test_reference_blocks_come_before_and_after_and_last_half_the_previous_block() -> None:
    machine = Machine()
    runner, _ = duet_of(machine, target_ms=2.0, reference_ms=0.5)
    runner.time_runs(2)  # no previous block: the minimum on each side
    assert machine.log == ["ref"] * MIN_REFERENCE_RUNS + ["target"] * 2 + ["ref"] * MIN_REFERENCE_RUNS
    machine.log.clear()
    runner.time_runs(10)  # previous block 4 ms of wall time: 2 ms of reference on each side, 4 runs of 0.5 ms
    assert machine.log == ["ref"] * 4 + ["target"] * 10 + ["ref"] * 4
    machine.log.clear()
    runner.time_runs(1)  # previous block 20 ms: 10 ms on each side
    assert machine.log.count("ref") == 2 * 20


def test_the_flush_runs_before_every_reference_and_module_run() -> None:
    machine = Machine()
    runner, _ = duet_of(machine)
    runner.time_runs(2, before_each=lambda: machine.log.append("flush"))
    assert machine.log == (["flush", "ref"] * MIN_REFERENCE_RUNS + ["flush", "target"] * 2
                           + ["flush", "ref"] * MIN_REFERENCE_RUNS)


def test_groups_are_scaled_and_size_the_next_reference_block_by_their_runs() -> None:
    machine = Machine()
    runner, duet = duet_of(machine, target_ms=0.01, reference_ms=0.5)
    machine.speed = 2.0
    assert runner.time_group(3, 100) == pytest.approx([0.01] * 3)  # 100 runs per timing, 2x slower: cancelled
    machine.log.clear()
    runner.time_runs(1)  # the groups took 3 x 100 x 0.02 ms = 6 ms; 3 ms of reference per side at baseline 0.5
    assert machine.log.count("ref") == 2 * 6
    assert duet.scales[0] == pytest.approx(0.5)


def drifting(machine: Machine, runner: Runner) -> Runner:
    """``runner`` with the machine a little slower at every timed call (1.0x to 1.7x over 100 calls)."""
    speeds = iter(np.linspace(1.0, 1.7, 100))
    time_runs = runner.time_runs

    def slower_each_call(count: int, before_each: Callable[[], None] | None = None) -> list[float]:
        machine.speed = next(speeds)
        return time_runs(count, before_each)

    runner.time_runs = slower_each_call  # type: ignore[method-assign]
    return runner


@pytest.mark.parametrize("in_duet", [True, False])
def test_time_runner_through_a_duet_stores_the_drift_free_latency(in_duet: bool) -> None:
    machine = Machine()
    runner = duet_of(machine)[0] if in_duet else MachineRunner(machine, 2.0, "target")
    params = ProtocolParams(warmup_runs=2, warmup_s=0.0, min_runs=30, min_blocks=3, min_block_runs=10, block_s=1e-9,
                            affinity=False, time_budget_s=10.0, target_rel_ci=1e-3, max_runs=100)
    timing = time_runner(drifting(machine, runner), params, clock=machine.clock)
    if in_duet:  # every block reads 2.0 ms: three blocks, a CI of width 0
        assert (timing.stopped_by, timing.runs, timing.discarded_blocks) == ("precision", 30, 0)
        assert timing.samples == pytest.approx([2.0] * 30)
    else:  # the drift leaves blocks out and still moves the median
        assert timing.discarded_blocks > 0
        assert np.median(timing.samples) > 2.0 * 1.02


@pytest.mark.parametrize("kind", ["op", "network"])
def test_duet_backend_wraps_every_runner_and_names_the_reference_in_its_environment(kind: str) -> None:
    inner = get_backend("ort-cpu")
    if kind == "op":
        reference = op_reference()
    else:
        space = load_space("micro-16").with_resolution(12, 12)
        reference = network_reference(space.architecture([0] * len(space.cells())), "network:micro-16")
    duet = Duet.start(inner, 1, reference, blocks=3, block_runs=3)
    try:
        assert duet.baseline_ms > 0 and duet.run_wall_s > 0 and duet.label == reference[2]
        backend = DuetBackend(inner, duet)
        assert (backend.name, backend.options, backend.dtypes) == (inner.name, inner.options, inner.dtypes)
        environment = backend.environment(1)
        assert environment["duet_reference"] == reference[2]
        assert env_hash(environment) != env_hash(inner.environment(1))
        spec = parse_spec("mbconv_r8x8_c8-8_k3_e3_s1_relu6_skip")
        with backend.prepare(build_op(spec), (1, *spec.input_shape), "float32", 1) as runner:
            assert isinstance(runner, DuetRunner)
            times = runner.time_runs(5)
            assert len(times) == 5 and all(t > 0 for t in times)
            assert runner.output().shape == (1, 8, 8, 8)
        assert len(duet.scales) == 1
    finally:
        duet.close()


def test_the_default_reference_op_is_a_mid_size_mbconv() -> None:
    module, shape, label = op_reference()
    assert label == DEFAULT_REFERENCE and shape == (1, 40, 28, 28)
    assert not module.training


def test_a_duet_that_timed_nothing_describes_no_scale() -> None:
    duet = Duet(MachineRunner(Machine(), 0.5, "ref"), baseline_ms=0.5, run_wall_s=5e-4)
    assert duet.describe() == {"reference": DEFAULT_REFERENCE, "baseline_ms": 0.5, "blocks": 0, "scale_p10": None,
                               "scale_median": None, "scale_p90": None}


def test_a_duet_needs_a_positive_baseline() -> None:
    machine = Machine()
    with pytest.raises(ValueError, match="baseline_ms"):
        Duet(MachineRunner(machine, 0.5, "ref"), baseline_ms=0.0, run_wall_s=1e-3)
    with pytest.raises(ValueError, match="run_wall_s"):
        Duet(MachineRunner(machine, 0.5, "ref"), baseline_ms=0.5, run_wall_s=0.0)
