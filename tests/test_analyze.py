"""The embedding analysis: geometry figures against numpy, and the command end to end."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from miragedet import MiraGe, ModelConfig
from miragedet.apps.cli import app
from miragedet.data.synthetic import write_layout
from miragedet.evaluation.analyze import geometry_table

ANCHORS = np.eye(2, 16)


def _clouds(spread, seed):
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], 50)
    noisy = ANCHORS[labels] + rng.normal(0, spread, size=(100, 16))
    return noisy / np.linalg.norm(noisy, axis=1, keepdims=True), labels


def test_tight_clusters_score_better_than_overlapping_clouds():
    subsets = np.array(["s"] * 100, dtype=object)
    tight = geometry_table(*_clouds(0.05, 0), subsets, ANCHORS, ["real", "fake"])
    loose = geometry_table(*_clouds(1.5, 0), subsets, ANCHORS, ["real", "fake"])
    for t, lo in zip(tight, loose, strict=True):
        assert t["intra_cos_mean"] < lo["intra_cos_mean"]
        assert t["intra_euc_mean"] < lo["intra_euc_mean"]
        assert t["margin_cos"] > lo["margin_cos"]
        assert t["centroid_gap"] > lo["centroid_gap"]


def test_figures_equal_a_direct_numpy_computation():
    embeds, labels = _clouds(0.4, 1)
    rng = np.random.default_rng(2)
    subsets = np.array(["a"] * 30 + ["b"] * 70, dtype=object)
    embeds[5] = np.nan  # an unreadable image is left out
    probs = np.stack([1 - rng.random(100), rng.random(100)], axis=1)
    rows = geometry_table(embeds, labels, subsets, ANCHORS, ["real", "fake"], probs)
    assert [(r["subset"], r["class"]) for r in rows] == [
        ("a", "real"),
        ("b", "real"),
        ("b", "fake"),
    ]
    r = rows[1]  # subset b, real
    mask = (subsets == "b") & (labels == 0)
    own = embeds[mask] @ ANCHORS[0]
    other = embeds[mask] @ ANCHORS[1]
    assert r["n"] == mask.sum()
    assert r["intra_cos_mean"] == pytest.approx(np.mean(1 - own))
    assert r["intra_cos_std"] == pytest.approx(np.std(1 - own))
    assert r["intra_euc_mean"] == pytest.approx(
        np.mean(np.linalg.norm(embeds[mask] - ANCHORS[0], axis=1))
    )
    assert r["inter_cos_mean"] == pytest.approx(np.mean(1 - other))
    fake = (subsets == "b") & (labels == 1)
    assert r["centroid_gap"] == pytest.approx(
        np.linalg.norm(embeds[mask].mean(0) - embeds[fake].mean(0))
    )
    in_b = subsets == "b"
    assert r["accuracy"] == pytest.approx(((1 - probs[in_b, 0] >= 0.5) == labels[in_b]).mean())
    assert rows[0]["n"] == 29  # 30 reals in subset a, one unreadable


def test_analyze_command_end_to_end(tiny, tmp_path):
    data = write_layout(tmp_path / "data", "genimage", ("grid-2", "grid-4"), n_per_class=20)
    model = MiraGe(tiny, ModelConfig.for_method("mirage", depth=2))
    model.save_pretrained(str(tmp_path / "ckpt"))
    result = CliRunner().invoke(
        app,
        [
            "analyze",
            "-m",
            str(tmp_path / "ckpt"),
            "-d",
            str(data),
            "--compare",
            "zero-shot",
            "-o",
            str(tmp_path / "out"),
            "--max-points",
            "50",
            "--workers",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    with open(tmp_path / "out" / "analysis.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["model"], r["subset"], r["class"]) for r in rows} == {
        (m, s, c)
        for m in ("ckpt", "zero-shot:random:tiny")
        for s in ("grid-2", "grid-4")
        for c in ("Real", "Fake")
    }
    with Image.open(tmp_path / "out" / "tsne.png") as image:
        assert image.format == "PNG" and image.size == (1450, 550)
    with open(tmp_path / "out" / "tsne.csv") as handle:
        points = list(csv.DictReader(handle))
    for name in ("ckpt", "zero-shot:random:tiny"):
        mine = [p for p in points if p["model"] == name]
        assert sum(p["kind"] == "image" for p in mine) == 50
        assert sum(p["kind"] == "anchor" for p in mine) == 2
    assert "| grid-4 | Fake |" in (tmp_path / "out" / "analysis.md").read_text()
