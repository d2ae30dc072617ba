"""Adversarial robustness: attacks through the detector's own preprocessing, rounded to the PNG a
user would upload, rescored; the report; adversarial training of the prompts."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from typer.testing import CliRunner

from conftest import fit_tiny
from miragedet.data.synthetic import SEEN, make_set, write_layout
from miragedet.data.views import View, inputs
from miragedet.inference.attacks import (
    SWEEP,
    Adversary,
    Attack,
    UploadModel,
    frozen,
    parse_attacks,
    perturb,
)
from miragedet.inference.detector import Detector
from miragedet.model.backbone import load_backbone

pytest.importorskip("art")


def test_attack_specs_parse_name_and_refuse():
    attack = Attack.parse("pgd:eps=4,steps=20,target=real")
    assert (attack.kind, attack.eps, attack.steps, attack.target) == ("pgd", 4, 20, "real")
    assert attack.step_size == pytest.approx(0.5)  # 2.5 * eps / steps (Madry et al.)
    assert Attack.parse(attack.name) == attack and attack.family == "PGD,steps=20,target=real"
    assert Attack.parse("fgsm:eps=2").step_size == 2
    assert [a.name for a in parse_attacks(["sweep"])] == [Attack.parse(s).name for s in SWEEP]
    assert attack.target_index(["Real", "Fake"]) == 0
    for bad, message in [
        ("pgd:steps=10", "give its budget"),
        ("pgd:eps=2,stride=3", "unknown option"),
        ("fgsm:eps=2,steps=3", "FGSM is one step"),
        ("cw:eps=2", "attack kind"),
        ("pgd:eps=300", "grey levels"),
    ]:
        with pytest.raises(ValueError, match=message):
            Attack.parse(bad)
    with pytest.raises(ValueError, match="not a class"):
        Attack.parse("pgd:eps=2,target=midjourney").target_index(["Real", "Fake"])


@pytest.mark.parametrize("size", [(50, 40), (32, 32), (100, 70), (300, 225), (31, 64)])
def test_differentiable_resize_is_pillows(tiny, size):
    """The attacked function is the one that scores: torch's antialiased bicubic against the
    Pillow resize of the checkpoint's preprocessing: within rounding to 8 bits when shrinking
    (photos larger than the model's input); enlarging a smaller image agrees on average."""
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (size[1], size[0], 3), np.uint8)
    array = np.asarray(Image.fromarray(array).filter(ImageFilter.SMOOTH)).copy()
    reference = tiny.preprocess(Image.fromarray(array))
    module = UploadModel(torch.nn.Identity(), tiny.preprocess, View("resize"), size)
    x = torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255
    got = module.inputs(x)[0]
    assert got.shape == reference.shape
    std = torch.tensor(tiny.preprocess.std).view(3, 1, 1)
    grey_levels = ((got - reference) * std * 255).abs()
    assert grey_levels.mean() <= 0.35
    if min(size) >= tiny.preprocess.resize_shortest:
        assert grey_levels.max() <= 1.0


def test_differentiable_tiles_are_the_views_tiles(tiny):
    array = np.random.default_rng(1).integers(0, 256, (70, 100, 3), np.uint8)
    for view in (View("tiles", max_tiles=4), View("crop"), View("tiles", max_tiles=64)):
        module = UploadModel(torch.nn.Identity(), tiny.preprocess, view, (100, 70))
        x = torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255
        expected = inputs(Image.fromarray(array), tiny.preprocess, view).pixels
        torch.testing.assert_close(module.inputs(x), expected, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def fingerprint():
    """A tiny MiraGe trained on 32 px images with and without the 2 px trace (98% here)."""
    torch.manual_seed(0)
    tiny = load_backbone("tiny")
    images, labels = make_set(300, 32, SEEN, seed=1)
    model, _ = fit_tiny(tiny, tiny.preprocess.batch(images), labels, steps=600)
    return tiny, model


def _accuracy(detector: Detector, images, labels) -> float:
    p = detector.predict_proba(images)[:, 1]
    return float(((p >= detector.threshold) == (np.asarray(labels) == 1)).mean())


def test_gradients_reach_the_input_and_never_the_prompts(fingerprint):
    tiny, model = fingerprint
    module = UploadModel(model, tiny.preprocess, View("resize"), (48, 40))
    x = torch.rand(2, 3, 40, 48, requires_grad=True)
    before = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    with frozen(model):
        loss = torch.nn.functional.cross_entropy(module(x), torch.tensor([0, 1]))
        loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for p, grad in zip(model.parameters(), before, strict=True):  # a training step's .grad
        assert (p.grad is None and grad is None) or torch.equal(p.grad, grad)  # is left alone
    assert all(p.requires_grad for p in model.prompts.parameters())  # put back after


def test_the_attack_works_and_pgd_beats_fgsm(fingerprint):
    """On the fingerprint task: the model is right on >= 95%, a large-eps PGD leaves it right on
    almost none, and at a moderate eps ten PGD steps beat one FGSM step where the detector is
    not linear in the pixels: the tiles view's top-k rule picks which tiles count, which one
    signed step cannot follow (through the plain resize this near-linear tiny model gives PGD
    and FGSM the same result; docs/adversarial.md)."""
    tiny, model = fingerprint
    test, labels = make_set(50, 32, SEEN, seed=5)
    images = [np.asarray(im) for im in test]
    resize = Detector(model, precision="fp32")
    assert _accuracy(resize, images, labels) >= 0.95
    strong = Attack.parse("pgd:eps=8,steps=10")
    attacked = perturb(model, images, labels, strong, tiny.preprocess, resize.view)
    assert _accuracy(resize, attacked, labels) <= 0.1
    moved = [int(np.abs(a.astype(int) - b).max()) for a, b in zip(attacked, images, strict=True)]
    assert max(moved) <= 8

    big, big_labels = make_set(50, 64, SEEN, seed=6)
    big = [np.asarray(im) for im in big]
    tiles = Detector(model, precision="fp32", view=View("tiles"))
    robust = {}
    for spec in ("fgsm:eps=3", "pgd:eps=3,steps=10"):
        attacked = perturb(model, big, big_labels, Attack.parse(spec), tiny.preprocess, tiles.view)
        robust[spec] = _accuracy(tiles, attacked, big_labels)
    assert _accuracy(tiles, big, big_labels) >= 0.8
    assert robust["pgd:eps=3,steps=10"] < robust["fgsm:eps=3"] - 0.2, robust


def test_adversarial_training_raises_robust_accuracy(tiny):
    """--adv-train (PGD on half of each batch) against plain training, same data, seed and steps:
    robust accuracy under a 10-step PGD at eps 2 must rise. The clean accuracy it costs is
    printed, not bounded (it is what the user pays)."""
    images, labels = make_set(300, 32, SEEN, seed=1)
    pixels = tiny.preprocess.batch(images)
    test, test_labels = make_set(50, 32, SEEN, seed=5)
    test = [np.asarray(im) for im in test]
    attack = Attack.parse("pgd:eps=2,steps=10")
    results = {}
    for name, adversary in [
        ("plain", None),
        ("adversarial", Adversary(Attack.parse("pgd:eps=2,steps=5"), 0.5, tiny.preprocess)),
    ]:
        torch.manual_seed(0)
        from miragedet import MiraGe, ModelConfig
        from miragedet.training import LossConfig, MiraGeLoss, OptimConfig
        from miragedet.training.step import fit_tensors

        model = MiraGe(tiny, ModelConfig.for_method("mirage", depth=2))
        loss_fn = MiraGeLoss(LossConfig.for_method("mirage", bank_size=256), dim=64)
        optim = OptimConfig(lr=0.02, batch_size=64)
        fit_tensors(
            model, loss_fn, pixels, torch.tensor(labels), optim, steps=300, adversary=adversary
        )
        detector = Detector(model, precision="fp32")
        attacked = perturb(model, test, test_labels, attack, tiny.preprocess, detector.view)
        results[name] = (_accuracy(detector, test, test_labels),
                         _accuracy(detector, attacked, test_labels))  # fmt: skip
    print("clean / robust at eps 2:", results)
    assert results["adversarial"][1] >= results["plain"][1] + 0.05, results


def test_adversary_leaves_the_rest_of_the_batch_and_the_target_class(fingerprint):
    tiny, model = fingerprint
    images, labels = make_set(8, 32, SEEN, seed=3)
    pixels, labels = tiny.preprocess.batch(images), torch.tensor(labels)
    out = Adversary(Attack.parse("pgd:eps=4,steps=3"), 0.5, tiny.preprocess)(
        model, pixels, labels, 0
    )
    changed = (out - pixels).flatten(1).abs().amax(1) > 0
    assert changed[:8].any() and not changed[8:].any()  # half of 16
    step = 4 / 255 / min(tiny.preprocess.std) + 1e-5
    assert (out - pixels).abs().max() <= step
    towards_real = Adversary(Attack.parse("pgd:eps=4,steps=3,target=real"), 1.0, tiny.preprocess)
    out = towards_real(model, pixels, labels, 0)
    moved = (out - pixels).flatten(1).abs().amax(1) > 0
    assert not moved[labels == 0].any() and moved[labels == 1].any()  # only fakes are pushed


def test_evaluate_attack_report(fingerprint, tmp_path):
    """evaluate --attack: eps 0 gives exactly the clean accuracy; every saved PNG is within eps
    of its original; survival, stability and the files of the report; a rerun reuses the
    saved images."""
    from miragedet.evaluation.adversarial import robustness_report
    from miragedet.evaluation.evaluate import evaluate_dataset

    _, model = fingerprint
    data = write_layout(tmp_path / "data", "ufd", ("grid-2", "grid-2-faint"), n_per_class=12,
                        size=32, seed=4)  # fmt: skip
    attacks = parse_attacks(["pgd:eps=0,steps=5", "fgsm:eps=3", "pgd:eps=3,steps=5,target=real"])
    options = {"max_per_subset": 20, "attack_batch": 4}
    metrics = evaluate_dataset(model, data, tmp_path / "eval", workers=0, attacks=attacks,
                               attack_options=options)  # fmt: skip
    rows = metrics["adversarial"]["rows"]
    by = {(r["attack"], r["subset"]): r for r in rows}
    from miragedet.evaluation.scores import read_scores_csv

    samples, _, _ = read_scores_csv(tmp_path / "eval" / "scores.csv")
    pool = [samples[i] for i in _pool(tmp_path)]
    assert {r["subset"] for r in rows} == {"grid-2", "grid-2-faint", "mean"}
    for subset in ("grid-2", "grid-2-faint"):
        zero = by[("pgd:eps=0,steps=5", subset)]
        assert zero["images"] == 20 and zero["success_rate"] == 0 and zero["max_change"] == 0
        assert zero["robust_accuracy"] == zero["clean_accuracy"]
        fgsm = by[("fgsm:eps=3", subset)]
        assert fgsm["robust_accuracy"] < fgsm["clean_accuracy"] and fgsm["max_change"] <= 3
        targeted = by[("pgd:eps=3,steps=5,target=real", subset)]
        fakes = sum(s.label == 1 and s.subset == subset for s in pool)
        assert targeted["images"] == fakes > 0  # the fakes among the 20 sampled
        for key in ("success_after jpeg:90", "alone jpeg:75", "caught_by_stability"):
            assert key in fgsm
    # the PNGs, decoded, against the originals as decoded
    from miragedet.data.dataset import load_image

    folder = tmp_path / "eval" / "adversarial" / "fgsm_eps=3"
    pngs = sorted(folder.glob("*.png"))  # named by their position in the attacked sample
    assert pngs
    report = json.loads((tmp_path / "eval" / "adversarial.json").read_text())
    assert report["sample"] == 40
    for png in pngs:
        original = pool[int(png.stem)].path
        diff = np.asarray(load_image(str(png)), int) - np.asarray(load_image(original), int)
        assert np.abs(diff).max() <= 3
    for name in ("adversarial.md", "adversarial.csv", "adversarial.png"):
        assert (tmp_path / "eval" / name).stat().st_size > 200
    assert "## Adversarial robustness" in (tmp_path / "eval" / "report.md").read_text()

    progress = []
    from miragedet.evaluation.scores import score_samples

    clean = score_samples(model, samples, workers=0)
    again = robustness_report(
        model, model, clean, attacks[1:2], tmp_path / "eval", model.threshold, View(),
        max_per_subset=20, on_progress=lambda n, done, total: progress.append((done, total)),
    )  # fmt: skip
    assert progress[0][0] == progress[0][1] > 0  # every adversarial image was already there
    assert again["rows"][0]["success_rate"] == by[("fgsm:eps=3", "grid-2")]["success_rate"]


def _pool(tmp_path) -> list[int]:
    """The evaluation's attacked sample, as indices into scores.csv."""
    from miragedet.evaluation.adversarial import sample_indices
    from miragedet.evaluation.scores import Scores, read_scores_csv

    samples, probs, errors = read_scores_csv(tmp_path / "eval" / "scores.csv")
    return sample_indices(Scores(samples, probs, errors), 20)


def test_cli_attack_and_adv_train(tmp_path, monkeypatch):
    from miragedet.apps.cli import app

    data = write_layout(tmp_path / "data", "ufd", ("grid-2",), n_per_class=32, size=32)
    run = CliRunner().invoke(app, [
        "train", str(data), "--backbone", "tiny", "--depth", "2", "--batch-size", "32",
        "--epochs", "1", "--workers", "0", "--bank-size", "64", "-o", str(tmp_path / "run"),
        "--adv-train", "pgd:eps=2,steps=2", "--adv-fraction", "0.25",
    ])  # fmt: skip
    assert run.exit_code == 0, run.output
    dry = CliRunner().invoke(app, [
        "train", str(data), "--backbone", "tiny", "--depth", "2", "--batch-size", "16",
        "--workers", "0", "-o", str(tmp_path / "dry"), "--adv-train", "fgsm:eps=1", "--dry-run",
    ])  # fmt: skip
    assert dry.exit_code == 0, dry.output
    printed = " ".join(dry.output.split())  # the console wraps long lines
    assert "adversarial training fgsm:eps=1 on 50% of each batch" in printed
    assert not (tmp_path / "dry").exists()
    config = json.loads((tmp_path / "run" / "last" / "config.json").read_text())
    assert config["metadata"]["train"]["adv_train"] == "pgd:eps=2,steps=2"
    assert config["metadata"]["train"]["adv_fraction"] == 0.25
    args = ["evaluate", "-m", str(tmp_path / "run" / "last"), str(data), "--workers", "0"]
    args += ["-o", str(tmp_path / "eval"), "--attack-max", "8", "--no-attack-stability"]
    result = CliRunner().invoke(app, [*args, "--attack", "fgsm:eps=2", "--attack", "pgd:eps=2"])
    assert result.exit_code == 0, result.output
    assert "adversarial.md" in result.output
    rows = list(json.loads((tmp_path / "eval" / "adversarial.json").read_text())["rows"])
    assert [r["attack"] for r in rows] == ["fgsm:eps=2", "pgd:eps=2,steps=10"]
    assert all(r["caught_by_stability"] is None for r in rows)
    bad = CliRunner().invoke(app, [*args, "--attack", "pgd:eps=2,foo=1"])
    assert bad.exit_code == 2 and "unknown option" in bad.output
    monkeypatch.setitem(sys.modules, "art", None)  # as if the extra were not installed
    missing = CliRunner().invoke(app, [*args, "--attack", "fgsm:eps=2"])
    assert missing.exit_code == 2 and "miragedet[attacks]" in missing.output
