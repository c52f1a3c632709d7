"""The over-parameterized network of a search space: fixed stem, first block, feature mix and head around one
mixed op per searchable cell.

Every module is built with :func:`nas_ops.blocks.build_op` from the space's op specs, so the paths trained here
are exactly the modules the profiler measured. Cell i holds its candidates (``Cell.candidates`` order, Zero last
where allowed) and its architecture parameters ``alpha`` (one per path, initialised ~ N(0, init_std)); the path
weights are ``p = softmax(alpha)``.

Shortcuts: in a cell with stride 1 and in == out, the MBConv candidate specs carry ``skip`` (their module adds x
itself), and the Zero path yields x, the identity. So every path of such a cell is "x + branch" and no second
shortcut is added around the mixed op. (For the gradient estimate this adds ``<x, dL/dy>`` to every dL/dg_j,
a shift that the BinaryConnect formula cancels, so the estimates equal the release's.)

Path modes of a mixed op, set for the whole network by the ``use_*`` / ``sample_*`` methods: :data:`ONE_PATH`
outside architecture steps, else the search mode (:data:`SEARCH_MODES`, the names of the paper's release and of
the command line's ``--mode``):

- ``one_path``: one path runs (the sampled, argmax or given one); the others get no gradient at all.
- ``full`` and ``two`` (:data:`GATE_MODES`, with ``full_v2``): binary gates g (one-hot on the active path, a leaf
  tensor requiring grad); the output is the active path's, and backward gives ``dL/dg_j = <o_j(x), dL/dy>`` for
  each involved path j. The inactive involved paths run under no_grad and only their outputs are kept (``full``:
  all N paths, ``two``: the sampled pair).
- ``full_v2``: as ``full``, but only the active output is kept; backward recomputes the other paths' outputs
  under no_grad one at a time.
- ``darts``: the DARTS baseline, the mixture ``sum_j p_j o_j(x)`` with every path's graph in memory.

When the active path is Zero the cell is the identity and gives no estimate in that step (as in the release).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nas_ops.blocks import build_op
from nas_ops.space import Cell, SearchSpace

#: The search modes: how an architecture step runs the paths (the release's names; the CLI's ``--mode``).
SEARCH_MODES = ("two", "full", "full_v2", "darts")
#: The search modes that train binary gates (``darts`` trains the mixture instead).
GATE_MODES = ("two", "full", "full_v2")
#: The path mode outside architecture steps (weight steps, evaluation): one path runs; not a search mode.
ONE_PATH = "one_path"


class _GateGrad(torch.autograd.Function):
    """y = o_active; backward: dL/dg_j = <o_j, dL/dy> for the involved paths whose outputs are given."""

    @staticmethod
    def forward(ctx: Any, gates: torch.Tensor, active_out: torch.Tensor, order: tuple[int, ...],
                *other_outs: torch.Tensor) -> torch.Tensor:
        ctx.order = order  # path index of active_out, then of each of other_outs
        ctx.n_gates = gates.shape[0]
        ctx.save_for_backward(active_out, *other_outs)
        return active_out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        outs = ctx.saved_tensors
        gate_grad = torch.zeros(ctx.n_gates, dtype=grad.dtype, device=grad.device)
        for j, out in zip(ctx.order, outs):
            gate_grad[j] = (out * grad).sum()
        return (gate_grad, grad, None, *([None] * (len(outs) - 1)))


class _GateGradRecompute(torch.autograd.Function):
    """y = o_active; backward recomputes each inactive path (no_grad, one at a time) for dL/dg_j = <o_j, dL/dy>."""

    @staticmethod
    def forward(ctx: Any, gates: torch.Tensor, active_out: torch.Tensor, x: torch.Tensor,
                op: MixedOp) -> torch.Tensor:
        ctx.op = op
        ctx.save_for_backward(active_out, x)
        return active_out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        active_out, x = ctx.saved_tensors
        op: MixedOp = ctx.op
        gate_grad = torch.zeros(op.n_paths, dtype=grad.dtype, device=grad.device)
        with torch.no_grad():
            for j in range(op.n_paths):
                out = active_out if j == op.active else op.path(j, x)
                gate_grad[j] = (out * grad).sum()
        return gate_grad, grad, None, None


class MixedOp(nn.Module):
    """The mixed op of one searchable cell: its candidate paths and architecture parameters ``alpha``."""

    def __init__(self, cell: Cell, alpha: torch.Tensor) -> None:
        super().__init__()
        if alpha.shape != (len(cell.candidates),):
            raise ValueError(f"alpha: expected shape ({len(cell.candidates)},), got {tuple(alpha.shape)}")
        self.cell = cell
        self.candidates = nn.ModuleList(build_op(spec) for spec in cell.candidates)
        self.alpha = nn.Parameter(alpha)
        self.zero_index = cell.zero_index
        self.has_shortcut = cell.stride == 1 and cell.in_chs == cell.out_chs
        # the path state, set by the Supernet's use_*/sample_* methods
        self.path_mode = ONE_PATH
        self.active = 0
        self.involved: tuple[int, ...] = (0,)
        self.gates: torch.Tensor | None = None

    @property
    def n_paths(self) -> int:
        return len(self.candidates)

    def probs(self) -> torch.Tensor:
        """Path weights p = softmax(alpha) (with gradient to alpha)."""
        return F.softmax(self.alpha, dim=0)

    def path(self, j: int, x: torch.Tensor) -> torch.Tensor:
        """Output of path j; the Zero path of a cell with a shortcut is the identity."""
        if j == self.zero_index and self.has_shortcut:
            return x
        return self.candidates[j](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.path_mode == "darts":
            p = self.probs()
            return sum(p[j] * self.path(j, x) for j in range(self.n_paths))  # type: ignore[return-value]
        out = self.path(self.active, x)
        if self.path_mode == ONE_PATH or self.active == self.zero_index:
            return out
        if self.gates is None:
            raise RuntimeError("mixed op in a gate mode without gates: call Supernet.sample_gates first")
        if self.path_mode == "full_v2":
            return _GateGradRecompute.apply(self.gates, out, x.detach(), self)
        others = [j for j in self.involved if j != self.active]
        with torch.no_grad():
            other_outs = [self.path(j, x) for j in others]
        return _GateGrad.apply(self.gates, out, (self.active, *others), *other_outs)


class Supernet(nn.Module):
    """stem -> blocks[0] (fixed first block) -> blocks[1:] (one MixedOp per cell) -> mix -> head.

    ``alpha`` of each cell is drawn from N(0, init_std) with ``generator``; the weights use torch's default
    initialisation (seed the global generator, or fork it, before building for a reproducible network).
    """

    def __init__(self, space: SearchSpace, *, init_std: float = 1e-3,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if isinstance(init_std, bool) or not isinstance(init_std, (int, float)) or init_std < 0:
            raise ValueError(f"init_std: must be a number >= 0, got {init_std!r}")
        self.space = space
        fixed = space.fixed_specs()
        self.stem = build_op(space.stem_spec())
        cells = [MixedOp(cell, torch.randn(len(cell.candidates), generator=generator) * init_std)
                 for cell in space.cells()]
        self.blocks = nn.ModuleList([build_op(space.first_block_spec()), *cells])
        self.mix = build_op(fixed[2]) if space.mix_chs is not None else nn.Identity()
        self.head = build_op(fixed[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(self.mix(x))

    # --- parameters -----------------------------------------------------------------------------------------
    @property
    def cells(self) -> list[MixedOp]:
        return list(self.blocks)[1:]  # type: ignore[return-value]

    def arch_parameters(self) -> list[nn.Parameter]:
        """The alphas, one per cell."""
        return [cell.alpha for cell in self.cells]

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every parameter except the alphas."""
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def probs(self) -> list[torch.Tensor]:
        """softmax(alpha) of every cell (with gradient to the alphas)."""
        return [cell.probs() for cell in self.cells]

    @contextmanager
    def training_weights(self) -> Iterator[None]:
        """Weights trainable, alphas frozen (a weight step)."""
        with self._requires_grad(weights=True, arch=False):
            yield

    @contextmanager
    def training_arch(self) -> Iterator[None]:
        """Alphas trainable, weights frozen (an architecture step): no weight gradient is computed."""
        with self._requires_grad(weights=False, arch=True):
            yield

    @contextmanager
    def _requires_grad(self, *, weights: bool, arch: bool) -> Iterator[None]:
        saved = [(p, p.requires_grad) for p in self.parameters()]
        try:
            for p in self.weight_parameters():
                p.requires_grad_(weights)
            for p in self.arch_parameters():
                p.requires_grad_(arch)
            yield
        finally:
            for p, flag in saved:
                p.requires_grad_(flag)

    # --- path selection -------------------------------------------------------------------------------------
    def _set(self, mode: str, actives: Sequence[int], involved: Sequence[tuple[int, ...]]) -> None:
        for cell, active, inv in zip(self.cells, actives, involved):
            cell.path_mode, cell.active, cell.involved = mode, int(active), tuple(int(j) for j in inv)
            cell.gates = None

    def use_choices(self, choices: Sequence[int]) -> None:
        """Run exactly the given path in every cell (one-path mode)."""
        if len(choices) != len(self.cells):
            raise ValueError(f"choices: expected {len(self.cells)} values (one per cell), got {len(choices)}")
        for i, (c, cell) in enumerate(zip(choices, self.cells)):
            if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < cell.n_paths:
                raise ValueError(f"choices[{i}]: must be an integer in [0, {cell.n_paths - 1}], got {c!r}")
        self._set(ONE_PATH, choices, [(c,) for c in choices])

    def argmax_choices(self) -> list[int]:
        """The path with the largest alpha in every cell (ties: the lowest index); deterministic."""
        return [int(torch.argmax(cell.alpha.detach()).item()) for cell in self.cells]

    def use_argmax(self) -> list[int]:
        """One-path mode on the argmax architecture; returns its choices."""
        choices = self.argmax_choices()
        self.use_choices(choices)
        return choices

    def use_mixture(self) -> None:
        """The ``darts`` mode: every path of every cell, weighted by p (the mixture)."""
        self._set("darts", [0] * len(self.cells), [tuple(range(c.n_paths)) for c in self.cells])

    def sample_single(self, generator: torch.Generator) -> list[int]:
        """Draw one path per cell with probability p (one-path mode; drawn on the CPU with the CPU
        ``generator``); returns the choices."""
        with torch.no_grad():
            choices = [int(torch.multinomial(cell.probs().cpu(), 1, generator=generator).item())
                       for cell in self.cells]
        self._set(ONE_PATH, choices, [(c,) for c in choices])
        return choices

    def sample_gates(self, mode: str, generator: torch.Generator) -> list[int]:
        """Reset the binary gates for an architecture step; returns the active paths.

        ``full`` / ``full_v2``: the active path is drawn by p, all N paths are involved. ``two``: two paths are
        drawn by p without replacement, and the active one of the pair by the softmax over their two alphas.
        """
        if mode not in GATE_MODES:
            raise ValueError(f"mode: expected one of {', '.join(GATE_MODES)}, got {mode!r}")
        actives = []
        with torch.no_grad():
            for cell in self.cells:
                # drawn on the CPU with the CPU generator: the same paths whatever device the network is on
                alpha = cell.alpha.detach().cpu()
                p = F.softmax(alpha, dim=0)
                if mode == "two" and cell.n_paths >= 2:
                    pair = torch.multinomial(p, 2, replacement=False, generator=generator)
                    pick = int(torch.multinomial(F.softmax(alpha[pair], dim=0), 1, generator=generator).item())
                    active, involved = int(pair[pick].item()), (int(pair[0].item()), int(pair[1].item()))
                else:
                    active = int(torch.multinomial(p, 1, generator=generator).item())
                    involved = tuple(range(cell.n_paths))
                cell.path_mode = mode
                cell.active, cell.involved = active, involved
                gates = torch.zeros(cell.n_paths, dtype=cell.alpha.dtype, device=cell.alpha.device)
                gates[active] = 1.0
                cell.gates = gates.requires_grad_(True)
                actives.append(active)
        return actives

    def active_modules(self) -> list[nn.Module]:
        """The modules the current one-path selection runs (a Zero path runs none)."""
        modules: list[nn.Module] = [self.stem, self.blocks[0]]
        for cell in self.cells:
            if cell.path_mode != ONE_PATH:
                raise RuntimeError("active_modules: select single paths first (use_choices, use_argmax, ...)")
            if not (cell.active == cell.zero_index and cell.has_shortcut):
                modules.append(cell.candidates[cell.active])
        return [*modules, self.mix, self.head]

    @torch.no_grad()
    def recalibrate_batchnorm(self, batches: Iterable[torch.Tensor]) -> None:
        """Re-estimate the running statistics of the active path's BN layers on ``batches`` (inputs only).

        The running statistics of a path are updated only when it is sampled, after other paths in the cells
        before it, so they do not describe one architecture; evaluating that architecture in eval mode needs
        them re-estimated (cumulative average over the batches, in order: no randomness). Other paths' BN
        layers and every weight are left as they are.
        """
        norms = [m for module in self.active_modules() for m in module.modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        saved = [(m, m.momentum) for m in norms]
        was_training = self.training
        try:
            for m in norms:
                m.reset_running_stats()
                m.momentum = None  # cumulative moving average
            self.train()
            for x in batches:
                self(x)
        finally:
            for m, momentum in saved:
                m.momentum = momentum
            self.train(was_training)

    def latency_probs(self) -> list[torch.Tensor]:
        """The per-cell path weights the latency term of this step uses (gradient to the alphas).

        softmax(alpha) over all paths, except for a cell whose gates involve a pair (``two``): there the softmax
        over the pair's two alphas, zero elsewhere (the pair is treated as the only candidates).
        """
        out = []
        for cell in self.cells:
            if cell.path_mode in GATE_MODES and len(cell.involved) < cell.n_paths:
                idx = torch.tensor(cell.involved, device=cell.alpha.device)
                pair = F.softmax(cell.alpha[idx], dim=0)
                out.append(torch.zeros_like(cell.alpha).index_put((idx,), pair))
            else:
                out.append(cell.probs())
        return out
