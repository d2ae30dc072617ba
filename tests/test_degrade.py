"""Degradations do what they say, and training augmentations are seeded and reproducible."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from miragedet.data import degrade
from miragedet.data.transforms import Augment, Preprocess, TrainTransform


@pytest.fixture
def photo():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))


@pytest.mark.parametrize("quality", [30, 65, 95])
def test_jpeg_round_trips_through_pillow_at_that_quality(photo, quality):
    out = degrade.jpeg(photo, quality)
    buf = io.BytesIO()
    photo.save(buf, format="JPEG", quality=quality)
    reference = Image.open(io.BytesIO(buf.getvalue()))
    assert np.array_equal(np.asarray(out), np.asarray(reference.convert("RGB")))
    # The quantisation tables are the ones Pillow writes for that quality.
    again = io.BytesIO()
    out.save(again, format="JPEG", quality=quality)
    assert Image.open(again).quantization == reference.quantization


@pytest.mark.parametrize("sigma", [1, 3, 5])
def test_blur_is_pillows_gaussian_blur(photo, sigma):
    expected = photo.filter(ImageFilter.GaussianBlur(radius=sigma))
    assert np.array_equal(np.asarray(degrade.blur(photo, sigma)), np.asarray(expected))
    assert np.asarray(degrade.blur(photo, sigma)).std() < np.asarray(photo).std()


def test_downsample_sets_the_short_side(photo):
    assert degrade.downsample(photo, 16).size == (21, 16)
    assert degrade.downsample(photo.rotate(90, expand=True), 24).size == (24, 32)


def test_noise_is_seeded_with_the_given_sigma(photo):
    flat = Image.new("RGB", (200, 200), (128, 128, 128))
    noisy = np.asarray(degrade.noise(flat, 5, seed=1), dtype=float)
    assert abs(noisy.std() - 5) < 0.3
    assert np.array_equal(noisy, np.asarray(degrade.noise(flat, 5, seed=1), dtype=float))


def test_paper_preset_and_parse_errors():
    names = [d.name for d in degrade.parse_degradations(["paper"])]
    assert names == ["downsample:112", "downsample:64", "jpeg:65", "jpeg:30", "blur:3", "blur:5"]
    with pytest.raises(ValueError, match="KIND:VALUE"):
        degrade.parse_degradations(["sharpen:2"])


def test_augmentations_are_reproducible_per_sample_and_epoch(photo):
    preprocess = Preprocess(image_size=32, resize_shortest=32)
    transform = TrainTransform(preprocess, Augment.preset("robust", seed=3))
    a = transform(photo, index=5)
    assert torch.equal(a, TrainTransform(preprocess, Augment.preset("robust", seed=3))(photo, 5))
    others = [transform(photo, index=i) for i in range(6, 12)]
    assert any(not torch.equal(a, o) for o in others)
    transform.set_epoch(1)
    assert any(
        not torch.equal(transform(photo, i), o) for i, o in zip(range(6, 12), others, strict=True)
    )
    plain = TrainTransform(preprocess, Augment.preset("none"))
    assert torch.equal(plain(photo, 0), preprocess(photo))
