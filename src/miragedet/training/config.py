"""What a training run is given (every field a CLI flag and a YAML key) and what it returns."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..inference.detector_config import option
from ..model.config import LossConfig, ModelConfig, canonical_method


@dataclass
class OptimConfig:
    """Optimisation recipe (section 6.1, appendix G.2)."""

    lr: float = 0.002  # SGD, section 6.1
    momentum: float = 0.9
    weight_decay: float = 0.0  # not given; our choice
    batch_size: int = 128
    epochs: int = 10
    warmup_steps: int = 0  # not given; our choice


#: The surface TrainConfig's fields are options of (apps/cli/options.py builds them).
TRAIN = "train"


def _flag(default: Any, help: str, *aliases: str) -> Any:
    """A TrainConfig field: a YAML key and a ``train`` option with this help (and ``aliases``,
    e.g. ``-o``)."""
    return option(default, help, frozenset({TRAIN}), aliases={TRAIN: aliases})


@dataclass
class TrainConfig:
    """Everything a training run needs; every field is a CLI flag and a YAML key."""

    data: str = field(default="", metadata={"surfaces": frozenset()})  # train's DATA argument
    layout: str = _flag("auto", "auto|genimage|ufd|chameleon|generic|manifest")
    train_split: str = _flag("train", "GenImage folder (and manifest split) to train on.")
    subsets: list[str] | None = _flag(  # noqa: RUF009 (_flag returns a field)
        None, "Comma-separated subsets to train on (e.g. stable_diffusion_v_1_4: GenImage's "
        "protocol)."
    )  # fmt: skip
    val_data: str | None = _flag(
        None, "Validation root (default: the same root's val split, when it exists)."
    )
    val_split: str = _flag("val", "The split validated on.")
    max_per_class: int | None = _flag(
        None, "Cap on training images per class (e.g. 20000: UFD's 20k + 20k ProGAN subset)."
    )
    frames_per_video: int = _flag(
        8,
        "Videos in the data contribute this many evenly spread frames each, labelled as the "
        "video (data/video_samples.py; our choice).",
        "--frames-per-clip",  # the name before 0.2
    )
    classes: list[str] | None = _flag(  # noqa: RUF009 (as above)
        None, "Comma-separated prompt class names (default Real,Fake or the folder names)."
    )
    method: str = _flag(
        "mirage", "zero-shot|linear-probe|text-prompts|multimodal|discriminative|mirage|finetune"
    )
    backbone: str = _flag(
        "openai/clip-vit-large-patch14", "Hub id, local directory or random:PRESET."
    )
    n_ctx: int | None = _flag(None, "Learnable prompt tokens (default: the method's).")
    depth: int | None = _flag(None, "Layers with prompts, J (default: the method's).")
    finetune_blocks: int | None = _flag(None, "finetune: the last blocks trained.")
    template: str | None = _flag(None, "The class prompt, e.g. 'a photo of a {}'.")
    lambda_dis: float | None = _flag(None, "The contrastive loss's weight, lambda.")
    tau: float | None = _flag(None, "The contrastive loss's temperature.")
    bank_size: int | None = _flag(None, "The memory bank's size, K.")
    lr: float = _flag(0.002, "Learning rate (SGD, the paper's section 6.1).")
    momentum: float = _flag(0.9, "SGD momentum.")
    weight_decay: float = _flag(0.0, "Weight decay (not given in the paper; our choice).")
    batch_size: int = _flag(128, "Images per optimizer step (the paper's).")
    grad_accum: int = _flag(1, "Micro-batches per step (batch_size must be divisible by it).")
    epochs: int = _flag(10, "Epochs (the paper's).")
    warmup_steps: int = _flag(0, "Linear warm-up steps before the cosine schedule.")
    max_steps: int | None = _flag(None, "Stop (and checkpoint) after this many optimizer steps.")
    amp: str = _flag(
        "none",
        "none (fp32: runs alike on every machine) | auto (bf16 where the hardware computes it "
        "natively, fp16 on GPUs without bf16, else none) | bf16 | fp16. bf16 on a CPU without "
        "native bf16 is emulated and several times slower: it warns.",
    )
    augment: str = _flag("none", "none|robust")
    view: str = _flag(
        "resize",
        "resize (CLIP's resize + centre crop, the paper's) or crop (random crops at native "
        "resolution: keeps pixel-level traces; the checkpoint then scores with tiles).",
    )
    align: str | None = _flag(None, "Re-encode every training image alike: jpeg:96 or png.")
    workers: int | None = _flag(
        None,
        "DataLoader processes, capped by the CPUs this process may use (default: 2 on a CPU; on "
        "a GPU those CPUs less one, shared by the ranks on the machine, at most 16).",
    )
    seed: int = _flag(0, "Seed of the run (data order, initialisation, augmentation).")
    device: str = _flag("auto", "auto (a CUDA GPU when present, else the CPU), cpu, cuda, cuda:N.")
    output: str = _flag("runs/mirage", "Where checkpoints and the log go.", "-o")
    log_every: int = _flag(10, "Log every this many steps.")
    save_every: int = _flag(0, "Also write `last` every N steps (0: at epoch ends only).")
    select_metric: str = _flag("accuracy", "The validation metric that picks `best`.")
    resume: bool = _flag(False, "Continue from OUTPUT/last.")
    cache_features: bool = _flag(
        True,
        "Compute frozen image features once (linear-probe, zero-shot, text-prompts without "
        "augmentation).",
    )
    # adversarial training: the share of each batch replaced by adversarial examples is our
    # choice: half, as in Goodfellow et al. 2015's mixed objective (Madry et al. 2018 use the
    # whole batch)
    adv_train: str | None = _flag(
        None,
        "Adversarial training of the prompts (backbone frozen): an attack spec such as "
        "pgd:eps=2,steps=5 (eps in grey levels of the model's input crops). Needs "
        "miragedet[attacks].",
    )
    adv_fraction: float = _flag(0.5, "With --adv-train: share of each batch replaced by attacks.")

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
        data = _renamed(data)
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
        data = _renamed(data)
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


#: YAML keys renamed in 0.2: old -> new (the old one still works for a release, with a warning).
RENAMED = {"frames_per_clip": "frames_per_video"}


def _renamed(data: dict[str, Any]) -> dict[str, Any]:
    out = dict(data)
    for old, new in RENAMED.items():
        if old in out:
            import warnings

            warnings.warn(f"the training option {old!r} is now {new!r}; {old!r} goes in the next "
                          "release", DeprecationWarning, stacklevel=3)  # fmt: skip
            out.setdefault(new, out.pop(old))
    return out
