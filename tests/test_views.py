"""Views: resize unchanged, tiles cover the image at native resolution, and the where-map points
at the region that carries a generator's trace."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import fit_tiny
from miragedet import MiraGe, ModelConfig
from miragedet.cli import app
from miragedet.data.synthetic import SEEN, make_set, smooth_scene
from miragedet.detector import Detector
from miragedet.views import View, inputs, tile_boxes


@pytest.mark.parametrize("size", [(224, 224), (225, 300), (1000, 700), (4000, 3000), (224, 5000)])
def test_tiles_cover_every_pixel_when_not_thinned(size):
    w, h = size
    boxes, cells, rows, cols, covered = tile_boxes(w, h, 224, overlap=0.25, max_tiles=10_000)
    assert covered and len(boxes) == rows * cols == len(cells)
    seen = np.zeros((h, w), bool)
    for left, top, right, bottom in boxes:
        assert right - left == bottom - top == 224 and right <= w and bottom <= h
        seen[top:bottom, left:right] = True
    assert seen.all()


def test_max_tiles_bounds_the_count_and_keeps_the_corners():
    boxes, cells, rows, cols, covered = tile_boxes(4000, 3000, 224, max_tiles=16)
    assert len(boxes) <= 16 and not covered and (rows, cols) == (18, 24)
    assert (0, 0) in cells and (rows - 1, cols - 1) in cells


def test_small_and_sliver_images_follow_the_stated_rules(tiny):
    pre = tiny.preprocess  # 32 px tiles
    icon = inputs(Image.new("RGB", (30, 30)), pre, View("tiles"))
    assert icon.pixels.shape == (1, 3, 32, 32) and icon.size == (32, 32)
    strip = inputs(Image.new("RGB", (1, 20000)), pre, View("tiles"))
    assert strip.pixels.shape == (1, 3, 32, 32)  # squeezed like the resize view
    wide = inputs(Image.new("RGB", (20, 200)), pre, View("tiles", max_tiles=100))
    assert wide.size == (32, 320) and len(wide.pixels) == wide.rows * wide.cols


def test_resize_view_scores_bit_identically_to_the_model(tiny):
    model = MiraGe(tiny, ModelConfig.for_method("mirage", depth=2)).eval()
    images = [np.random.default_rng(i).integers(0, 256, (40, 50, 3), np.uint8) for i in range(3)]
    detector = Detector(model, precision="fp32")
    assert detector.view == View("resize")
    got = detector.predict_proba(images)
    with torch.inference_mode():
        pixels = torch.stack([tiny.preprocess(Image.fromarray(a)) for a in images])
        expected = model(pixels).probs.numpy()
    assert np.array_equal(got, expected)


@pytest.fixture(scope="module")
def fingerprint_model():
    """A tiny MiraGe trained on native-size (32 px) images with and without the 2 px trace."""
    from miragedet.backbone import load_backbone

    tiny = load_backbone("tiny")
    images, labels = make_set(600, tiny.preprocess.image_size, SEEN, seed=1)
    model, _ = fit_tiny(tiny, tiny.preprocess.batch(images), labels, steps=300)
    return model


def _partial_fake(rng, quadrant: int, side: int = 128) -> Image.Image:
    """A real-like scene with the generator's trace in one quadrant only (a pasted region)."""
    pixels = smooth_scene(rng, side)
    half = side // 2
    top, left = (quadrant // 2) * half, (quadrant % 2) * half
    pixels[top : top + half, left : left + half] += SEEN.pattern(half, half)[:, :, None]
    return Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8))


def test_where_map_points_at_the_faked_quadrant(fingerprint_model):
    detector = Detector(fingerprint_model, precision="fp32", view=View("tiles", overlap=0.0))
    rng = np.random.default_rng(7)
    hits, n = 0, 40
    for k in range(n):
        quadrant = k % 4
        [p] = detector.score([_partial_fake(rng, quadrant)])
        grid = np.array(p.tiles["grid"], dtype=float)  # 4 x 4 tiles of 32 px over 128 px
        r, c = np.unravel_index(np.nanargmax(grid), grid.shape)
        hits += (r // 2) * 2 + (c // 2) == quadrant
    assert hits >= 0.9 * n, hits


def test_cli_tiles_view_reports_the_grid(served_checkpoint, tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (100, 70, 3), np.uint8)).save(
        tmp_path / "a.png"
    )
    out = tmp_path / "rows.jsonl"
    args = ["detect", str(tmp_path / "a.png"), "-m", str(served_checkpoint), "-f", "jsonl"]
    args += ["-o", str(out), "--view", "tiles", "--max-tiles", "4"]
    result = CliRunner().invoke(app, [*args, "--where", str(tmp_path / "where")])
    assert result.exit_code == 0, result.output
    [row] = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["tiles"] == 4 and 0 <= row["tile_max_fake_prob"] <= 1
    assert len(row["where"]) >= 2 and row["fake_prob"] is not None
    from miragedet.detect import where_path

    drawn = Image.open(where_path(tmp_path / "where", str(tmp_path / "a.png")))
    assert drawn.format == "PNG" and drawn.width > 200  # the image, its tiles and a colour bar
    resize_only = CliRunner().invoke(
        app, [*args[:6], "--view", "resize", "--where", str(tmp_path / "w2")]
    )
    assert resize_only.exit_code == 2 and "--where draws tiles" in resize_only.output
    bad = CliRunner().invoke(app, [*args[:6], "--view", "pyramid"])
    assert bad.exit_code == 2 and "view must be one of" in bad.output


def _big_set(n_per_class: int, side: int, seed: int) -> tuple[list[Image.Image], list[int]]:
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(2 * n_per_class):
        pixels = smooth_scene(rng, side)
        if i % 2:
            pixels = pixels + SEEN.pattern(side, side)[:, :, None]
        images.append(Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8)))
        labels.append(i % 2)
    return images, labels


def test_native_resolution_sees_what_the_resize_averages_away(tiny):
    """Images 8x the model's input with a 2 px generator trace: trained and scored through the
    resize, the detector stays near chance; trained on native crops and scored with tiles, it
    finds the trace."""
    from miragedet.data.transforms import TrainTransform

    images, labels = _big_set(150, 8 * tiny.preprocess.image_size, seed=1)
    test_images, test_labels = _big_set(50, 8 * tiny.preprocess.image_size, seed=2)
    resized, _ = fit_tiny(tiny, tiny.preprocess.batch(images), labels, steps=300)
    crop = TrainTransform(tiny.preprocess, view="crop")
    crops = torch.stack([crop(im, i) for i, im in enumerate(images + images)])
    native, _ = fit_tiny(tiny, crops, labels + labels, steps=300)

    def accuracy(model, view):
        detector = Detector(model, precision="fp32", view=view)
        p = detector.predict_proba(test_images)[:, 1]
        return float(((p >= 0.5) == np.array(test_labels)).mean())

    resize_accuracy = accuracy(resized, "resize")
    tiles_accuracy = accuracy(native, View("tiles", max_tiles=16))
    assert resize_accuracy <= 0.7, resize_accuracy
    assert tiles_accuracy >= 0.95, tiles_accuracy


def test_train_view_crop_is_recorded_and_detect_defaults_to_tiles(tmp_path):
    from miragedet.data.synthetic import write_layout
    from miragedet.train import TrainConfig, Trainer

    data = write_layout(tmp_path / "data", "generic", ("grid-2",), n_per_class=16, size=96)
    config = TrainConfig(
        data=str(data), output=str(tmp_path / "run"), backbone="tiny", view="crop", depth=2,
        batch_size=16, epochs=1, workers=0, bank_size=32,
    )  # fmt: skip
    Trainer(config).fit()
    detector = Detector.from_pretrained(tmp_path / "run" / "last")
    assert detector.view.kind == "tiles"  # scored as it was trained: native resolution
    [p] = detector.score([str(next((data / "real").iterdir()))])
    assert p.tiles is not None and len(p.tiles["fake_probs"]) == 16  # 96 px: 4 x 4 tiles of 32
    assert Detector.from_pretrained(tmp_path / "run" / "last", view="resize").view.kind == "resize"
