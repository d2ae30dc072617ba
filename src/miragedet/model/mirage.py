"""The MiraGe module: a frozen CLIP driven layer by layer with deep multimodal prompts.

We call transformers' own embedding, encoder-layer, norm and projection modules and only decide
what goes in between: prompt tokens spliced into the sequence at layers 1..J.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers.masking_utils import create_causal_mask

from ..data.transforms import Preprocess
from . import checkpoint
from .adapters import Adapters, OpenSet, feature_dim
from .backbone import Backbone, BackboneError, load_backbone
from .checkpoint import CheckpointError, save_pretrained
from .config import ModelConfig
from .prompts import PromptLearner
from .temporal import TemporalHead, TemporalSpec

T = TypeVar("T")


@dataclass
class MiraGeOutput:
    """Class logits (logit_scale x cosine, or the linear head's), and the unit embeddings."""

    logits: torch.Tensor  # (B, C)
    image_embeds: torch.Tensor  # (B, D), unit norm
    text_embeds: torch.Tensor  # (C, D), unit norm
    #: With the open-set test (attribution models): each image's distance to the nearest known
    #: class, and the threshold beyond which it is an unknown generator.
    distance: torch.Tensor | None = None
    distance_threshold: float | None = None

    @property
    def probs(self) -> torch.Tensor:
        return self.logits.softmax(dim=-1)

    @property
    def fake_prob(self) -> torch.Tensor:
        """Probability of "not the real class" (class 0 is real): p(Fake) for two classes."""
        return 1.0 - self.probs[:, 0]


def resolve_depth(config: ModelConfig, backbone: Backbone) -> int:
    """J for this backbone: the configured depth, lowered to the shallower tower if needed."""
    limit = min(backbone.text_layers, backbone.vision_layers)
    if config.n_ctx == 0:
        return 0
    if config.depth > limit:
        warnings.warn(
            f"prompt depth J={config.depth} exceeds the backbone's shallower tower "
            f"({limit} layers); using J={limit}",
            stacklevel=3,
        )
        return limit
    return config.depth


class MiraGe(nn.Module):
    """A MiraGe detector (or one of its ablations/baselines) on a frozen CLIP backbone."""

    def __init__(self, backbone: Backbone, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        self.backbone = backbone
        self.clip = backbone.model  # registered so .to() moves it; frozen below
        self.clip.requires_grad_(False)
        self.depth = resolve_depth(self.config, backbone)
        self.prompts = PromptLearner(backbone, self.config, self.depth)
        if self.config.finetune_blocks:
            layers = self.clip.vision_model.encoder.layers
            if self.config.finetune_blocks > len(layers):
                raise ValueError(
                    f"finetune_blocks={self.config.finetune_blocks} > {len(layers)} vision blocks"
                )
            for layer in layers[-self.config.finetune_blocks :]:
                layer.requires_grad_(True)
        self.head: nn.Linear | None = None
        if self.config.head == "linear":
            with torch.no_grad():
                text = self._encode_text()
                self.head = nn.Linear(text.shape[1], text.shape[0])
                # Start as the zero-shot classifier: logits = logit_scale * <v, t_c>.
                self.head.weight.copy_(self.clip.logit_scale.exp() * text)
                self.head.bias.zero_()
        dim = feature_dim(
            self.clip.config.vision_config.hidden_size,
            backbone.vision_layers,
            self.clip.config.projection_dim,
        )
        self.adapters = Adapters(self.config.adapters, dim) if self.config.adapters else None
        spec = self.config.open_set
        self.open_set = (
            OpenSet(len(self.classes), spec["rank"], dim, spec["threshold"]) if spec else None
        )
        self.temporal: TemporalHead | None = None
        if self.config.temporal:
            self.temporal = TemporalHead(
                self.clip.config.projection_dim,
                len(self.classes),
                TemporalSpec.from_dict(self.config.temporal),
            )
        self._text_cache: tuple[tuple, torch.Tensor] | None = None
        self._vision_cache: tuple[tuple, list[torch.Tensor]] | None = None
        #: Decision threshold on p(fake); set from the checkpoint when loaded.
        self.threshold = 0.5
        #: The few-shot adaptations the checkpoint went through (docs/adapt.md), oldest first.
        self.lineage: list[dict] = []

    # -- persistence (the format: checkpoint.py) ------------------------------------------------

    @classmethod
    def from_pretrained(
        cls, path_or_id: str, backbone: Backbone | str | None = None, **kwargs
    ) -> MiraGe:
        """Load a checkpoint directory (or hub repository) onto its frozen backbone."""
        return load_pretrained(path_or_id, backbone, **kwargs)

    def save_pretrained(self, directory: str, **kwargs) -> None:
        """Write config.json + model.safetensors (trained tensors only) to ``directory``."""
        save_pretrained(self, directory, **kwargs)

    # -- what trains ----------------------------------------------------------------------------

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the trained tensors: prompts, maps, head, unfrozen blocks (finetune), and what
        few-shot adaptation added (adapters, open-set test)."""
        state = {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}
        for name, module in (("adapters", self.adapters), ("open_set", self.open_set)):
            if module is not None:
                state.update({f"{name}.{k}": v.detach() for k, v in module.named_buffers()})
        return state

    def train(self, mode: bool = True) -> MiraGe:
        super().train(mode)
        self.clip.eval()  # the backbone never switches to training behaviour
        return self

    @property
    def classes(self) -> list[str]:
        """The trained classes, then any class that adaptation added (class 0 is real)."""
        return self.config.all_classes

    # -- text tower -----------------------------------------------------------------------------

    def _encode_text(self) -> torch.Tensor:
        text_model = self.clip.text_model
        ids = self.prompts.input_ids
        embeds = text_model.embeddings.token_embedding(ids)
        ctx = self.prompts.text_prompts()
        n = self.prompts.n_ctx
        if ctx:
            embeds = _splice(embeds, ctx[0], 1, n)
        hidden = text_model.embeddings(inputs_embeds=embeds)
        mask = create_causal_mask(
            config=text_model.config, inputs_embeds=hidden, attention_mask=None, cache=None
        )
        for i, layer in enumerate(text_model.encoder.layers):
            if 0 < i < len(ctx):
                hidden = _splice(hidden, ctx[i], 1, n)
            hidden = layer(hidden, mask, is_causal=True)
        hidden = text_model.final_layer_norm(hidden)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), self.prompts.eot_index]
        return F.normalize(self.clip.text_projection(pooled), dim=-1)

    def _text_params(self) -> list[nn.Parameter]:
        return list(self.prompts.ctx.parameters())

    def encode_text(self) -> torch.Tensor:
        """Unit text embeddings of the class prompts, (C, D).

        Cached while the prompts are unchanged and no gradient is needed (inference).
        """
        params = self._text_params()
        if _needs_grad(params):
            return self._encode_text()
        return self._cached("_text_cache", params, self._encode_text)

    def _cached(self, slot: str, params: list[nn.Parameter], compute: Callable[[], T]) -> T:
        """``compute()`` kept in ``self.<slot>`` until one of ``params`` changes (their version
        counters move on every in-place update: optimizer steps, loads) or the model is moved or
        cast (device, dtype and autocast are part of the key); a value made in inference mode is
        made again for use outside it (autograd refuses inference tensors)."""
        ref = self.clip.text_projection.weight
        autocast = torch.is_autocast_enabled(ref.device.type)  # a bf16 pass is not an fp32 one
        key = (ref.device, ref.dtype, autocast, *(p._version for p in params),
               *(id(p) for p in params))  # fmt: skip
        cached = getattr(self, slot)
        if cached is None or cached[0] != key or _inference_only(cached[1]):
            with torch.no_grad():
                cached = (key, compute())
            setattr(self, slot, cached)
        return cached[1]

    # -- vision tower ---------------------------------------------------------------------------

    def vision_prompts(self) -> list[torch.Tensor]:
        """[F_1(P_1), ..., F_J(P_J)]: recomputed while training, cached (in fp32, outside any
        autocast) while the prompts and maps are unchanged and no gradient is needed."""
        params = list(self.prompts.parameters())
        if _needs_grad(params):
            return self.prompts.vision_prompts()

        def compute() -> list[torch.Tensor]:
            device = self.clip.text_projection.weight.device
            with torch.autocast(device.type, enabled=False):
                return self.prompts.vision_prompts()

        return self._cached("_vision_cache", params, compute)

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Unit image embeddings, (B, D), for a batch of preprocessed images (B, 3, S, S)."""
        return self._encode_vision(pixel_values, None)

    def adaptation_features(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The unit embeddings and the adaptation features (model/adapters.py): after every vision
        layer its class token and the mean of its patch tokens, then the embedding, (B, F)."""
        tokens: list[torch.Tensor] = []
        embeds = self._encode_vision(pixel_values, tokens)
        return embeds, torch.cat([*tokens, embeds], dim=1).float()

    def _encode_vision(self, pixel_values: torch.Tensor, tokens: list | None) -> torch.Tensor:
        vision = self.clip.vision_model
        hidden = vision.embeddings(pixel_values.to(self.clip.logit_scale.dtype))
        prompts = self.vision_prompts()
        n = self.prompts.n_ctx
        if prompts:
            hidden = torch.cat([hidden, _expand(prompts[0], hidden)], dim=1)
        hidden = vision.pre_layrnorm(hidden)
        in_place = not torch.is_grad_enabled()  # inference: overwrite the slots, no copy
        for i, layer in enumerate(vision.encoder.layers):
            if 0 < i < len(prompts):
                if in_place:
                    hidden[:, hidden.shape[1] - n :] = prompts[i].to(hidden.dtype)
                else:
                    hidden = _splice(hidden, prompts[i], hidden.shape[1] - n, n)
            hidden = layer(hidden, None)
            if tokens is not None:
                patches = hidden[:, 1 : hidden.shape[1] - n]  # without the prompt slots
                tokens += [hidden[:, 0].float(), patches.float().mean(dim=1)]
        pooled = vision.post_layernorm(hidden[:, 0])
        return F.normalize(self.clip.visual_projection(pooled), dim=-1)

    # -- both -----------------------------------------------------------------------------------

    @property
    def image_features_frozen(self) -> bool:
        """Whether nothing trained changes the image embeddings (no vision prompts, no unfrozen
        vision blocks: zero-shot, linear probe, text prompts), so they can be computed once."""
        return (
            not self.config.vision_prompts
            and not self.config.finetune_blocks
            and self.adapters is None
            and self.open_set is None
        )

    def forward(self, pixel_values: torch.Tensor) -> MiraGeOutput:
        if self.adapters is None and self.open_set is None:
            return self.forward_from_embeds(self.encode_image(pixel_values))
        embeds, features = self.adaptation_features(pixel_values)
        return self._adapted(self.forward_from_embeds(embeds), features)

    def forward_from_features(self, features: torch.Tensor) -> MiraGeOutput:
        """The output for adaptation features already computed (:meth:`adaptation_features`;
        the feature memory that few-shot adaptation stores), without the pixels."""
        embeds = F.normalize(features[:, -self.clip.config.projection_dim :].float(), dim=-1)
        out = self.forward_from_embeds(embeds.to(self.clip.logit_scale.dtype))
        if self.adapters is None and self.open_set is None:
            return out
        return self._adapted(out, features)

    def _adapted(self, out: MiraGeOutput, features: torch.Tensor) -> MiraGeOutput:
        """``out`` with what adaptation added: the adapters' evidence, new classes, the
        open-set distance (model/adapters.py)."""
        logits = out.logits
        n_added = len(self.classes) - logits.shape[1]
        if n_added:
            logits = torch.cat([logits, logits.new_full((len(logits), n_added), -torch.inf)], 1)
        if self.adapters is not None:
            logits = self.adapters.combine(logits, features, self.classes)
        out.logits = logits
        if self.open_set is not None:
            out.distance = self.open_set.distance(features)
            out.distance_threshold = self.open_set.threshold
        return out

    def forward_from_embeds(self, image: torch.Tensor) -> MiraGeOutput:
        """The logits of unit image embeddings already computed by :meth:`encode_image`."""
        text = self.encode_text()
        if self.head is not None:
            logits = self.head(image.to(self.head.weight.dtype))
        else:
            # in fp32 even when the network runs in half precision: logit_scale is ~100
            logits = self.clip.logit_scale.float().exp() * image.float() @ text.float().t()
        return MiraGeOutput(logits=logits.float(), image_embeds=image, text_embeds=text)


def load_pretrained(
    path_or_id: str | os.PathLike,
    backbone: Backbone | str | None = None,
    *,
    strict_backbone: bool = True,
    device: str | torch.device | None = None,
) -> MiraGe:
    """Load a checkpoint onto its backbone (or onto ``backbone`` if given).

    The backbone must have the shape the checkpoint was trained on; with ``strict_backbone`` its
    weights must match too (a checkpoint trained on one CLIP is meaningless on another).
    """
    directory = checkpoint.resolve(path_or_id)
    config = checkpoint.read_config(directory)
    expected = config["backbone"]
    if backbone is None or isinstance(backbone, str):
        try:
            backbone = load_backbone(backbone or expected["source"])
        except BackboneError as exc:
            raise CheckpointError(f"the checkpoint's backbone could not be loaded: {exc}") from exc
    if backbone.shape() != expected["shape"]:
        raise CheckpointError(
            f"checkpoint {directory} was trained on {expected['description']} "
            f"({expected['source']}), but the backbone given is {backbone.describe()} "
            f"({backbone.source}): their shapes differ, so the trained prompts cannot be used."
        )
    if strict_backbone and backbone.fingerprint["weights"] != expected["fingerprint"]["weights"]:
        raise CheckpointError(
            f"checkpoint {directory} was trained on backbone {expected['source']} (weights "
            f"{expected['fingerprint']['weights']}), but {backbone.source} has other weights "
            f"({backbone.fingerprint['weights']}). Pass the backbone it was trained on, or "
            "strict_backbone=False to load it anyway."
        )
    model_cfg = dict(config["model"])
    resolved_depth = model_cfg.pop("resolved_depth", None)
    if resolved_depth is not None and model_cfg.get("n_ctx", 0):
        model_cfg["depth"] = resolved_depth
    backbone.preprocess = Preprocess.from_dict(config["preprocess"])
    model = MiraGe(backbone, ModelConfig.from_dict(model_cfg))
    tensors = checkpoint.read_weights(directory)
    checkpoint.load_trainable(model, tensors, source=str(directory / checkpoint.WEIGHTS_NAME))
    model.threshold = float(config.get("threshold", 0.5))
    model.lineage = (config.get("metadata") or {}).get("lineage", [])
    if device is not None:
        model.to(device)
    return model


def _inference_only(value: torch.Tensor | list[torch.Tensor]) -> bool:
    """Whether a cached value was made under inference mode and cannot enter autograd now (an
    attack's gradient through the input, after scoring in inference mode)."""
    if torch.is_inference_mode_enabled():
        return False
    tensors = value if isinstance(value, list) else [value]
    return any(t.is_inference() for t in tensors)


def _needs_grad(params: list[nn.Parameter]) -> bool:
    return torch.is_grad_enabled() and any(p.requires_grad for p in params)


def _expand(prompt: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return prompt.to(like.dtype).unsqueeze(0).expand(like.shape[0], -1, -1)


def _splice(hidden: torch.Tensor, prompt: torch.Tensor, start: int, n: int) -> torch.Tensor:
    """hidden with positions [start, start+n) replaced by ``prompt`` (same for every row)."""
    return torch.cat([hidden[:, :start], _expand(prompt, hidden), hidden[:, start + n :]], dim=1)
