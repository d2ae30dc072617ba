"""What a training run is given (every field a CLI flag and a YAML key) and what it returns."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..model.config import LossConfig, ModelConfig, canonical_method


@dataclass
class TrainConfig:
    """Everything a training run needs; every field is a CLI flag and a YAML key."""

    data: str = ""
    layout: str = "auto"
    train_split: str = "train"  # GenImage folder (and manifest split) to train on
    subsets: list[str] | None = None  # e.g. ["stable_diffusion_v_1_4"] (GenImage protocol)
    val_data: str | None = None  # default: same root, val split, when it exists
    val_split: str = "val"
    max_per_class: int | None = None  # e.g. 20000 for UFD's 20k + 20k ProGAN subset
    # video clips in the data contribute this many evenly spread frames each, labelled as the
    # clip (data/clip_samples.py; our choice 8)
    frames_per_clip: int = 8
    classes: list[str] | None = None  # prompt class names; default Real/Fake or folder names
    method: str = "mirage"
    backbone: str = "openai/clip-vit-large-patch14"
    n_ctx: int | None = None
    depth: int | None = None
    finetune_blocks: int | None = None
    template: str | None = None
    lambda_dis: float | None = None
    tau: float | None = None
    bank_size: int | None = None
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 128
    grad_accum: int = 1
    epochs: int = 10
    warmup_steps: int = 0
    max_steps: int | None = None  # stop (and checkpoint) after this many optimizer steps
    # none (fp32, the default: runs alike on every machine) | auto (bf16 where the hardware
    # computes it natively, fp16 on GPUs without bf16, else none) | bf16 | fp16
    amp: str = "none"
    augment: str = "none"  # none | robust
    view: str = "resize"  # resize (the paper's) | crop: random native-resolution crops
    align: str | None = None  # re-encode every training image alike: jpeg:96 or png
    workers: int = 2
    seed: int = 0
    device: str = "auto"
    output: str = "runs/mirage"
    log_every: int = 10
    save_every: int = 0  # also write `last` every N steps (0: at epoch ends only)
    select_metric: str = "accuracy"
    resume: bool = False
    # compute frozen image features once (linear probe, zero-shot, text prompts; see features.py)
    cache_features: bool = True
    # adversarial training: an attack spec (miragedet.inference.attacks, e.g.
    # pgd:eps=2,steps=5) and the share of each batch replaced by its adversarial examples (our
    # choice: half, as in Goodfellow et al. 2015's mixed objective; Madry et al. 2018 use the
    # whole batch)
    adv_train: str | None = None
    adv_fraction: float = 0.5

    def __post_init__(self) -> None:
        self.method = canonical_method(self.method)
        if self.amp not in ("auto", "none", "bf16", "fp16"):
            raise ValueError(f"amp must be auto, none, bf16 or fp16, got {self.amp!r}")
        if self.batch_size % self.grad_accum:
            raise ValueError("batch_size must be divisible by grad_accum")
        if self.adv_train is not None:
            from ..inference.attacks import Attack

            Attack.parse(self.adv_train)  # a bad spec fails here, before any data is read
            if not 0 < self.adv_fraction <= 1:
                raise ValueError(f"adv_fraction must be in (0, 1], got {self.adv_fraction}")

    def model_config(self, classes: list[str]) -> ModelConfig:
        overrides = {
            k: getattr(self, k)
            for k in ("n_ctx", "depth", "finetune_blocks", "template")
            if getattr(self, k) is not None
        }
        return ModelConfig.for_method(self.method, classes=classes, **overrides)

    def loss_config(self) -> LossConfig:
        overrides = {
            k: getattr(self, k)
            for k in ("lambda_dis", "tau", "bank_size")
            if getattr(self, k) is not None
        }
        return LossConfig.for_method(self.method, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training options {unknown}; known: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        import yaml

        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a mapping of training options")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data)


@dataclass
class TrainResult:
    output: Path
    global_step: int
    epochs_done: int
    best: dict[str, Any] | None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    #: The last epoch's training speed (the part of it this run ran): images per second over
    #: its wall time, and the share of that time spent waiting for batches (0..1; near 0 when
    #: the input keeps up with the step). None when no step ran.
    images_per_s: float | None = None
    data_wait_share: float | None = None
