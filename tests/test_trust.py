"""Trustworthy verdicts: shortcut audits, format alignment, verdict stability, flip rates."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from miragedet import MiraGe, ModelConfig
from miragedet.apps.cli import app
from miragedet.data.degrade import Alignment, Degradation
from miragedet.data.layouts import find_images
from miragedet.data.synthetic import write_layout, write_shortcut_set
from miragedet.evaluation.audit import audit_data, jpeg_quality
from miragedet.evaluation.scores import read_scores_csv
from miragedet.inference.detector import Detector
from miragedet.inference.stability import Stability

runner = CliRunner()


@pytest.mark.parametrize("quality", [30, 65, 90, 96])
def test_jpeg_quality_is_read_from_quantisation_tables(quality):
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 30).convert("RGB").save(buf, "JPEG", quality=quality)
    assert jpeg_quality(Image.open(io.BytesIO(buf.getvalue())).quantization) == quality


def test_biased_set_is_flagged_and_aligned_set_is_not(tmp_path):
    biased = audit_data(write_shortcut_set(tmp_path / "biased", 60), tmp_path / "a1")
    assert biased["shortcut"] and biased["baseline"]["accuracy"] > 0.9
    real, fake = biased["rows"]
    assert real["formats"] == {"JPEG": 60} and real["jpeg_quality_median"] == 90
    assert fake["formats"] == {"PNG": 60} and fake["jpeg_quality_median"] is None
    assert "WARNING" in (tmp_path / "a1" / "audit.md").read_text()
    with Image.open(tmp_path / "a1" / "audit.png") as plot:
        assert plot.size[0] > 1000

    aligned = audit_data(
        write_shortcut_set(tmp_path / "aligned", 60, aligned=True), tmp_path / "a2"
    )
    assert not aligned["shortcut"]
    assert abs(aligned["baseline"]["accuracy"] - 0.5) < 0.15
    result = runner.invoke(
        app, ["audit-data", str(tmp_path / "biased"), "-o", str(tmp_path / "a3")]
    )
    assert (
        result.exit_code == 3 and "can be told apart without looking at the pixels" in result.output
    )


@pytest.mark.parametrize("spec", ["jpeg:96", "jpeg:40"])
def test_alignment_reencodes_every_image_of_both_classes(tmp_path, spec):
    root = write_shortcut_set(tmp_path / "biased", 8)
    alignment = Alignment.parse(spec)
    reference = io.BytesIO()
    Image.new("RGB", (16, 16)).save(reference, "JPEG", quality=alignment.quality)
    expected = Image.open(reference).quantization
    for sample in find_images(root).samples:
        encoded = alignment.encode(Image.open(sample.path).convert("RGB"))
        reopened = Image.open(io.BytesIO(encoded))
        assert reopened.format == "JPEG" and reopened.quantization == expected
        assert jpeg_quality(reopened.quantization) == alignment.quality
    with pytest.raises(ValueError, match="jpeg:QUALITY"):
        Alignment.parse("webp:80")


class _Width:
    """Preprocessing that keeps only the image's width (what the doubles below score by)."""

    def __init__(self, real):
        self.real = real

    def __getattr__(self, name):
        return getattr(self.real, name)

    def __call__(self, image):
        return torch.tensor([float(image.width)])


class _SizeDependent(Detector):
    """A test double whose p(fake) grows with the image's width."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[int] = []
        self.preprocess = _Width(self.preprocess)

    def forward_tensors(self, pixels):
        self.calls.append(len(pixels))
        p = np.minimum(pixels[:, 0].numpy() / 1000.0, 1.0)
        return np.stack([1 - p, p], axis=1)


class _SizeInvariant(_SizeDependent):
    def forward_tensors(self, pixels):
        self.calls.append(len(pixels))
        return np.tile([[0.1, 0.9]], (len(pixels), 1))


@pytest.fixture
def detector_model(tiny):
    return MiraGe(tiny, ModelConfig.for_method("mirage", depth=2))


def test_stability_says_uncertain_when_delivery_changes_the_verdict(detector_model):
    photo = Image.new("RGB", (900, 700), (80, 120, 160))
    stability = Stability()
    unstable = _SizeDependent(detector_model)
    prediction = unstable.score(photo, stability=stability)[0]
    assert prediction.label == "uncertain"
    assert prediction.fake_prob == pytest.approx(0.9)
    reason = prediction.stability["reason"]
    assert "downscale:256" in reason and "downscale:512" not in reason  # 658 px wide stays fake
    assert prediction.stability["spread"] == pytest.approx(0.9 - 256 * 900 / 700 / 1000, abs=0.01)
    assert unstable.calls == [1 + len(stability.variants)]  # one batch of k + 1
    # on a CPU one forward per image; on a GPU (batch 32) the 5 inputs of 6 images share one
    several = unstable.score([photo] * 12 + [b"junk"], stability=stability)
    assert [p.label for p in several[:12]] == ["uncertain"] * 12 and several[12].error
    assert unstable.calls[1:] == [5] * 12
    del unstable.calls[:]
    unstable.device = torch.device("cuda")  # a stand-in: the double's forward runs anywhere
    again = unstable.score([photo] * 12 + [b"junk"], stability=stability)
    assert [p.to_dict() for p in again] == [p.to_dict() for p in several]
    assert unstable.calls == [6 * 5, 6 * 5]

    stable = _SizeInvariant(detector_model)
    steady = stable.score([photo, b"junk"], stability=stability)
    assert steady[0].label == "fake" and steady[0].stability["verdicts_agree"]
    assert steady[0].stability["spread"] == 0.0 and steady[1].error
    assert stable.calls == [5]

    near = Stability(margin=0.45)
    assert stable.score(photo, stability=near)[0].label == "uncertain"  # 0.9 within 0.45 of 0.5
    with pytest.raises(ValueError, match="stability variant"):
        Stability(("zoom:2",))


def test_stability_in_the_cli_and_server_rows(detector_model, tmp_path, server):
    import httpx

    from conftest import SERVER_KEY

    detector_model.save_pretrained(str(tmp_path / "ckpt"))
    image = tmp_path / "photo.png"
    Image.effect_noise((64, 48), 40).convert("RGB").save(image)
    result = runner.invoke(
        app, ["detect", str(image), "-m", str(tmp_path / "ckpt"), "-f", "jsonl", "--stability"]
    )
    row = json.loads(result.stdout.splitlines()[0])
    assert row["label"] in ("real", "fake", "uncertain") and "stability_spread" in row
    r = httpx.post(
        f"{server}/v1/detect?stability=true",
        headers={"X-API-Key": SERVER_KEY},
        files={"files": ("photo.png", image.read_bytes())},
    )
    body = r.json()["results"][0]
    assert r.status_code == 200 and set(body["stability"]["scores"]) == {
        "as given",
        "downscale:512",
        "downscale:256",
        "jpeg:75",
        "crop:0.8",
    }
    bad = httpx.post(
        f"{server}/v1/detect?stability=true&stability_margin=2",
        headers={"X-API-Key": SERVER_KEY},
        files={"files": ("photo.png", image.read_bytes())},
    )
    assert bad.status_code == 422


def test_flip_rate_equals_a_recount_from_saved_scores(tiny, tmp_path):
    from miragedet.evaluation.evaluate import evaluate_dataset

    data = write_layout(tmp_path / "data", "genimage", ("grid-2", "grid-4"), n_per_class=24)
    model = MiraGe(tiny, ModelConfig.for_method("mirage", depth=2))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.5)
    metrics = evaluate_dataset(
        model,
        data,
        tmp_path / "eval",
        workers=0,
        degradations=[Degradation("blur", 1.0)],
        align=Alignment.parse("jpeg:60"),
    )
    _, clean, _ = read_scores_csv(tmp_path / "eval" / "scores.csv")
    samples, blurred, _ = read_scores_csv(tmp_path / "eval" / "scores_blur-1.csv")
    subsets = np.array([s.subset for s in samples])
    for subset in ("grid-2", "grid-4"):
        m = subsets == subset
        recount = ((1 - clean[m, 0] >= 0.5) != (1 - blurred[m, 0] >= 0.5)).mean()
        assert metrics["degradations"]["blur:1"][subset]["flip_rate"] == pytest.approx(recount)
    assert metrics["aligned"]["name"] == "align:jpeg:60"
    assert "flip_rate" in metrics["aligned"]["table"]["mean"]
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "Format-aligned" in report and "verdict flips" in report


def test_stability_on_a_cpu_scores_as_one_forward_per_image_and_odd_inputs_are_rows(
    detector_model, monkeypatch
):
    """Through the decode pool, each image's stability scores on a CPU are bit for bit those of
    its own forward of k + 1 inputs; an input that fails while being re-delivered is its own
    error row and the others are still scored."""
    images = [Image.effect_noise((64 + 8 * i, 48), 40).convert("RGB") for i in range(7)]
    detector = Detector(detector_model, precision="fp32")
    stability = Stability()
    got = detector.score(images, provenance=False, stability=stability)
    for image, prediction in zip(images, got, strict=True):
        inputs = [detector.preprocess(im) for _, im in stability.redeliver(image)]
        expected = 1.0 - detector.forward_tensors(torch.stack(inputs))[:, 0]
        assert list(prediction.stability["scores"].values()) == [float(v) for v in expected]
    real = Stability.redeliver

    def flaky(self, image):
        if image.width == 80:
            raise RuntimeError("boom")
        return real(self, image)

    monkeypatch.setattr(Stability, "redeliver", flaky)
    rows = detector.score(images, provenance=False, stability=stability)
    assert [p.error is not None for p in rows] == [i == 2 for i in range(7)]
    assert "boom" in rows[2].error
