"""Trainer and evaluator end to end on generated data sets with the tiny CLIP."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from sklearn.metrics import average_precision_score, roc_auc_score
from typer.testing import CliRunner

from miragedet import load_pretrained
from miragedet.apps.cli import app
from miragedet.data.synthetic import write_layout
from miragedet.evaluation.calibrate import calibrate_threshold
from miragedet.evaluation.evaluate import evaluate_dataset
from miragedet.evaluation.scores import read_scores_csv
from miragedet.training.config import TrainConfig
from miragedet.training.trainer import Trainer

runner = CliRunner()
FAST = dict(backbone="tiny", lr=0.02, batch_size=32, depth=2, bank_size=64, workers=0, log_every=1)


@pytest.fixture(scope="module")
def genimage(tmp_path_factory):
    root = tmp_path_factory.mktemp("genimage")
    return write_layout(root, "genimage", ("grid-2", "grid-2-faint"), n_per_class=64)


def test_train_then_evaluate_metrics_match_sklearn_on_saved_scores(genimage, tmp_path):
    broken = genimage / "grid-2" / "val" / "ai" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xffnot really")
    try:
        result = Trainer(
            TrainConfig(
                data=str(genimage),
                subsets=["grid-2"],
                epochs=2,
                output=str(tmp_path / "run"),
                **FAST,
            )
        ).fit()
        assert result.global_step == 2 * (128 // 32)
        assert (tmp_path / "run" / "best" / "model.safetensors").is_file()
        log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").open()]
        assert [e["epoch"] for e in log if e["type"] == "val"] == [1, 2]
        assert {"loss", "ce", "dis", "accuracy", "lr", "images_per_s"} <= set(log[0])

        model = load_pretrained(tmp_path / "run" / "last")
        metrics = evaluate_dataset(model, genimage, tmp_path / "eval", workers=0)
    finally:
        broken.unlink()
    assert list(metrics["clean"]) == ["grid-2", "grid-2-faint", "mean"]
    assert any(p.endswith("broken.jpg") for p, _ in metrics["skipped"])
    # synthetic files carry no metadata: nothing is decided by it, accuracy is the pixels'
    meta = metrics["metadata"]
    assert meta["all"]["n"] == 256 and meta["all"]["decided"] == 0
    assert meta["grid-2"]["accuracy_combined"] == meta["grid-2"]["accuracy_pixels"]
    assert "## Metadata" in (tmp_path / "eval" / "report.md").read_text()
    samples, probs, errors = read_scores_csv(tmp_path / "eval" / "scores.csv")
    assert len(samples) == 257 and list(errors.values()) == ["not a recognised image format"]
    ok = ~np.isnan(probs[:, 0])
    labels = np.array([s.label for s in samples])
    subsets = np.array([s.subset for s in samples])
    for subset in ("grid-2", "grid-2-faint"):
        m = ok & (subsets == subset)
        y, p = labels[m], 1 - probs[m, 0]
        ours = metrics["clean"][subset]
        assert ours["n"] == m.sum()
        assert ours["accuracy"] == pytest.approx(((p >= 0.5) == y).mean())
        assert ours["real_accuracy"] == pytest.approx((p[y == 0] < 0.5).mean())
        assert ours["fake_accuracy"] == pytest.approx((p[y == 1] >= 0.5).mean())
        assert ours["ap"] == pytest.approx(average_precision_score(y, p), abs=1e-6)
        assert ours["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-6)
    mean = metrics["clean"]["mean"]
    assert mean["accuracy"] == pytest.approx(
        (metrics["clean"]["grid-2"]["accuracy"] + metrics["clean"]["grid-2-faint"]["accuracy"]) / 2
    )
    for name in ("report.md", "table.csv", "metrics.json", "roc_pr.png"):
        assert (tmp_path / "eval" / name).is_file(), name
    with Image.open(tmp_path / "eval" / "roc_pr.png") as plot:
        assert plot.size[0] > 800
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "| Real acc |" in report and "broken.jpg" in report


def test_resume_matches_an_uninterrupted_run(genimage, tmp_path):
    common = dict(data=str(genimage), epochs=2, seed=4, **FAST)
    Trainer(TrainConfig(output=str(tmp_path / "full"), **common)).fit()
    stopped = Trainer(TrainConfig(output=str(tmp_path / "cut"), max_steps=10, **common)).fit()
    assert stopped.global_step == 10  # mid-way through the second epoch (8 steps per epoch)
    state = json.loads((tmp_path / "cut" / "last" / "trainer_state.json").read_text())
    assert (state["epoch"], state["step_in_epoch"]) == (1, 2)
    resumed = Trainer(TrainConfig(output=str(tmp_path / "cut"), resume=True, **common)).fit()
    assert resumed.global_step == 16
    full = load_file(str(tmp_path / "full" / "last" / "model.safetensors"))
    cut = load_file(str(tmp_path / "cut" / "last" / "model.safetensors"))
    assert set(full) == set(cut)
    for name in full:
        torch.testing.assert_close(cut[name], full[name], rtol=1e-5, atol=1e-6)
    full_state = load_file(str(tmp_path / "full" / "last" / "trainer_state.safetensors"))
    cut_state = load_file(str(tmp_path / "cut" / "last" / "trainer_state.safetensors"))
    torch.testing.assert_close(cut_state["bank.features"], full_state["bank.features"])


def test_attribution_reports_a_confusion_matrix(tmp_path):
    root = write_layout(tmp_path / "data", "generic", ("grid-2", "grid-4"), n_per_class=48)
    Trainer(TrainConfig(data=str(root), epochs=1, output=str(tmp_path / "run"), **FAST)).fit()
    model = load_pretrained(tmp_path / "run" / "last")
    assert model.classes == ["real", "grid-2", "grid-4"]
    metrics = evaluate_dataset(model, root, tmp_path / "eval", workers=0)
    matrix = np.array(metrics["confusion"]["matrix"])
    assert matrix.shape == (3, 3) and matrix.sum() == 144
    assert matrix.sum(axis=1).tolist() == [48, 48, 48]
    with open(tmp_path / "eval" / "confusion.csv") as handle:
        assert len(list(csv.reader(handle))) == 4
    assert "class_accuracy" in metrics["clean"][root.name]


def test_calibration_holds_the_target_false_positive_rate():
    rng = np.random.default_rng(0)
    reals = rng.beta(2, 5, size=1000)
    for fpr in (0.0, 0.01, 0.05, 0.2):
        t = calibrate_threshold(reals, fpr)
        assert (reals >= t).mean() <= fpr
        assert (reals >= np.nextafter(t, -np.inf) - 1e-3).mean() > fpr or fpr == 0.0
    tied = np.array([0.9, 0.9, 0.9, 0.1])
    assert (tied >= calibrate_threshold(tied, 0.5)).mean() <= 0.5


def test_cli_train_evaluate_calibrate_with_yaml(genimage, tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(
        f"data: {genimage}\nsubsets: [grid-2]\nepochs: 1\nbackbone: tiny\n"
        "lr: 0.5\nbatch_size: 32\ndepth: 2\nbank_size: 64\nworkers: 0\n"
    )
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "train",
            "--config",
            str(config),
            "--lr",
            "0.02",
            "--output",
            str(out),
            "--method",
            "multimodal",
        ],
    )
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["lr"] == 0.02 and saved["method"] == "multimodal" and saved["epochs"] == 1

    result = runner.invoke(
        app,
        [
            "evaluate",
            "-m",
            str(out / "last"),
            str(genimage),
            "-o",
            str(tmp_path / "eval"),
            "--degrade",
            "jpeg:50",
            "--protocol",
            "genimage",
            "--workers",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert list(metrics["degradations"]) == ["jpeg:50"]
    # the data's root and layout, not the repr of every sample (kilobytes per 50 images)
    assert metrics["data"] == str(genimage) and metrics["layout"] == "genimage"
    assert (tmp_path / "eval" / "robustness_jpeg.png").is_file()

    asked_gpu = runner.invoke(app, ["calibrate", "-m", str(out / "last"), str(genimage),
                                    "--device", "cuda"])  # fmt: skip
    assert asked_gpu.exit_code != 0 and "no CUDA GPU" in asked_gpu.output  # none here
    result = runner.invoke(
        app, ["calibrate", "-m", str(out / "last"), str(genimage), "--fpr", "0.1"]
    )
    assert result.exit_code == 0, result.output
    model = load_pretrained(out / "last")
    config_json = json.loads((out / "last" / "config.json").read_text())
    assert config_json["calibration"]["achieved_fpr"] <= 0.1
    assert model.threshold == config_json["threshold"]


def test_cli_train_reports_a_bad_layout(tmp_path):
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["train", str(tmp_path / "empty"), "--backbone", "tiny"])
    assert result.exit_code == 2
    assert "no known dataset layout" in result.output


def test_gradient_accumulation_equals_the_full_batch_for_cross_entropy(genimage, tmp_path):
    common = dict(FAST, data=str(genimage), epochs=1, method="multimodal", max_steps=3)
    Trainer(TrainConfig(output=str(tmp_path / "one"), **common)).fit()
    Trainer(TrainConfig(output=str(tmp_path / "two"), grad_accum=2, **common)).fit()
    one = load_file(str(tmp_path / "one" / "last" / "model.safetensors"))
    two = load_file(str(tmp_path / "two" / "last" / "model.safetensors"))
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-6)


def test_bf16_autocast_trains_on_cpu(genimage, tmp_path):
    result = Trainer(
        TrainConfig(
            output=str(tmp_path / "run"),
            data=str(genimage),
            epochs=1,
            amp="bf16",
            max_steps=2,
            **FAST,
        )
    ).fit()
    assert result.global_step == 2
    weights = load_file(str(tmp_path / "run" / "last" / "model.safetensors"))
    assert all(torch.isfinite(w).all() and w.dtype == torch.float32 for w in weights.values())
