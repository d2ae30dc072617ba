"""Scoring for users: the Python API, `miragedet detect`, and provenance."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from miragedet import MiraGe, ModelConfig
from miragedet.apps.cli import app
from miragedet.inference.detector import Detector
from miragedet.provenance.verdict import read_provenance
from signing import sign_jpeg

runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from miragedet.model.backbone import load_backbone

    model = MiraGe(load_backbone("tiny"), ModelConfig.for_method("mirage", depth=2))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)
    path = tmp_path_factory.mktemp("ckpt") / "detector"
    model.save_pretrained(str(path), threshold=0.5)
    return path


def _jpeg(image, **kw):
    buf = io.BytesIO()
    image.save(buf, format="JPEG", **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def messy_folder(tmp_path_factory):
    """Good images in odd formats beside broken files, as users' folders are."""
    root = tmp_path_factory.mktemp("messy")
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    photo.save(root / "plain.png")
    Image.fromarray((rng.integers(0, 65535, (30, 30))).astype(np.uint16)).save(root / "deep.png")
    (root / "cmyk.jpg").write_bytes(_jpeg(photo.convert("CMYK")))
    frames = [photo, photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:])
    exif = Image.Exif()
    exif[0x0112] = 6
    photo.save(root / "rotated.jpg", exif=exif)
    sub = root / "nested"
    sub.mkdir()
    photo.rotate(90).save(sub / "inner.webp")
    full = _jpeg(photo, quality=90)
    (root / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (root / "text.png").write_text("this is not a picture")
    (root / "notes.txt").write_text("ignored: not an image extension")
    return root


GOOD = {"plain.png", "deep.png", "cmyk.jpg", "anim.gif", "rotated.jpg", "inner.webp"}
BAD = {"truncated.jpg", "text.png"}


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_detect_scores_every_good_image_and_reports_every_bad_one(
    checkpoint, messy_folder, tmp_path
):
    out = tmp_path / "scores.jsonl"
    result = runner.invoke(
        app, ["detect", str(messy_folder), "-m", str(checkpoint), "-f", "jsonl", "-o", str(out)]
    )
    assert result.exit_code == 1  # something could not be read
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in _rows(out)}
    assert set(rows) == GOOD | BAD
    for name in GOOD:
        assert rows[name]["error"] is None and 0 <= rows[name]["fake_prob"] <= 1, name
        assert rows[name]["label"] in ("real", "fake")
    for name in BAD:
        assert rows[name]["error"] and rows[name]["fake_prob"] is None, name
    assert "6 scored, 2 failed" in result.output


def test_resume_scores_only_what_is_missing(checkpoint, messy_folder, tmp_path):
    out = tmp_path / "scores.jsonl"
    args = ["detect", str(messy_folder), "-m", str(checkpoint), "-f", "jsonl", "-o", str(out)]
    runner.invoke(app, args)
    complete = out.read_text().splitlines(keepends=True)
    # Interrupted: three rows written, the fourth cut mid-line.
    out.write_text("".join(complete[:3]) + complete[3][:20])
    result = runner.invoke(app, [*args, "--resume"])
    assert "already in" in result.output
    rows = _rows(out)
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)) == len(GOOD | BAD)
    assert rows[:3] == [json.loads(line) for line in complete[:3]]
    assert "3 already in" in result.output


def test_detect_writes_csv_and_json_and_reads_stdin(checkpoint, messy_folder, tmp_path):
    files = sorted(str(p) for p in messy_folder.glob("*.png"))
    result = runner.invoke(
        app, ["detect", "-", "-m", str(checkpoint), "-f", "json"], input="\n".join(files) + "\n"
    )
    parsed = json.loads(result.stdout)
    assert [r["path"] for r in parsed] == files
    out = tmp_path / "rows.csv"
    runner.invoke(
        app,
        ["detect", str(messy_folder / "*.jpg"), "-m", str(checkpoint), "-o", str(out), "-f", "csv"],
    )
    lines = out.read_text().splitlines()
    assert lines[0].startswith("path,fake_prob,label,threshold")
    assert len(lines) == 4  # header, cmyk.jpg, rotated.jpg, truncated.jpg


def test_api_scores_equal_detect_scores_and_input_kinds_agree(checkpoint, messy_folder, tmp_path):
    out = tmp_path / "scores.jsonl"
    runner.invoke(
        app, ["detect", str(messy_folder), "-m", str(checkpoint), "-f", "jsonl", "-o", str(out)]
    )
    from_cli = {r["path"]: r["fake_prob"] for r in _rows(out)}
    detector = Detector.from_pretrained(checkpoint)
    predictions = detector.score(list(from_cli))
    for p in predictions:
        if p.ok:
            assert p.fake_prob == pytest.approx(from_cli[p.source], abs=1e-7)
        else:
            assert from_cli[p.source] is None
    path = messy_folder / "plain.png"
    as_path = detector.decision_function(str(path))[0]
    as_bytes = detector.decision_function(path.read_bytes())[0]
    as_pil = detector.decision_function(Image.open(path))[0]
    as_array = detector.decision_function(np.asarray(Image.open(path)))[0]
    as_float = detector.decision_function(np.asarray(Image.open(path)) / 255.0)[0]
    assert as_path == pytest.approx(as_bytes) == pytest.approx(as_pil)
    assert as_path == pytest.approx(as_array) == pytest.approx(as_float, abs=1e-6)


def test_api_errors_are_per_item(checkpoint):
    detector = Detector.from_pretrained(checkpoint, threshold=0.4)
    good = Image.new("RGB", (20, 20), (90, 30, 60))
    with pytest.warns(UserWarning, match="1 of 3 inputs could not be read"):
        probs = detector.predict_proba([good, b"junk", good])
    assert probs.shape == (3, 2) and np.isnan(probs[1]).all() and not np.isnan(probs[0]).any()
    labels = detector.predict([good, b"junk"])
    assert labels[1] is None and labels[0] in ("real", "fake")
    p = detector.score(good)[0]
    assert p.threshold == 0.4 and p.label == ("fake" if p.fake_prob >= 0.4 else "real")
    assert detector.score([np.zeros((4, 4, 7))])[0].error.startswith("array of shape")


def test_provenance_from_exif_c2pa_or_none(tmp_path):
    photo = Image.new("RGB", (32, 32), (120, 100, 80))
    exif = Image.Exif()
    exif[0x0131] = "Adobe Firefly"
    photo.save(tmp_path / "firefly.jpg", exif=exif)
    info = read_provenance(tmp_path / "firefly.jpg")
    assert info["declares_ai"] and "Adobe Firefly" in info["summary"]
    assert info["c2pa"] == {"checked": True, "present": False}

    signed = sign_jpeg(_jpeg(photo), generator="Some Image Model")
    (tmp_path / "signed.jpg").write_bytes(signed)
    info = read_provenance(tmp_path / "signed.jpg")
    assert info["c2pa"]["present"] and info["c2pa"]["declares_ai"]
    assert info["c2pa"]["claim_generator"] == "Some Image Model 1.0"
    assert "declares AI generation" in info["summary"] and info["declares_ai"]
    assert Image.open(io.BytesIO(signed)).size == (32, 32)  # still an ordinary JPEG

    camera = sign_jpeg(
        _jpeg(photo), source_type=("http://cv.iptc.org/newscodes/digitalsourcetype/digitalCapture")
    )
    assert read_provenance(camera)["declares_ai"] is False

    photo.save(tmp_path / "plain.png")
    info = read_provenance(tmp_path / "plain.png")
    assert not info["declares_ai"] and info["summary"].startswith("no provenance metadata")


def test_detect_reports_provenance_beside_the_score(checkpoint, tmp_path):
    photo = Image.new("RGB", (32, 32), (10, 100, 200))
    (tmp_path / "signed.jpg").write_bytes(sign_jpeg(_jpeg(photo)))
    result = runner.invoke(
        app,
        [
            "detect",
            str(tmp_path / "signed.jpg"),
            "-m",
            str(checkpoint),
            "--provenance",
            "-f",
            "jsonl",
        ],
    )
    row = json.loads(result.stdout.splitlines()[0])
    assert row["declares_ai"] is True and row["fake_prob"] is not None
    assert "C2PA manifest declares AI generation" in row["provenance"]


def test_draft_decode_of_large_jpegs_stays_within_tolerance(tiny, tmp_path):
    """Reduced-scale JPEG decode (the default) moves the model input by < 0.01 on average and
    p(fake) by < 1e-3; PNGs are decoded exactly as before."""
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from common import photo

    model = MiraGe(tiny, ModelConfig.for_method("mirage", depth=2))
    paths = []
    for i, size in enumerate([(1600, 1200), (2304, 1728), (1200, 1600)]):
        paths.append(tmp_path / f"big{i}.jpg")
        photo(*size, seed=i).save(paths[-1], quality=92)
    png = tmp_path / "big.png"
    photo(1600, 1200, seed=9).save(png)
    exact, fast = Detector(model, exact_decode=True), Detector(model, exact_decode=False)
    assert fast.draft_size == 2 * tiny.preprocess.resize_shortest and exact.draft_size is None
    for path in paths:
        a, b = exact._prepare(str(path)), fast._prepare(str(path))
        assert a.shape == b.shape
        assert 0 < (a - b).abs().mean() < 0.01  # really decoded differently, and close
    assert torch.equal(exact._prepare(str(png)), fast._prepare(str(png)))
    p_exact = np.array([p.fake_prob for p in exact.score([str(p) for p in paths])])
    p_fast = np.array([p.fake_prob for p in fast.score([str(p) for p in paths])])
    assert np.abs(p_exact - p_fast).max() < 1e-3


def test_bf16_scores_close_to_fp32_and_bad_precision_is_refused(tiny, tmp_path):
    model = MiraGe(tiny, ModelConfig.for_method("mirage", depth=2))
    images = [np.random.default_rng(i).integers(0, 256, (40, 48, 3), np.uint8) for i in range(4)]
    half = Detector(model, precision="bf16")
    assert half.model.clip.logit_scale.dtype == torch.bfloat16
    assert model.clip.logit_scale.dtype == torch.float32  # the caller's model is not changed
    fp32 = Detector(model, precision="fp32").predict_proba(images)
    bf16 = half.predict_proba(images)
    assert np.abs(fp32 - bf16).max() < 0.02 and not np.array_equal(fp32, bf16)
    with pytest.raises(ValueError, match="precision"):
        Detector(model, precision="int4")


def test_detect_on_a_training_run_folder_uses_best_else_last(checkpoint, tmp_path):
    import shutil

    image = tmp_path / "one.png"
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(image)
    run = tmp_path / "run"
    shutil.copytree(checkpoint, run / "last")
    result = runner.invoke(app, ["detect", str(image), "-m", str(run), "-f", "json"])
    assert result.exit_code == 0, result.output
    assert "scoring with its last checkpoint" in result.output
    shutil.copytree(checkpoint, run / "best")
    result = runner.invoke(app, ["detect", str(image), "-m", str(run), "-f", "json"])
    assert result.exit_code == 0 and "scoring with its best checkpoint" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["detect", str(image), "-m", str(empty)])
    assert result.exit_code == 2
    assert "holds no checkpoint" in result.output and "best/ or last/" in result.output
    assert "Errno" not in result.output
