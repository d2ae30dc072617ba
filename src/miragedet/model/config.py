"""Options of a MiraGe model and its loss, with the paper's defaults.

Every default cites where it comes from: a section of the paper (Shi et al., 2025) or, where the
paper's value is not available to us, "our choice" with the reason (see docs/method.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

#: Methods and ablations (paper table 4 rows 1-4, plus the usual baselines), and the switches
#: each one sets. A method is a named preset; every switch can still be set on its own.
METHODS: dict[str, dict[str, Any]] = {
    # CLIP as published, prompts "a photo of a Real/Fake", nothing trained.
    "zero-shot": {"n_ctx": 0, "vision_prompts": False, "head": "text", "finetune_blocks": 0},
    # UnivFD-style baseline: frozen image features + a trained linear (logistic) head.
    "linear-probe": {"n_ctx": 0, "vision_prompts": False, "head": "linear", "finetune_blocks": 0},
    # Table 4 row 1: deep text prompts only (CoOp-like).
    "text-prompts": {"vision_prompts": False, "head": "text", "finetune_blocks": 0},
    # Table 4 row 2: + vision prompts mapped from the text prompts (MaPLe-style).
    "multimodal": {"vision_prompts": True, "head": "text", "finetune_blocks": 0},
    # Table 4 row 3: + discriminative loss (no memory bank).
    "discriminative": {"vision_prompts": True, "head": "text", "finetune_blocks": 0},
    # Table 4 row 4: full MiraGe (+ memory bank).
    "mirage": {"vision_prompts": True, "head": "text", "finetune_blocks": 0},
    # Baseline: unfreeze the last k vision blocks, zero-shot text classifier, CE.
    "finetune": {"n_ctx": 0, "vision_prompts": False, "head": "text", "finetune_blocks": 1},
}

#: Loss switches per method: lambda of the discriminative loss and the memory-bank size K.
METHOD_LOSS: dict[str, dict[str, Any]] = {
    "zero-shot": {"lambda_dis": 0.0, "bank_size": 0},
    "linear-probe": {"lambda_dis": 0.0, "bank_size": 0},
    "text-prompts": {"lambda_dis": 0.0, "bank_size": 0},
    "multimodal": {"lambda_dis": 0.0, "bank_size": 0},
    "discriminative": {"lambda_dis": 1.0, "bank_size": 0},
    "mirage": {"lambda_dis": 1.0, "bank_size": 1024},
    "finetune": {"lambda_dis": 0.0, "bank_size": 0},
}

METHOD_ALIASES = {"+discriminative": "discriminative", "zeroshot": "zero-shot"}


def canonical_method(name: str) -> str:
    """Return the canonical method name, accepting the aliases used in the paper's table."""
    key = METHOD_ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    return key


@dataclass
class ModelConfig:
    """Architecture of the trainable part of a MiraGe detector (the backbone is frozen)."""

    method: str = "mirage"
    #: Class names; index 0 is the real class (method.md: Real = 0, Fake = 1). More than two
    #: names give generator attribution (e.g. real, sd14, midjourney, biggan).
    classes: list[str] = field(default_factory=lambda: ["Real", "Fake"])
    #: Prompt template (paper section 5: "a photo of a Real" / "a photo of a Fake").
    template: str = "a photo of a {}"
    #: Learnable context vectors per layer. Paper value unavailable; our choice: 2 (MaPLe).
    n_ctx: int = 2
    #: Prompt depth J (layers 1..J carry prompts). Paper value unavailable; our choice: 9
    #: (MaPLe), lowered to the shallower tower's depth when the backbone has fewer layers.
    depth: int = 9
    #: Vision prompts F_i(P_i) with a linear F_i (appendix I.1: linear beats MLP/attention).
    vision_prompts: bool = True
    #: "text": logits are logit_scale * cos(image, class text); "linear": a linear head on the
    #: unit image embedding (linear-probe baseline).
    head: str = "text"
    #: Last k vision blocks trained (finetune baseline); 0 keeps the backbone frozen.
    finetune_blocks: int = 0
    #: Standard deviation of the random init of prompts that have no template word
    #: (deeper layers, and extra layer-1 slots). Our choice: 0.02 (MaPLe / CoOp).
    init_std: float = 0.02
    #: Generators learned by few-shot adaptation (model/adapters.py): one dict each,
    #: ``{"name": generator, "class": the class it adds to}``; a class not in ``classes`` is a
    #: new one (attribution). Empty for a model as trained.
    adapters: list[dict[str, Any]] = field(default_factory=list)
    #: The open-set test of attribution models (model/adapters.py): ``{"rank": N, "threshold":
    #: distance}`` beyond which an image is an "unknown generator"; None: no such test.
    open_set: dict[str, Any] | None = None
    #: The temporal head of clip models (model/temporal.py: ``{"hidden", "kernel", "frames"}``),
    #: trained by ``train --temporal``; None: clips are scored by their frames alone.
    temporal: dict[str, Any] | None = None

    @property
    def all_classes(self) -> list[str]:
        """``classes``, then any class that adaptation added (class 0 is real)."""
        added = [a["class"] for a in self.adapters if a["class"] not in self.classes]
        return [*self.classes, *dict.fromkeys(added)]

    def __post_init__(self) -> None:
        self.method = canonical_method(self.method)
        if len(self.classes) < 2:
            raise ValueError(f"need at least two classes, got {self.classes!r}")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"class names must be distinct, got {self.classes!r}")
        if "{}" not in self.template:
            raise ValueError(f"template must contain '{{}}' for the class name: {self.template!r}")
        if self.n_ctx < 0 or self.depth < 0 or self.finetune_blocks < 0:
            raise ValueError("n_ctx, depth and finetune_blocks must be >= 0")
        if self.head not in ("text", "linear"):
            raise ValueError(f"head must be 'text' or 'linear', got {self.head!r}")
        if self.vision_prompts and self.n_ctx == 0:
            self.vision_prompts = False

    @classmethod
    def for_method(cls, method: str, **overrides: Any) -> ModelConfig:
        """The preset of ``method`` (see METHODS), with any field overridden."""
        method = canonical_method(method)
        values = {**METHODS[method], **overrides, "method": method}
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model options: {sorted(unknown)}")
        return cls(**data)


@dataclass
class LossConfig:
    """Loss of MiraGe: L = L_ce + lambda * L_dis (paper eq. 5, section 5.1)."""

    #: Weight of the discriminative loss. Paper's best value unavailable; our choice: 1.0.
    lambda_dis: float = 1.0
    #: Temperature of the supervised-contrastive loss. Not given; our choice: 0.07 (SupCon).
    tau: float = 0.07
    #: Memory-bank size K (appendix D: up to about 1024). 0 turns the bank off.
    bank_size: int = 1024
    #: Include the class text embeddings as labelled anchors (section 5.1). Always on in the
    #: paper; switchable to study its effect.
    text_anchors: bool = True

    def __post_init__(self) -> None:
        if self.tau <= 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if self.lambda_dis < 0 or self.bank_size < 0:
            raise ValueError("lambda_dis and bank_size must be >= 0")

    @classmethod
    def for_method(cls, method: str, **overrides: Any) -> LossConfig:
        return cls(**{**METHOD_LOSS[canonical_method(method)], **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LossConfig:
        return cls(**data)
