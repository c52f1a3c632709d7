"""Reference architectures: MobileNetV2 and the ProxylessNAS search backbone."""

from __future__ import annotations

from collections.abc import Sequence

from nas_ops.arch import Architecture
from nas_ops.space import load_space
from nas_ops.spec import MAX_CLASSES, MAX_RESOLUTION, OpSpec

# MobileNetV2 inverted residual settings: expand ratio t, output channels c, repeats n, first stride s.
MOBILENET_V2_BLOCKS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)
MAX_WIDTH_MULT = 4.0


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor`` without going more than 10% below ``value``.

    The rule of the MobileNet reference code, so width multipliers give the usual channel counts.
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def mobilenet_v2(width_mult: float = 1.0, resolution: int = 224, num_classes: int = 1000) -> Architecture:
    """Standard MobileNetV2 (3x3 kernels, ReLU6, shortcuts where stride 1 and in == out) as an Architecture.

    Stem 3x3 conv stride 2 to 32 * width_mult channels, the inverted residual blocks of ``MOBILENET_V2_BLOCKS``
    (channels scaled by ``width_mult``), a 1x1 feature mix to 1280 * max(1, width_mult) and the classifier.
    """
    if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or not 0 < width_mult <= MAX_WIDTH_MULT:
        raise ValueError(f"mobilenet_v2 field 'width_mult': must be a number in (0, {MAX_WIDTH_MULT:g}], "
                         f"got {width_mult!r}")
    if isinstance(resolution, bool) or not isinstance(resolution, int) or not 1 <= resolution <= MAX_RESOLUTION:
        raise ValueError(f"mobilenet_v2 field 'resolution': must be an integer in [1, {MAX_RESOLUTION}], "
                         f"got {resolution!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"mobilenet_v2 field 'num_classes': must be an integer in [1, {MAX_CLASSES}], "
                         f"got {num_classes!r}")
    stem = OpSpec("conv", 3, make_divisible(32 * width_mult), resolution, resolution, kernel=3, stride=2,
                  act="relu6")
    chs, h, w = stem.output_shape
    blocks = []
    for t, c, n, s in MOBILENET_V2_BLOCKS:
        out_chs = make_divisible(c * width_mult)
        for i in range(n):
            stride = s if i == 0 else 1
            block = OpSpec("mbconv", chs, out_chs, h, w, kernel=3, exp_ratio=float(t), stride=stride, act="relu6",
                           skip=stride == 1 and chs == out_chs)
            blocks.append(block)
            chs, h, w = block.output_shape
    mix = OpSpec("mix", chs, make_divisible(1280 * max(1.0, width_mult)), h, w, act="relu6")
    head = OpSpec("head", mix.out_chs, num_classes, h, w)
    return Architecture(stem=stem, blocks=blocks, head=head, mix=mix,
                        metadata={"preset": "mobilenet_v2", "width_mult": width_mult})


def proxyless_backbone(
    choices: Sequence[int] | None = None,
    *,
    space: str = "proxyless-mobile",
    resolution: int | None = None,
) -> Architecture:
    """An architecture of a ProxylessNAS search space (a space name or a space file).

    ``choices`` holds one candidate index per cell (see :meth:`nas_ops.space.SearchSpace.architecture`); None
    takes the largest MBConv candidate (largest kernel, then largest expand ratio: 7x7_MBConv6 in the paper's
    space) everywhere, i.e. the heaviest path of the over-parameterized network. ``resolution`` rescales the
    space to a square input of that size.
    """
    search_space = load_space(space)
    if resolution is not None:
        if isinstance(resolution, bool) or not isinstance(resolution, int) or not 1 <= resolution <= MAX_RESOLUTION:
            raise ValueError(f"proxyless_backbone field 'resolution': must be an integer in [1, {MAX_RESOLUTION}], "
                             f"got {resolution!r}")
        search_space = search_space.with_resolution(resolution, resolution)
    if choices is None:
        largest = max(range(len(search_space.candidates)),
                      key=lambda i: (search_space.candidates[i].kernel, search_space.candidates[i].exp_ratio))
        choices = [largest] * len(search_space.cells())
    return search_space.architecture(choices)
