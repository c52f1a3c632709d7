"""Import/export of the official ProxylessNAS net.config format."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from nas_ops.arch import Architecture
from nas_ops.arch_files import load_architecture
from nas_ops.counting import count_flops, count_params
from nas_ops.network import build_network
from nas_ops.official import from_net_config, to_net_config
from nas_ops.space import SPACES
from nas_ops.spec import OpSpec, parse_spec
from tests.nas_ops.helpers import mobile_net_config

torch.set_num_threads(1)


def test_released_mobile_net_imports_with_the_published_size() -> None:
    arch = from_net_config(mobile_net_config())
    assert len(arch.blocks) == 22
    assert arch.stem == parse_spec("conv_r224x224_c3-32_k3_s2_relu6")
    assert arch.blocks[0] == parse_spec("mbconv_r112x112_c32-16_k3_e1_s1_relu6")  # 3x3_MBConv1
    assert arch.blocks[1] == parse_spec("mbconv_r112x112_c16-32_k5_e3_s2_relu6")
    assert arch.blocks[2] == parse_spec("mbconv_r56x56_c32-32_k3_e3_s1_relu6_skip")
    assert arch.blocks[3] == parse_spec("identity_r56x56_c32-32")  # ZeroLayer + IdentityLayer shortcut
    assert arch.blocks[-1] == parse_spec("mbconv_r7x7_c192-320_k7_e6_s1_relu6")
    assert arch.mix == parse_spec("mix_r7x7_c320-1280_relu6")
    assert arch.head == parse_spec("head_r7x7_c1280-1000")
    # the paper reports 4.08M parameters and 320.4M FLOPs for the released mobile net
    assert count_params(arch) == 4_080_512
    assert count_flops(arch) == 320_427_584


def test_released_mobile_net_runs_at_224(tmp_path: Path) -> None:
    path = tmp_path / "net.config"
    path.write_text(json.dumps(mobile_net_config(), indent=4))
    arch = load_architecture(path)  # detected by its first_conv key
    network = build_network(arch).eval()
    with torch.no_grad():
        logits = network(torch.randn(1, 3, 224, 224))
    assert logits.shape == (1, 1000)
    assert torch.isfinite(logits).all()


def test_round_trip_of_the_official_format() -> None:
    cfg = mobile_net_config()
    arch = from_net_config(cfg)
    assert to_net_config(arch) == cfg
    assert from_net_config(to_net_config(arch)) == arch


@pytest.mark.parametrize("space", ["proxyless-mobile", "tiny-32", "micro-16"])
def test_round_trip_of_space_architectures(space: str) -> None:
    s = SPACES[space]
    arch = s.architecture([len(c.candidates) - 1 for c in s.cells()])  # Zero (identity) wherever allowed
    back = from_net_config(json.loads(json.dumps(to_net_config(arch))), resolution=s.input_size[0])
    assert back.specs() == arch.specs()


def test_resolution_parameter_reshapes_every_op() -> None:
    arch = from_net_config(mobile_net_config(), resolution=96)
    assert arch.input_size == (96, 96)
    assert arch.blocks[1].input_shape == (16, 48, 48)
    assert arch.head.input_shape == (1280, 3, 3)
    with pytest.raises(ValueError, match=re.escape("net.config resolution")):
        from_net_config(mobile_net_config(), resolution=0)


def test_official_defaults_and_later_keys_are_accepted() -> None:
    cfg = mobile_net_config()
    del cfg["name"], cfg["bn"]
    cfg["first_conv"] = {"name": "ConvLayer", "in_channels": 3, "out_channels": 32, "kernel_size": 3, "stride": 2,
                         "act_func": "relu6"}
    cfg["blocks"][1]["mobile_inverted_conv"].update(mid_channels=48, act_func="relu6", use_se=False)
    cfg["classifier"] = {"name": "LinearLayer", "in_features": 1280, "out_features": 1000, "dropout_rate": 0.1}
    assert from_net_config(cfg).specs() == from_net_config(mobile_net_config()).specs()


def test_no_feature_mix_layer() -> None:
    cfg = mobile_net_config()
    cfg["feature_mix_layer"] = None
    cfg["classifier"]["in_features"] = 320
    arch = from_net_config(cfg)
    assert arch.mix is None and arch.head == parse_spec("head_r7x7_c320-1000")
    assert to_net_config(arch)["feature_mix_layer"] is None


def _broken(edit: Any) -> dict[str, Any]:
    cfg = copy.deepcopy(mobile_net_config())
    edit(cfg)
    return cfg


def _block(i: int) -> Any:
    return lambda cfg: cfg["blocks"][i]["mobile_inverted_conv"]


BAD_CONFIGS = [
    (lambda c: c.pop("first_conv"), "net.config first_conv: missing"),
    (lambda c: c.pop("classifier"), "net.config classifier: missing"),
    (lambda c: c.update(blocks={}), "net.config blocks: expected a list"),
    (lambda c: c.update(extra=1), "net.config (top level).extra: unsupported key"),
    (lambda c: c.update(name="MobileNetV3"), "net.config name: expected 'ProxylessNASNets'"),
    (lambda c: c["bn"].update(eps="small"), "net.config bn.eps"),
    (lambda c: c["first_conv"].update(name="DepthConvLayer"), "net.config first_conv.name"),
    (lambda c: c["first_conv"].update(kernel_size=4), "net.config first_conv.kernel_size: must be an integer in"),
    (lambda c: c["first_conv"].update(stride=3), "net.config first_conv.stride"),
    (lambda c: c["first_conv"].update(out_channels=0), "net.config first_conv.out_channels"),
    (lambda c: c["first_conv"].update(act_func="sigmoid"), "net.config first_conv.act_func"),
    (lambda c: c["first_conv"].pop("act_func"), "net.config first_conv.act_func: missing"),
    (lambda c: c["first_conv"].update(use_bn=False), "net.config first_conv.use_bn: only True"),
    (lambda c: c["first_conv"].update(groups=3), "net.config first_conv.groups: only 1"),
    (lambda c: c["first_conv"].update(bias=True), "net.config first_conv.bias: only False"),
    (lambda c: c["first_conv"].update(ops_order="bn_act_weight"), "net.config first_conv.ops_order"),
    (lambda c: c["first_conv"].update(dropout_rate=1.5), "net.config first_conv.dropout_rate"),
    (lambda c: c["blocks"].__setitem__(2, "block"), "net.config blocks[2]: expected an object"),
    (lambda c: c["blocks"][2].pop("shortcut"), "net.config blocks[2].shortcut: missing"),
    (lambda c: c["blocks"][2].update(name="ResidualBlock"), "net.config blocks[2].name"),
    (lambda c: _block(3)(c).update(kernel_size=4), "net.config blocks[3].mobile_inverted_conv.kernel_size"),
    (lambda c: _block(3)(c).update(name="ConvLayer"), "net.config blocks[3].mobile_inverted_conv.name"),
    (lambda c: _block(5)(c).update(kernel_size="7"), "net.config blocks[5].mobile_inverted_conv.kernel_size"),
    (lambda c: _block(5)(c).update(stride=4), "net.config blocks[5].mobile_inverted_conv.stride"),
    (lambda c: _block(5)(c).update(expand_ratio=0.5), "net.config blocks[5].mobile_inverted_conv.expand_ratio"),
    (lambda c: _block(5)(c).update(expand_ratio=3.333), "net.config blocks[5].mobile_inverted_conv.expand_ratio"),
    (lambda c: _block(5)(c).pop("expand_ratio"), "net.config blocks[5].mobile_inverted_conv.expand_ratio"),
    (lambda c: _block(5)(c).update(in_channels=33), "net.config blocks[5].mobile_inverted_conv.in_channels: 33"),
    (lambda c: _block(5)(c).update(out_channels=5000), "net.config blocks[5].mobile_inverted_conv.out_channels"),
    (lambda c: _block(5)(c).update(mid_channels=7), "net.config blocks[5].mobile_inverted_conv.mid_channels"),
    (lambda c: _block(5)(c).update(use_se=True), "net.config blocks[5].mobile_inverted_conv.use_se"),
    (lambda c: _block(5)(c).update(padding=3), "net.config blocks[5].mobile_inverted_conv.padding"),
    # the first block of stage 2 changes channels: an identity shortcut cannot be added to it
    (lambda c: c["blocks"][5].update(shortcut={"name": "IdentityLayer"}), "net.config blocks[5].shortcut: an "
                                                                        "identity shortcut needs stride 1"),
    (lambda c: c["blocks"][6].update(shortcut={"name": "ZeroLayer"}), "net.config blocks[6].shortcut.name"),
    (lambda c: c["blocks"][6]["shortcut"].update(in_channels=3), "net.config blocks[6].shortcut.in_channels"),
    (lambda c: c["blocks"][3].update(shortcut=None), "net.config blocks[3].shortcut: a ZeroLayer block needs an "
                                                     "IdentityLayer shortcut"),
    (lambda c: _block(3)(c).update(stride=2), "net.config blocks[3].mobile_inverted_conv.stride: a ZeroLayer"),
    (lambda c: _block(3)(c).update(in_channels=8), "net.config blocks[3].mobile_inverted_conv.in_channels"),
    (lambda c: c["feature_mix_layer"].update(kernel_size=3), "net.config feature_mix_layer.kernel_size: a feature"),
    (lambda c: c["feature_mix_layer"].update(in_channels=300), "net.config feature_mix_layer.in_channels"),
    (lambda c: c["classifier"].update(in_features=1000), "net.config classifier.in_features"),
    (lambda c: c["classifier"].update(out_features=0), "net.config classifier.out_features"),
    (lambda c: c["classifier"].update(bias=False), "net.config classifier.bias"),
    (lambda c: c["classifier"].update(act_func="relu"), "net.config classifier.act_func"),
    (lambda c: c["classifier"].update(name="ConvLayer"), "net.config classifier.name"),
]


@pytest.mark.parametrize(("edit", "message"), BAD_CONFIGS)
def test_invalid_net_config_raises_naming_the_key(edit: Any, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        from_net_config(_broken(edit))


def test_not_an_object() -> None:
    with pytest.raises(ValueError, match="expected an object"):
        from_net_config([1, 2])  # type: ignore[arg-type]


def test_blocks_net_config_cannot_express_are_rejected_on_export() -> None:
    arch = from_net_config(mobile_net_config())
    zero = OpSpec("zero", 32, 32, 56, 56)
    with_zero = Architecture(stem=arch.stem, blocks=[*arch.blocks[:3], zero, *arch.blocks[4:]], head=arch.head,
                             mix=arch.mix)
    with pytest.raises(ValueError, match=re.escape("'blocks[3]': a zero block has no net.config form")):
        to_net_config(with_zero)
