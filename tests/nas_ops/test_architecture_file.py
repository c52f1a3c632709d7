"""Architecture JSON: round trip through files, chaining checks and errors naming the bad field."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from nas_ops.arch import Architecture
from nas_ops.arch_files import architecture_from_json_obj, load_architecture
from nas_ops.network import build_network
from nas_ops.space import SPACES
from nas_ops.spec import parse_spec

torch.set_num_threads(1)


def _arch() -> Architecture:
    space = SPACES["micro-16"]
    arch = space.architecture([3, space.cells()[1].zero_index, 0])
    arch.metadata["probabilities"] = [[0.5, 0.5]]
    return arch


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    arch = _arch()
    path = tmp_path / "arch.json"
    arch.save(path)
    loaded = load_architecture(path)
    assert loaded == arch
    assert loaded.to_dict() == json.loads(path.read_text())
    assert loaded.metadata == {"space": "micro-16", "choices": [3, 6, 0], "probabilities": [[0.5, 0.5]]}


def test_loaded_file_builds_a_network_with_the_right_output(tmp_path: Path) -> None:
    path = tmp_path / "arch.json"
    _arch().save(path)
    arch = load_architecture(path)
    network = build_network(arch).eval()
    with torch.no_grad():
        logits = network(torch.randn(3, arch.in_chs, *arch.input_size))
    assert logits.shape == (3, arch.num_classes)


def test_architecture_without_mix_round_trips() -> None:
    arch = _arch()
    assert arch.mix is None
    assert arch.to_dict()["mix"] is None
    assert Architecture.from_dict(arch.to_dict()) == arch


def _with(**changes: object) -> dict:
    data = _arch().to_dict()
    data.update(changes)
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1, 2], "expected a JSON object"),
        (_with(format="other"), "field 'format'"),
        (_with(version=2), "field 'version'"),
        ({k: v for k, v in _with().items() if k != "stem"}, "field 'stem': missing"),
        ({k: v for k, v in _with().items() if k != "head"}, "field 'head': missing"),
        (_with(blocks="mbconv"), "field 'blocks'"),
        (_with(metadata=[1]), "field 'metadata'"),
        (_with(stem="conv_r16x16_c3-8_k4_s1_relu6"), "op spec field 'kernel'"),
        (_with(stem="mix_r16x16_c3-8_relu6"), "field 'stem': must be a conv op"),
        (_with(head="mix_r8x8_c16-10_relu6"), "field 'head': must be a head op"),
        (_with(mix="conv_r8x8_c16-32_k1_s1_relu6"), "field 'mix': must be a mix op"),
    ],
)
def test_bad_documents_raise_naming_the_field(data: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Architecture.from_dict(data)  # type: ignore[arg-type]


def test_blocks_that_do_not_chain_are_rejected() -> None:
    data = _arch().to_dict()
    # block 2 claims 16x16 input, but block 1 (stride 1) outputs 8 channels at 16x16: change its channels
    data["blocks"][2] = "mbconv_r16x16_c16-16_k3_e6_s1_relu6_skip"
    with pytest.raises(ValueError, match=re.escape("'blocks[2]': input shape (16, 16, 16) does not match")):
        Architecture.from_dict(data)
    data = _arch().to_dict()
    data["head"] = "head_r16x16_c16-10"  # the last block outputs 8x8
    with pytest.raises(ValueError, match=re.escape("'head': input shape (16, 16, 16) does not match")):
        Architecture.from_dict(data)


def test_head_cannot_be_a_block() -> None:
    arch = _arch()
    with pytest.raises(ValueError, match=re.escape("'blocks[1]': a head op cannot be a block")):
        Architecture(stem=arch.stem, blocks=[arch.blocks[0], parse_spec("head_r16x16_c8-8")], head=arch.head)


def test_load_rejects_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"format": ')
    with pytest.raises(ValueError, match="not valid JSON"):
        load_architecture(path)


def test_json_object_dispatch_detects_net_config() -> None:
    from tests.nas_ops.helpers import mobile_net_config

    arch = architecture_from_json_obj(mobile_net_config())
    assert arch.metadata["imported_from"] == "net.config"
    assert architecture_from_json_obj(_arch().to_dict()) == _arch()


def test_arch_imports_neither_official_nor_the_file_reader() -> None:
    """Imports run one way (official -> arch, arch_files -> both): no cycle, not even a function-local one."""
    import ast

    import nas_ops.arch

    tree = ast.parse(Path(nas_ops.arch.__file__).read_text(encoding="utf-8"))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not imported & {"nas_ops.official", "nas_ops.arch_files"}
