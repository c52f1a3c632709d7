"""The supernet: built from the space's specs, Zero as identity in shortcut cells, path modes, single-path steps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nas_ops.blocks import build_op
from nas_ops.space import SPACES
from search_client.nas.supernet import ONE_PATH, Supernet

torch.set_num_threads(1)


@pytest.fixture
def net() -> Supernet:
    torch.manual_seed(0)
    return Supernet(SPACES["micro-16"], generator=torch.Generator().manual_seed(0))


def test_built_from_the_space_specs(net: Supernet) -> None:
    space = SPACES["micro-16"]
    assert len(net.cells) == len(space.cells()) == 3
    for op, cell in zip(net.cells, space.cells()):
        assert [m.spec for m in op.candidates] == list(cell.candidates)
        assert op.alpha.shape == (len(cell.candidates),)
    assert net.stem.spec == space.stem_spec()
    assert net.blocks[0].spec == space.first_block_spec()
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_alpha_init_is_small_and_seeded() -> None:
    a = Supernet(SPACES["micro-16"], generator=torch.Generator().manual_seed(5))
    b = Supernet(SPACES["micro-16"], generator=torch.Generator().manual_seed(5))
    alphas = torch.cat([p.detach() for p in a.arch_parameters()])
    assert torch.equal(alphas, torch.cat([p.detach() for p in b.arch_parameters()]))
    assert 0 < alphas.abs().max() < 1e-2  # N(0, 1e-3)
    assert {id(p) for p in a.arch_parameters()}.isdisjoint({id(p) for p in a.weight_parameters()})
    assert len(a.arch_parameters()) + len(a.weight_parameters()) == len(list(a.parameters()))


def test_zero_in_a_shortcut_cell_is_the_identity(net: Supernet) -> None:
    op = net.cells[0]
    assert op.zero_index is not None and op.has_shortcut
    x = torch.randn(2, 8, 16, 16)
    op.path_mode, op.active = ONE_PATH, op.zero_index
    assert torch.equal(op(x), x)


def test_mbconv_path_adds_the_shortcut_once(net: Supernet) -> None:
    op = net.cells[1]
    op.eval()
    x = torch.randn(2, 8, 16, 16)
    op.path_mode, op.active = ONE_PATH, 3
    module = build_op(op.cell.candidates[3])
    module.load_state_dict(op.candidates[3].state_dict())
    module.eval()
    assert op.cell.candidates[3].skip
    branch = module.conv_pwl(module.conv_dw(module.conv_pw(x)))
    torch.testing.assert_close(op(x), x + branch)  # x + f(x), not 2x + f(x)


def test_mixture_is_the_p_weighted_sum(net: Supernet) -> None:
    net.eval()
    net.use_mixture()
    op = net.cells[0]
    with torch.no_grad():
        op.alpha.copy_(torch.linspace(-1, 1, op.n_paths))
    x = torch.randn(2, 8, 16, 16)
    p = F.softmax(op.alpha.detach(), 0)
    expected = sum(p[j] * (x if j == op.zero_index else op.candidates[j](x)) for j in range(op.n_paths))
    torch.testing.assert_close(op(x), expected)


def test_single_path_weight_step_touches_only_the_active_paths(net: Supernet) -> None:
    opt = torch.optim.SGD(net.weight_parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=4e-5)
    choices = [1, 2, 4]
    net.use_choices(choices)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with net.training_weights():
        loss = F.cross_entropy(net(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 3]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
    opt.step()
    for i, (op, c) in enumerate(zip(net.cells, choices)):
        assert op.alpha.grad is None
        for j, module in enumerate(op.candidates):
            for name, p in module.named_parameters():
                key = f"blocks.{i + 1}.candidates.{j}.{name}"
                if j == c:
                    assert p.grad is not None and not torch.equal(p.detach(), before[key]), key
                else:
                    # no gradient, no weight decay, no momentum buffer
                    assert p.grad is None and torch.equal(p.detach(), before[key]), key
                    assert p not in opt.state or "momentum_buffer" not in opt.state[p]


def test_gate_modes_output_the_active_path(net: Supernet) -> None:
    net.eval()
    x = torch.randn(2, 3, 16, 16)
    for strategy in ("full", "two", "full_v2"):
        actives = net.sample_gates(strategy, torch.Generator().manual_seed(3))
        out = net(x)
        net.use_choices(actives)
        torch.testing.assert_close(out, net(x))


def test_two_samples_distinct_pairs_holding_the_active_path(net: Supernet) -> None:
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        actives = net.sample_gates("two", gen)
        for op, active in zip(net.cells, actives):
            assert len(set(op.involved)) == 2 and active in op.involved
            assert op.gates is not None and op.gates.requires_grad
            assert op.gates.tolist() == [1.0 if j == active else 0.0 for j in range(op.n_paths)]


def test_latency_probs_renormalise_over_the_pair(net: Supernet) -> None:
    with torch.no_grad():
        for op in net.cells:
            op.alpha.copy_(torch.randn(op.n_paths))
    net.sample_gates("two", torch.Generator().manual_seed(2))
    for op, p in zip(net.cells, net.latency_probs()):
        idx = list(op.involved)
        torch.testing.assert_close(p[idx], F.softmax(op.alpha.detach()[idx], 0))
        assert all(p[j] == 0 for j in range(op.n_paths) if j not in idx)
    net.sample_gates("full", torch.Generator().manual_seed(2))
    for op, p in zip(net.cells, net.latency_probs()):
        torch.testing.assert_close(p, op.probs())


def test_sampling_follows_p_and_the_generator(net: Supernet) -> None:
    with torch.no_grad():
        net.cells[2].alpha.copy_(torch.tensor([8.0, 0, 0, 0, 0, 0]))
    counts = [0] * 6
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        counts[net.sample_single(gen)[2]] += 1
    assert counts[0] > 190
    a = net.sample_single(torch.Generator().manual_seed(9))
    assert a == net.sample_single(torch.Generator().manual_seed(9))


def test_use_choices_rejects_bad_input(net: Supernet) -> None:
    with pytest.raises(ValueError, match="choices: expected 3"):
        net.use_choices([0, 1])
    with pytest.raises(ValueError, match=r"choices\[2\]"):
        net.use_choices([0, 1, 6])
    with pytest.raises(ValueError, match="mode"):
        net.sample_gates("three", torch.Generator())


def test_batchnorm_recalibration_touches_the_active_path_only(net: Supernet) -> None:
    net.use_choices([1, 6, 2])  # cell 1 is Zero: it has no module to recalibrate
    inactive_bn = net.cells[0].candidates[0].conv_dw[1]
    inactive_bn.running_mean.fill_(0.5)
    weights = {k: v.clone() for k, v in net.named_parameters()}
    x = torch.randn(32, 3, 16, 16)
    net.recalibrate_batchnorm([x[:16], x[16:]])
    stem_bn = net.stem.conv[1]
    with torch.no_grad():
        stem_out = net.stem.conv[0](x)
    # cumulative average of the two batch means = the mean over all 32 images
    torch.testing.assert_close(stem_bn.running_mean, stem_out.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert stem_bn.momentum == 0.1 and net.training
    assert torch.equal(inactive_bn.running_mean, torch.full_like(inactive_bn.running_mean, 0.5))
    assert all(torch.equal(v, weights[k]) for k, v in net.named_parameters())
    net.use_mixture()
    with pytest.raises(RuntimeError, match="single paths"):
        net.recalibrate_batchnorm([x])
