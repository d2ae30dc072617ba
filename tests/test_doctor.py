"""The newcomer's path: `doctor` says what is missing, `train --dry-run` checks and estimates."""

from __future__ import annotations

import sys

from typer.testing import CliRunner

from miragedet.apps import doctor
from miragedet.apps.cli import app
from miragedet.data.synthetic import write_layout

runner = CliRunner()


def test_doctor_exits_1_offline_without_a_usable_backbone_and_names_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never ask the network from a test
    monkeypatch.setattr(doctor, "cached_backbones", lambda: [])
    result = runner.invoke(app, ["doctor"], env={"COLUMNS": "200"})
    assert result.exit_code == 1, result.output
    assert "not cached and not asked (HF_HUB_OFFLINE=1)" in result.output
    assert "huggingface-cli download openai/clip-vit-large-patch14" in result.output
    assert "not ready" in result.output


def test_doctor_exits_0_with_a_local_backbone_and_reports_a_missing_extra(
    monkeypatch, tiny, tmp_path
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tiny.model.save_pretrained(str(tmp_path / "clip"))  # a local folder as a user would copy it
    monkeypatch.setitem(sys.modules, "rawpy", None)  # as if the formats extra were missing
    monkeypatch.setitem(sys.modules, "ray", None)
    checks = {c.name: c for c in doctor.run_checks(str(tmp_path / "clip"))}
    assert checks[str(tmp_path / "clip")].ok and doctor.can_run(list(checks.values()))
    raw = checks["camera RAW and DNG"]
    assert not raw.ok and raw.fix == "pip install 'miragedet[formats]'"
    assert not checks["score-dataset on Ray"].ok
    assert checks["score-dataset on Ray"].fix == "pip install 'miragedet[ray]'"
    result = runner.invoke(app, ["doctor", "--backbone", str(tmp_path / "clip")])
    assert result.exit_code == 0, result.output
    assert "ready" in result.output
    # a folder that is not a model is not a usable backbone
    (tmp_path / "empty").mkdir()
    assert not doctor.backbone_check(str(tmp_path / "empty")).ok


def test_train_dry_run_prints_counts_and_an_estimate_and_writes_nothing(tmp_path):
    data = write_layout(tmp_path / "data", "generic", ("grid-2",), n_per_class=40)
    (data / "real" / "notes.txt").write_text("not an image")
    out = tmp_path / "run"
    args = ["train", str(data), "--backbone", "tiny", "--batch-size", "16", "--epochs", "5"]
    args += ["--depth", "2", "--bank-size", "32", "--workers", "0", "-o", str(out), "--dry-run"]
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "layout generic, classes ['real', 'grid-2']" in text
    assert "train data 40 40" in text  # the counts per subset and class
    assert "1 files not used (1 not an image skipped (.txt 1))" in text
    assert "5 steps per epoch" in text and "s per step" in text
    assert "for 25 steps" in text and "peak memory" in text
    assert not out.exists()


def test_train_dry_run_on_a_broken_layout_says_what_it_expected_and_found(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "readme.txt").write_text("hello")
    result = runner.invoke(
        app,
        ["train", str(tmp_path / "photos"), "--backbone", "tiny", "--dry-run"],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "no known dataset layout found" in text and "genimage:" in text
    assert "readme.txt" in text


def test_evaluate_dry_run_counts_and_estimates_and_writes_nothing(served_checkpoint, tmp_path):
    data = write_layout(tmp_path / "data", "generic", ("grid-2",), n_per_class=20)
    out = tmp_path / "eval"
    args = ["evaluate", "-m", str(served_checkpoint), str(data), "-o", str(out), "--dry-run"]
    result = runner.invoke(app, [*args, "--degrade", "jpeg:75", "--batch-size", "8"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "precision " in text and "data: real 20, grid-2 20" in text
    assert "ms per image" in text and "for 40 images x 2 pass(es)" in text
    assert not out.exists()
    fp32 = runner.invoke(app, [*args, "--precision", "fp32"])
    assert "precision fp32 (as requested)" in " ".join(fp32.output.split())
