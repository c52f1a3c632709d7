"""Deriving the argmax architecture: metadata, inherited weights loading into build_network, ONNX in onnxruntime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from nas_ops.arch_files import load_architecture
from nas_ops.network import build_network
from nas_ops.space import SPACES
from search_client.nas.derive import derive_architecture, derived_network, derived_state_dict, export_search_result
from search_client.table.objective import MultiDeviceLatency
from search_client.nas.supernet import Supernet
from tests.search_client.conftest import make_table

torch.set_num_threads(1)


def _net_with_alphas(rows: list[list[float]], space: str = "micro-16") -> Supernet:
    torch.manual_seed(0)
    net = Supernet(SPACES[space])
    with torch.no_grad():
        for op, row in zip(net.cells, rows):
            op.alpha.copy_(torch.tensor(row))
    # a few train-mode forwards so BN running statistics differ from their defaults
    for _ in range(2):
        net.sample_single(torch.Generator().manual_seed(1))
        net(torch.randn(4, 3, *SPACES[space].input_size))
    return net


ROWS = [[0.0, 0.1, 0.0, 0.0, 0.0, 0.0, 0.9],   # cell 0: Zero
        [0.5, 0.0, 0.0, 0.7, 0.0, 0.0, 0.0],   # cell 1: 5x5_MBConv6 (index 3)
        [0.0, 0.0, 0.0, 0.0, 0.2, 0.2]]        # cell 2: a tie -> the lower index (4)


def test_argmax_choices_and_zero_as_identity() -> None:
    net = _net_with_alphas(ROWS)
    assert net.argmax_choices() == [6, 3, 4]
    arch = derive_architecture(net)
    assert arch.blocks[1].kind == "identity"  # the Zero cell
    assert arch.blocks[2] == SPACES["micro-16"].cells()[1].candidates[3]
    assert arch.metadata["choices"] == [6, 3, 4]
    assert arch.metadata["choice_names"] == ["Zero", "5x5_MBConv6", "7x7_MBConv3"]
    assert derive_architecture(net).to_dict() == arch.to_dict()  # deterministic


def test_metadata_has_probabilities_and_predictions() -> None:
    net = _net_with_alphas(ROWS)
    fast, slow = make_table(), make_table(scale=2.0, device={**make_table().device, "name": "slow"})
    objective = MultiDeviceLatency([fast, slow], [fast.max_latency()[0] * 0.9, slow.max_latency()[0] * 0.9])
    arch = derive_architecture(net, objective)
    meta = arch.metadata
    for row, probs in zip(ROWS, meta["probabilities"]):
        assert probs == pytest.approx(torch.softmax(torch.tensor(row), 0).tolist(), abs=1e-6)
    assert meta["predicted_latency_ms"] == {"fake/ort-cpu": pytest.approx(fast.latency_of([6, 3, 4])),
                                            "slow/ort-cpu": pytest.approx(slow.latency_of([6, 3, 4]))}
    assert [d["table_hash"] for d in meta["devices"]] == [fast.content_hash(), slow.content_hash()]
    assert meta["backend"] == "ort-cpu" and meta["space"] == "micro-16"


@pytest.mark.parametrize("space", ["micro-16", "tiny-32"])
def test_inherited_weights_load_into_build_network(space: str) -> None:
    n_cells = len(SPACES[space].cells())
    gen = torch.Generator().manual_seed(3)
    rows = [torch.randn(len(c.candidates), generator=gen).tolist() for c in SPACES[space].cells()]
    net = _net_with_alphas(rows[:n_cells], space)
    arch = derive_architecture(net)
    state = derived_state_dict(net, arch.metadata["choices"])
    fresh = build_network(arch)
    assert set(state) == set(fresh.state_dict())
    fresh.load_state_dict(state, strict=True)
    derived = derived_network(net, arch)
    net.eval()
    derived.eval()
    net.use_choices(arch.metadata["choices"])
    x = torch.randn(3, 3, *SPACES[space].input_size)
    with torch.no_grad():
        torch.testing.assert_close(derived(x), net(x))


def test_export_writes_files_and_onnx_runs(tmp_path: Path) -> None:
    net = _net_with_alphas(ROWS)
    table = make_table()
    objective = MultiDeviceLatency([table], [table.max_latency()[0] * 0.9])
    files = export_search_result(net, objective, tmp_path, summary={"note": "test"})
    arch = load_architecture(files["arch"])
    assert arch.metadata["choices"] == [6, 3, 4]
    model = build_network(arch)
    model.load_state_dict(torch.load(files["weights"], weights_only=True))
    model.eval()
    x = torch.randn(1, 3, 16, 16)
    session = ort.InferenceSession(str(files["onnx"]), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(out, model(x).numpy(), rtol=1e-4, atol=1e-5)
    summary = json.loads(files["summary"].read_text())
    assert summary["note"] == "test" and summary["choices"] == [6, 3, 4]
    assert summary["min_latency_ms"]["fake/ort-cpu"] == pytest.approx(table.min_latency()[0])


def test_derived_state_dict_checks_choices() -> None:
    net = _net_with_alphas(ROWS)
    with pytest.raises(ValueError, match="choices: expected 3"):
        derived_state_dict(net, [0, 1])
