"""Fake clocks and runners for the protocol, duet and job tests: nothing is timed for real.

:class:`ScriptedRunner` returns the timings a function draws and advances a :class:`FakeClock` by them;
:class:`MachineRunner` is one on a :class:`Machine` whose speed the test sets (what the duet tests drift), every run
recorded in the machine's log.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from profiler_service.engine.backends.base import Runner


class FakeClock:
    """A clock (seconds) that only moves when a fake run takes time."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class ScriptedRunner(Runner):
    """Returns timings drawn from ``draw`` and advances the fake clock by them; records every timed sample."""

    def __init__(self, draw: Callable[[], float], clock: FakeClock) -> None:
        self.draw, self.clock = draw, clock
        self.timed: list[list[float]] = []  # one list per time_runs call
        self.hooks = 0
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
                self.hooks += 1
            t = self.draw()
            self.clock.now += t / 1e3
            times.append(t)
        self.timed.append(times)
        return times

    def output(self) -> np.ndarray:
        return self.input

    def close(self) -> None:
        self.closed = True


def scripted(draw: Callable[[], float]) -> tuple[ScriptedRunner, FakeClock]:
    """A runner of ``draw``'s timings and its fresh clock."""
    clock = FakeClock()
    return ScriptedRunner(draw, clock), clock


class Machine(FakeClock):
    """A fake machine whose speed factor the test sets; every run advances its clock."""

    def __init__(self) -> None:
        super().__init__()
        self.speed = 1.0
        self.log: list[str] = []  # "ref", "target", "flush" in the order they ran

    def clock(self) -> float:
        return self.now


class MachineRunner(ScriptedRunner):
    """Runs of ``base_ms`` times the machine's speed; records each run in the machine's log."""

    def __init__(self, machine: Machine, base_ms: float, name: str) -> None:
        super().__init__(self._one_run, machine)
        self.machine, self.base_ms, self.name = machine, base_ms, name

    def _one_run(self) -> float:
        self.machine.log.append(self.name)
        return self.base_ms * self.machine.speed

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
