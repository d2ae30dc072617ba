"""Training: one optimisation step, a small in-memory loop, and the full Trainer.

The Trainer reads a dataset layout, trains with the paper's recipe (SGD, cosine), validates each
epoch, logs to JSONL, writes ``last`` and ``best`` checkpoints atomically and resumes exactly
(model, optimizer, scheduler, memory bank, RNG and position in the epoch).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .config import LossConfig, ModelConfig, OptimConfig, canonical_method
from .losses import MiraGeLoss
from .model import MiraGe


@dataclass
class StepResult:
    loss: float
    ce: float
    dis: float
    accuracy: float


def trainable_parameters(model: MiraGe) -> list[torch.nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"method {model.config.method!r} has nothing to train")
    return params


def make_optimizer(model: MiraGe, optim: OptimConfig) -> torch.optim.SGD:
    """SGD with momentum over the trainable tensors only (section 6.1)."""
    return torch.optim.SGD(
        trainable_parameters(model),
        lr=optim.lr,
        momentum=optim.momentum,
        weight_decay=optim.weight_decay,
    )


def train_step(
    model: MiraGe,
    loss_fn: MiraGeLoss,
    optimizer: torch.optim.Optimizer,
    pixel_values: torch.Tensor,
    labels: torch.Tensor,
    adversary: Callable[..., torch.Tensor] | None = None,
    seed: int = 0,
) -> StepResult:
    """Forward, loss (CE + lambda * L_dis, bank update), backward and one optimizer step.
    With ``adversary`` (:class:`miragedet.attacks.Adversary`) part of the batch is first replaced
    by adversarial examples against the current model (drawn from ``seed``)."""
    if adversary is not None:
        pixel_values = adversary(model, pixel_values, labels, seed)
    model.train()
    out = model(pixel_values)
    losses = loss_fn(out.logits, out.image_embeds, out.text_embeds, labels)
    optimizer.zero_grad(set_to_none=True)
    losses.loss.backward()
    optimizer.step()
    with torch.no_grad():
        accuracy = (out.logits.argmax(dim=1) == labels).float().mean()
        return StepResult(losses.loss.item(), losses.ce.item(), losses.dis.item(), accuracy.item())


def fit_tensors(
    model: MiraGe,
    loss_fn: MiraGeLoss,
    pixel_values: torch.Tensor,
    labels: torch.Tensor,
    optim: OptimConfig,
    steps: int,
    seed: int = 0,
    on_step: Callable[[int, StepResult], None] | None = None,
    adversary: Callable[..., torch.Tensor] | None = None,
) -> list[StepResult]:
    """Train for ``steps`` SGD steps on shuffled mini-batches of in-memory tensors (with
    ``adversary``: adversarial training, see :func:`train_step`)."""
    optimizer = make_optimizer(model, optim)
    generator = torch.Generator().manual_seed(seed)
    n = pixel_values.shape[0]
    order = torch.randperm(n, generator=generator)
    cursor = 0
    history = []
    for step in range(steps):
        if cursor + optim.batch_size > n:
            order, cursor = torch.randperm(n, generator=generator), 0
        idx = order[cursor : cursor + optim.batch_size]
        cursor += optim.batch_size
        result = train_step(
            model, loss_fn, optimizer, pixel_values[idx], labels[idx], adversary, seed + step
        )
        history.append(result)
        if on_step is not None:
            on_step(step, result)
    return history


@torch.inference_mode()
def predict_fake_prob(
    model: MiraGe, pixel_values: torch.Tensor, batch_size: int = 256
) -> torch.Tensor:
    """p(fake) for each image of a preprocessed batch, in chunks of ``batch_size``."""
    model.eval()
    chunks = [
        model(pixel_values[i : i + batch_size]).fake_prob
        for i in range(0, pixel_values.shape[0], batch_size)
    ]
    return torch.cat(chunks) if chunks else torch.empty(0)


def cosine_lr(step: int, total: int, warmup: int) -> float:
    """LR multiplier: linear warm-up, then cosine annealing to 0 (section 6.1)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# -- the full trainer -------------------------------------------------------------------------


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
    amp: str = "none"  # none | bf16 | fp16
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
    # adversarial training: an attack spec (miragedet.attacks, e.g. pgd:eps=2,steps=5) and the
    # share of each batch replaced by its adversarial examples (our choice: half, as in
    # Goodfellow et al. 2015's mixed objective; Madry et al. 2018 use the whole batch)
    adv_train: str | None = None
    adv_fraction: float = 0.5

    def __post_init__(self) -> None:
        self.method = canonical_method(self.method)
        if self.amp not in ("none", "bf16", "fp16"):
            raise ValueError(f"amp must be none, bf16 or fp16, got {self.amp!r}")
        if self.batch_size % self.grad_accum:
            raise ValueError("batch_size must be divisible by grad_accum")
        if self.adv_train is not None:
            from .attacks import Attack

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


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Trainer:
    """Train a MiraGe model (or a baseline) on a dataset layout. See :class:`TrainConfig`."""

    def __init__(self, config: TrainConfig, backbone: Any = None, console: Any = None) -> None:
        from rich.console import Console

        from . import distributed
        from .backbone import load_backbone
        from .data.layouts import find_images
        from .data.transforms import Augment, TrainTransform

        self.config = c = config
        self.dist, self.device = distributed.setup(_device(c.device))
        if not self.dist.is_main:
            console = Console(quiet=True)  # rank 0 alone reports, evaluates and saves
        self.console = console or Console()
        self.output = Path(c.output)
        if c.batch_size % (c.grad_accum * self.dist.world):
            raise ValueError(
                f"batch_size {c.batch_size} must be divisible by grad_accum x ranks "
                f"({c.grad_accum} x {self.dist.world})"
            )
        _seed_everything(c.seed)
        self.backbone = backbone or load_backbone(c.backbone)
        train_set = find_images(c.data, c.layout, split=c.train_split)
        if c.subsets:
            train_set = train_set.only(c.subsets)
        self.train_set = _cap_per_class(train_set, c.max_per_class, c.seed)
        self.val_set = self._find_val(find_images)
        classes = c.classes or (
            ["Real", "Fake"]
            if self.train_set.classes == ["real", "fake"]
            else self.train_set.classes
        )
        if len(classes) != len(self.train_set.classes):
            raise ValueError(
                f"{len(classes)} class names {classes} for "
                f"{len(self.train_set.classes)} classes in the data"
            )
        self.model = MiraGe(self.backbone, c.model_config(classes)).to(self.device)
        self.loss_fn = MiraGeLoss(c.loss_config(), self.backbone.model.config.projection_dim).to(
            self.device
        )
        self.optim = OptimConfig(
            lr=c.lr,
            momentum=c.momentum,
            weight_decay=c.weight_decay,
            batch_size=c.batch_size,
            epochs=c.epochs,
            warmup_steps=c.warmup_steps,
        )
        self.optimizer = make_optimizer(self.model, self.optim)
        self.micro = c.batch_size // c.grad_accum // self.dist.world  # per rank
        self.forward = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.forward = DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False,
            )
        self.steps_per_epoch = len(self.train_set.samples) // c.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{len(self.train_set.samples)} training images are fewer than one "
                f"batch of {c.batch_size}"
            )
        self.total_steps = self.steps_per_epoch * c.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: cosine_lr(s, self.total_steps, c.warmup_steps)
        )
        if c.view not in ("resize", "crop"):
            raise ValueError(f"--view for training is resize or crop, not {c.view!r}")
        self.backbone.preprocess.view = c.view  # the checkpoint records it
        self.transform = TrainTransform(
            self.backbone.preprocess, Augment.preset(c.augment, c.seed), view=c.view
        )
        #: ``--adv-train``: replaces part of each batch by attacks on the current prompts
        self.adversary = None
        if c.adv_train:
            from .attacks import Adversary, Attack

            self.adversary = Adversary(
                Attack.parse(c.adv_train), c.adv_fraction, self.backbone.preprocess
            )
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=c.amp == "fp16" and self.device.type == "cuda"
        )
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.best: dict[str, Any] | None = None
        self.skipped: list[tuple[str, str]] = list(self.train_set.skipped)
        self.history: list[dict[str, Any]] = []
        #: Frozen image features of the training set, when they can be cached (see features.py);
        #: ``features_computed`` counts the images encoded to fill the cache in this run.
        self.features: torch.Tensor | None = None
        self.feature_errors: dict[int, str] = {}
        self.features_computed = 0

    def can_cache_features(self) -> bool:
        """Frozen features, no random augmentation, one process (DDP needs its own forward)."""
        c = self.config
        return (
            c.cache_features
            and self.model.image_features_frozen
            and not self.transform.augment.active
            and c.view == "resize"
            and not c.adv_train
            and not self.dist.enabled
        )

    def _load_features(self) -> None:
        from . import features

        c = self.config
        samples = self.train_set.samples
        path = features.cache_path(
            self.output / "features", "train", samples, self.backbone, amp=c.amp, align=c.align
        )

        def batches():
            return self._loader(list(range(len(samples))))

        def encode(pixels: torch.Tensor) -> torch.Tensor:
            with self._autocast():
                return self.model.encode_image(pixels.to(self.device))

        self.features, self.feature_errors, self.features_computed = features.load_or_compute(
            path, batches, encode, len(samples)
        )
        self.console.print(
            f"frozen image features: {'computed' if self.features_computed else 'reused'} "
            f"({path}); epochs train the head from them"
        )

    def _feature_batches(self, indices: list[int]) -> Any:
        """Micro-batches like the image loader's, from the cached features."""
        labels = [s.label for s in self.train_set.samples]
        for start in range(0, len(indices), self.micro):
            chunk = indices[start : start + self.micro]
            good = [i for i in chunk if i not in self.feature_errors]
            yield {
                "embeds": self.features[good],
                "labels": torch.tensor([labels[i] for i in good], dtype=torch.long),
                "indices": torch.tensor(good, dtype=torch.long),
                "errors": [(i, self.feature_errors[i]) for i in chunk if i in self.feature_errors],
            }

    def _find_val(self, find_images: Callable) -> Any:
        c = self.config
        from .data.layouts import LayoutError

        if c.val_data:
            val = find_images(c.val_data, c.layout, split=c.val_split)
        else:
            try:
                val = find_images(c.data, c.layout, split=c.val_split)
            except LayoutError:
                return None
            if val.layout not in ("genimage", "manifest"):
                return None  # the same folders as training: no separate validation split
        if c.subsets and set(c.subsets) <= set(val.subsets):
            val = val.only(c.subsets)
        return val

    # -- resume state ---------------------------------------------------------------------------

    def _write_state(self, directory: Path) -> None:
        tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
        for i, state in self.optimizer.state_dict()["state"].items():
            for key, value in state.items():
                if torch.is_tensor(value):
                    tensors[f"optimizer.{i}.{key}"] = value.detach().cpu().contiguous()
        for key, value in self.loss_fn.bank.state_dict().items():
            tensors[f"bank.{key}"] = value.detach().cpu().contiguous()
        save_file(tensors, str(directory / "trainer_state.safetensors"))
        state = {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "best": self.best,
            "scheduler": {
                k: v for k, v in self.scheduler.state_dict().items() if k != "lr_lambdas"
            },
            "param_groups": [
                {k: v for k, v in g.items() if k != "params"}
                for g in self.optimizer.state_dict()["param_groups"]
            ],
            "rng_python": _jsonable(random.getstate()),
            "rng_numpy": np.random.get_state()[1].tolist(),
            "rng_numpy_pos": int(np.random.get_state()[2]),
            "config": self.config.to_dict(),
        }
        (directory / "trainer_state.json").write_text(json.dumps(state, indent=1))

    def _load_state(self, directory: Path) -> None:
        from .checkpoint import load_trainable

        state = json.loads((directory / "trainer_state.json").read_text())
        tensors = load_file(str(directory / "trainer_state.safetensors"))
        weights = load_file(str(directory / "model.safetensors"))
        load_trainable(self.model, weights, source=str(directory))
        optim_state = self.optimizer.state_dict()
        for name, value in tensors.items():
            if name.startswith("optimizer."):
                _, idx, key = name.split(".", 2)
                optim_state["state"].setdefault(int(idx), {})[key] = value.to(self.device)
        for group, saved in zip(optim_state["param_groups"], state["param_groups"], strict=True):
            group.update(saved)  # the scheduled learning rate at the time of saving
        self.optimizer.load_state_dict(optim_state)
        self.loss_fn.bank.load_state_dict(
            {
                k.removeprefix("bank."): v.to(self.device)
                for k, v in tensors.items()
                if k.startswith("bank.")
            }
        )
        sched = self.scheduler.state_dict()
        sched.update(state["scheduler"])
        self.scheduler.load_state_dict(sched)
        torch.set_rng_state(tensors["rng.torch"])
        random.setstate(_tupled(state["rng_python"]))
        np.random.set_state(
            (
                "MT19937",
                np.array(state["rng_numpy"], dtype=np.uint32),
                state["rng_numpy_pos"],
                0,
                0.0,
            )
        )
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.global_step, self.best = state["global_step"], state["best"]

    def save(self, name: str) -> Path:
        from .checkpoint import save_pretrained

        meta = {
            "train": self.config.to_dict(),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "best": self.best,
        }
        return save_pretrained(
            self.model,
            self.output / name,
            loss_config=self.loss_fn.config,
            metadata=meta,
            write_extra=self._write_state,
        )

    # -- the loop -------------------------------------------------------------------------------

    def _order(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
        return torch.randperm(len(self.train_set.samples), generator=generator).tolist()

    def _loader(self, indices: list[int]) -> torch.utils.data.DataLoader:
        from .data.dataset import ImageDataset, collate

        image_transform = None
        if self.config.align:
            from .data.degrade import Alignment

            alignment = Alignment.parse(self.config.align)

            def image_transform(image, index, a=alignment):
                return a(image)

        dataset = ImageDataset(self.train_set.samples, self.transform, image_transform)
        # Rank r takes positions r, r + W, ... of the global order (DistributedSampler's split),
        # so each global batch is the same set of images whatever the number of ranks.
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=self.micro,
            sampler=indices[self.dist.rank :: self.dist.world],
            num_workers=self.config.workers,
            collate_fn=collate,
            drop_last=False,
        )

    def _autocast(self) -> Any:
        c = self.config
        if c.amp == "none":
            return torch.autocast(self.device.type, enabled=False)
        dtype = torch.bfloat16 if c.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def dry_run(self, steps: int = 3) -> dict[str, Any]:
        """Time ``steps`` real optimizer steps on this machine (after one warm-up step) and
        estimate the run: per epoch and in all, with the peak memory. Writes nothing: no output
        folder, no log, no checkpoint; the model's prompts are changed in memory only."""
        import resource

        from rich.progress import Progress

        c = self.config
        saved = c.max_steps, c.save_every
        c.save_every = None
        steps = max(1, min(steps, self.steps_per_epoch - 1)) if self.steps_per_epoch > 1 else 0
        order = self._order(0)
        progress = Progress(disable=True)
        task = progress.add_task("dry run")
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            c.max_steps = 1  # warm-up: first-call costs (allocations, kernels) are not the rate
            self._run_epoch(order[: c.batch_size], _NoLog(), progress, task)
            start = time.perf_counter()
            if steps:
                c.max_steps = 1 + steps
                self._run_epoch(
                    order[c.batch_size : (1 + steps) * c.batch_size], _NoLog(), progress, task
                )
            per_step = (time.perf_counter() - start) / steps if steps else float("nan")
        finally:
            c.max_steps, c.save_every = saved
        total_steps = (
            self.total_steps if c.max_steps is None else min(c.max_steps, self.total_steps)
        )
        peak = (
            torch.cuda.max_memory_allocated(self.device) / 2**20
            if self.device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        )
        cached = self.can_cache_features()  # features once: later epochs cost next to nothing
        return {
            "cached_features": cached,
            "steps_timed": steps,
            "seconds_per_step": per_step,
            "images_per_s": c.batch_size / per_step if steps else float("nan"),
            "steps_per_epoch": self.steps_per_epoch,
            "epoch_s": per_step * self.steps_per_epoch,
            "total_steps": total_steps,
            "total_s": per_step
            * (min(total_steps, self.steps_per_epoch) if cached else total_steps),
            "peak_mib": peak,
            "peak_kind": "CUDA allocated" if self.device.type == "cuda" else "process RSS",
            "device": str(self.device),
            "skipped": list(self.skipped),
        }

    def fit(self) -> TrainResult:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        from . import distributed

        c = self.config
        if self.dist.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
        if self.dist.is_main:
            from .checkpoint import recover

            for name in ("last", "best"):
                recover(self.output / name)  # what a kill in the middle of a save left
        distributed.barrier()
        if c.resume and (self.output / "last" / "trainer_state.json").is_file():
            self._load_state(self.output / "last")
            self.console.print(
                f"resumed from {self.output / 'last'} at epoch {self.epoch + 1}, "
                f"step {self.global_step}"
            )
        if self.dist.is_main:
            (self.output / "train_config.json").write_text(json.dumps(c.to_dict(), indent=2))
        if self.can_cache_features():
            self._load_features()
        self.console.print(
            f"training {c.method} on {len(self.train_set.samples)} images "
            f"({', '.join(self.train_set.subsets)}; layout {self.train_set.layout}); "
            f"validation: {len(self.val_set.samples) if self.val_set else 'none'}; "
            f"backbone {self.backbone.source}; {self.steps_per_epoch} steps/epoch"
            + (f"; {self.dist.world} ranks" if self.dist.enabled else "")
        )
        log = _Log(self.output) if self.dist.is_main else _NoLog()
        stop = False
        try:
            while self.epoch < c.epochs and not stop:
                self.transform.set_epoch(self.epoch)
                order = self._order(self.epoch)[: self.steps_per_epoch * c.batch_size]
                remaining = order[self.step_in_epoch * c.batch_size :]
                with Progress(
                    TextColumn(f"epoch {self.epoch + 1}/{c.epochs}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TextColumn("{task.fields[status]}"),
                    TimeElapsedColumn(),
                    TimeRemainingColumn(),
                    console=self.console,
                ) as progress:
                    task = progress.add_task(
                        "train", total=self.steps_per_epoch, completed=self.step_in_epoch, status=""
                    )
                    stop = self._run_epoch(remaining, log, progress, task)
                if stop:
                    break
                self.epoch += 1
                self.step_in_epoch = 0
                self._end_of_epoch(log)
            if stop:
                self._save_main("last")
        finally:
            log.close()
        if self.dist.enabled:
            import torch.distributed as dist

            every: list[Any] = [None] * self.dist.world
            dist.all_gather_object(every, self.skipped)
            self.skipped = sorted({tuple(item) for part in every for item in part})
        report = {"skipped": self.skipped, "global_step": self.global_step, "best": self.best}
        if self.dist.is_main:
            (self.output / "train_report.json").write_text(json.dumps(report, indent=2))
        distributed.barrier()
        if self.skipped:
            self.console.print(
                f"[yellow]{len(self.skipped)} unreadable files skipped[/yellow] "
                f"(listed in {self.output / 'train_report.json'})"
            )
        return TrainResult(
            self.output, self.global_step, self.epoch, self.best, self.skipped, self.history
        )

    def _save_main(self, name: str) -> None:
        """Write a checkpoint from rank 0 while the others wait."""
        from . import distributed

        if self.dist.is_main:
            self.save(name)
        distributed.barrier()

    def _run_epoch(self, indices: list[int], log: Any, progress: Any, task: Any) -> bool:
        import contextlib

        c = self.config
        micro_batches = iter(
            self._feature_batches(indices) if self.features is not None else self._loader(indices)
        )
        samples = self.train_set.samples
        while self.step_in_epoch < self.steps_per_epoch:
            start = time.perf_counter()
            self.model.train()
            self.optimizer.zero_grad(set_to_none=True)
            totals = {"loss": 0.0, "ce": 0.0, "dis": 0.0, "correct": 0, "n": 0}
            for k in range(c.grad_accum):
                batch = next(micro_batches)
                for index, error in batch["errors"]:
                    self.skipped.append((samples[index].path, error))
                if not len(batch["labels"]) and not self.dist.enabled:
                    continue
                if "embeds" in batch:  # cached frozen features (one process, see features.py)
                    with self._autocast():
                        out = self.model.forward_from_embeds(batch["embeds"].to(self.device))
                    labels = batch["labels"].to(self.device)
                    logits, embeds = out.logits, out.image_embeds.float()
                    losses = self.loss_fn(logits, embeds, out.text_embeds.float(), labels)
                    self.scaler.scale(losses.loss / c.grad_accum).backward()
                    self._add_totals(totals, losses, logits, labels)
                    continue
                pixels = batch["pixel_values"].to(self.device, non_blocking=True)
                labels = batch["labels"].to(self.device)
                empty = not len(labels)
                if empty:  # every image of this rank's share was unreadable: run one blank
                    size = self.backbone.preprocess.image_size  # image through the model, count
                    pixels = torch.zeros(1, 3, size, size, device=self.device)  # none of it,
                    # and still join the collectives (gathers, gradient all-reduce)
                if self.adversary is not None and not empty:
                    with self._autocast():  # the attack sees the model as the step does
                        seed = (c.seed * 1_000_003 + self.global_step) * 64 + k
                        pixels = self.adversary(self.model, pixels, labels, seed)
                sync = contextlib.nullcontext()
                if self.dist.enabled and k < c.grad_accum - 1:
                    sync = self.forward.no_sync()  # all-reduce once, after the last micro-batch
                with sync:
                    with self._autocast():
                        out = self.forward(pixels)
                        logits, embeds = out.logits, out.image_embeds.float()
                        if empty:
                            logits, embeds = logits[:0], embeds[:0]
                        losses = self.loss_fn(logits, embeds, out.text_embeds.float(), labels)
                    # With several ranks each loss is this rank's share of the global batch's
                    # loss; DDP averages gradients, so scale by the world size to sum the shares.
                    self.scaler.scale(losses.loss * self.dist.world / c.grad_accum).backward()
                self._add_totals(totals, losses, logits, labels)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.step_in_epoch += 1
            self.global_step += 1
            rate = totals["n"] / max(time.perf_counter() - start, 1e-9)
            acc = totals["correct"] / max(totals["n"], 1)
            progress.update(
                task, advance=1, status=f"loss {totals['loss']:.3f} acc {acc:.2f} {rate:.0f} img/s"
            )
            if self.global_step % c.log_every == 0 or self.step_in_epoch == self.steps_per_epoch:
                entry = {
                    "type": "train",
                    "epoch": self.epoch + 1,
                    "step": self.global_step,
                    "loss": totals["loss"],
                    "ce": totals["ce"],
                    "dis": totals["dis"],
                    "accuracy": acc,
                    "lr": self.scheduler.get_last_lr()[0],
                    "images_per_s": rate,
                }
                log.write(entry)
                self.history.append(entry)
            if c.save_every and self.global_step % c.save_every == 0:
                self._save_main("last")
            if c.max_steps is not None and self.global_step >= c.max_steps:
                return True
        return False

    def _add_totals(self, totals: dict, losses: Any, logits: Any, labels: Any) -> None:
        """Add a micro-batch's loss terms and accuracy, summed over ranks, to the step's."""
        from . import distributed

        grad_accum = self.config.grad_accum
        parts = distributed.all_sum(
            [
                losses.loss.item(),
                losses.ce.item(),
                losses.dis.item(),
                float((logits.argmax(1) == labels).sum()),
                float(len(labels)),
            ],
            self.device,
        )
        totals["loss"] += parts[0] / grad_accum
        totals["ce"] += parts[1] / grad_accum
        totals["dis"] += parts[2] / grad_accum
        totals["correct"] += int(parts[3])
        totals["n"] += int(parts[4])

    def _end_of_epoch(self, log: Any) -> None:
        from . import distributed

        if self.dist.is_main:
            self._validate_and_save(log)
        distributed.barrier()

    def _validate_and_save(self, log: Any) -> None:
        from .evaluate import score_samples, subset_metrics

        entry: dict[str, Any] = {"type": "val", "epoch": self.epoch, "step": self.global_step}
        if self.val_set is not None:
            scores = score_samples(
                self.model,
                self.val_set.samples,
                batch_size=self.micro,
                workers=self.config.workers,
                cache_dir=self.output / "features" if self.can_cache_features() else None,
            )
            table = subset_metrics(scores, self.model.threshold)
            overall = table.get("mean") or next(iter(table.values()))
            entry.update({"metrics": table, "skipped": len(scores.errors)})
            value = overall.get(self.config.select_metric, float("nan"))
            self.console.print(
                f"epoch {self.epoch}: validation {self.config.select_metric} {value:.4f}"
            )
            if self.best is None or value > self.best["value"]:
                self.best = {
                    "epoch": self.epoch,
                    "metric": self.config.select_metric,
                    "value": value,
                }
                self.save("best")
        log.write(entry)
        self.history.append(entry)
        self.save("last")


class _NoLog:
    """What ranks other than 0 log: nothing."""

    def write(self, entry: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class _Log:
    """Appends entries to OUTPUT/log.jsonl, and to TensorBoard when it is installed."""

    def __init__(self, output: Path) -> None:
        self.handle = (output / "log.jsonl").open("a")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(output / "tensorboard"))
        except ImportError:  # tensorboard is optional
            self.tb = None

    def write(self, entry: dict[str, Any]) -> None:
        self.handle.write(json.dumps(entry) + "\n")
        self.handle.flush()
        if self.tb is None:
            return
        step = entry["step"]
        if entry["type"] == "train":
            for key in ("loss", "ce", "dis", "accuracy", "lr", "images_per_s"):
                self.tb.add_scalar(f"train/{key}", entry[key], step)
        for subset, metrics in entry.get("metrics", {}).items():
            for key, value in metrics.items():
                if key != "n":
                    self.tb.add_scalar(f"val/{subset}/{key}", value, step)

    def close(self) -> None:
        self.handle.close()
        if self.tb is not None:
            self.tb.close()


def _cap_per_class(image_set: Any, cap: int | None, seed: int) -> Any:
    if not cap:
        return image_set
    rng = random.Random(seed)
    by_class: dict[int, list] = {}
    for sample in image_set.samples:
        by_class.setdefault(sample.label, []).append(sample)
    kept = []
    for label in sorted(by_class):
        group = by_class[label]
        kept += group if len(group) <= cap else rng.sample(group, cap)
    return dataclasses.replace(image_set, samples=kept)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _jsonable(value: Any) -> Any:
    return [_jsonable(v) for v in value] if isinstance(value, tuple | list) else value


def _tupled(value: Any) -> Any:
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value
