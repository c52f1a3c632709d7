"""Import and export of the official ProxylessNAS ``net.config`` architecture format.

``net.config`` (JSON) as written by the official release (``ProxylessNASNets.config``)::

    {
      "name": "ProxylessNASNets",                              # optional
      "bn": {"momentum": 0.1, "eps": 0.001},                   # optional
      "first_conv": {"name": "ConvLayer", "in_channels": 3, "out_channels": 32, "kernel_size": 3,
                     "stride": 2, "act_func": "relu6", "use_bn": true, "groups": 1, "dilation": 1,
                     "bias": false, "has_shuffle": false, "dropout_rate": 0, "ops_order": "weight_bn_act"},
      "blocks": [
        {"name": "MobileInvertedResidualBlock",                # optional
         "mobile_inverted_conv": {"name": "MBInvertedConvLayer", "in_channels": 32, "out_channels": 16,
                                  "kernel_size": 3, "stride": 1, "expand_ratio": 1},
         "shortcut": null},
        {"mobile_inverted_conv": {"name": "ZeroLayer", "stride": 1},
         "shortcut": {"name": "IdentityLayer", "in_channels": 40, "out_channels": 40, ...}},
        ...
      ],
      "feature_mix_layer": {"name": "ConvLayer", "kernel_size": 1, "stride": 1, ...} | null,
      "classifier": {"name": "LinearLayer", "in_features": 1280, "out_features": 1000, "bias": true, ...}
    }

Mapping to our op specs: ``first_conv`` -> ``conv``; ``MBInvertedConvLayer`` -> ``mbconv`` (``skip`` when the
block has an ``IdentityLayer`` shortcut); ``ZeroLayer`` with an ``IdentityLayer`` shortcut -> ``identity`` (the
block passes its input through); ``feature_mix_layer`` -> ``mix`` (1x1 only); ``classifier`` -> ``head``
(global average pool + linear). The later once-for-all keys ``mid_channels`` (must equal round(in * expand)),
``act_func`` (default relu6) and ``use_se`` (must be false) are accepted on ``MBInvertedConvLayer``.

The file holds no input resolution, so :func:`from_net_config` takes it as a parameter. Options that our modules
cannot express (no BN, conv bias, groups, dilation, shuffle, another ops order, SE) are rejected, never ignored.
``dropout_rate`` is accepted and dropped: dropout is a training-time regulariser that changes neither shapes nor
cost. The ``bn`` momentum/eps of an imported file are kept in the metadata (our modules use ``blocks.BN_*``).
"""

from __future__ import annotations

from typing import Any

from nas_ops.arch import Architecture
from nas_ops.blocks import BN_EPS, BN_MOMENTUM
from nas_ops.spec import KERNELS, MAX_CHANNELS, MAX_CLASSES, MAX_EXPAND, MAX_RESOLUTION, MIN_EXPAND, STRIDES, OpSpec

# net.config act_func value -> our spec's act field
_ACTS: dict[str | None, str] = {"relu6": "relu6", "relu": "relu", "h_swish": "hswish", None: "none"}
_ACT_NAMES: dict[str, str | None] = {ours: theirs for theirs, ours in _ACTS.items()}

# Keys each layer may carry, and the only value we accept for those our modules cannot vary.
_CONV_FIXED: dict[str, Any] = {"use_bn": True, "groups": 1, "dilation": 1, "bias": False, "has_shuffle": False,
                               "ops_order": "weight_bn_act"}
_CONV_KEYS = {"name", "in_channels", "out_channels", "kernel_size", "stride", "act_func", "dropout_rate",
              *_CONV_FIXED}
_LINEAR_FIXED: dict[str, Any] = {"bias": True, "use_bn": False, "act_func": None, "ops_order": "weight_bn_act"}
_LINEAR_KEYS = {"name", "in_features", "out_features", "dropout_rate", *_LINEAR_FIXED}
_MBCONV_KEYS = {"name", "in_channels", "out_channels", "kernel_size", "stride", "expand_ratio", "mid_channels",
                "act_func", "use_se"}
_IDENTITY_KEYS = {"name", "in_channels", "out_channels", "use_bn", "act_func", "dropout_rate", "ops_order"}
_TOP_KEYS = {"name", "bn", "first_conv", "blocks", "feature_mix_layer", "classifier"}


def _fail(path: str, message: str) -> None:
    raise ValueError(f"net.config {path}: {message}")


def _object(value: Any, path: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        _fail(path, f"expected an object, got {type(value).__name__}")
    unknown = sorted(set(value) - allowed)
    if unknown:
        _fail(f"{path}.{unknown[0]}", f"unsupported key (allowed: {', '.join(sorted(allowed))})")
    return value


def _name(layer: dict[str, Any], path: str, expected: tuple[str, ...]) -> str:
    name = layer.get("name")
    if name not in expected:
        _fail(f"{path}.name", f"expected {' or '.join(expected)}, got {name!r}")
    return name


def _int(layer: dict[str, Any], key: str, path: str, allowed: range | tuple[int, ...]) -> int:
    if key not in layer:
        _fail(f"{path}.{key}", "missing")
    value = layer[key]
    if not isinstance(value, int) or isinstance(value, bool) or value not in allowed:
        shown = f"[{allowed.start}, {allowed.stop - 1}]" if isinstance(allowed, range) else str(allowed)
        _fail(f"{path}.{key}", f"must be an integer in {shown}, got {value!r}")
    return value


def _fixed(layer: dict[str, Any], path: str, fixed: dict[str, Any]) -> None:
    """Keys whose only supported value is the one our modules implement."""
    for key, expected in fixed.items():
        if key in layer and (layer[key] != expected or type(layer[key]) is not type(expected)):
            _fail(f"{path}.{key}", f"only {expected!r} is supported, got {layer[key]!r}")


def _dropout(layer: dict[str, Any], path: str) -> None:
    value = layer.get("dropout_rate", 0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        _fail(f"{path}.dropout_rate", f"must be a number in [0, 1), got {value!r}")


def _act(layer: dict[str, Any], path: str, default: str | None) -> str:
    value = layer.get("act_func", default)
    if not (value is None or isinstance(value, str)) or value not in _ACTS:
        _fail(f"{path}.act_func", f"expected one of {', '.join(map(repr, _ACTS))}, got {value!r}")
    return _ACTS[value]


def _channels_in(layer: dict[str, Any], key: str, path: str, current: int) -> int:
    value = _int(layer, key, path, range(1, MAX_CHANNELS + 1))
    if value != current:
        _fail(f"{path}.{key}", f"{value} does not match the {current} output channels of the previous layer")
    return value


def _spec(path: str, **fields: Any) -> OpSpec:
    """Build an OpSpec, naming the net.config layer in any remaining validation error."""
    try:
        return OpSpec(**fields)
    except ValueError as exc:
        raise ValueError(f"net.config {path}: {exc}") from exc


def _conv_layer(layer: Any, path: str, current_chs: int | None, height: int, width: int, kind: str) -> OpSpec:
    layer = _object(layer, path, _CONV_KEYS)
    _name(layer, path, ("ConvLayer",))
    _fixed(layer, path, _CONV_FIXED)
    _dropout(layer, path)
    if current_chs is None:
        in_chs = _int(layer, "in_channels", path, range(1, MAX_CHANNELS + 1))
    else:
        in_chs = _channels_in(layer, "in_channels", path, current_chs)
    out_chs = _int(layer, "out_channels", path, range(1, MAX_CHANNELS + 1))
    kernel = _int(layer, "kernel_size", path, KERNELS)
    stride = _int(layer, "stride", path, STRIDES)
    if "act_func" not in layer:
        _fail(f"{path}.act_func", "missing")
    act = _act(layer, path, None)
    if kind == "mix":
        if kernel != 1:
            _fail(f"{path}.kernel_size", f"a feature mix layer must be 1x1, got {kernel}")
        if stride != 1:
            _fail(f"{path}.stride", f"a feature mix layer must have stride 1, got {stride}")
        return _spec(path, kind="mix", in_chs=in_chs, out_chs=out_chs, height=height, width=width, act=act)
    return _spec(path, kind="conv", in_chs=in_chs, out_chs=out_chs, height=height, width=width, kernel=kernel,
                 stride=stride, act=act)


def _has_identity_shortcut(shortcut: Any, path: str, chs: int) -> bool:
    if shortcut is None:
        return False
    shortcut = _object(shortcut, path, _IDENTITY_KEYS)
    _name(shortcut, path, ("IdentityLayer",))
    _fixed(shortcut, path, {"use_bn": False, "act_func": None, "ops_order": "weight_bn_act"})
    for key in ("in_channels", "out_channels"):
        if key in shortcut:
            _channels_in(shortcut, key, path, chs)
    return True


def _mbconv_layer(layer: dict[str, Any], path: str, current_chs: int, height: int, width: int,
                  skip: bool, shortcut_path: str) -> OpSpec:
    _object(layer, path, _MBCONV_KEYS)
    in_chs = _channels_in(layer, "in_channels", path, current_chs)
    out_chs = _int(layer, "out_channels", path, range(1, MAX_CHANNELS + 1))
    kernel = _int(layer, "kernel_size", path, KERNELS)
    stride = _int(layer, "stride", path, STRIDES)
    expand = layer.get("expand_ratio")
    if isinstance(expand, bool) or not isinstance(expand, (int, float)) or not MIN_EXPAND <= expand <= MAX_EXPAND:
        _fail(f"{path}.expand_ratio", f"must be a number in [{MIN_EXPAND:g}, {MAX_EXPAND:g}], got {expand!r}")
    if round(expand, 2) != expand:
        _fail(f"{path}.expand_ratio", f"at most two decimals are supported, got {expand!r}")
    mid = layer.get("mid_channels")
    if mid is not None and mid != round(in_chs * expand):
        _fail(f"{path}.mid_channels", f"must be round(in_channels * expand_ratio) = {round(in_chs * expand)} "
                                      f"(other widths are not supported), got {mid!r}")
    if layer.get("use_se", False) is not False:
        _fail(f"{path}.use_se", f"squeeze-and-excitation is not supported, got {layer['use_se']!r}")
    act = _act(layer, path, "relu6")
    if skip and (stride != 1 or in_chs != out_chs):
        _fail(shortcut_path, f"an identity shortcut needs stride 1 and in_channels == out_channels "
                             f"(got stride {stride}, {in_chs} -> {out_chs})")
    return _spec(path, kind="mbconv", in_chs=in_chs, out_chs=out_chs, height=height, width=width, kernel=kernel,
                 exp_ratio=float(expand), stride=stride, act=act, skip=skip)


def _zero_layer(layer: dict[str, Any], path: str, current_chs: int, height: int, width: int,
                skip: bool, shortcut_path: str) -> OpSpec:
    _object(layer, path, {"name", "stride", "in_channels", "out_channels"})
    stride = _int(layer, "stride", path, STRIDES)
    for key in ("in_channels", "out_channels"):
        if key in layer:
            _channels_in(layer, key, path, current_chs)
    if not skip:
        # Taken literally the block outputs zeros and cuts the network off from its input, while the official
        # forward() silently passes x through instead; rather than guess, reject the ambiguous file.
        _fail(shortcut_path, "a ZeroLayer block needs an IdentityLayer shortcut (the block is then the identity); "
                             "without one it would output all zeros and disconnect every later layer")
    if stride != 1:
        _fail(f"{path}.stride", f"a ZeroLayer block is the identity, so its stride must be 1, got {stride}")
    return _spec(path, kind="identity", in_chs=current_chs, out_chs=current_chs, height=height, width=width)


def _block(block: Any, path: str, current_chs: int, height: int, width: int) -> OpSpec:
    block = _object(block, path, {"name", "mobile_inverted_conv", "shortcut"})
    if "name" in block:
        _name(block, path, ("MobileInvertedResidualBlock",))
    for key in ("mobile_inverted_conv", "shortcut"):
        if key not in block:
            _fail(f"{path}.{key}", "missing (write null for no shortcut)" if key == "shortcut" else "missing")
    conv_path, shortcut_path = f"{path}.mobile_inverted_conv", f"{path}.shortcut"
    layer = block["mobile_inverted_conv"]
    if not isinstance(layer, dict):
        _fail(conv_path, f"expected an object, got {type(layer).__name__}")
    name = _name(layer, conv_path, ("MBInvertedConvLayer", "ZeroLayer"))
    skip = _has_identity_shortcut(block["shortcut"], shortcut_path, current_chs)
    if name == "ZeroLayer":
        return _zero_layer(layer, conv_path, current_chs, height, width, skip, shortcut_path)
    return _mbconv_layer(layer, conv_path, current_chs, height, width, skip, shortcut_path)


def _classifier(layer: Any, path: str, current_chs: int, height: int, width: int) -> OpSpec:
    layer = _object(layer, path, _LINEAR_KEYS)
    _name(layer, path, ("LinearLayer",))
    _fixed(layer, path, _LINEAR_FIXED)
    _dropout(layer, path)
    in_features = _channels_in(layer, "in_features", path, current_chs)
    classes = _int(layer, "out_features", path, range(1, MAX_CLASSES + 1))
    return _spec(path, kind="head", in_chs=in_features, out_chs=classes, height=height, width=width)


def _bn_metadata(cfg: dict[str, Any]) -> dict[str, Any]:
    bn = cfg.get("bn")
    if bn is None:
        return {}
    bn = _object(bn, "bn", {"momentum", "eps", "ws_eps"})
    for key in ("momentum", "eps"):
        value = bn.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            _fail(f"bn.{key}", f"must be a number in [0, 1), got {value!r}")
    return {"net_config_bn": {"momentum": bn["momentum"], "eps": bn["eps"]}}


def from_net_config(cfg: dict[str, Any], resolution: int = 224) -> Architecture:
    """Import an official ProxylessNAS ``net.config`` (format in the module docstring) at ``resolution``.

    ``resolution`` is the square input size (the file does not hold one). Raises ValueError naming the bad key,
    e.g. ``net.config blocks[3].mobile_inverted_conv.kernel_size: ...``.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, int) or not 1 <= resolution <= MAX_RESOLUTION:
        raise ValueError(f"net.config resolution: must be an integer in [1, {MAX_RESOLUTION}], got {resolution!r}")
    cfg = _object(cfg, "(top level)", _TOP_KEYS)
    if "name" in cfg and cfg["name"] != "ProxylessNASNets":
        _fail("name", f"expected 'ProxylessNASNets', got {cfg['name']!r}")
    for key in ("first_conv", "blocks", "classifier"):
        if key not in cfg:
            _fail(key, "missing")
    if not isinstance(cfg["blocks"], list):
        _fail("blocks", f"expected a list, got {type(cfg['blocks']).__name__}")

    stem = _conv_layer(cfg["first_conv"], "first_conv", None, resolution, resolution, "conv")
    chs, height, width = stem.output_shape
    blocks = []
    for i, raw in enumerate(cfg["blocks"]):
        block = _block(raw, f"blocks[{i}]", chs, height, width)
        blocks.append(block)
        chs, height, width = block.output_shape
    mix = None
    if cfg.get("feature_mix_layer") is not None:
        mix = _conv_layer(cfg["feature_mix_layer"], "feature_mix_layer", chs, height, width, "mix")
        chs = mix.out_chs
    head = _classifier(cfg["classifier"], "classifier", chs, height, width)
    metadata = {"imported_from": "net.config", **_bn_metadata(cfg)}
    return Architecture(stem=stem, blocks=blocks, head=head, mix=mix, metadata=metadata)


# --- export ---------------------------------------------------------------------------------------------------
def _conv_config(spec: OpSpec) -> dict[str, Any]:
    return {
        "name": "ConvLayer", "kernel_size": spec.kernel, "stride": spec.stride, "dilation": 1, "groups": 1,
        "bias": False, "has_shuffle": False, "in_channels": spec.in_chs, "out_channels": spec.out_chs,
        "use_bn": True, "act_func": _ACT_NAMES[spec.act], "dropout_rate": 0, "ops_order": "weight_bn_act",
    }


def _identity_config(chs: int) -> dict[str, Any]:
    return {"name": "IdentityLayer", "in_channels": chs, "out_channels": chs, "use_bn": False, "act_func": None,
            "dropout_rate": 0, "ops_order": "weight_bn_act"}


def _block_config(spec: OpSpec, index: int) -> dict[str, Any]:
    if spec.kind == "identity":
        return {"name": "MobileInvertedResidualBlock", "mobile_inverted_conv": {"name": "ZeroLayer", "stride": 1},
                "shortcut": _identity_config(spec.in_chs)}
    if spec.kind != "mbconv":
        raise ValueError(f"architecture field 'blocks[{index}]': a {spec.kind} block has no net.config form "
                         "(only mbconv and identity blocks do)")
    expand: int | float = int(spec.exp_ratio) if float(spec.exp_ratio).is_integer() else spec.exp_ratio
    conv: dict[str, Any] = {"name": "MBInvertedConvLayer", "in_channels": spec.in_chs, "out_channels": spec.out_chs,
                            "kernel_size": spec.kernel, "stride": spec.stride, "expand_ratio": expand}
    if spec.act != "relu6":  # the original release has no act_func key (always relu6); once-for-all added it
        conv["act_func"] = _ACT_NAMES[spec.act]
    return {"name": "MobileInvertedResidualBlock", "mobile_inverted_conv": conv,
            "shortcut": _identity_config(spec.in_chs) if spec.skip else None}


def to_net_config(arch: Architecture) -> dict[str, Any]:
    """``arch`` in the official ``net.config`` format; the input resolution is not part of it.

    ``bn`` holds the momentum/eps our modules use. Raises ValueError for a block kind net.config cannot express
    (``zero`` or ``conv`` blocks).
    """
    return {
        "name": "ProxylessNASNets",
        "bn": {"momentum": BN_MOMENTUM, "eps": BN_EPS},
        "first_conv": _conv_config(arch.stem),
        "blocks": [_block_config(spec, i) for i, spec in enumerate(arch.blocks)],
        "feature_mix_layer": _conv_config(arch.mix) if arch.mix is not None else None,
        "classifier": {"name": "LinearLayer", "in_features": arch.head.in_chs, "out_features": arch.head.out_chs,
                       "bias": True, "use_bn": False, "act_func": None, "dropout_rate": 0,
                       "ops_order": "weight_bn_act"},
    }
