"""Views: resize unchanged, tiles cover the image at native resolution, and the where-map points
at the region that carries a generator's trace."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import fit_tiny, in_process
from miragedet import MiraGe, ModelConfig
from miragedet.apps.cli import app
from miragedet.data.synthetic import SEEN, make_image, make_set, smooth_scene
from miragedet.data.views import View, inputs, tile_boxes
from miragedet.inference.detector import Detector


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
    from miragedet.model.backbone import load_backbone

    tiny = load_backbone("tiny")
    images, labels = make_set(600, tiny.preprocess.image_size, SEEN, seed=1)
    model, _ = fit_tiny(tiny, tiny.preprocess.batch(images), labels, steps=300)
    return model


def _partial_fake(rng, quadrant: int, side: int = 128) -> Image.Image:
    """A real-like scene with the generator's trace in one quadrant only (a pasted region)."""
    half = side // 2
    return make_image(rng, side, SEEN, ((quadrant // 2) * half, (quadrant % 2) * half, half))


def test_where_map_points_at_the_faked_quadrant(fingerprint_model):
    detector = Detector(fingerprint_model, precision="fp32", view=View("tiles", overlap=0.0))
    rng = np.random.default_rng(7)
    hits, n = 0, 40
    for k in range(n):
        quadrant = k % 4
        [p] = detector.score([_partial_fake(rng, quadrant)])
        assert p.tiles["count"] == len(p.regions) == 16  # 4 x 4 tiles of 32 px over 128 px
        top = max(p.regions, key=lambda region: region["p"])
        left, upper = top["box"][:2]
        hits += (upper // 64) * 2 + (left // 64) == quadrant
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
    assert len(row["regions"]) == 4 and row["fake_prob"] is not None
    assert all(len(r["box"]) == 4 and 0 <= r["p"] <= 1 for r in row["regions"])
    from miragedet.apps.detect import where_path

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
    from miragedet.training.config import TrainConfig
    from miragedet.training.trainer import Trainer

    data = write_layout(tmp_path / "data", "generic", ("grid-2",), n_per_class=16, size=96)
    config = TrainConfig(
        data=str(data), output=str(tmp_path / "run"), backbone="tiny", view="crop", depth=2,
        batch_size=16, epochs=1, workers=0, bank_size=32,
    )  # fmt: skip
    Trainer(config).fit()
    detector = Detector.from_pretrained(tmp_path / "run" / "last")
    assert detector.view.kind == "tiles"  # scored as it was trained: native resolution
    [p] = detector.score([str(next((data / "real").iterdir()))])
    assert p.tiles is not None and len(p.regions) == 16  # 96 px: 4 x 4 tiles of 32
    assert Detector.from_pretrained(tmp_path / "run" / "last", view="resize").view.kind == "resize"
    # calibrated as it scores: with its tiles, recorded beside the threshold
    result = CliRunner().invoke(
        app, ["calibrate", "-m", str(tmp_path / "run" / "last"), str(data), "--fpr", "0.1"]
    )
    assert result.exit_code == 0, result.output
    from miragedet.model.checkpoint import read_config

    calibration = read_config(tmp_path / "run" / "last")["calibration"]
    assert calibration["view"]["kind"] == "tiles" and calibration["n_real"] == 16


def test_aggregation_rules_on_known_tile_scores():
    from miragedet.inference.tiles import aggregate

    # 8 tiles: six clearly real, two clearly fake (p(fake) 0.9)
    probs = np.array([[0.9, 0.1]] * 6 + [[0.1, 0.9]] * 2)
    assert aggregate(probs, "max")[1] == pytest.approx(0.9)
    assert aggregate(probs, "top-k")[1] == pytest.approx(0.9)  # the top quarter: the two fakes
    mean = aggregate(probs, "mean-logit")
    assert mean[1] < 0.5 and mean.sum() == pytest.approx(1.0)
    # top-k of 3 tiles is one tile; of 5 tiles two (ceil of a quarter)
    three = np.array([[0.2, 0.8], [0.6, 0.4], [0.7, 0.3]])
    assert aggregate(three, "top-k")[1] == pytest.approx(0.8)
    five = np.array([[0.2, 0.8], [0.4, 0.6], [0.9, 0.1], [0.9, 0.1], [0.9, 0.1]])
    expected = np.exp(np.log([[0.2, 0.8], [0.4, 0.6]]).mean(axis=0))
    assert aggregate(five, "top-k") == pytest.approx(expected / expected.sum())


def test_the_default_aggregation_is_the_measured_choice():
    """views.View's default rule is the one benchmarks/aggregate_study.py chose (its kept
    results): changing either without the other fails here."""
    from pathlib import Path

    results = Path(__file__).parents[1] / "benchmarks" / "results" / "aggregate_study.json"
    study = json.loads(results.read_text())
    assert View().aggregate == study["choice"]["rule"]
    assert study["choice"]["rule"] in study["choice"]["stable"]


def _photo(path, size=(100, 70), seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), np.uint8)).save(path)
    return path


def test_api_cli_and_server_agree_on_the_grid(served_checkpoint, tmp_path):
    import asyncio

    from miragedet.apps.server import ServerSettings, create_app

    image = _photo(tmp_path / "a.png")
    detector = Detector.from_pretrained(served_checkpoint, view={"kind": "tiles", "max_tiles": 4})
    [api] = detector.score([str(image)])
    assert api.tiles is not None and len(api.regions) == 4

    out = tmp_path / "rows.jsonl"
    args = ["detect", str(image), "-m", str(served_checkpoint), "-f", "jsonl", "-o", str(out)]
    result = CliRunner().invoke(app, [*args, "--view", "tiles", "--max-tiles", "4"])
    assert result.exit_code == 0, result.output
    [row] = [json.loads(line) for line in out.read_text().splitlines()]

    settings = ServerSettings(model=str(served_checkpoint), provenance=False, max_tiles_limit=8)
    server_app = create_app(settings)

    async def ask():
        async with in_process(server_app) as client:
            files = {"files": ("a.png", image.read_bytes())}
            tiled = await client.post("/v1/detect?view=tiles&max_tiles=4", files=files)
            plain = await client.post("/v1/detect", files=files)
            refused = [
                await client.post(f"/v1/detect?{query}", files=files)
                for query in (
                    "view=tiles&max_tiles=9",  # over the server's limit of 8
                    "view=pyramid",
                    "view=tiles&aggregate=median",
                    "view=tiles&stability=true",
                )
            ]
            return tiled.json(), plain.json(), refused

    tiled, plain, refused = asyncio.run(ask())
    [served] = tiled["results"]
    assert served["tiles"]["size"] == [100, 70] and served["tiles"]["count"] == 4
    boxes = [r["box"] for r in api.regions]
    assert [r["box"] for r in served["regions"]] == boxes == [r["box"] for r in row["regions"]]
    probs = [r["p"] for r in api.regions]
    np.testing.assert_allclose([r["p"] for r in served["regions"]], probs, atol=1e-6)
    np.testing.assert_allclose([r["p"] for r in row["regions"]], probs, atol=1e-6)
    assert served["fake_prob"] == pytest.approx(api.fake_prob, abs=1e-6)
    assert row["fake_prob"] == pytest.approx(api.fake_prob, abs=1e-6)
    assert plain["results"][0]["tiles"] is None  # the checkpoint's own view: resize
    assert [r.status_code for r in refused[:3]] == [422] * 3  # typed in the OpenAPI document
    assert {r.json()["code"] for r in refused[:3]} == {"invalid_request"}
    assert "max_tiles: Input should be less than or equal to 8" in refused[0].json()["detail"]
    assert "view: Input should be 'resize', 'tiles' or 'crop'" in refused[1].json()["detail"]
    # re-deliveries under the tiles view: each tiled and aggregated like the image as given
    stable = refused[3].json()["results"][0]
    assert refused[3].status_code == 200 and stable["tiles"]["count"] == len(stable["regions"])
    scores = stable["stability"]["scores"]
    assert scores["as given"] == pytest.approx(stable["fake_prob"], abs=1e-6)
    assert len(scores) == 5 and stable["label"] in ("real", "fake", "uncertain")


def test_score_dataset_and_evaluate_score_with_the_view(served_checkpoint, tmp_path):
    from miragedet.data.synthetic import write_layout
    from miragedet.evaluation.evaluate import evaluate_dataset
    from miragedet.evaluation.scores import read_scores_csv
    from miragedet.inference.score_dataset import read_scores, score_dataset
    from miragedet.model.mirage import load_pretrained

    data = write_layout(tmp_path / "data", "ufd", ("grid-2",), n_per_class=6, size=80)
    view = {"kind": "tiles", "max_tiles": 9, "aggregate": "top-k"}
    detector = Detector.from_pretrained(served_checkpoint, view=view, precision="fp32")
    paths = sorted(str(p) for p in data.rglob("*.png"))
    expected = {p.source: p for p in detector.score(paths)}

    out = tmp_path / "scores"
    score_dataset(
        str(data), out, str(served_checkpoint), engine="local", view=view, precision="fp32"
    )
    table = read_scores(out).to_pylist()
    assert len(table) == len(paths)
    for row in table:
        want = expected[row["path"]]
        assert row["tiles"] == 9 and row["fake_prob"] == pytest.approx(want.fake_prob, abs=1e-6)
        got = json.loads(row["regions"])
        assert [r["box"] for r in got] == [r["box"] for r in want.regions]
        np.testing.assert_allclose([r["p"] for r in got], [r["p"] for r in want.regions], atol=1e-6)
        top = max(r["p"] for r in want.regions)
        assert row["tile_max_fake_prob"] == pytest.approx(top, abs=1e-6)
        assert row["frames"] is None and row["duration"] is None  # still images
    from miragedet.inference.score_dataset import ScoringError

    with pytest.raises(ScoringError, match="view"):  # another view is another job
        score_dataset(str(data), out, str(served_checkpoint), engine="local", precision="fp32")

    model = load_pretrained(served_checkpoint)
    metrics = evaluate_dataset(model, data, tmp_path / "eval", workers=0, view=view)
    assert metrics["view"]["kind"] == "tiles" and metrics["view"]["aggregate"] == "top-k"
    samples, probs, errors = read_scores_csv(tmp_path / "eval" / "scores.csv")
    assert not errors and len(samples) == len(paths)
    for sample, p in zip(samples, probs, strict=True):
        assert 1.0 - p[0] == pytest.approx(expected[sample.path].fake_prob, abs=1e-5)
    resized = evaluate_dataset(model, data, tmp_path / "eval-resize", workers=0)
    assert resized["view"]["kind"] == "resize"  # the checkpoint's own view by default
