"""Checkpoints: exact round trips, only trained tensors, and clear refusals."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import images_for
from miragedet import CheckpointError, MiraGe, ModelConfig, load_backbone, load_pretrained


def _trained(backbone, method, **overrides):
    model = MiraGe(backbone, ModelConfig.for_method(method, **overrides))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)  # as if trained: differs from a fresh init
    return model.eval()


@pytest.mark.parametrize("method", ["mirage", "text-prompts", "linear-probe", "finetune"])
def test_round_trip_reproduces_logits_exactly(tiny, tmp_path, method):
    model = _trained(tiny, method, depth=2)
    model.save_pretrained(str(tmp_path / "ckpt"), threshold=0.3)
    pixels = images_for(tiny, 4)
    reloaded = load_pretrained(tmp_path / "ckpt")
    with torch.no_grad():
        assert torch.equal(reloaded(pixels).logits, model(pixels).logits)
    assert reloaded.threshold == 0.3
    assert reloaded.config == model.config


def test_checkpoint_holds_only_trained_tensors_as_json_and_safetensors(tiny, tmp_path):
    model = _trained(tiny, "mirage", depth=2, classes=["real", "gan", "diffusion"])
    model.save_pretrained(str(tmp_path / "ckpt"))
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    tensors = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    assert set(tensors) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.startswith("prompts.") for n in tensors)
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["model"]["classes"] == ["real", "gan", "diffusion"]
    assert config["backbone"]["source"] == "random:tiny"
    assert config["backbone"]["fingerprint"] == tiny.fingerprint
    assert config["preprocess"]["image_size"] == 32
    assert "random weights" in (tmp_path / "ckpt" / "README.md").read_text()


def test_backbone_of_another_shape_is_refused_naming_both(tiny, tiny_asym, tmp_path):
    _trained(tiny, "mirage", depth=2).save_pretrained(str(tmp_path / "ckpt"))
    with pytest.raises(CheckpointError) as err:
        load_pretrained(tmp_path / "ckpt", backbone=tiny_asym)
    message = str(err.value)
    assert tiny.describe() in message and tiny_asym.describe() in message


def test_same_shape_other_weights_refused_unless_told(tiny, tmp_path):
    _trained(tiny, "mirage", depth=2).save_pretrained(str(tmp_path / "ckpt"))
    other = load_backbone("random:tiny@1")
    with pytest.raises(CheckpointError, match="other weights"):
        load_pretrained(tmp_path / "ckpt", backbone=other)
    model = load_pretrained(tmp_path / "ckpt", backbone=other, strict_backbone=False)
    assert model.backbone is other


@pytest.mark.parametrize("tamper", ["missing", "extra", "shape"])
def test_tampered_tensors_are_refused(tiny, tmp_path, tamper):
    _trained(tiny, "mirage", depth=2).save_pretrained(str(tmp_path / "ckpt"))
    path = tmp_path / "ckpt" / "model.safetensors"
    tensors = load_file(str(path))
    if tamper == "missing":
        tensors.pop("prompts.maps.1.weight")
    elif tamper == "extra":
        tensors["prompts.evil"] = torch.zeros(3)
    else:
        tensors["prompts.ctx.0"] = torch.zeros(3, 64)
    save_file(tensors, str(path))
    with pytest.raises(
        CheckpointError,
        match={"missing": "missing", "extra": "unexpected", "shape": "wrong shape"}[tamper],
    ):
        load_pretrained(tmp_path / "ckpt")


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pretrained(tmp_path / "nothing-here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        load_pretrained(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_pretrained(tmp_path / "empty")


def test_saving_over_a_checkpoint_replaces_it_whole(tiny, tmp_path):
    target = tmp_path / "ckpt"
    _trained(tiny, "mirage", depth=2).save_pretrained(str(target))
    second = _trained(tiny, "linear-probe")
    second.save_pretrained(str(target))
    assert load_pretrained(target).config.method == "linear-probe"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no staging leftovers
