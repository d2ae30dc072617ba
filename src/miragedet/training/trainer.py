"""The Trainer: a training run over a dataset layout.

It reads a dataset layout, trains with the paper's recipe (SGD, cosine), validates each
epoch, logs to JSONL, writes ``last`` and ``best`` checkpoints atomically and resumes exactly
(model, optimizer, scheduler, memory bank, RNG and position in the epoch).
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..model.losses import MiraGeLoss
from ..model.mirage import MiraGe
from .config import OptimConfig, TrainConfig, TrainResult
from .dry_run import dry_run
from .input import TrainInput, Waited, draft_size, share, speed, usable_workers
from .log import JsonlLog, NoLog
from .state import load_state, write_state
from .step import cosine_lr, make_optimizer


class Trainer:
    """Train a MiraGe model (or a baseline) on a dataset layout. See :class:`TrainConfig`."""

    def __init__(self, config: TrainConfig, backbone: Any = None, console: Any = None) -> None:
        from rich.console import Console

        from ..data.layouts import find_images
        from ..data.transforms import Augment, TrainTransform
        from ..model import distributed
        from ..model.backbone import load_backbone
        from ..model.device import enable_tf32, resolve_device

        self.config = c = config
        self.dist, self.device = distributed.setup(resolve_device(c.device))
        from .precision import training_precision

        amp = training_precision(c.amp, self.device)  # warns for an emulated bf16/fp16 on CPU
        #: The autocast precision resolved from ``--amp`` (none | bf16 | fp16) and why.
        self.amp, self.amp_reason = amp.precision, amp.reason
        #: fp32 on a GPU that has TF32: its note for the header (None: CPU, older GPU, autocast)
        self.tf32 = enable_tf32(self.device) if self.amp == "none" else None
        if not self.dist.is_main:
            console = Console(quiet=True)  # rank 0 alone reports, evaluates and saves
        self.console = console or Console()
        #: loader workers: --workers (else a default for the device) capped by the CPUs here
        self.workers, note = usable_workers(c.workers, self.device)
        if note:
            self.console.print(note)
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
        from ..data.video_samples import expand_videos

        train_set = expand_videos(train_set, c.frames_per_video)  # clips: their sampled frames
        self.train_set = _cap_per_class(train_set, c.max_per_class, c.seed)
        self.val_set = self._find_val(find_images)
        if self.val_set is not None:
            self.val_set = expand_videos(self.val_set, c.frames_per_video)
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
            from ..inference.attacks import Adversary, Attack

            self.adversary = Adversary(
                Attack.parse(c.adv_train), c.adv_fraction, self.backbone.preprocess
            )
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp == "fp16" and self.device.type == "cuda"
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
        self.input: TrainInput | None = None  # built at the first pass, kept for the run
        #: The pass in progress (or last): images per second and the share of its wall time
        #: spent waiting for batches (0..1); the epoch's record and TrainResult carry them.
        self.speed: dict[str, float] | None = None

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
        from ..inference import features

        c = self.config
        samples = self.train_set.samples
        path = features.cache_path(
            self.output / "features", "train", samples, self.backbone, amp=self.amp, align=c.align
        )

        def batches():
            return self._loader(list(range(len(samples))))

        def encode(pixels: torch.Tensor) -> torch.Tensor:
            with self._autocast():
                return self.model.encode_image(pixels.to(self.device))

        self.features, self.feature_errors, self.features_computed = features.load_or_compute(
            path, batches, encode, len(samples)
        )
        self.input = None  # epochs read the features: the image loader's workers can end
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
        from ..data.layouts import LayoutError

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
        write_state(self, directory)

    def _load_state(self, directory: Path) -> None:
        load_state(self, directory)

    def save(self, name: str) -> Path:
        from ..model.checkpoint import save_pretrained

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

    def _loader(self, indices: list[int], following: list[int] | None = None) -> Any:
        """The micro-batches of ``indices`` (this rank's share), from the run's one loader;
        ``following``: the next epoch's indices, which the workers may start on early."""
        if self.input is None:
            from ..data.dataset import ImageDataset

            image_transform = None
            if self.config.align:
                from ..data.degrade import Alignment

                alignment = Alignment.parse(self.config.align)

                def image_transform(image, index, a=alignment):
                    return a(image)

            draft = draft_size(self.transform, self.config.align)
            dataset = ImageDataset(self.train_set.samples, self.transform, image_transform, draft)
            self.input = TrainInput(
                dataset, self.micro, self.workers, self.device, self.config.seed
            )
        # Rank r takes positions r, r + W, ... of the global order (DistributedSampler's split),
        # so each global batch is the same set of images whatever the number of ranks.
        mine = slice(self.dist.rank, None, self.dist.world)
        return self.input.batches(
            indices[mine], self.epoch, None if following is None else following[mine]
        )

    def _autocast(self) -> Any:
        if self.amp == "none":
            return torch.autocast(self.device.type, enabled=False)
        dtype = torch.bfloat16 if self.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def dry_run(self, steps: int = 3) -> dict[str, Any]:
        """Time ``steps`` real optimizer steps and estimate the run (:mod:`.dry_run`)."""
        return dry_run(self, steps)

    def fit(self) -> TrainResult:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        from ..model import distributed
        from ..model.device import describe

        c = self.config
        if self.dist.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
        if self.dist.is_main:
            from ..model.checkpoint import recover

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
        frames = [s for s in self.train_set.samples if s.frame is not None]
        clips = len({s.path for s in frames})
        self.console.print(
            f"training {c.method} on {len(self.train_set.samples)} images "
            + (f"({len(frames)} of them frames of {clips} clips) " if clips else "")
            + f"({', '.join(self.train_set.subsets)}; layout {self.train_set.layout}); "
            f"validation: {len(self.val_set.samples) if self.val_set else 'none'}; "
            f"backbone {self.backbone.source}; {self.steps_per_epoch} steps/epoch; "
            f"amp {self.amp}"
            + (f" ({self.amp_reason})" if c.amp == "auto" else "")
            + f"; device {describe(self.device)}"
            + (f" ({self.tf32})" if self.tf32 else "")
            + (f"; {self.dist.world} ranks" if self.dist.enabled else "")
        )
        log = JsonlLog(self.output) if self.dist.is_main else NoLog()
        stop = False
        try:
            while self.epoch < c.epochs and not stop:
                self.transform.set_epoch(self.epoch)
                order = self._order(self.epoch)[: self.steps_per_epoch * c.batch_size]
                remaining = order[self.step_in_epoch * c.batch_size :]
                following = None
                if self.epoch + 1 < c.epochs:
                    following = self._order(self.epoch + 1)[: self.steps_per_epoch * c.batch_size]
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
                    stop = self._run_epoch(remaining, log, progress, task, following)
                if stop:
                    break
                self.epoch += 1
                self.step_in_epoch = 0
                self._end_of_epoch(log)
            if stop:
                self._save_main("last")
        finally:
            log.close()
            self.input = None  # the loader's workers end with it
        if self.dist.enabled:
            import torch.distributed as dist

            every: list[Any] = [None] * self.dist.world
            dist.all_gather_object(every, self.skipped)
            self.skipped = sorted({tuple(item) for part in every for item in part})
        report = {"skipped": self.skipped, "global_step": self.global_step, "best": self.best}
        if self.dist.is_main:
            (self.output / "train_report.json").write_text(json.dumps(report, indent=2))
            from .known import keep_memories

            # what the model knows, for `adapt` without --old-data: held-out, else training images
            known = self.val_set if self.val_set is not None else self.train_set
            keep_memories(self.model, known, self.output, c.batch_size, c.seed, self.device)
        distributed.barrier()
        if self.skipped:
            self.console.print(
                f"[yellow]{len(self.skipped)} unreadable files skipped[/yellow] "
                f"(listed in {self.output / 'train_report.json'})"
            )
        return TrainResult(
            self.output,
            self.global_step,
            self.epoch,
            self.best,
            self.skipped,
            self.history,
            **(self.speed or {}),
        )

    def _save_main(self, name: str) -> None:
        """Write a checkpoint from rank 0 while the others wait."""
        from ..model import distributed

        if self.dist.is_main:
            self.save(name)
        distributed.barrier()

    def _run_epoch(
        self,
        indices: list[int],
        log: Any,
        progress: Any,
        task: Any,
        following: list[int] | None = None,
    ) -> bool:
        import contextlib

        c = self.config
        began = time.perf_counter()  # the wait for the first batch (workers starting) counts
        micro_batches = Waited(
            self._feature_batches(indices)
            if self.features is not None
            else self._loader(indices, following),
            self.device,
        )
        samples = self.train_set.samples
        images = 0
        while self.step_in_epoch < self.steps_per_epoch:
            start, waited = time.perf_counter(), micro_batches.seconds
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
                        out = self.model.forward_from_embeds(batch["embeds"])
                    labels = batch["labels"]
                    logits, embeds = out.logits, out.image_embeds.float()
                    losses = self.loss_fn(logits, embeds, out.text_embeds.float(), labels)
                    self.scaler.scale(losses.loss / c.grad_accum).backward()
                    self._add_totals(totals, losses, logits, labels)
                    continue
                pixels, labels = batch["pixel_values"], batch["labels"]  # on the device
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
            now = time.perf_counter()
            rate = totals["n"] / max(now - start, 1e-9)
            images += totals["n"]
            self.speed = speed(images, now - began, micro_batches.seconds)
            acc = totals["correct"] / max(totals["n"], 1)
            progress.update(
                task,
                advance=1,
                status=f"loss {totals['loss']:.3f} acc {acc:.2f} "
                f"{self.speed['images_per_s']:.0f} img/s, "
                f"data wait {self.speed['data_wait_share']:.0%}",
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
                    "data_wait_share": share(micro_batches.seconds - waited, now - start),
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
        from ..model import distributed

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
        from ..model import distributed

        if self.dist.is_main:
            self._validate_and_save(log)
        distributed.barrier()

    def _validate_and_save(self, log: Any) -> None:
        import contextlib

        from ..evaluation.metrics import subset_metrics
        from ..evaluation.scores import score_samples

        # the epoch's record: its validation and its training speed (this process's pass)
        entry: dict[str, Any] = {"type": "val", "epoch": self.epoch, "step": self.global_step}
        entry.update(self.speed or {})
        if self.val_set is not None:
            cache = self.output / "features" if self.can_cache_features() else None
            # on a GPU at the training precision (bf16 runs ViT-L/14 7x faster than fp32 on an
            # H200); on a CPU, and for features kept on disk, in fp32 as before
            on_gpu = self.device.type == "cuda" and cache is None
            with self._autocast() if on_gpu else contextlib.nullcontext():
                scores = score_samples(
                    self.model,
                    self.val_set.samples,
                    batch_size=self.micro,
                    workers=self.workers,
                    cache_dir=cache,
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
