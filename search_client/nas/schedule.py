"""The search's schedules: the weight lr per step, and the architecture step's lr and how far it can move alpha.

Weight lr (:class:`PhasedCosineLR`): cosine from ``warmup_lr`` over the warm-up steps, then cosine from ``lr`` over
the joint steps.

Architecture lr. Adam moves each alpha by at most about ``lr`` per step (its update is ``lr * m / sqrt(v)``, about
``lr`` in size whatever the gradient's scale), so over a run of ``n`` architecture steps each alpha moves by at most
about ``reach = n * lr``. The paper's settings (lr 1e-3, one step every 5 weight steps) were made for ~100,000
architecture steps (120 ImageNet epochs): reach ~100. A 12-epoch digits search makes ~50 steps: reach 0.05, and
the probabilities stay uniform. So, unless the user sets an lr, it is scaled to the run:

    scaled_arch_lr(n) = clamp(ARCH_REACH / n, PAPER_ARCH_LR, MAX_SCALED_ARCH_LR)

(the paper's lr wherever the run is long enough for it). A schedule whose reach is under :data:`MIN_ARCH_REACH` is
reported before training by :func:`arch_schedule_warning`: with reach R, one candidate's probability can grow to
at most ``e^(2R) / (e^(2R) + N - 1)`` of N (uniform: 1/N), and only if every step pushed the same way.
"""

from __future__ import annotations

import math
from typing import Any

import torch

PAPER_ARCH_LR = 1e-3
PAPER_ARCH_EVERY = 5
ARCH_REACH = 10.0
MAX_SCALED_ARCH_LR = 0.2
MIN_ARCH_REACH = 1.0


def arch_step_count(joint_epochs: int, steps_per_epoch: int, arch_every: int) -> int:
    """Architecture steps of a run: one after every ``arch_every`` weight steps of the joint epochs."""
    return (joint_epochs * steps_per_epoch) // arch_every


def scaled_arch_lr(arch_steps: int) -> float:
    """The default architecture lr of a run of ``arch_steps`` steps (formula in the module docstring)."""
    if arch_steps <= 0:
        return MAX_SCALED_ARCH_LR
    return min(max(ARCH_REACH / arch_steps, PAPER_ARCH_LR), MAX_SCALED_ARCH_LR)


def arch_reach(arch_steps: int, arch_lr: float) -> float:
    """Adam's bound on how far each alpha can move over the run: ``arch_steps * arch_lr``."""
    return arch_steps * arch_lr


def largest_probability(reach: float, n_candidates: int) -> float:
    """The largest probability one of ``n_candidates`` can reach from uniform when each alpha moves by ``reach``."""
    grown = math.exp(min(2.0 * reach, 700.0))
    return grown / (grown + n_candidates - 1)


def arch_schedule_warning(arch_steps: int, arch_lr: float, n_candidates: int, *, scaled: bool) -> str | None:
    """A one-paragraph warning when the schedule cannot move the architecture (reach < :data:`MIN_ARCH_REACH`);
    None when it can. ``n_candidates`` is the largest candidate count of a cell; ``scaled`` says whether the lr is
    already :func:`scaled_arch_lr` (then only a longer run helps)."""
    reach = arch_reach(arch_steps, arch_lr)
    if reach >= MIN_ARCH_REACH:
        return None
    if arch_steps == 0:
        return ("the search makes no architecture step (fewer joint weight steps than arch_every): the "
                "probabilities stay uniform and the derived architecture is the initial argmax")
    top = largest_probability(reach, n_candidates)
    remedy = ("search longer (more epochs, or a smaller arch_every)" if scaled else
              f"leave the arch lr unset to scale it to the run ({scaled_arch_lr(arch_steps):.3g}), or search longer")
    return (f"the architecture can hardly move: {arch_steps} architecture steps x Adam lr {arch_lr:g} let each "
            f"alpha move by at most ~{reach:.3g} (Adam moves each by <= ~lr per step), so no probability can pass "
            f"{top:.2f} (uniform {1 / n_candidates:.2f}) and the derived architecture is chosen by noise; {remedy}")


class PhasedCosineLR:
    """Per weight step: cosine from ``warmup_lr`` over the warm-up steps, then cosine from ``lr`` over the rest."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, warmup_steps: int, joint_steps: int,
                 warmup_lr: float, lr: float) -> None:
        self.optimizer = optimizer
        self.warmup_steps, self.joint_steps = warmup_steps, joint_steps
        self.warmup_lr, self.lr = warmup_lr, lr
        self.step_count = 0
        self._apply()

    def lr_at(self, step: int) -> float:
        """The lr of weight step ``step`` (0-based, over warm-up and joint steps)."""
        if step < self.warmup_steps:
            return 0.5 * self.warmup_lr * (1 + math.cos(math.pi * step / self.warmup_steps))
        t = step - self.warmup_steps
        return 0.5 * self.lr * (1 + math.cos(math.pi * min(t, self.joint_steps) / max(1, self.joint_steps)))

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step_count)

    def step(self) -> None:
        """Move to the next weight step."""
        self.step_count += 1
        self._apply()

    def current(self) -> float:
        """The lr of the next weight step."""
        return self.lr_at(self.step_count)

    def state_dict(self) -> dict[str, Any]:
        return {"step_count": self.step_count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = int(state["step_count"])
        self._apply()
