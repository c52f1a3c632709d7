"""A fake machine whose speed the test sets, and runners whose runs take a fixed time times that speed: what the
duet tests (engine and job worker) drift."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from profiler_service.engine.backends.base import Runner


class Machine:
    """A fake machine whose speed factor the test sets; every run advances its clock."""

    def __init__(self) -> None:
        self.speed = 1.0
        self.now = 0.0
        self.log: list[str] = []  # "ref", "target", "flush" in the order they ran

    def clock(self) -> float:
        return self.now


class MachineRunner(Runner):
    """Runs of ``base_ms`` times the machine's speed; records each run in the machine's log."""

    def __init__(self, machine: Machine, base_ms: float, name: str) -> None:
        self.machine, self.base_ms, self.name = machine, base_ms, name
        self.closed = False

    @property
    def input(self) -> np.ndarray:
        return np.zeros(1, dtype=np.float32)

    def run(self) -> None:
        self.time_runs(1)

    def time_runs(self, count: int, before_each: Callable[[], None] | None = None) -> list[float]:
        times = []
        for _ in range(count):
            if before_each is not None:
                before_each()
            t = self.base_ms * self.machine.speed
            self.machine.now += t / 1e3
            self.machine.log.append(self.name)
            times.append(t)
        return times

    def time_group(self, count: int, runs_per_timing: int,
                   before_each: Callable[[], None] | None = None) -> list[float]:
        times = []
        for _ in range(count):
            if before_each is not None:
                before_each()
            t = self.base_ms * self.machine.speed
            self.machine.now += t * runs_per_timing / 1e3
            self.machine.log.append(f"{self.name} x{runs_per_timing}")
            times.append(t)
        return times

    def output(self) -> np.ndarray:
        return self.input

    def close(self) -> None:
        self.closed = True
