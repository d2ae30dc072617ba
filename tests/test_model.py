"""The MiraGe module against independent references: transformers' own CLIPModel, and hooks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import images_for
from miragedet.model.backbone import load_backbone
from miragedet.model.config import LossConfig, ModelConfig
from miragedet.model.losses import MiraGeLoss
from miragedet.model.mirage import MiraGe

PROMPTS = ["a photo of a Real", "a photo of a Fake"]


def clip_zero_shot_logits(backbone, pixels, sentences=PROMPTS):
    ids = backbone.tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        return backbone.model(input_ids=ids["input_ids"], pixel_values=pixels).logits_per_image


def clip_text_features(backbone, sentences=PROMPTS):
    ids = backbone.tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        return F.normalize(backbone.model.get_text_features(**ids).pooler_output, dim=-1)


@pytest.mark.parametrize("source", ["tiny", "random:tiny-asym"])
@pytest.mark.parametrize(
    "config", [ModelConfig.for_method("zero-shot"), ModelConfig.for_method("mirage", n_ctx=0)]
)
def test_prompts_off_equals_clip_zero_shot(source, config):
    backbone = load_backbone(source)
    pixels = images_for(backbone, 5)
    model = MiraGe(backbone, config).eval()
    with torch.no_grad():
        ours = model(pixels).logits
    ref = clip_zero_shot_logits(backbone, pixels)
    assert ours.shape == (5, 2)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_zero_shot_with_real_tokenizer(shared_tokenizer):
    backbone = load_backbone("random:tiny", tokenizer=shared_tokenizer)
    assert backbone.tokenizer(PROMPTS[0])["input_ids"] == [49406, 320, 1125, 539, 320, 1532, 49407]
    pixels = images_for(backbone, 3)
    model = MiraGe(backbone, ModelConfig.for_method("zero-shot")).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            model(pixels).logits, clip_zero_shot_logits(backbone, pixels), atol=1e-5, rtol=0
        )


@pytest.mark.parametrize("source", ["tiny", "random:tiny-asym"])
@pytest.mark.parametrize("n_ctx", [1, 2, 4])
def test_layer1_prompts_from_template_with_depth1_equal_clip_text(source, n_ctx):
    backbone = load_backbone(source)
    model = MiraGe(backbone, ModelConfig.for_method("mirage", n_ctx=n_ctx, depth=1))
    with torch.no_grad():
        ours = model.encode_text()
    torch.testing.assert_close(ours, clip_text_features(backbone), atol=1e-5, rtol=0)


def test_more_context_than_template_words_keeps_template_init(tiny):
    model = MiraGe(tiny, ModelConfig.for_method("mirage", n_ctx=6, depth=1))
    ids = model.prompts.input_ids
    template = tiny.tokenizer("a photo of a", add_special_tokens=False)["input_ids"]
    assert ids[0, 3:7].tolist() == template  # 2 filler slots, then the template words
    emb = tiny.model.text_model.embeddings.token_embedding.weight
    torch.testing.assert_close(model.prompts.ctx[0][2:].detach(), emb[template])
    assert model.prompts.ctx[0].shape == (6, tiny.text_width)


def _first_step(model, pixels, labels, method):
    loss_fn = MiraGeLoss(
        LossConfig.for_method(method, bank_size=8), model.clip.config.projection_dim
    )
    # Fill the bank once so the step below also exercises it.
    with torch.no_grad():
        out = model(pixels)
    loss_fn.bank.push(out.image_embeds, labels)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    out = model(pixels)
    loss = loss_fn(out.logits, out.image_embeds, out.text_embeds, labels).loss
    opt.zero_grad()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    opt.step()
    return grads


@pytest.mark.parametrize("method", ["text-prompts", "multimodal", "discriminative", "mirage"])
def test_only_prompts_train_and_backbone_is_bitwise_unchanged(tiny_asym, method):
    model = MiraGe(tiny_asym, ModelConfig.for_method(method))
    before = {k: v.clone() for k, v in tiny_asym.model.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, method
    assert all(n.startswith("prompts.") for n in trainable)
    expected_maps = method != "text-prompts"
    assert any(n.startswith("prompts.maps.") for n in trainable) == expected_maps
    assert len(model.prompts.ctx) == model.depth == 3  # min(text 3, vision 4) layers
    pixels = images_for(tiny_asym, 6)
    grads = _first_step(model, pixels, torch.tensor([0, 1, 0, 1, 1, 0]), method)
    for name, value in tiny_asym.model.state_dict().items():
        assert torch.equal(value, before[name]), f"backbone tensor {name} changed"
    assert set(grads) == trainable
    for name, grad in grads.items():
        assert grad.abs().sum() > 0, f"{name} got no gradient"


def test_finetune_unfreezes_only_last_blocks(tiny_asym):
    model = MiraGe(tiny_asym, ModelConfig.for_method("finetune", finetune_blocks=2))
    trainable = {n.split(".")[4] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"2", "3"}  # the last two of four vision blocks
    assert all(
        n.startswith("clip.vision_model.encoder.layers.")
        for n, p in model.named_parameters()
        if p.requires_grad
    )


def _capture_layer_inputs(layers):
    seen, handles = {}, []
    for i, layer in enumerate(layers):

        def hook(module, args, i=i):
            seen[i] = args[0].detach().clone()

        handles.append(layer.register_forward_pre_hook(hook))
    return seen, handles


@pytest.mark.parametrize("n_ctx", [1, 2, 4])
@pytest.mark.parametrize("depth", [1, "L"])
def test_vision_prompts_are_mapped_text_prompts_at_each_layer(tiny_asym, n_ctx, depth):
    depth = 3 if depth == "L" else depth
    model = MiraGe(tiny_asym, ModelConfig.for_method("multimodal", n_ctx=n_ctx, depth=depth))
    vision = tiny_asym.model.vision_model
    seen, handles = _capture_layer_inputs(vision.encoder.layers)
    pixels = images_for(tiny_asym, 2)
    with torch.no_grad():
        model.encode_image(pixels)
        mapped = [f(p) for f, p in zip(model.prompts.maps, model.prompts.ctx, strict=True)]
        n_tokens = 1 + (48 // 16) ** 2
        for i, hidden in seen.items():
            assert hidden.shape == (2, n_tokens + n_ctx, tiny_asym.vision_width)
            tail = hidden[:, -n_ctx:]
            if i == 0:  # appended before the pre-layer norm, like every other token
                torch.testing.assert_close(tail, vision.pre_layrnorm(mapped[0]).expand(2, -1, -1))
            elif i < depth:
                torch.testing.assert_close(tail, mapped[i].expand(2, -1, -1))
            else:  # after layer J the prompt slots propagate, nothing is inserted
                assert not torch.allclose(tail, mapped[-1].expand(2, -1, -1))
    for h in handles:
        h.remove()


@pytest.mark.parametrize("n_ctx", [1, 2, 4])
@pytest.mark.parametrize("depth", [1, "L"])
def test_text_prompts_replace_slots_and_pool_at_end_token(tiny_asym, n_ctx, depth):
    depth = 3 if depth == "L" else depth
    model = MiraGe(tiny_asym, ModelConfig.for_method("multimodal", n_ctx=n_ctx, depth=depth))
    text = tiny_asym.model.text_model
    seen, handles = _capture_layer_inputs(text.encoder.layers)
    with torch.no_grad():
        model.encode_text()
    ids = model.prompts.input_ids
    for i, hidden in seen.items():
        assert hidden.shape == (2, ids.shape[1], tiny_asym.text_width)
        if 0 < i < depth:
            torch.testing.assert_close(
                hidden[:, 1 : 1 + n_ctx], model.prompts.ctx[i].detach().expand(2, -1, -1)
            )
    for h in handles:
        h.remove()
    eos = tiny_asym.tokenizer.eos_token_id
    for row, pos in zip(ids, model.prompts.eot_index, strict=True):
        assert row[pos] == eos and (row[:pos] != eos).all()


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_changing_a_layers_prompt_changes_the_image_embedding(tiny_asym, layer):
    model = MiraGe(tiny_asym, ModelConfig.for_method("mirage", depth=3))
    pixels = images_for(tiny_asym, 3)
    with torch.no_grad():
        before = model.encode_image(pixels)
        model.prompts.ctx[layer].add_(0.5)
        after = model.encode_image(pixels)
    assert (before - after).abs().max() > 1e-4


def test_text_only_prompts_leave_the_image_tower_alone(tiny):
    model = MiraGe(tiny, ModelConfig.for_method("text-prompts", depth=2))
    pixels = images_for(tiny, 3)
    with torch.no_grad():
        ref = F.normalize(tiny.model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        torch.testing.assert_close(model.encode_image(pixels), ref, atol=1e-6, rtol=0)


def test_attribution_with_four_classes(tiny):
    classes = ["real", "sd14", "midjourney", "biggan"]
    model = MiraGe(tiny, ModelConfig.for_method("mirage", classes=classes, depth=2)).eval()
    with torch.no_grad():
        out = model(images_for(tiny, 3))
    assert out.logits.shape == (3, 4) and out.text_embeds.shape == (4, 64)
    torch.testing.assert_close(out.fake_prob, 1 - out.probs[:, 0])
    torch.testing.assert_close(out.image_embeds.norm(dim=-1), torch.ones(3))


def test_linear_probe_starts_as_zero_shot(tiny):
    pixels = images_for(tiny, 4)
    probe = MiraGe(tiny, ModelConfig.for_method("linear-probe")).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            probe(pixels).logits, clip_zero_shot_logits(tiny, pixels), atol=1e-5, rtol=0
        )
    assert {n for n, p in probe.named_parameters() if p.requires_grad} == {
        "head.weight",
        "head.bias",
    }


def test_text_features_cached_at_inference_and_refreshed_when_prompts_change(tiny):
    model = MiraGe(tiny, ModelConfig.for_method("mirage", depth=2)).eval()
    calls = []
    handle = tiny.model.text_model.final_layer_norm.register_forward_hook(
        lambda *a: calls.append(1)
    )
    with torch.inference_mode():
        first = model.encode_text()
        second = model.encode_text()
    assert len(calls) == 1 and torch.equal(first, second)
    with torch.no_grad():
        model.prompts.ctx[1].add_(1.0)
    with torch.inference_mode():
        third = model.encode_text()
    assert len(calls) == 2 and not torch.allclose(first, third)
    handle.remove()


def test_vision_prompts_cached_at_inference_and_refreshed_when_maps_change(tiny):
    model = MiraGe(tiny, ModelConfig.for_method("mirage", depth=2)).eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        first = model.vision_prompts()
        assert model.vision_prompts() is first  # no recomputation
        out = model(pixels).logits
    with torch.no_grad():
        model.prompts.maps[1].weight.mul_(3.0)  # what an optimizer step or a load does
    with torch.inference_mode():
        fresh = model.prompts.vision_prompts()
        cached = model.vision_prompts()
        changed = model(pixels).logits
    assert cached is not first
    for a, b in zip(cached, fresh, strict=True):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(out, changed)
    model.train()  # training recomputes with gradients, never from the cache
    assert all(t.requires_grad for t in model.vision_prompts())


def test_depth_beyond_the_backbone_is_lowered_with_a_warning(tiny):
    with pytest.warns(UserWarning, match="exceeds"):
        model = MiraGe(tiny, ModelConfig.for_method("mirage", depth=9))
    assert model.depth == 2 and len(model.prompts.ctx) == 2


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="unknown method"):
        ModelConfig.for_method("mirage++")
    with pytest.raises(ValueError, match="at least two"):
        ModelConfig(classes=["real"])
    with pytest.raises(ValueError, match="template"):
        ModelConfig(template="a photo")
    assert ModelConfig.for_method("+discriminative").method == "discriminative"
