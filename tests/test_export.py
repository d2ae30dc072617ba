"""ONNX export: the graph matches PyTorch, and scoring on ONNX Runtime matches scoring on torch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import images_for

pytest.importorskip("onnxruntime")

from miragedet import MiraGe, ModelConfig
from miragedet.apps.cli import app
from miragedet.inference.detector import Detector
from miragedet.inference.onnx import InferenceGraph, OnnxNetwork, export_onnx


def _trained(backbone, method, **kw):
    model = MiraGe(backbone, ModelConfig.for_method(method, **kw))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


@pytest.mark.parametrize("method", ["mirage", "linear-probe"])
def test_onnx_matches_pytorch_within_1e4(tiny_asym, tmp_path, method):
    model = _trained(tiny_asym, method)
    model.save_pretrained(str(tmp_path / "ckpt"))
    export_onnx(model, tmp_path / "ckpt" / "model.onnx")
    onnx = Detector(OnnxNetwork.from_pretrained(tmp_path / "ckpt"))
    for batch in (1, 5):  # the batch dimension is dynamic
        pixels = images_for(tiny_asym, batch, seed=batch)
        with torch.no_grad():
            expected = InferenceGraph(model)(pixels).numpy()
            direct = model(pixels).probs.numpy()
        np.testing.assert_allclose(expected, direct, atol=1e-6)
        got = onnx.forward_tensors(pixels)
        assert got.shape == (batch, 2)
        assert np.abs(got - expected).max() <= 1e-4


def test_cli_export_then_detect_on_onnx_runtime(tiny, tmp_path):
    from PIL import Image

    _trained(tiny, "mirage", depth=2).save_pretrained(str(tmp_path / "ckpt"))
    result = CliRunner().invoke(app, ["export", "-m", str(tmp_path / "ckpt")])
    assert result.exit_code == 0, result.output
    diff = float(result.output.split("max abs difference")[1].split()[0])
    assert diff <= 1e-4
    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    rows = {}
    for backend in ("torch", "onnx"):
        command = ["detect", *paths, "-m", str(tmp_path / "ckpt"), "-f", "jsonl"]
        # parity of the two fp32 graphs
        command += ["--backend", backend, "--precision", "fp32"]
        out = CliRunner().invoke(app, command)
        assert out.exit_code == 0, out.output
        rows[backend] = [json.loads(line) for line in out.stdout.splitlines()]
    for a, b in zip(rows["torch"], rows["onnx"], strict=True):
        assert a["path"] == b["path"] and a["label"] == b["label"]
        assert abs(a["fake_prob"] - b["fake_prob"]) <= 1e-4
    onnx = Detector.from_pretrained(tmp_path / "ckpt", backend="onnx")
    assert onnx.engine_info()["backend"] == "onnx" and onnx.info()["device"] == "cpu"
    assert onnx.info()["classes"] == Detector.from_pretrained(tmp_path / "ckpt").classes


def test_export_checks_the_graph_it_wrote_whatever_its_name(tiny, tmp_path):
    """`export -o elsewhere/other.onnx`: the parity check runs that file (it used to look for
    model.onnx beside it: an error, or another graph's figure)."""
    _trained(tiny, "mirage", depth=2).save_pretrained(str(tmp_path / "ckpt"))
    target = tmp_path / "graphs" / "other.onnx"
    result = CliRunner().invoke(app, ["export", "-m", str(tmp_path / "ckpt"), "-o", str(target)])
    assert result.exit_code == 0, result.output
    assert target.is_file() and not (tmp_path / "graphs" / "model.onnx").exists()
    assert float(result.output.split("max abs difference")[1].split()[0]) <= 1e-4
