"""Few-shot adaptation: a trained detector learns a new generator from K images per class,
measures what it forgot, and refuses to save past a forgetting budget (docs/adapt.md).

One adaptation: draw K shots of each class of DATA (in a binary layout each generator subset
counts as a class), describe the known images (``--old-data``, or the feature memory an earlier
adaptation stored beside the checkpoint), learn the new generators by a mode (``prototype``:
:mod:`.adapt_prototype`; ``prompt``: :mod:`.adapt_prompt`), score held-out old and new images
before and after, and write a normal checkpoint with its lineage, the before/after table and the
updated feature memory. Attribution models also get the open-set test ("unknown generator").
"""

from __future__ import annotations

import datetime
import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.layouts import ImageSet, Sample, find_images
from ..evaluation.metrics import binary_metrics
from ..evaluation.scores import backed_off, score_samples
from ..model.adapters import OpenSet, whitener
from ..model.checkpoint import read_config, resolve, save_pretrained
from ..model.config import ModelConfig
from ..model.device import resolve_device
from ..model.mirage import MiraGe, load_pretrained
from . import adapt_prototype

MODES = ("prototype", "prompt")
MEMORY_NAME = "adapt_memory.safetensors"
REPORT_NAME = "adapt_report"
_REAL_NAMES = ("real", "0_real", "nature", "natural", "authentic")
_GENERIC_FAKE = ("fake", "1_fake", "ai", "synthetic", "generated")


@dataclass
class AdaptConfig:
    """What one adaptation is given; every field is a flag of ``miragedet adapt``."""

    shots: int = 16  # images per class of DATA (the headline case)
    mode: str = "prototype"  # chosen by measurement (docs/adapt.md)
    seed: int = 0
    name: str | None = None  # the new generator's name; default: DATA's subset or class name
    layout: str = "auto"
    split: str | None = "train"
    old_data: str | None = None
    old_split: str | None = "val"
    memory: int = 256  # known images per class kept as the feature memory (our choice)
    held_out: int = 200  # images per class scored before/after (our choice)
    max_forgetting: float = 1.0  # accuracy points the old data may lose (the default)
    force: bool = False
    fpr_budget: float = adapt_prototype.FPR_BUDGET
    unknown_rate: float = 0.05  # false-unknown rate on held-out known images (open set)
    steps: int = 100  # prompt mode
    lr: float = 0.02  # prompt mode
    batch_size: int = 64
    device: str = "auto"  # a CUDA GPU when present, else the CPU (model.device.resolve_device)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.shots < 1:
            raise ValueError(f"--shots must be at least 1, got {self.shots}")
        if not 0 <= self.fpr_budget < 1 or not 0 < self.unknown_rate < 1:
            raise ValueError("--fpr-budget must be in [0, 1) and --unknown-rate in (0, 1)")


@dataclass
class AdaptResult:
    model: MiraGe
    table: list[dict[str, Any]]
    forgetting: float | None
    saved: bool
    lineage: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


class AdaptError(ValueError):
    """Adaptation cannot go ahead: bad data, too few images, a contradiction."""


def source_of(sample: Sample, image_set: ImageSet) -> str:
    """What made an image: "real", or its generator (a class name, or the subset of a binary
    layout's fake folder)."""
    if sample.label == 0:
        return "real"
    name = image_set.classes[sample.label]
    return sample.subset if name.lower() in _GENERIC_FAKE else name


def check_roles(image_set: ImageSet, what: str) -> None:
    """Class 0 is the real class, and no other class looks real (a "real" folder labelled fake
    contradicts every detector)."""
    names = image_set.classes
    if names[0].lower() not in _REAL_NAMES:
        raise AdaptError(f"{what}: its class 0 is {names[0]!r}, not a real class")
    wrong = [n for n in names[1:] if n.lower() in _REAL_NAMES]
    if wrong:
        raise AdaptError(
            f"{what}: class {wrong[0]!r} looks real but is labelled fake; rename the folder or "
            "fix the manifest's labels"
        )


def draw_shots(
    image_set: ImageSet, k: int, seed: int
) -> tuple[dict[str, list[Sample]], dict[str, list[Sample]]]:
    """K shots of every source (real and each generator), seeded, and the rest held out."""
    groups: dict[str, list[Sample]] = {}
    for sample in image_set.samples:
        groups.setdefault(source_of(sample, image_set), []).append(sample)
    for label, name in enumerate(image_set.classes):
        if not any(s.label == label for s in image_set.samples):
            raise AdaptError(f"class {name!r} has no images under {image_set.root}")
    shots, rest = {}, {}
    for source, samples in sorted(groups.items()):
        if len(samples) < k:
            raise AdaptError(
                f"{source!r} has {len(samples)} images, fewer than --shots {k}: lower --shots "
                f"to at most {len(samples)} or add images"
            )
        order = sorted(samples, key=lambda s: s.path)
        random.Random(f"{seed}:{source}").shuffle(order)
        shots[source], rest[source] = order[:k], order[k:]
    if len(shots) < 2 or "real" not in shots:
        raise AdaptError(f"{image_set.root} needs real images and images of the new generator")
    return shots, rest


def data_hash(samples: list[Sample]) -> str:
    """SHA-256 of the shots' bytes, in order: which images taught the adaptation."""
    digest = hashlib.sha256()
    for sample in samples:
        digest.update(Path(sample.path).read_bytes())
    return digest.hexdigest()[:16]


@torch.inference_mode()
def features_of(
    model: MiraGe, samples: list[Sample], batch_size: int
) -> tuple[torch.Tensor, list[int], list[tuple[str, str]]]:
    """Adaptation features of ``samples``: (rows, indices of the readable ones, skipped)."""
    from ..data.dataset import ImageDataset, collate

    preprocess = model.backbone.preprocess
    dataset = ImageDataset(samples, lambda image, i: preprocess(image))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    rows, kept, skipped = [], [], []
    model.eval()
    device = model.clip.logit_scale.device

    def features(pixels: torch.Tensor) -> torch.Tensor:
        return model.adaptation_features(pixels.to(device))[1].float().cpu()

    features = backed_off(features, batch_size, device, torch.cat)  # a GPU out of memory: halved
    for batch in loader:
        skipped += [(samples[i].path, e) for i, e in batch["errors"]]
        if len(batch["indices"]):
            rows.append(features(batch["pixel_values"]))
            kept += batch["indices"].tolist()
    return (torch.cat(rows) if rows else torch.zeros(0, 0)), kept, skipped


@dataclass
class Memory:
    """Features of known images with the index of their source (0 is "real")."""

    features: torch.Tensor
    labels: torch.Tensor
    sources: list[str]
    backbone: str = ""  # the weights fingerprint of the backbone that made the features

    def add(self, features: torch.Tensor, sources: list[str]) -> Memory:
        names = list(self.sources)
        for s in sources:
            if s not in names:
                names.append(s)
        labels = torch.tensor([names.index(s) for s in sources], dtype=torch.long)
        if not len(self.features):
            return Memory(features, labels, names, self.backbone)
        features = torch.cat([self.features, features])
        return Memory(features, torch.cat([self.labels, labels]), names, self.backbone)

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        tensors = {"features": self.features.half().contiguous(), "labels": self.labels}
        metadata = {"sources": json.dumps(self.sources), "backbone": self.backbone}
        save_file(tensors, str(path), metadata=metadata)

    @classmethod
    def load(cls, directory: Path, backbone: str) -> Memory | None:
        """The memory stored beside checkpoint ``directory``; refused when another backbone
        (``backbone``: a weights fingerprint) made it."""
        from safetensors import safe_open

        path = directory / MEMORY_NAME
        if not path.is_file():
            return None
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata()
            if metadata.get("backbone") != backbone:
                raise AdaptError(
                    f"{path} was made with another backbone ({metadata.get('backbone')}, not "
                    f"{backbone}): adapt a checkpoint of that backbone, or pass --old-data"
                )
            features = handle.get_tensor("features").float()
            labels = handle.get_tensor("labels")
            return cls(features, labels, json.loads(metadata["sources"]), backbone)


def split_known(samples: list[Sample], image_set: ImageSet, keep: int, held: int, seed: int):
    pool, held_out = [], []
    groups: dict[str, list[Sample]] = {}
    for sample in samples:
        groups.setdefault(source_of(sample, image_set), []).append(sample)
    for source, group in sorted(groups.items()):
        group = sorted(group, key=lambda s: s.path)
        random.Random(f"{seed}:{source}").shuffle(group)
        pool += group[:keep]
        held_out += group[keep : keep + held]
    return pool, held_out


def accuracy_on(model: MiraGe, samples: list[Sample], batch_size: int) -> dict[str, float]:
    if not samples:
        return {}
    scores = score_samples(model, samples, batch_size=batch_size, workers=None)  # threads
    ok = scores.ok
    out = binary_metrics(scores.labels[ok], scores.fake_prob[ok], model.threshold)
    return {"accuracy": out["accuracy"], "real": out["real_accuracy"], "fake": out["fake_accuracy"]}


@torch.inference_mode()
def memory_accuracy(model: MiraGe, memory: Memory) -> dict[str, float]:
    """Real/fake accuracy of ``model`` on the feature memory's images (real is source 0)."""
    model.eval()
    out = model.forward_from_features(memory.features.to(model.clip.logit_scale.device))
    fake_prob = 1.0 - out.probs[:, 0].float().cpu().numpy()
    labels = (memory.labels != 0).long().numpy()
    result = binary_metrics(labels, fake_prob, model.threshold)
    return {k: result[v] for k, v in (("accuracy", "accuracy"), ("real", "real_accuracy"),
                                      ("fake", "fake_accuracy"))}  # fmt: skip


def adapt(
    base: str | Path,
    data: str | Path,
    output: str | Path,
    config: AdaptConfig,
    on_stage: Any = None,
) -> AdaptResult:
    """Adapt checkpoint ``base`` to the generator(s) of ``data`` and write ``output``, unless
    the old accuracy drops by more than ``config.max_forgetting`` points (``force`` saves all
    the same). Nothing is written before every check has passed."""
    say = on_stage or (lambda text: None)
    base_dir = resolve(base)
    base_config = read_config(base_dir)
    base_meta = base_config.get("metadata") or {}
    fingerprint = base_config["backbone"]["fingerprint"]["weights"]
    device = resolve_device(config.device)
    model = load_pretrained(base_dir, device=device)
    # the base as it was: prototype mode builds a new model on the same frozen backbone and
    # leaves this one untouched; prompt mode (below) tunes in place, so it loads its own copy
    before = model
    image_set = find_images(data, config.layout, split=config.split)
    check_roles(image_set, f"DATA {data}")
    shots, rest = draw_shots(image_set, config.shots, config.seed)
    generators = [s for s in shots if s != "real"]
    if config.name:
        if len(generators) > 1:
            raise AdaptError(f"--name names one generator; DATA has {generators}")
        shots[config.name] = shots.pop(generators[0])
        rest[config.name] = rest.pop(generators[0])
        generators = [config.name]
    # a detector (Real/Fake) learns "this generator is fake"; an attribution model gains a class
    binary = len(model.classes) == 2 and model.classes[1].lower() in _GENERIC_FAKE
    skipped = list(image_set.skipped)

    # the known images: --old-data (+ what earlier adaptations stored), or the stored memory
    memory = Memory.load(base_dir, fingerprint)
    old_held: list[Sample] = []
    pool: list[Sample] = []
    if config.old_data:
        old_set = find_images(config.old_data, config.layout, split=config.old_split)
        check_roles(old_set, f"--old-data {config.old_data}")
        pool, old_held = split_known(
            old_set.samples, old_set, config.memory, config.held_out, config.seed
        )
        old_held = old_held or pool  # too few images to hold some out: measure on the pool
        say(f"features of {len(pool)} known images (--old-data)")
        feats, kept, bad = features_of(model, pool, config.batch_size)
        skipped += bad
        empty = torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
        known = Memory(*empty, ["real"], fingerprint)
        known = known.add(feats, [source_of(pool[i], old_set) for i in kept])
        if memory is not None:
            known = known.add(memory.features, [memory.sources[i] for i in memory.labels])
    elif memory is not None:
        known = memory
        say(f"using the feature memory stored with {base_dir.name} ({len(memory.features)} images)")
    else:
        raise AdaptError(
            "no known images to protect: pass --old-data (held-out images of the classes the "
            "model knows); an adapted checkpoint then keeps them as its feature memory"
        )

    shot_list = [s for source in sorted(shots) for s in shots[source]]
    shot_sources = [src for src in sorted(shots) for _ in shots[src]]
    say(f"features of {len(shot_list)} shots")
    shot_feats, kept, bad = features_of(model, shot_list, config.batch_size)
    skipped += bad
    shot_sources = [shot_sources[i] for i in kept]
    new_held = [s for g in generators for s in rest[g][: config.held_out]]
    new_held += rest["real"][: config.held_out]

    if config.mode == "prototype":
        say("fitting the prototypes")
        model = _prototype(model, known, shot_feats, shot_sources, generators, binary, config)
    else:
        from . import adapt_prompt

        if not binary:
            raise AdaptError("--mode prompt adapts binary detectors; use --mode prototype")
        if not pool:
            raise AdaptError("--mode prompt replays old images: pass --old-data")
        say(f"tuning the prompts ({config.steps} steps)")
        before = load_pretrained(base_dir, device=device)
        adapt_prompt.tune(model, before, shot_list, pool, config)
    known = known.add(shot_feats, shot_sources)
    if len(model.classes) > 2:
        say("calibrating the unknown-generator test")
        calibration = features_of(model, old_held + new_held, config.batch_size)[0]
        model = fit_open_set(model, known, calibration, config.unknown_rate)

    say("scoring held-out images before and after")
    table = [
        {
            "data": what,
            "n": len(samples),
            "before": accuracy_on(before, samples, config.batch_size),
            "after": accuracy_on(model, samples, config.batch_size),
        }
        for what, samples in (
            (f"old ({config.old_data})", old_held),
            (f"new ({', '.join(generators)})", new_held),
        )
    ]
    if not config.old_data:  # no old images: the memory's features stand in for them
        table[0] = {
            "data": "old (feature memory, in-sample)",
            "n": len(memory.features),
            "before": memory_accuracy(before, memory),
            "after": memory_accuracy(model, memory),
        }
    old = table[0]
    forgetting = None
    if old["before"] and old["after"]:
        forgetting = 100 * (old["before"]["accuracy"] - old["after"]["accuracy"])
    entry = {
        "base": base_dir.name,
        "backbone_fingerprint": fingerprint,
        "data": str(data),
        "data_hash": data_hash(shot_list),
        "generators": generators,
        "shots": config.shots,
        "seed": config.seed,
        "mode": config.mode,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "forgetting_points": forgetting,
        "table": table,
    }
    lineage = [*base_meta.get("lineage", []), entry]
    saved = forgetting is None or forgetting <= config.max_forgetting or config.force
    result = AdaptResult(model, table, forgetting, saved, lineage, skipped)
    if saved:

        def write_extra(staging: Path) -> None:
            known.save(staging / MEMORY_NAME)
            report = {"table": table, "forgetting_points": forgetting, "lineage": lineage}
            (staging / f"{REPORT_NAME}.json").write_text(json.dumps(report, indent=2) + "\n")
            (staging / f"{REPORT_NAME}.md").write_text(report_markdown(table, forgetting, config))

        metadata = {**base_meta, "lineage": lineage}
        save_pretrained(model, output, metadata=metadata, write_extra=write_extra)
    return result


def _prototype(
    model: MiraGe,
    known: Memory,
    shot_feats: torch.Tensor,
    shot_sources: list[str],
    generators: list[str],
    binary: bool,
    config: AdaptConfig,
) -> MiraGe:
    """One adapter per new generator (:mod:`.adapt_prototype`), added to the model's."""
    reals = torch.tensor([s == "real" for s in shot_sources])
    memory = known.add(shot_feats[reals], ["real"] * int(reals.sum()))
    specs, weights, biases = list(model.config.adapters), [], []
    if model.adapters is not None:
        weights, biases = list(model.adapters.weight), list(model.adapters.bias)
    for generator in generators:
        mask = torch.tensor([s == generator for s in shot_sources])
        if not mask.any():
            raise AdaptError(
                f"none of the {generator!r} shots could be read (see the skipped list)"
            )
        weight, bias = adapt_prototype.fit_adapter(
            memory.features, memory.labels, shot_feats[mask], config.fpr_budget
        )
        specs.append({"name": generator, "class": model.classes[1] if binary else generator})
        weights.append(weight)
        biases.append(torch.tensor(bias))
    new = rebuild(model, adapters=specs)
    with torch.no_grad():  # the model's rows may sit on its GPU, the new ones on the CPU
        new.adapters.weight.copy_(torch.stack([w.cpu() for w in weights]))
        new.adapters.bias.copy_(torch.stack([b.cpu() for b in biases]))
    return new


def rebuild(model: MiraGe, **changes: Any) -> MiraGe:
    """The same model with a changed config (adapters, open set), trained tensors carried over."""
    config = ModelConfig.from_dict({**model.config.to_dict(), **changes})
    new = MiraGe(model.backbone, config).to(model.clip.logit_scale.device)
    targets = {**dict(new.named_parameters()), **dict(new.named_buffers())}
    with torch.no_grad():
        for key, value in model.trainable_state_dict().items():
            if key in targets and targets[key].shape == value.shape:
                targets[key].copy_(value)
    new.threshold = model.threshold
    return new


def fit_open_set(
    model: MiraGe, known: Memory, calibration: torch.Tensor, unknown_rate: float
) -> MiraGe:
    """Class means of every class, the shrunk within-class covariance of the known images, and
    the distance beyond which ``unknown_rate`` of the ``calibration`` images (held-out images of
    the known classes) would be called an unknown generator."""
    classes = model.classes
    names = [s if s in classes else classes[0] if s == "real" else "" for s in known.sources]
    class_of = torch.tensor([classes.index(names[i]) if names[i] else -1 for i in known.labels])
    keep = class_of >= 0
    feats, class_of = known.features[keep], class_of[keep]
    centred = adapt_prototype.within_class(feats, class_of)
    basis, scale = whitener(centred, adapt_prototype.shrinkage(centred))
    means = torch.stack(
        [
            feats[class_of == c].mean(dim=0) if (class_of == c).any() else feats.mean(dim=0)
            for c in range(len(classes))
        ]
    )
    probe = OpenSet(len(classes), len(basis), feats.shape[1])
    with torch.no_grad():
        probe.means.copy_(means)
        probe.basis.copy_(basis)
        probe.scale.fill_(scale)
    distances = probe.distance(calibration if len(calibration) else feats).numpy()
    threshold = float(np.quantile(distances, 1.0 - unknown_rate))
    new = rebuild(model, open_set={"rank": len(basis), "threshold": threshold})
    with torch.no_grad():
        new.open_set.means.copy_(means)
        new.open_set.basis.copy_(basis)
        new.open_set.scale.fill_(scale)
    return new


def report_markdown(
    table: list[dict[str, Any]], forgetting: float | None, config: AdaptConfig
) -> str:
    """The before/after table as Markdown."""

    def cell(values: dict[str, float], key: str) -> str:
        value = values.get(key) if values else None
        return "-" if value is None or value != value else f"{100 * value:.1f}"

    lines = [
        f"# Adaptation ({config.mode}, {config.shots} shots per class, seed {config.seed})",
        "",
        "| data | images | accuracy before | after | real before | after | fake before | after |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in table:
        b, a = row["before"], row["after"]
        lines.append(
            f"| {row['data']} | {row['n']} | {cell(b, 'accuracy')} | {cell(a, 'accuracy')} | "
            f"{cell(b, 'real')} | {cell(a, 'real')} | {cell(b, 'fake')} | {cell(a, 'fake')} |"
        )
    if forgetting is not None:
        lines += [
            "",
            f"Forgetting on the old data: {forgetting:+.1f} points "
            f"(guard: {config.max_forgetting:g}).",
        ]
    return "\n".join(lines) + "\n"
