"""Scores: a model's class probabilities for every sample of a labelled set (errors kept, never
dropped), through any view, from cached frozen features where they apply; scores.csv."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from ..data.dataset import ImageDataset, collate
from ..data.degrade import Degradation
from ..data.layouts import Sample
from ..data.transforms import Preprocess
from ..data.views import View
from ..inference.tiles import aggregate


@dataclass
class Scores:
    """Per-image outputs of a model over a list of samples (errors kept, never dropped)."""

    samples: list[Sample]
    probs: np.ndarray  # (n, C); NaN rows where the image could not be read
    errors: dict[int, str] = field(default_factory=dict)
    #: Adapted attribution models, resize view: each image's distance to the nearest known class
    #: (NaN where unreadable; model/adapters.py); None otherwise.
    distance: np.ndarray | None = None

    @property
    def ok(self) -> np.ndarray:
        return ~np.isnan(self.probs[:, 0])

    @property
    def fake_prob(self) -> np.ndarray:
        return 1.0 - self.probs[:, 0]

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=int)

    @property
    def subsets(self) -> np.ndarray:
        return np.array([s.subset for s in self.samples], dtype=object)


@torch.inference_mode()
def score_samples(
    model: Any,
    samples: list[Sample],
    batch_size: int = 64,
    workers: int | None = 0,
    degradation: Degradation | None = None,
    preprocess: Preprocess | None = None,
    device: torch.device | str | None = None,
    on_batch: Callable[[int], None] | None = None,
    cache_dir: str | os.PathLike | None = None,
    view: View | None = None,
) -> Scores:
    """Class probabilities of every sample; unreadable images get NaN and an error message.

    With ``cache_dir``, a model whose image features are frozen (zero-shot, linear probe, text
    prompts) scores from features computed once and kept there
    (:mod:`miragedet.inference.features`): a rerun, another head on the same backbone or the next
    epoch's validation reads them back. With a ``crop``/``tiles`` ``view`` each image is scored from
    its native-resolution tiles
    (:mod:`miragedet.data.views`), ``batch_size`` images' tiles at a time."""
    from ..data.video import is_video_file

    clips = [i for i, s in enumerate(samples) if s.frame is None and is_video_file(s.path)]
    if clips:  # video clips are scored as clips, one label each (docs/video.md)
        return _with_videos(model, samples, clips, degradation, view, on_batch, locals())
    from ..inference.threads import decode_threads_for

    preprocess = preprocess or model.backbone.preprocess
    device = torch.device(device) if device is not None else model.clip.logit_scale.device
    processes = 2 if workers is None else workers  # the DataLoader paths: worker processes
    if view is not None and view.kind != "resize":
        return _score_tiles(
            model, samples, batch_size, processes, degradation, preprocess, device, on_batch, view
        )
    if cache_dir is not None and degradation is None and model.image_features_frozen:
        scores = _score_cached(model, samples, batch_size, processes, preprocess, device, cache_dir)
        if on_batch is not None:
            on_batch(len(samples))
        return scores
    threads = decode_threads_for(device) if workers is None else workers
    return _score_stream(model, samples, batch_size, threads, degradation, preprocess, device,
                         on_batch)  # fmt: skip


def _score_stream(
    model: Any,
    samples: list[Sample],
    batch_size: int,
    workers: int,
    degradation: Degradation | None,
    preprocess: Preprocess,
    device: torch.device,
    on_batch: Callable[[int], None] | None,
) -> Scores:
    """:func:`score_samples` with the resize view, through the scoring pipeline's stages
    (:mod:`miragedet.inference.pipeline`): ``workers`` decode threads run batches ahead of the
    forward; on a GPU, JPEGs are decoded there unless a degradation needs the decoded image."""
    from ..data.gpu_decode import gpu_decoder
    from ..inference.pipeline import (
        device_batch,
        gpu_job,
        in_parts,
        overlap,
        staged_batches,
    )

    decoder = None
    if degradation is None:  # a degradation needs the decoded image
        decoder, _ = gpu_decoder(device, preprocess)
    image_transform = None
    if degradation is not None:

        def image_transform(image, index, d=degradation):
            return d(image, seed=index)

    dataset = ImageDataset(samples, lambda im, i: preprocess(im), image_transform)

    def on_cpu(pair: tuple[int, Sample]) -> Any:
        """The sample's input, or its error text, as the DataLoader path gave them."""
        item = dataset[pair[0]]
        return item["pixel_values"] if item["error"] is None else item["error"]

    def work(pair: tuple[int, Sample]) -> Any:
        job = gpu_job(decoder, pair[1].path) if pair[1].frame is None else None
        return job if job is not None else on_cpu(pair)

    probs = np.full((len(samples), len(model.classes)), np.nan)
    errors: dict[int, str] = {}
    distance = np.full(len(samples), np.nan) if getattr(model, "open_set", None) else None
    model.eval()
    batches = staged_batches(enumerate(samples), work, batch_size, max(1, workers))

    # a GPU out-of-memory error halves the forward's batch, said once (the Detector's back-off)
    owner = SimpleNamespace(batch_size=batch_size, device=device, notify=None)

    def stage(entry: tuple[list[Any], list[Any]]) -> Any:
        return device_batch(decoder, device, entry[0], entry[1], on_cpu, owner=owner)

    def forward(part: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        out = model(part.to(device))
        far = None if distance is None else out.distance.float().cpu().numpy()
        return out.probs.float().cpu().numpy(), far

    for (chunk, _), batch in overlap(batches, stage, device, side=decoder is not None):
        errors.update({chunk[k][0]: r for k, r in batch.errors.items()})
        if batch.good:
            indices = np.array([chunk[k][0] for k in batch.good])
            parts = in_parts(forward, batch.ready(owner), owner)
            probs[indices] = np.concatenate([p for p, _ in parts])
            if distance is not None:
                distance[indices] = np.concatenate([d for _, d in parts])
        batch = parts = None  # its pixels go while the next batch is staged
        if on_batch is not None:
            on_batch(len(chunk))
    return Scores(samples, probs, errors, distance)


def _with_videos(
    model: Any,
    samples: list[Sample],
    clips: list[int],
    degradation: Degradation | None,
    view: View | None,
    on_batch: Callable[[int], None] | None,
    options: dict[str, Any],
) -> Scores:
    """Scores of a set holding video clips: the stills as usual, each clip by its sampled frames
    through the Detector's clip path (frames aggregated by the view's rule; the temporal head
    when the model has one). Degradations apply to still images only: a clip in a degraded run
    is an error row saying so."""
    from ..inference.detector import Detector

    chosen = set(clips)
    stills = [i for i in range(len(samples)) if i not in chosen]
    probs = np.full((len(samples), len(model.classes)), np.nan)
    errors: dict[int, str] = {}
    distance = None
    if stills:
        kwargs = {k: options[k] for k in ("batch_size", "workers", "preprocess", "device",
                                          "cache_dir")}  # fmt: skip
        part = score_samples(model, [samples[i] for i in stills], degradation=degradation,
                             on_batch=on_batch, view=view, **kwargs)  # fmt: skip
        probs[stills] = part.probs
        errors.update({stills[k]: e for k, e in part.errors.items()})
        if part.distance is not None:
            distance = np.full(len(samples), np.nan)
            distance[stills] = part.distance
    if degradation is not None:
        errors.update({i: "degradations apply to still images only (docs/video.md)"
                       for i in clips})  # fmt: skip
    else:
        # device None: where evaluate put the model (never moved to another device)
        detector = Detector(model, precision="fp32", view=view, batch_size=options["batch_size"],
                            device=None)  # fmt: skip
        scored = detector.score([samples[i].path for i in clips], provenance=False, stability=False)
        for i, prediction in zip(clips, scored, strict=True):
            if prediction.ok:
                probs[i] = [prediction.probs[c] for c in detector.classes]
            else:
                errors[i] = prediction.error
    if on_batch is not None:
        on_batch(len(clips))
    return Scores(samples, probs, errors, distance)


def backed_off(forward: Callable[[torch.Tensor], Any], batch_size: int, device: torch.device,
               join: Callable[[list[Any]], Any]) -> Callable[[torch.Tensor], Any]:  # fmt: skip
    """``forward`` with the scoring pipeline's out-of-memory back-off
    (:func:`~miragedet.inference.pipeline.in_parts`): a CUDA out-of-memory error halves the
    inputs per call for the rest of the pass, said once; the parts' outputs ``join``ed."""
    from ..inference.pipeline import in_parts

    owner = SimpleNamespace(batch_size=batch_size, device=device, notify=None)
    return lambda pixels: join(in_parts(forward, pixels, owner))


def _score_tiles(
    model: Any,
    samples: list[Sample],
    batch_size: int,
    workers: int,
    degradation: Degradation | None,
    preprocess: Preprocess,
    device: torch.device,
    on_batch: Callable[[int], None] | None,
    view: View,
) -> Scores:
    """:func:`score_samples` with the crop/tiles view: each image's tiles are forwarded in
    chunks of ``batch_size`` tiles (the tiles of several images share them), then aggregated."""
    from ..data.views import inputs
    from ..inference.tiles import forward_tiles

    def image_transform(image, index, d=degradation):
        return d(image, seed=index) if d is not None else image

    def tiles_of(image, index):
        return inputs(image, preprocess, view).pixels

    def collate_items(items: list[dict[str, Any]]) -> dict[str, Any]:
        good = [it for it in items if it["error"] is None]
        return {
            "tiles": [it["pixel_values"] for it in good],
            "indices": [it["index"] for it in good],
            "errors": [(it["index"], it["error"]) for it in items if it["error"] is not None],
        }

    dataset = ImageDataset(samples, tiles_of, image_transform)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_items
    )
    probs = np.full((len(samples), len(model.classes)), np.nan)
    errors: dict[int, str] = {}
    model.eval()

    def forward(pixels: torch.Tensor) -> np.ndarray:
        return model(pixels.to(device)).probs.float().cpu().numpy()

    forward = backed_off(forward, batch_size, device, np.concatenate)
    for batch in loader:
        errors.update(dict(batch["errors"]))
        if batch["indices"]:
            per_image = forward_tiles(forward, batch["tiles"], batch_size)
            for index, rows in zip(batch["indices"], per_image, strict=True):
                probs[index] = aggregate(rows, view.aggregate)
        if on_batch is not None:
            on_batch(len(batch["indices"]) + len(batch["errors"]))
    return Scores(samples, probs, errors)


def _score_cached(
    model: Any,
    samples: list[Sample],
    batch_size: int,
    workers: int,
    preprocess: Preprocess,
    device: torch.device,
    cache_dir: str | os.PathLike,
) -> Scores:
    from ..inference import features

    path = features.cache_path(
        cache_dir,
        "eval",
        samples,
        model.backbone,
        preprocess=preprocess.to_dict(),  # the one scored with, when not the backbone's own
        dtype=str(model.clip.logit_scale.dtype),
    )

    def batches():
        dataset = ImageDataset(samples, lambda im, i: preprocess(im))
        return torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate
        )

    model.eval()
    embeds, errors, computed = features.load_or_compute(
        path,
        batches,
        backed_off(
            lambda pixels: model.encode_image(pixels.to(device)), batch_size, device, torch.cat
        ),
        len(samples),
    )
    model.features_computed = computed  # how many images were encoded (0: read back)
    probs = np.full((len(samples), len(model.classes)), np.nan)
    good = [i for i in range(len(samples)) if i not in errors]
    if good:
        image = embeds[good].to(device, model.clip.logit_scale.dtype)
        probs[good] = model.forward_from_embeds(image).probs.float().cpu().numpy()
    return Scores(samples, probs, errors)


def write_scores_csv(scores: Scores, path: str | os.PathLike, classes: list[str]) -> None:
    """One row per image: path, subset, label, p_fake, per-class probabilities, error."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["path", "subset", "label", "p_fake", *[f"p_{c}" for c in classes], "error"]
        )
        for i, sample in enumerate(scores.samples):
            row = scores.probs[i]
            values = ["" if np.isnan(v) else f"{v:.8g}" for v in row]
            p_fake = "" if np.isnan(row[0]) else f"{1.0 - row[0]:.8g}"
            writer.writerow(
                [
                    sample.path,
                    sample.subset,
                    sample.label,
                    p_fake,
                    *values,
                    scores.errors.get(i, ""),
                ]
            )


def read_scores_csv(path: str | os.PathLike) -> tuple[list[Sample], np.ndarray, dict[int, str]]:
    """Read back a scores.csv: samples, probabilities (NaN where unreadable), errors."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    prob_cols = [k for k in (rows[0] if rows else {}) if k.startswith("p_") and k != "p_fake"]
    samples = [Sample(r["path"], int(r["label"]), r["subset"]) for r in rows]
    probs = np.array([[float(r[c]) if r[c] else np.nan for c in prob_cols] for r in rows])
    errors = {i: r["error"] for i, r in enumerate(rows) if r["error"]}
    return samples, probs.reshape(len(rows), len(prob_cols)), errors
