"""Architecture updates: dL/dg, the BinaryConnect estimate, Zero, the two-path rescale, DARTS and REINFORCE."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nas_ops.space import SPACES
from search_client.nas.gradients import (
    Reinforce,
    binary_connect_grad,
    gradient_arch_step,
    rescale_pair_alphas,
    set_binary_alpha_grads,
)
from search_client.nas.losses import LatencyLoss
from search_client.table.objective import MultiDeviceLatency
from search_client.nas.supernet import MixedOp, Supernet
from tests.search_client.conftest import make_table

torch.set_num_threads(1)


def _net(seed: int = 0) -> Supernet:
    torch.manual_seed(seed)
    net = Supernet(SPACES["micro-16"], generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for op in net.cells:
            op.alpha.copy_(torch.randn(op.n_paths) * 0.5)
    return net


def _toy_cell(net: Supernet) -> tuple[MixedOp, torch.Tensor, torch.Tensor]:
    """Cell 0 in eval mode, an input, and w: with L = <y, w>, dL/dy = w and dL/dg_j = <o_j(x), w> exactly."""
    op = net.cells[0]
    op.eval()
    gen = torch.Generator().manual_seed(4)
    return op, torch.randn(2, 8, 16, 16, generator=gen), torch.randn(2, 8, 16, 16, generator=gen)


def _known_gate_grads(op: MixedOp, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack([(op.path(j, x) * w).sum() for j in range(op.n_paths)])


def _formula(gate_grad: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """sum_j dL/dg_j p_j (delta_ij - p_i), written as the double sum."""
    n = len(p)
    return torch.stack([sum(gate_grad[j] * p[j] * ((1.0 if i == j else 0.0) - p[i]) for j in range(n))
                        for i in range(n)])


def test_binary_connect_grad_is_the_double_sum() -> None:
    gen = torch.Generator().manual_seed(0)
    g, p = torch.randn(7, generator=gen, dtype=torch.float64), F.softmax(torch.randn(7, dtype=torch.float64), 0)
    torch.testing.assert_close(binary_connect_grad(g, p), _formula(g, p))
    assert abs(float(binary_connect_grad(g, p).sum())) < 1e-12  # the estimate sums to zero over the paths


@pytest.mark.parametrize("strategy", ["full", "full_v2"])
def test_gate_grads_and_estimate_match_the_formula(strategy: str) -> None:
    net = _net()
    op, x, w = _toy_cell(net)
    known = _known_gate_grads(op, x, w)
    gen = torch.Generator().manual_seed(0)
    while True:  # an active path that is not Zero (Zero gives no estimate)
        net.sample_gates(strategy, gen)
        if op.active != op.zero_index:
            break
    with net.training_arch():
        (op(x) * w).sum().backward()
    torch.testing.assert_close(op.gates.grad, known, rtol=1e-5, atol=1e-4)
    alpha = op.alpha.detach().clone()
    set_binary_alpha_grads_one(net, op)
    torch.testing.assert_close(op.alpha.grad, _formula(known, F.softmax(alpha, 0)), rtol=1e-4, atol=1e-4)


def set_binary_alpha_grads_one(net: Supernet, op: MixedOp) -> None:
    """Estimate for ``op`` only (the other cells did not run in the toy graph: give them no estimate)."""
    for other in net.cells:
        if other is not op:
            other.gates = None
    set_binary_alpha_grads(net)


def test_two_mode_estimate_is_over_the_pair() -> None:
    net = _net()
    op, x, w = _toy_cell(net)
    known = _known_gate_grads(op, x, w)
    gen = torch.Generator().manual_seed(0)
    while True:
        net.sample_gates("two", gen)
        if op.active != op.zero_index:
            break
    with net.training_arch():
        (op(x) * w).sum().backward()
    pair = list(op.involved)
    torch.testing.assert_close(op.gates.grad[pair], known[pair], rtol=1e-5, atol=1e-4)
    alpha = op.alpha.detach().clone()
    set_binary_alpha_grads_one(net, op)
    expected = torch.zeros_like(alpha)
    expected[pair] = _formula(known[pair], F.softmax(alpha[pair], 0))
    torch.testing.assert_close(op.alpha.grad, expected, rtol=1e-4, atol=1e-4)


def test_active_zero_gives_no_estimate_and_no_update() -> None:
    net = _net()
    table = make_table()
    objective = MultiDeviceLatency([table], [table.min_latency()[0] * 1.5])
    opt = torch.optim.Adam(net.arch_parameters(), lr=0.1, betas=(0.0, 0.999))
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    gen = torch.Generator().manual_seed(0)
    zero_steps = 0
    for _ in range(30):
        state = gen.get_state()
        actives = net.sample_gates("full", gen)
        if actives[0] != net.cells[0].zero_index:
            continue
        gen.set_state(state)  # the step below draws the same gates
        before = net.cells[0].alpha.detach().clone()
        gradient_arch_step(net, (x, y), mode="full", objective=objective, loss_fn=LatencyLoss("add#linear"),
                           optimizer=opt, generator=gen)
        assert net.cells[0].alpha.grad is None
        assert torch.equal(net.cells[0].alpha.detach(), before)
        zero_steps += 1
    assert zero_steps > 0


def test_rescale_keeps_unsampled_probabilities() -> None:
    net = _net(1)
    table = make_table()
    objective = MultiDeviceLatency([table], [table.min_latency()[0] * 1.2])
    opt = torch.optim.Adam(net.arch_parameters(), lr=0.05, betas=(0.0, 0.999), eps=1e-8)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    moved = 0
    for _ in range(10):
        before = [op.probs().detach().clone() for op in net.cells]
        gradient_arch_step(net, (x, y), mode="two", objective=objective, loss_fn=LatencyLoss("add#linear", 1.0),
                           optimizer=opt, generator=gen)
        for op, p_old in zip(net.cells, before):
            p_new = op.probs().detach()
            others = [j for j in range(op.n_paths) if j not in op.involved]
            torch.testing.assert_close(p_new[others], p_old[others], rtol=0, atol=1e-6)
            moved += int(not torch.allclose(p_new, p_old, atol=1e-7))
    assert moved > 0  # the pairs themselves did move


def test_rescale_formula_on_given_alphas() -> None:
    net = _net()
    op = net.cells[2]
    op.path_mode, op.involved = "two", (1, 4)
    old = op.alpha.detach().clone()
    with torch.no_grad():
        op.alpha[1] += 0.3
        op.alpha[4] -= 0.1
    new = op.alpha.detach().clone()
    rescale_pair_alphas(net, [None, None, old])
    offset = torch.log((new[[1, 4]].exp().sum()) / (old[[1, 4]].exp().sum()))
    torch.testing.assert_close(op.alpha.detach()[[1, 4]], new[[1, 4]] - offset)
    assert torch.equal(op.alpha.detach()[[0, 2, 3, 5]], old[[0, 2, 3, 5]])


def test_full_v2_equals_full() -> None:
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    grads = {}
    for strategy in ("full", "full_v2"):
        net = _net(2)
        net.eval()  # BN with running statistics: the recomputed paths see exactly what 'full' saw
        net.sample_gates(strategy, torch.Generator().manual_seed(7))
        with net.training_arch():
            F.cross_entropy(net(x), y).backward()
        grads[strategy] = [op.gates.grad.clone() for op in net.cells if op.active != op.zero_index]
    assert grads["full"] and len(grads["full"]) == len(grads["full_v2"])
    for a, b in zip(grads["full"], grads["full_v2"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_darts_step_updates_every_alpha_by_autograd() -> None:
    net = _net()
    table = make_table()
    objective = MultiDeviceLatency([table], [table.max_latency()[0] * 0.9])
    opt = torch.optim.Adam(net.arch_parameters(), lr=0.01, betas=(0.0, 0.999))
    before = [op.alpha.detach().clone() for op in net.cells]
    weights = [p.detach().clone() for p in net.weight_parameters()]
    gradient_arch_step(net, (torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])), mode="darts",
                       objective=objective, loss_fn=LatencyLoss("hinge", 1.0), optimizer=opt,
                       generator=torch.Generator())
    for op, old in zip(net.cells, before):
        assert op.alpha.grad is not None and bool((op.alpha.detach() != old).all())
    assert all(torch.equal(p.detach(), w) for p, w in zip(net.weight_parameters(), weights))  # weights frozen


def test_reinforce_reward_and_baseline() -> None:
    rl = Reinforce(samples=3, tradeoff=0.1, baseline_decay=0.99)
    assert rl.reward(0.8, 2.0) == pytest.approx(0.8 * 0.5 ** 0.1)
    assert rl.reward(0.8, None) == 0.8
    with pytest.raises(ValueError, match="samples"):
        Reinforce(samples=0)


def test_reinforce_gradient_is_the_score_function_estimate() -> None:
    net = _net(3)
    table = make_table()
    objective = MultiDeviceLatency([table], [table.min_latency()[0] * 2])
    rl = Reinforce(samples=4, tradeoff=0.1, baseline_decay=0.9)
    rl.baseline = 0.05
    opt = torch.optim.SGD(net.arch_parameters(), lr=0.0)  # lr 0: read the gradient, keep alpha
    x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))
    gen = torch.Generator().manual_seed(11)
    replay = torch.Generator().manual_seed(11)
    alphas = [op.alpha.detach().clone() for op in net.cells]
    # replay: the same samples, scored on a copy of the network state
    state = {k: v.clone() for k, v in net.state_dict().items()}
    rewards, choices_list = [], []
    for _ in range(4):
        choices = net.sample_single(replay)
        with torch.no_grad():
            acc = float((net(x).argmax(1) == y).float().mean())
        lat = table.latency_of(choices) / objective.targets_ms[0]
        rewards.append(acc * (1 / lat) ** 0.1)
        choices_list.append(choices)
    net.load_state_dict(state)
    result = rl.step(net, (x, y), objective=objective, optimizer=opt, generator=gen)
    baseline = 0.9 * 0.05 + 0.1 * sum(rewards) / 4
    assert rl.baseline == pytest.approx(baseline)
    assert result.value == pytest.approx(sum(rewards) / 4)
    for i, (op, alpha) in enumerate(zip(net.cells, alphas)):
        p = F.softmax(alpha, 0)
        expected = -sum((r - baseline) * (F.one_hot(torch.tensor(c[i]), op.n_paths) - p)
                        for r, c in zip(rewards, choices_list)) / 4
        torch.testing.assert_close(op.alpha.grad, expected.float(), rtol=1e-4, atol=1e-6)
