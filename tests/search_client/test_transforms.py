"""Transforms: shapes, value ranges, determinism under a seed, and the random-resized crop's area/ratio bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from search_client.training.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ColorJitter,
    EvalTransform,
    HorizontalFlip,
    Normalize,
    RandomResizedCrop,
    ResizeCenterCrop,
    TrainTransform,
    to_channels,
)


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_random_resized_crop_boxes_stay_in_the_paper_bounds() -> None:
    crop = RandomResizedCrop((32, 32))
    rng = np.random.default_rng(0)
    width, height = 240, 240
    areas, ratios = [], []
    for _ in range(3000):
        left, top, right, bottom = crop.box(width, height, rng)
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
        w, h = right - left, bottom - top
        areas.append(w * h / (width * height))
        ratios.append(w / h)
    areas_np, ratios_np = np.array(areas), np.array(ratios)
    assert areas_np.min() >= 0.08 - 1e-9 and areas_np.max() <= 1.0 + 1e-9
    assert ratios_np.min() >= 3 / 4 - 1e-9 and ratios_np.max() <= 4 / 3 + 1e-9
    # the whole range is used: small and large crops, both orientations, log-ratio centred on 1
    assert areas_np.min() < 0.1 and areas_np.max() > 0.85
    assert ratios_np.min() < 0.78 and ratios_np.max() > 1.28
    assert abs(float(np.log(ratios_np).mean())) < 0.02


def test_random_resized_crop_falls_back_to_a_centred_clamped_box() -> None:
    crop = RandomResizedCrop((8, 8))
    # a 1000 x 10 strip: no box of 8%+ of the area with ratio <= 4/3 fits, so every attempt fails
    left, top, right, bottom = crop.box(1000, 10, np.random.default_rng(0))
    assert (right - left) / (bottom - top) == pytest.approx(4 / 3)
    assert bottom - top == pytest.approx(10) and (left + right) / 2 == pytest.approx(500)
    left, top, right, bottom = crop.box(10, 1000, np.random.default_rng(0))
    assert (right - left) / (bottom - top) == pytest.approx(3 / 4) and right - left == pytest.approx(10)
    with pytest.raises(ValueError, match="scale"):
        RandomResizedCrop((8, 8), scale=(0.5, 0.2))


def test_random_resized_crop_output_is_sized_and_seeded() -> None:
    img = _noise(64, 48)
    crop = RandomResizedCrop((20, 30))
    a = crop(img, np.random.default_rng(5))
    assert a.size == (30, 20)  # PIL: (W, H)
    assert np.array_equal(np.asarray(a), np.asarray(crop(img, np.random.default_rng(5))))
    assert not np.array_equal(np.asarray(a), np.asarray(crop(img, np.random.default_rng(6))))


def test_horizontal_flip() -> None:
    img = _noise(9, 5)
    rng = np.random.default_rng(0)
    assert np.array_equal(np.asarray(HorizontalFlip(1.0)(img, rng)), np.asarray(img)[:, ::-1])
    assert np.array_equal(np.asarray(HorizontalFlip(0.0)(img, rng)), np.asarray(img))
    flipped = [HorizontalFlip()(img, rng) is not img for _ in range(400)]
    assert 0.4 < sum(flipped) / 400 < 0.6


def test_colour_jitter_scales_brightness_within_its_strength() -> None:
    grey = Image.new("RGB", (6, 6), (100, 100, 100))  # contrast and saturation leave a flat grey image alone
    rng = np.random.default_rng(0)
    values = [np.asarray(ColorJitter(0.4)(grey, rng))[0, 0, 0] / 100 for _ in range(300)]
    assert 0.6 - 0.01 <= min(values) < 0.7 and 1.3 < max(values) <= 1.4 + 0.01
    img = _noise(6, 6)
    assert ColorJitter(0.0)(img, rng) is img
    a, b = ColorJitter(0.5)(img, np.random.default_rng(3)), ColorJitter(0.5)(img, np.random.default_rng(3))
    assert np.array_equal(np.asarray(a), np.asarray(b)) and not np.array_equal(np.asarray(a), np.asarray(img))
    with pytest.raises(ValueError, match="strength"):
        ColorJitter(1.0)


def test_resize_centre_crop_box_and_output() -> None:
    crop = ResizeCenterCrop((224, 224))
    assert crop.box(256, 256) == pytest.approx((16, 16, 240, 240))  # 256 covers 224 / 0.875: plain centre crop
    left, top, right, bottom = crop.box(300, 200)  # the short side is scaled to 256, the centre 224 kept
    assert bottom - top == pytest.approx(200 * 0.875) and right - left == pytest.approx(200 * 0.875)
    assert (left + right) / 2 == pytest.approx(150) and (top + bottom) / 2 == pytest.approx(100)
    halves = np.zeros((40, 40, 3), dtype=np.uint8)
    halves[:, 20:] = 255
    out = np.asarray(ResizeCenterCrop((16, 16))(Image.fromarray(halves))).astype(int)
    assert out.shape == (16, 16, 3)
    assert np.array_equal(out[:, :8], 255 - out[:, 8:][:, ::-1])  # centred: mirror-symmetric halves


def test_train_and_eval_pipelines_give_uint8_tensors() -> None:
    img = _noise(50, 40)
    x = TrainTransform((16, 24), 3, color_jitter=0.2)(img, np.random.default_rng(1))
    assert x.shape == (3, 16, 24) and x.dtype == torch.uint8
    assert torch.equal(x, TrainTransform((16, 24), 3, color_jitter=0.2)(img, np.random.default_rng(1)))
    e = EvalTransform((16, 24), 1)(img)
    assert e.shape == (1, 16, 24) and e.dtype == torch.uint8
    assert torch.equal(e, EvalTransform((16, 24), 1)(img))


def test_channels_rule() -> None:
    grey = torch.rand(2, 1, 3, 3)
    assert torch.equal(to_channels(grey, 3), grey.repeat(1, 3, 1, 1))
    rgb = torch.rand(3, 4, 4)
    assert torch.allclose(to_channels(rgb, 1), rgb.mean(dim=0, keepdim=True))
    with pytest.raises(ValueError, match="2-channel"):
        to_channels(torch.rand(1, 2, 3, 3), 3)


def test_normalize() -> None:
    norm = Normalize.imagenet(3)
    assert norm.mean == IMAGENET_MEAN and norm.std == IMAGENET_STD
    batch = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    out = norm(batch)
    assert out.dtype == torch.float32
    expected = [(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    assert torch.allclose(out[0, :, 0, 0], torch.tensor(expected))
    assert Normalize.imagenet(1).mean == pytest.approx((sum(IMAGENET_MEAN) / 3,))
    halves = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    halves[:2] = 255  # half black, half white: mean 0.5, std 0.5
    stats = Normalize.from_batches([halves[:1], halves[1:]])
    assert stats.mean == pytest.approx((0.5,)) and stats.std == pytest.approx((0.5,))
    assert float(stats(halves).mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(stats(halves).std(unbiased=False)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no images"):
        Normalize.from_batches([])
    with pytest.raises(ValueError, match="std"):
        Normalize((0.5,), (0.0,))
    assert not math.isnan(Normalize.from_batches([torch.zeros(1, 1, 2, 2, dtype=torch.uint8)]).std[0])
