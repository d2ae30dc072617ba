"""Backbone loading: presets of real shapes, tokenizers, local directories, offline errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from miragedet.data.transforms import Preprocess
from miragedet.model.backbone import (
    ATTENTION,
    PRESETS,
    BackboneError,
    load_backbone,
    mini_tokenizer,
    preset_config,
)


def test_vit_l14_preset_has_the_papers_shape():
    config = preset_config("vit-l-14")
    v, t = config.vision_config, config.text_config
    assert (v.num_hidden_layers, v.hidden_size, v.patch_size, v.image_size) == (24, 1024, 14, 224)
    assert (t.num_hidden_layers, t.hidden_size, config.projection_dim) == (12, 768, 768)
    assert PRESETS["vit-l-14"]["hub"] == "openai/clip-vit-large-patch14"
    assert preset_config("vit-l-14-336").vision_config.image_size == 336
    b16, b32 = preset_config("vit-b-16"), preset_config("vit-b-32")
    assert (b16.vision_config.patch_size, b32.vision_config.patch_size) == (16, 32)
    assert b16.text_config.hidden_size == b32.text_config.hidden_size == 512


def test_random_backbone_is_frozen_and_reproducible(tiny):
    assert all(not p.requires_grad for p in tiny.model.parameters())
    assert not tiny.model.training
    assert load_backbone("tiny").fingerprint == tiny.fingerprint
    other = load_backbone("random:tiny@7")
    assert other.fingerprint["shape"] == tiny.fingerprint["shape"]
    assert other.fingerprint["weights"] != tiny.fingerprint["weights"]


def test_unknown_preset_is_named():
    with pytest.raises(BackboneError, match="unknown preset 'vit-h'"):
        load_backbone("random:vit-h")


def test_mini_tokenizer_handles_prompts_and_any_text():
    tok = mini_tokenizer()
    tokens = tok.convert_ids_to_tokens(tok("a photo of a Real")["input_ids"])
    assert tokens == [
        "<|startoftext|>",
        "a</w>",
        "photo</w>",
        "of</w>",
        "a</w>",
        "real</w>",
        "<|endoftext|>",
    ]
    ids = tok("Ünïcödé 猫 and numbers 123")["input_ids"]
    assert tok.unk_token_id not in ids[1:-1]


def test_real_tokenizer_gives_the_published_ids(shared_tokenizer):
    backbone = load_backbone("random:tiny", tokenizer=shared_tokenizer)
    assert backbone.tokenizer("a photo of a cat")["input_ids"] == [
        49406,
        320,
        1125,
        539,
        320,
        2368,
        49407,
    ]
    assert backbone.model.config.text_config.vocab_size == 49408


def test_local_directory_loads_like_a_hub_model(tmp_path, shared_tokenizer, capfd):
    original = load_backbone("random:tiny-asym", tokenizer=shared_tokenizer)
    original.model.save_pretrained(tmp_path)
    original.tokenizer.save_pretrained(tmp_path)
    CLIPImageProcessorPil(
        size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48}
    ).save_pretrained(tmp_path)
    capfd.readouterr()
    loaded = load_backbone(tmp_path)
    said = capfd.readouterr()
    assert "Loading weights" not in said.err + said.out  # transformers' bar stays off the terminal
    assert loaded.fingerprint == original.fingerprint
    assert loaded.preprocess.image_size == 48
    assert all(not p.requires_grad for p in loaded.model.parameters())
    assert loaded.model.vision_model.config._attn_implementation == ATTENTION  # as loaded anew
    pixels = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        a = loaded.model.get_image_features(pixel_values=pixels).pooler_output
        b = original.model.get_image_features(pixel_values=pixels).pooler_output
    torch.testing.assert_close(a, b)


def test_the_towers_run_sdpa_with_the_eager_attention_scores():
    """Both towers run PyTorch's fused attention (SDPA: flash / memory-efficient kernels on a
    GPU); MiraGe's scores through our layer-by-layer loop, prompts and causal text mask
    included, equal the eager attention's."""
    from miragedet import MiraGe, ModelConfig

    torch.manual_seed(0)
    model = MiraGe(load_backbone("random:tiny-asym"), ModelConfig.for_method("mirage", depth=2))
    clip = model.backbone.model
    assert ATTENTION == "sdpa"
    assert {clip.text_model.config._attn_implementation,
            clip.vision_model.config._attn_implementation} == {"sdpa"}  # fmt: skip
    size = model.backbone.preprocess.image_size
    pixels = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fused = model(pixels)
        clip.set_attn_implementation("eager")
        eager = model(pixels)
    torch.testing.assert_close(fused.logits, eager.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused.text_embeds, eager.text_embeds, atol=1e-5, rtol=1e-5)


def test_unreachable_hub_id_says_how_to_pass_a_local_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(BackboneError) as err:
        load_backbone("openai/clip-vit-large-patch14", local_files_only=True)
    assert "huggingface-cli download openai/clip-vit-large-patch14" in str(err.value)
    assert "--backbone ./clip" in str(err.value)


def test_missing_local_directory_is_reported(tmp_path):
    with pytest.raises(BackboneError, match="not a directory"):
        load_backbone(tmp_path / "no-such-clip")


def test_preprocess_matches_transformers_clip_image_processor(shared_tokenizer):
    processor = CLIPImageProcessorPil.from_pretrained(shared_tokenizer)
    ours = Preprocess.from_image_processor(processor)
    assert ours.image_size == 224 and ours.resample == "bicubic"
    rng = np.random.default_rng(0)
    for w, h in [(300, 200), (97, 333), (640, 481), (224, 224)]:
        image = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        ref = processor(images=image, return_tensors="pt")["pixel_values"][0]
        torch.testing.assert_close(ours(image), ref, atol=1e-5, rtol=0)
    assert Preprocess.from_dict(json.loads(json.dumps(ours.to_dict()))) == ours
