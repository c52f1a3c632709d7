"""Search spaces: the named spaces' structure, cell shapes from the input size, architectures, and space files."""

from __future__ import annotations

import json
import random
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from nas_ops.counting import count_flops, count_params
from nas_ops.network import build_network
from nas_ops.space import SPACES, Candidate, SearchSpace, Stage, load_space, save_space
from nas_ops.spec import OpSpec, parse_spec

torch.set_num_threads(1)

MBCONV_NAMES = ("3x3_MBConv3", "3x3_MBConv6", "5x5_MBConv3", "5x5_MBConv6", "7x7_MBConv3", "7x7_MBConv6")


def test_proxyless_mobile_is_the_paper_backbone() -> None:
    space = SPACES["proxyless-mobile"]
    cells = space.cells()
    assert len(cells) == 21
    assert sum(c.zero_index is not None for c in cells) == 15
    assert space.size() == 6**6 * 7**15
    assert [c.stage for c in cells] == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4 + [5]
    assert [(c.in_chs, c.out_chs, c.height, c.stride) for c in cells if c.zero_index is None] == [
        (16, 24, 112, 2), (24, 40, 56, 2), (40, 80, 28, 2), (80, 96, 14, 1), (96, 192, 14, 2), (192, 320, 7, 1)]
    assert [str(s) for s in space.fixed_specs()] == [
        "conv_r224x224_c3-32_k3_s2_relu6", "mbconv_r112x112_c32-16_k3_e1_s1_relu6",
        "mix_r7x7_c320-1280_relu6", "head_r7x7_c1280-1000"]
    fixed = space.fixed_specs()
    assert (sum(map(count_params, fixed)), sum(map(count_flops, fixed))) == (1_694_984, 42_223_616)


def test_cell_candidates_zero_last_and_skip_where_shape_is_kept() -> None:
    cells = SPACES["proxyless-mobile"].cells()
    strided, kept = cells[0], cells[1]
    assert strided.candidate_names == MBCONV_NAMES and strided.zero_index is None
    assert str(strided.candidates[3]) == "mbconv_r112x112_c16-24_k5_e6_s2_relu6"
    assert kept.candidate_names == (*MBCONV_NAMES, "Zero") and kept.zero_index == 6
    assert str(kept.candidates[0]) == "mbconv_r56x56_c24-24_k3_e3_s1_relu6_skip"
    assert str(kept.candidates[6]) == "zero_r56x56_c24-24_s1"
    assert all(op.skip for op in kept.candidates[:6])


@pytest.mark.parametrize(("name", "stem", "first", "widths", "mix"), [
    ("proxyless-gpu", 40, 24, (32, 56, 112, 128, 256, 432), 1728),
    ("proxyless-cpu", 40, 24, (32, 48, 88, 104, 216, 360), 1432),
])
def test_gpu_and_cpu_spaces(name: str, stem: int, first: int, widths: tuple[int, ...], mix: int) -> None:
    space = SPACES[name]
    cells = space.cells()
    assert len(cells) == 21 and space.input_size == (224, 224)
    assert space.fixed_specs()[0].out_chs == stem and space.fixed_specs()[1].out_chs == first
    assert tuple(dict.fromkeys(c.out_chs for c in cells)) == widths
    assert space.fixed_specs()[2] == OpSpec("mix", widths[-1], mix, 7, 7, act="relu6")


@pytest.mark.parametrize("name", ["tiny-32", "micro-16"])
def test_small_spaces_build_and_run(name: str) -> None:
    space = SPACES[name]
    arch = space.architecture(space.random_choices(random.Random(0)))
    with torch.no_grad():
        logits = build_network(arch).eval()(torch.randn(2, 3, *space.input_size))
    assert logits.shape == (2, 10)


def test_micro_16_is_small() -> None:
    space = SPACES["micro-16"]
    assert space.input_size == (16, 16) and len(space.cells()) == 3 and space.size() == 7 * 7 * 6
    assert SPACES["tiny-32"].size() == 7**4 * 6**3


@pytest.mark.parametrize(("h", "w"), [(160, 160), (96, 128), (33, 17)])
def test_with_resolution_moves_every_shape(h: int, w: int) -> None:
    space = SPACES["proxyless-mobile"].with_resolution(h, w)
    assert space.input_size == (h, w)
    arch = space.architecture(space.random_choices(random.Random(1)))  # chaining is validated on creation
    expected_h, expected_w = h, w
    for spec in arch.specs():
        assert (spec.height, spec.width) == (expected_h, expected_w)
        expected_h, expected_w = spec.out_height, spec.out_width
    for cell in space.cells():
        assert all((op.height, op.width) == (cell.height, cell.width) for op in cell.candidates)
    assert space.cells()[0].height == -(-h // 2)


def test_architecture_maps_zero_to_identity_and_records_choices() -> None:
    space = SPACES["proxyless-mobile"]
    choices = [c.zero_index if c.zero_index is not None else 5 for c in space.cells()]
    arch = space.architecture(choices)
    assert len(arch.blocks) == 22
    assert arch.blocks[2] == parse_spec("identity_r56x56_c24-24")
    assert arch.blocks[1] == parse_spec("mbconv_r112x112_c16-24_k7_e6_s2_relu6")
    assert arch.metadata == {"space": "proxyless-mobile", "choices": choices}
    assert space.architecture(np.array(choices)).blocks == arch.blocks  # numpy integers are accepted
    assert space.architecture(torch.tensor(choices)).metadata["choices"] == choices  # and integer tensors


@pytest.mark.parametrize(("choices", "message"), [
    ([0, 0], "expected 3 choices (one per cell), got 2"),
    ([0, 0, 0, 0], "expected 3 choices (one per cell), got 4"),
    ([0, 0, 6], "choices[2]: must be an integer in [0, 5], got 6"),
    ([0, -1, 0], "choices[1]: must be an integer in [0, 6], got -1"),
    ([0, 1.0, 0], "choices[1]: must be an integer"),
    ([True, 0, 0], "choices[0]: must be an integer"),
    ("012", "expected a sequence of integers"),
])
def test_architecture_validates_choices(choices: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        SPACES["micro-16"].architecture(choices)  # type: ignore[arg-type]


def test_random_choices_are_in_range_and_reproducible() -> None:
    space = SPACES["proxyless-mobile"]
    draws = [space.random_choices(random.Random(7)) for _ in range(2)]
    assert draws[0] == draws[1]
    many = [space.random_choices(random.Random(seed)) for seed in range(50)]
    for choices in many:
        assert all(0 <= c < len(cell.candidates) for c, cell in zip(choices, space.cells()))
    assert {c[1] for c in many} == set(range(7))  # every candidate of a Zero cell gets drawn


def test_no_zero_when_disallowed() -> None:
    space = replace(SPACES["micro-16"], allow_zero=False)
    assert all(c.zero_index is None and len(c.candidates) == 6 for c in space.cells())
    assert space.size() == 6**3


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml"])
@pytest.mark.parametrize("name", sorted(SPACES))
def test_space_file_round_trip(tmp_path: Path, suffix: str, name: str) -> None:
    path = save_space(SPACES[name], tmp_path / f"space{suffix}")
    loaded = load_space(path)
    assert loaded == SPACES[name]
    assert loaded.cells() == SPACES[name].cells()
    assert load_space(str(path)) == SPACES[name]


def test_hand_written_yaml_with_defaults(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(
        "name: mine\ninput_size: [24, 24]\nstem_chs: 8\nfirst_block_chs: 8\n"
        "stages:\n  - {width: 8, depth: 2, stride: 1}\n  - {width: 12, depth: 1, stride: 2}\n"
        "candidates:\n  - {kernel: 3, exp_ratio: 3}\n  - {kernel: 5, exp_ratio: 4.5}\n"
    )
    space = load_space(path)
    assert (space.in_chs, space.stem_stride, space.mix_chs, space.num_classes, space.act) == (3, 2, 1280, 1000,
                                                                                            "relu6")
    assert space.cells()[0].candidate_names == ("3x3_MBConv3", "5x5_MBConv4.5", "Zero")
    assert space.cells()[0].height == 12 and space.size() == 3 * 3 * 2
    assert space.to_dict()["candidates"][0] == {"kernel": 3, "exp_ratio": 3.0}


def _space_dict(**changes: object) -> dict:
    data = SPACES["micro-16"].to_dict()
    data.update(changes)
    return data


@pytest.mark.parametrize(("data", "message"), [
    ([], "expected an object"),
    (_space_dict(depth=3), "field 'depth': unknown key"),
    ({k: v for k, v in _space_dict().items() if k != "stages"}, "field 'stages': missing"),
    (_space_dict(name=""), "field 'name'"),
    (_space_dict(input_size=[16]), "field 'input_size'"),
    (_space_dict(input_size=[16, 0]), "field 'input_size'"),
    (_space_dict(input_size=[16, 2000]), "field 'input_size'"),
    (_space_dict(stem_chs=0), "field 'stem_chs'"),
    (_space_dict(stem_stride=3), "field 'stem_stride'"),
    (_space_dict(first_block_chs=5000), "field 'first_block_chs'"),
    (_space_dict(stages=[]), "field 'stages': must be a non-empty list"),
    (_space_dict(stages=[{"width": 8, "depth": 1}]), "field 'stages[0]': must be an object with exactly"),
    (_space_dict(stages=[{"width": 8, "depth": 0, "stride": 1}]), "field 'stages.depth'"),
    (_space_dict(stages=[{"width": 8, "depth": 1, "stride": 3}]), "field 'stages.stride'"),
    (_space_dict(candidates=[{"kernel": 4, "exp_ratio": 3}]), "field 'candidates.kernel'"),
    (_space_dict(candidates=[{"kernel": 3.0, "exp_ratio": 3}]), "field 'candidates.kernel'"),
    (_space_dict(candidates=[{"kernel": 3, "exp_ratio": 9}]), "field 'candidates.exp_ratio'"),
    (_space_dict(candidates=[{"kernel": 3, "exp_ratio": 3}, {"kernel": 3, "exp_ratio": 3.0}]),
     "field 'candidates': contains duplicates"),
    (_space_dict(allow_zero="yes"), "field 'allow_zero'"),
    (_space_dict(mix_chs=0), "field 'mix_chs'"),
    (_space_dict(num_classes=0), "field 'num_classes'"),
    (_space_dict(act="gelu"), "field 'act'"),
])
def test_bad_space_documents(data: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        SearchSpace.from_dict(data)


def test_load_space_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=re.escape("known: proxyless-mobile, proxyless-gpu, proxyless-cpu, "
                                                   "tiny-32, micro-16")):
        load_space("proxyless-tpu")
    with pytest.raises(ValueError, match="not found"):
        load_space(tmp_path / "missing.yaml")
    bad_json, bad_yaml = tmp_path / "bad.json", tmp_path / "bad.yaml"
    bad_json.write_text("{")
    bad_yaml.write_text("name: [unclosed")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_space(bad_json)
    with pytest.raises(ValueError, match="not valid YAML"):
        load_space(bad_yaml)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(_space_dict(stem_chs=-1)))
    with pytest.raises(ValueError, match="field 'stem_chs'"):
        load_space(wrong)
    with pytest.raises(ValueError, match="suffix"):
        save_space(SPACES["micro-16"], tmp_path / "space.txt")


def test_direct_construction_is_validated() -> None:
    with pytest.raises(ValueError, match="field 'stages'"):
        SearchSpace(name="x", input_size=(8, 8), stem_chs=8, first_block_chs=8, stages=(),
                    candidates=(Candidate(3, 3.0),))
    with pytest.raises(ValueError, match="field 'candidates'"):
        SearchSpace(name="x", input_size=(8, 8), stem_chs=8, first_block_chs=8, stages=(Stage(8, 1, 1),),
                    candidates=())
    assert yaml.safe_load(yaml.safe_dump(SPACES["tiny-32"].to_dict())) == SPACES["tiny-32"].to_dict()


def test_table_specs_are_the_fixed_ops_and_every_candidate_but_zero() -> None:
    space = SPACES["micro-16"]
    specs = space.table_specs()
    assert specs[:len(space.fixed_specs())] == space.fixed_specs()
    assert len(specs) == len(set(specs))
    zero_cells = [cell for cell in space.cells() if cell.zero_index is not None]
    assert zero_cells and all(cell.is_zero(cell.zero_index) for cell in zero_cells)
    assert all(cell.candidates[cell.zero_index] not in specs for cell in zero_cells)
    assert all(op in specs for cell in space.cells() for j, op in enumerate(cell.candidates) if not cell.is_zero(j))
    cell = zero_cells[0]
    assert cell.network_op(cell.zero_index).kind == "identity"
    assert cell.network_op(0) == cell.candidates[0]
