"""Architecture updates: the BinaryConnect-style gradient estimate, the two-path rescale, DARTS and REINFORCE.

Gradient estimate (binary gates g, path weights p = softmax(alpha))::

    dL/dalpha_i = sum_j dL/dg_j * p_j * (delta_ij - p_i),     dL/dg_j = <o_j(x), dL/dy>

over all N paths (``full``, ``full_v2``) or over the sampled pair with p renormalised over the pair's two alphas
(``two``). It is added to the alphas' own gradient (the latency term's). A cell whose active path is Zero gets no
estimate and no update in that step (its alpha.grad is set to None, which Adam skips), as in the release.
After a ``two`` step the pair's updated alphas are shifted so that the unsampled paths keep their probabilities:
``offset = log(sum_S exp(alpha_new) / sum_S exp(alpha_old))``, ``alpha_k -= offset`` for k in S.

REINFORCE: sample ``samples`` architectures by p, reward = accuracy * (target / latency) ** tradeoff on a
validation batch, moving-average baseline, ascend ``mean((reward - baseline) * grad log p(arch))``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from search_client.nas.losses import LatencyLoss
from search_client.table.objective import MultiDeviceLatency
from search_client.nas.supernet import GATE_MODES, SEARCH_MODES, Supernet



def binary_connect_grad(gate_grad: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """``dL/dalpha_i = sum_j dL/dg_j p_j (delta_ij - p_i) = p_i (dL/dg_i - sum_j p_j dL/dg_j)``."""
    return probs * (gate_grad - (gate_grad * probs).sum())


def set_binary_alpha_grads(supernet: Supernet) -> list[torch.Tensor | None]:
    """Add each cell's BinaryConnect estimate to its alpha.grad after ``loss.backward()`` in a gate mode.

    Returns, per cell, the alphas before the update (for :func:`rescale_pair_alphas`), or None for a cell that
    got no estimate (active Zero, or a gate gradient that did not arrive).
    """
    before: list[torch.Tensor | None] = []
    for cell in supernet.cells:
        if cell.path_mode not in GATE_MODES:
            raise RuntimeError("set_binary_alpha_grads: the supernet is not in a gate mode (call sample_gates)")
        gates = cell.gates
        if cell.active == cell.zero_index or gates is None or gates.grad is None:
            cell.alpha.grad = None
            before.append(None)
            continue
        idx = torch.tensor(cell.involved, device=cell.alpha.device)
        alpha = cell.alpha.detach()
        estimate = binary_connect_grad(gates.grad[idx], F.softmax(alpha[idx], dim=0))
        if cell.alpha.grad is None:
            cell.alpha.grad = torch.zeros_like(alpha)
        cell.alpha.grad.index_add_(0, idx, estimate.to(alpha.dtype))
        before.append(alpha.clone())
    return before


def rescale_pair_alphas(supernet: Supernet, before: Sequence[torch.Tensor | None]) -> None:
    """After a ``two`` step: shift each updated pair so that the unsampled paths' probabilities are unchanged."""
    with torch.no_grad():
        for cell, old in zip(supernet.cells, before):
            if old is None or len(cell.involved) == cell.n_paths:
                continue
            idx = torch.tensor(cell.involved, device=cell.alpha.device)
            offset = torch.logsumexp(cell.alpha[idx], 0) - torch.logsumexp(old[idx], 0)
            cell.alpha[idx] -= offset


@dataclass
class ArchStepResult:
    """What one architecture step saw: its cross-entropy, loss, expected latency ratio (or mean reward)."""

    ce: float
    loss: float
    value: float


def gradient_arch_step(
    supernet: Supernet,
    batch: tuple[torch.Tensor, torch.Tensor],
    *,
    mode: str,
    objective: MultiDeviceLatency | None,
    loss_fn: LatencyLoss,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> ArchStepResult:
    """One architecture step by gradient: binary gates (``two``, ``full``, ``full_v2``) or the DARTS mixture.

    Weights frozen, gates reset, plain cross-entropy plus the latency term (skipped when ``objective`` is None),
    BinaryConnect estimate for the gate modes, an optimizer step, and the pair rescale in ``two`` mode.
    """
    if mode not in SEARCH_MODES:
        raise ValueError(f"mode: expected one of {', '.join(SEARCH_MODES)}, got {mode!r}")
    x, y = batch
    if mode == "darts":
        supernet.use_mixture()
    else:
        supernet.sample_gates(mode, generator)
    with supernet.training_arch():
        ce = F.cross_entropy(supernet(x), y)
        if objective is None:
            loss, value = ce, float("nan")
        else:
            probs = supernet.latency_probs()
            loss = loss_fn(ce, objective, probs)
            with torch.no_grad():
                value = float(objective.expected(supernet.probs()).item())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
    if mode != "darts":
        before = set_binary_alpha_grads(supernet)
    optimizer.step()
    if mode == "two":
        rescale_pair_alphas(supernet, before)
    return ArchStepResult(float(ce.item()), float(loss.item()), value)


class Reinforce:
    """REINFORCE architecture update with a moving-average baseline (release defaults).

    ``baseline <- decay * baseline + (1 - decay) * mean reward`` (the first update sets it to the mean). The
    released code writes ``baseline += decay * (mean - baseline)``, which with decay 0.99 is almost no averaging;
    this keeps the usual meaning of a moving average with decay 0.99.
    """

    def __init__(self, *, samples: int = 10, tradeoff: float = 0.1, baseline_decay: float = 0.99) -> None:
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"reinforce samples: must be a positive integer, got {samples!r}")
        if not 0.0 <= baseline_decay < 1.0:
            raise ValueError(f"reinforce baseline_decay: must be in [0, 1), got {baseline_decay!r}")
        if isinstance(tradeoff, bool) or not math.isfinite(tradeoff) or tradeoff < 0:
            raise ValueError(f"reinforce tradeoff: must be a finite number >= 0, got {tradeoff!r}")
        self.samples = samples
        self.tradeoff = tradeoff
        self.baseline_decay = baseline_decay
        self.baseline: float | None = None

    def reward(self, accuracy: float, latency_ratio: float | None) -> float:
        """accuracy * (target / latency) ** tradeoff; plain accuracy without a latency objective."""
        if latency_ratio is None:
            return accuracy
        return accuracy * (1.0 / latency_ratio) ** self.tradeoff

    def step(
        self,
        supernet: Supernet,
        batch: tuple[torch.Tensor, torch.Tensor],
        *,
        objective: MultiDeviceLatency | None,
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator,
    ) -> ArchStepResult:
        """Sample architectures, score them on ``batch``, and take one optimizer step on the alphas."""
        x, y = batch
        rewards, log_probs, accs = [], [], []
        for _ in range(self.samples):
            choices = supernet.sample_single(generator)
            with torch.no_grad():
                acc = float((supernet(x).argmax(dim=1) == y).float().mean().item())
            ratio = None if objective is None else objective.ratio_of(choices)
            rewards.append(self.reward(acc, ratio))
            accs.append(acc)
            log_probs.append(sum(torch.log_softmax(cell.alpha, 0)[c] for cell, c in zip(supernet.cells, choices)))
        mean_reward = sum(rewards) / len(rewards)
        if self.baseline is None:
            self.baseline = mean_reward
        else:
            self.baseline = self.baseline_decay * self.baseline + (1 - self.baseline_decay) * mean_reward
        # minimise -mean((R - b) log p): ascends the expected reward
        objective_term = -sum((r - self.baseline) * lp for r, lp in zip(rewards, log_probs)) / len(rewards)
        optimizer.zero_grad(set_to_none=True)
        objective_term.backward()
        optimizer.step()
        return ArchStepResult(float("nan"), float(objective_term.item()), mean_reward)

    def state_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.baseline = state["baseline"]
