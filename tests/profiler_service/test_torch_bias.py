"""The framework warm-up (calibration module docstring): on a backend that asks for it, every timed run of an op
but the entry op, and of every calibration graph, follows an untimed run of the warm-up op after the cache flush;
networks and the entry op are timed without it. Scripted backends only: no real timing is compared."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from nas_ops.blocks import build_op
from nas_ops.network import Network
from nas_ops.space import load_space
from nas_ops.spec import OpSpec
from profiler_service.engine import calibration
from profiler_service.engine.backends import get_backend
from profiler_service.engine.backends.base import Backend, Runner
from profiler_service.engine.backends.torch_backend import TorchBackend
from profiler_service.engine.fingerprint import env_hash
from profiler_service.engine.protocol import ProtocolParams, measure_network, measure_op

#: Fast and deterministic, but with a cache flush before every run (the state the warm-up restores follows it).
PARAMS = ProtocolParams.fast().model_copy(update={"affinity": False, "cache_flush_kib": 1})
CALL_MS, BOUNDARY_MS, MS_PER_PARAM = 0.004, 0.0015, 1e-4
#: What a run pays for each framework path that is cold when it first takes it (the flush makes them all cold).
COLD_MS = {"conv": 0.05, "linear": 0.02}


def paths(module: nn.Module) -> set[str]:
    """The framework paths a module takes: conv for any convolution, linear for the classifier (a boundary
    op's multiply is left out: its cold start is the calibration pair's too, and cancels)."""
    found = set()
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            found.add("conv")
        elif isinstance(layer, nn.Linear):
            found.add("linear")
    return found


def own_ms(module: nn.Module) -> float:
    """A module's cost with a warm framework: its parameters, or a boundary op's fixed cost."""
    if isinstance(module, calibration.ChannelScale):
        return BOUNDARY_MS
    return MS_PER_PARAM * sum(p.numel() for p in module.parameters())


class Framework:
    """The framework's state shared by all runners of a backend: the warm paths, and every event in order."""

    def __init__(self) -> None:
        self.warm: set[str] = set()
        self.events: list[str] = []


class PathRunner(Runner):
    """A run costs the call, the module's own cost and the cold start of each path it takes that is not warm;
    ``before_each`` begins with the cache flush, which makes every path cold."""

    def __init__(self, module: nn.Module, name: str, framework: Framework) -> None:
        layers = list(module) if isinstance(module, nn.Sequential) else [module]
        self.cost = CALL_MS + sum(own_ms(layer) for layer in layers)
        self.paths, self.name, self.framework = paths(module), name, framework

    @property
    def input(self) -> np.ndarray:
        return np.zeros(1, dtype=np.float32)

    def _one(self) -> float:
        cold = self.paths - self.framework.warm
        self.framework.warm |= self.paths
        self.framework.events.append(self.name)
        return self.cost + sum(COLD_MS[path] for path in cold)

    def run(self) -> None:
        self._one()

    def time_runs(self, count: int, before_each: Callable[[], None] | None = None) -> list[float]:
        times = []
        for _ in range(count):
            if before_each is not None:
                self.framework.warm.clear()
                self.framework.events.append("flush")
                before_each()
            times.append(self._one())
        return times

    def output(self) -> np.ndarray:
        return self.input


class PathBackend(Backend):
    """Runners of :class:`PathRunner`; ``warms_framework`` as given. The warm-up op's runner is named ``warmup``,
    a network's ``network``, any other module ``timed``."""

    boundary_kind = "channel_scale"

    def __init__(self, warms_framework: bool) -> None:
        self.name, self.options = "paths", {}
        self.warms_framework = warms_framework
        self.framework = Framework()

    @property
    def available(self) -> bool:
        return True

    def environment(self, threads: int) -> dict:
        return {"backend": self.name, "threads": threads}

    def _prepare(self, module: nn.Module, input_shape: tuple, dtype: str, threads: int, seed: int) -> Runner:
        if getattr(module, "is_warmup", False):
            name = "warmup"
        else:
            name = "network" if isinstance(module, Network) else "timed"
        return PathRunner(module, name, self.framework)


@pytest.fixture(autouse=True)
def tagged_warmup(monkeypatch: pytest.MonkeyPatch) -> None:
    """The warm-up module the protocol builds carries a tag, so that the backend can name its runner."""
    build = calibration.warmup_module

    def tagged() -> nn.Module:
        module = build()
        module.is_warmup = True
        return module

    monkeypatch.setattr(calibration, "warmup_module", tagged)


def _arch():
    space = load_space("micro-16")
    return space.architecture([0, space.cells()[1].zero_index, 3])


def _timed_runs_follow(events: list[str]) -> list[str]:
    """For each timed run, what ran between the flush before it and it ('' when nothing did)."""
    preceding, between = [], []
    for event in events:
        if event == "flush":
            between = []
        elif event == "warmup":
            between.append(event)
        else:
            preceding.append("+".join(between))
    return preceding


def test_every_timed_run_of_an_inner_op_and_of_its_calibration_follows_the_warm_up() -> None:
    backend = PathBackend(warms_framework=True)
    inner = next(spec for spec in _arch().specs() if spec.kind == "mbconv")
    measure_op(inner, backend, 1, "float32", 1, PARAMS)
    # the sandwich, o and the two boundary pairs: every timed run (warm-up runs included) right after flush + warm-up
    assert set(_timed_runs_follow(backend.framework.events)) == {"warmup"}


def test_the_entry_op_and_networks_are_timed_cold_like_the_start_of_a_network() -> None:
    backend = PathBackend(warms_framework=True)
    arch = _arch()
    backend.framework.events.clear()
    measure_network(arch, backend, 1, "float32", 1, PARAMS)
    assert set(_timed_runs_follow(backend.framework.events)) == {""}
    backend.framework.events.clear()
    stem = arch.specs()[0]
    assert calibration.is_entry(stem) and not calibration.warmed(stem)
    measure_op(stem, backend, 1, "float32", 1, PARAMS.model_copy(update={"calibrate": False}))
    assert set(_timed_runs_follow(backend.framework.events)) == {""}


def _stored(backend: PathBackend, specs: list[OpSpec]) -> list[float]:
    cache = calibration.CalibrationCache()
    return [measure_op(spec, backend, 1, "float32", 1, PARAMS, cache).median_ms for spec in specs]


def test_ops_cost_what_they_cost_inside_the_network_and_sum_to_the_network() -> None:
    """Inner ops come out at their own cost; the entry op with the network call and the conv path's cold start,
    the head with the linear path's (no op before it takes it, in the network either): summed, exactly what the
    same backend measures for the whole network."""
    arch = _arch()
    specs = arch.specs()
    backend = PathBackend(warms_framework=True)
    stored = _stored(backend, specs)
    expected = [own_ms(build_op(spec)) for spec in specs]
    expected[0] += CALL_MS + COLD_MS["conv"]
    expected[-1] += COLD_MS["linear"]
    assert stored == pytest.approx(expected, abs=1e-12)
    network = measure_network(arch, backend, 1, "float32", 1, PARAMS).median_ms
    assert sum(stored) == pytest.approx(network, abs=1e-12)


def test_without_the_warm_up_every_conv_op_pays_the_cold_start_the_network_pays_once() -> None:
    """The bias the warm-up removes: the calibration pair's multiply does not take the conv path, so its cold
    start is not subtracted, and each op with a convolution stores it once more."""
    specs = _arch().specs()
    cold, warm = _stored(PathBackend(warms_framework=False), specs), _stored(PathBackend(warms_framework=True), specs)
    conv_ops = [i for i, spec in enumerate(specs) if "conv" in paths(build_op(spec))]
    assert len(conv_ops) >= 3
    for i, (c, w) in enumerate(zip(cold, warm)):
        extra = COLD_MS["conv"] if i in conv_ops and i != 0 else 0.0
        assert c == pytest.approx(w + extra, abs=1e-12), specs[i]


def test_torch_cpu_asks_for_the_warm_up_and_records_it_in_its_environment() -> None:
    cpu = get_backend("torch-cpu")
    assert cpu.warms_framework and cpu.environment(1)["options"]["framework_warmup"]
    assert not TorchBackend("cuda").warms_framework and "framework_warmup" not in TorchBackend("cuda").options
    assert not get_backend("ort-cpu").warms_framework
    before = {**cpu.environment(1), "options": {k: v for k, v in cpu.options.items() if k != "framework_warmup"}}
    assert env_hash(before) != env_hash(cpu.environment(1))  # rows measured without it are not this environment's


def test_the_warm_up_op_leaves_the_callers_random_state_alone() -> None:
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    first = calibration.warmup_module()
    assert torch.equal(torch.rand(3), expected)
    second = calibration.warmup_module()
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
