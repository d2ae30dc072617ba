"""A frozen CLIP backbone from Hugging Face transformers: model, tokenizer and preprocessing.

Sources:
- a hub id (``openai/clip-vit-large-patch14``, the paper's backbone) or a local directory saved
  with ``save_pretrained`` (what ``huggingface-cli download ... --local-dir DIR`` gives);
- ``random:<preset>``: a CLIP of a named real shape with random weights (seeded), for tests,
  benchmarks and the offline quickstart. ``tiny`` is short for ``random:tiny``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

# CLIP's own modules, not the top-level lazy `transformers` namespace (docs/performance.md)
from transformers.models.clip.configuration_clip import CLIPConfig
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.clip.modeling_clip import CLIPModel
from transformers.models.clip.tokenization_clip import CLIPTokenizer

from ..data.transforms import Preprocess

DEFAULT_BACKBONE = "openai/clip-vit-large-patch14"

#: Real shapes of the OpenAI CLIP ViTs (and two tiny ones for tests), as CLIPConfig arguments.
#: ``hub`` is the id of the published weights with that shape.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "text": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
        },
        "vision": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        "projection_dim": 64,
        "hub": None,
    },
    # Unequal depths and widths, to prove nothing assumes the towers match.
    "tiny-asym": {
        "text": {
            "hidden_size": 48,
            "intermediate_size": 96,
            "num_hidden_layers": 3,
            "num_attention_heads": 2,
        },
        "vision": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "image_size": 48,
            "patch_size": 16,
        },
        "projection_dim": 32,
        "hub": None,
    },
    "vit-b-32": {
        "text": {
            "hidden_size": 512,
            "intermediate_size": 2048,
            "num_hidden_layers": 12,
            "num_attention_heads": 8,
        },
        "vision": {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "image_size": 224,
            "patch_size": 32,
        },
        "projection_dim": 512,
        "hub": "openai/clip-vit-base-patch32",
    },
    "vit-l-14": {
        "text": {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
        },
        "vision": {
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "image_size": 224,
            "patch_size": 14,
        },
        "projection_dim": 768,
        "hub": "openai/clip-vit-large-patch14",
    },
}


def _variant(base: str, hub: str, **vision: int) -> dict[str, Any]:
    spec = PRESETS[base]
    return {**spec, "vision": {**spec["vision"], **vision}, "hub": hub}


PRESETS["vit-b-16"] = _variant("vit-b-32", "openai/clip-vit-base-patch16", patch_size=16)
PRESETS["vit-l-14-336"] = _variant("vit-l-14", "openai/clip-vit-large-patch14-336", image_size=336)

#: Words the built-in tokenizer of random presets knows as whole tokens (others split into bytes).
_MINI_WORDS = [
    "a",
    "photo",
    "of",
    "an",
    "the",
    "image",
    "real",
    "fake",
    "x",
    ".",
    ",",
    "picture",
    "generated",
    "by",
    "ai",
]


class BackboneError(RuntimeError):
    """A backbone could not be loaded, or does not match what a checkpoint expects."""


def mini_tokenizer(extra_words: list[str] | None = None) -> CLIPTokenizer:
    """A small CLIP byte-level BPE tokenizer, built in memory (no download).

    Its vocabulary holds the 256 byte symbols (plain and word-final), whole-word tokens for a few
    prompt words, and CLIP's start/end tokens. Any text tokenizes (unknown words fall back to
    bytes). Random-weight presets use it when no real tokenizer directory is given.
    """
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = sorted(ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for symbol in alphabet + [s + "</w>" for s in alphabet]:
        vocab[symbol] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in dict.fromkeys(_MINI_WORDS + [w.lower() for w in (extra_words or [])]):
        if not word.isascii() or not word.isalpha():
            continue
        pieces = [*word[:-1], word[-1] + "</w>"]
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            merged = pair[0] + pair[1]
            if merged not in vocab:
                vocab[merged] = len(vocab)
                merges.append(pair)
            pieces = [merged, *pieces[2:]]
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def preset_config(
    name: str, vocab_size: int = 49408, eos_token_id: int = 49407, bos_token_id: int = 49406
) -> CLIPConfig:
    """The ``CLIPConfig`` of a named preset (OpenAI's quick-GELU, 77-token context)."""
    if name not in PRESETS:
        raise BackboneError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    spec = PRESETS[name]
    text = {
        **spec["text"],
        "vocab_size": vocab_size,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "eos_token_id": eos_token_id,
        "bos_token_id": bos_token_id,
        "pad_token_id": eos_token_id,
    }
    vision = {**spec["vision"], "hidden_act": "quick_gelu"}
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=spec["projection_dim"])


@dataclass
class Backbone:
    """A frozen CLIP with the tokenizer and image preprocessing that belong to it."""

    model: CLIPModel
    tokenizer: Any
    preprocess: Preprocess
    source: str

    @property
    def text_layers(self) -> int:
        return self.model.config.text_config.num_hidden_layers

    @property
    def vision_layers(self) -> int:
        return self.model.config.vision_config.num_hidden_layers

    @property
    def text_width(self) -> int:
        return self.model.config.text_config.hidden_size

    @property
    def vision_width(self) -> int:
        return self.model.config.vision_config.hidden_size

    def shape(self) -> dict[str, Any]:
        """The fields that decide which trained tensors fit this backbone."""
        t, v = self.model.config.text_config, self.model.config.vision_config
        return {
            "text": {
                k: getattr(t, k)
                for k in (
                    "hidden_size",
                    "intermediate_size",
                    "num_hidden_layers",
                    "num_attention_heads",
                    "vocab_size",
                    "max_position_embeddings",
                )
            },
            "vision": {
                k: getattr(v, k)
                for k in (
                    "hidden_size",
                    "intermediate_size",
                    "num_hidden_layers",
                    "num_attention_heads",
                    "image_size",
                    "patch_size",
                )
            },
            "projection_dim": self.model.config.projection_dim,
        }

    def describe(self) -> str:
        s = self.shape()
        t, v = s["text"], s["vision"]
        return (
            f"CLIP ViT/{v['patch_size']}@{v['image_size']}: vision {v['num_hidden_layers']}x"
            f"{v['hidden_size']}, text {t['num_hidden_layers']}x{t['hidden_size']}, "
            f"projection {s['projection_dim']}"
        )

    @cached_property
    def fingerprint(self) -> dict[str, str]:
        """Digests of the shape and of the weights (projections, patch and token embeddings)."""
        shape = hashlib.sha256(json.dumps(self.shape(), sort_keys=True).encode()).hexdigest()
        h = hashlib.sha256()
        m = self.model
        for tensor in (
            m.visual_projection.weight,
            m.text_projection.weight,
            m.vision_model.embeddings.patch_embedding.weight,
            m.vision_model.embeddings.class_embedding,
            m.logit_scale,
        ):
            h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return {"shape": shape[:16], "weights": h.hexdigest()[:16]}


#: The CLIP towers' attention: PyTorch's ``scaled_dot_product_attention``, which runs a fused
#: kernel (FlashAttention-2 or memory-efficient attention on a CUDA GPU, for the dtypes and
#: shapes they take; the math path otherwise), through transformers' attention interface
#: (its "Attention interface" docs; transformers picks it by default where torch has it: named
#: here so that a change of default does not silently change our path). Scores against the
#: eager attention: tests/test_backbone.py.
ATTENTION = "sdpa"


def _freeze(model: CLIPModel) -> CLIPModel:
    """The CLIP frozen, in eval mode, on :data:`ATTENTION`."""
    model.requires_grad_(False)
    model.eval()
    model.set_attn_implementation(ATTENTION)
    return model


def _random_backbone(name: str, seed: int, tokenizer: str | os.PathLike | None) -> Backbone:
    tok = CLIPTokenizer.from_pretrained(str(tokenizer)) if tokenizer else mini_tokenizer()
    vocab_size = 49408 if tokenizer else len(tok)
    config = preset_config(
        name, vocab_size=vocab_size, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    size = config.vision_config.image_size
    preprocess = Preprocess(image_size=size, resize_shortest=size)
    source = f"random:{name}" + (f"@{seed}" if seed else "")
    return Backbone(_freeze(model), tok, preprocess, source)


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """transformers' own progress bars off for a while ("Loading weights", shown on every load of
    a local or cached CLIP: what a command prints is ours). huggingface_hub's download bars are
    not transformers' and stay (a first download is long). Through ``set_tqdm_hook``, which
    returns the hook it replaces (transformers.utils.logging)."""
    from transformers.utils import logging as hf_logging

    set_hook = getattr(hf_logging, "set_tqdm_hook", None)
    if set_hook is None:  # an older transformers: its bar shows
        yield
        return
    previous = set_hook(lambda factory, args, kwargs: factory(*args, **{**kwargs, "disable": True}))
    try:
        yield
    finally:
        set_hook(previous)


def _hint_for(source: str) -> str:
    return (
        f"could not load CLIP backbone {source!r}.\n"
        "If it is a Hugging Face hub id: this machine cannot reach the hub or has no cached copy. "
        "Download it where the hub is reachable, e.g.\n"
        f"    huggingface-cli download {source} --local-dir ./clip\n"
        "then pass the directory (--backbone ./clip, or load_backbone('./clip')).\n"
        "If it is a local directory: it must hold config.json, model.safetensors (or "
        "pytorch_model.bin), the tokenizer files and preprocessor_config.json.\n"
        f"Random-weight shapes for offline tests: {', '.join('random:' + p for p in PRESETS)}."
    )


def load_backbone(
    source: str | os.PathLike = DEFAULT_BACKBONE,
    *,
    seed: int = 0,
    tokenizer: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    local_files_only: bool | None = None,
) -> Backbone:
    """Load a frozen CLIP backbone.

    ``source`` is a hub id, a local directory, ``random:<preset>`` (``random:tiny``,
    ``random:vit-l-14``, ...; ``@N`` picks the seed, as in ``random:tiny@3``) or ``tiny``.
    ``tokenizer`` (random presets only) is a directory of real CLIP tokenizer files; without it a
    small built-in tokenizer is used. Every parameter of the returned model is frozen.
    """
    source = str(source)
    if source == "tiny":
        source = "random:tiny"
    if source.startswith("random:"):
        name = source.removeprefix("random:")
        if "@" in name:
            name, seed_text = name.split("@", 1)
            seed = int(seed_text)
        backbone = _random_backbone(name, seed, tokenizer)
    else:
        kwargs: dict[str, Any] = {}
        if local_files_only is not None:
            kwargs["local_files_only"] = local_files_only
        is_dir = Path(source).is_dir()
        if not is_dir and (Path(source).exists() or source.startswith((".", "/", "~"))):
            raise BackboneError(f"{source!r} is not a directory.\n" + _hint_for(source))
        try:
            with _quiet_loading():
                model = CLIPModel.from_pretrained(source, **kwargs)
            tok = CLIPTokenizer.from_pretrained(source, **kwargs)
            processor = CLIPImageProcessorPil.from_pretrained(source, **kwargs)
        except (OSError, ValueError) as exc:
            raise BackboneError(_hint_for(source) + f"\n(cause: {exc})") from exc
        source = str(Path(source).resolve()) if is_dir else source
        backbone = Backbone(_freeze(model), tok, Preprocess.from_image_processor(processor), source)
    if device is not None or dtype is not None:
        backbone.model.to(device=device, dtype=dtype)
    return backbone
