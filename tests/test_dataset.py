"""Decoding odd and broken images: every good one read right, every bad one a clear error."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from miragedet.data.dataset import ImageDataset, ImageDecodeError, collate, load_image
from miragedet.data.layouts import Sample


def _jpeg_bytes(image, **kw):
    buf = io.BytesIO()
    image.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def test_odd_but_valid_images_decode_to_rgb(tmp_path):
    sixteen = Image.fromarray(np.full((6, 5), 65535, dtype=np.uint16))
    sixteen.save(tmp_path / "deep.png")
    rgb = load_image(tmp_path / "deep.png")
    assert rgb.mode == "RGB" and rgb.size == (5, 6) and np.asarray(rgb).min() == 255

    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # red in CMYK
    (tmp_path / "cmyk.jpg").write_bytes(_jpeg_bytes(cmyk))
    red = np.asarray(load_image(tmp_path / "cmyk.jpg"))
    assert red[..., 0].mean() > 200 and red[..., 1].mean() < 60

    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert np.asarray(load_image(tmp_path / "anim.gif"))[0, 0, 0] > 200  # first frame

    photo = Image.new("RGB", (8, 4), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    photo.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_image(tmp_path / "rotated.jpg").size == (4, 8)


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"hello, I am text", "not a recognised image format"),
        (b"", "not a recognised image format"),
    ],
)
def test_non_images_are_refused(tmp_path, content, reason):
    (tmp_path / "fake.png").write_bytes(content)
    with pytest.raises(ImageDecodeError, match=reason):
        load_image(tmp_path / "fake.png")


def test_truncated_jpeg_and_bomb_are_refused(tmp_path):
    data = _jpeg_bytes(Image.effect_noise((256, 256), 50).convert("RGB"), quality=90)
    with pytest.raises(ImageDecodeError, match="corrupt or truncated"):
        load_image(data[: len(data) // 2])
    big = Image.new("L", (3000, 3000))
    buf = io.BytesIO()
    big.save(buf, format="PNG")
    with pytest.raises(ImageDecodeError, match="too large"):
        load_image(buf.getvalue(), max_pixels=1_000_000)


def test_dataset_reports_errors_and_keeps_the_rest(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    samples = [Sample(str(good), 0, "s"), Sample(str(bad), 1, "s"), Sample(str(good), 1, "s")]
    dataset = ImageDataset(samples, lambda im, i: torch.zeros(3, 2, 2) + i)
    batch = collate([dataset[i] for i in range(3)])
    assert batch["pixel_values"].shape == (2, 3, 2, 2)
    assert batch["indices"].tolist() == [0, 2] and batch["labels"].tolist() == [0, 1]
    assert [i for i, _ in batch["errors"]] == [1]
