"""The architecture schedule: the lr scaled to the run, Adam's reach, and the warning for a schedule that is stuck."""

from __future__ import annotations

import math

import pytest
import torch

from search_client.nas.schedule import (
    ARCH_REACH,
    MAX_SCALED_ARCH_LR,
    PAPER_ARCH_LR,
    arch_reach,
    arch_schedule_warning,
    arch_step_count,
    largest_probability,
    scaled_arch_lr,
)


def test_arch_step_count_is_one_per_arch_every_joint_steps() -> None:
    assert arch_step_count(12, 22, 5) == 52  # the 12-epoch digits search of the issue
    assert arch_step_count(1, 4, 5) == 0


def test_scaled_lr_gives_every_run_the_same_reach_within_bounds() -> None:
    assert scaled_arch_lr(52) == pytest.approx(ARCH_REACH / 52)
    assert arch_reach(52, scaled_arch_lr(52)) == pytest.approx(ARCH_REACH)
    assert scaled_arch_lr(10) == MAX_SCALED_ARCH_LR  # short runs: capped
    assert scaled_arch_lr(1_000_000) == PAPER_ARCH_LR  # long runs: the paper's lr
    assert scaled_arch_lr(0) == MAX_SCALED_ARCH_LR


def test_adam_moves_an_alpha_by_about_lr_per_step() -> None:
    """The bound the warning relies on: with the search's Adam (betas 0, 0.999), even a gradient that always points
    the same way moves alpha by about lr per step, whatever its scale."""
    for scale in (1e-6, 1.0, 1e3):
        alpha = torch.zeros(1, requires_grad=True)
        opt = torch.optim.Adam([alpha], lr=1e-3, betas=(0.0, 0.999), eps=1e-8)
        for _ in range(52):
            opt.zero_grad()
            (scale * alpha).sum().backward()
            opt.step()
        assert abs(alpha.item()) == pytest.approx(arch_reach(52, 1e-3), rel=0.05)


def test_paper_schedule_on_a_short_run_is_warned_about() -> None:
    message = arch_schedule_warning(52, PAPER_ARCH_LR, 7, scaled=False)
    assert message is not None
    assert "52 architecture steps x Adam lr 0.001" in message and "at most ~0.052" in message
    assert f"{largest_probability(0.052, 7):.2f}" in message and "uniform 0.14" in message
    assert f"scale it to the run ({scaled_arch_lr(52):.3g})" in message
    assert arch_schedule_warning(52, scaled_arch_lr(52), 7, scaled=True) is None
    assert "search longer" in arch_schedule_warning(2, scaled_arch_lr(2), 7, scaled=True)
    assert "no architecture step" in arch_schedule_warning(0, 0.2, 7, scaled=True)


def test_largest_probability() -> None:
    assert largest_probability(0.0, 7) == pytest.approx(1 / 7)
    assert largest_probability(1.0, 7) == pytest.approx(math.e ** 2 / (math.e ** 2 + 6))
