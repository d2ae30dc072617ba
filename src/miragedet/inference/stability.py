"""Verdict stability: does the verdict survive the ways images are delivered on the web?

The same photo can be called real at full size and AI after a resize, a JPEG re-save or a crop.
Besides the image as given, a few realistic re-deliveries are scored in the same batch; when they
disagree about the verdict, or the score lies within ``margin`` of the threshold, the label is
"uncertain" instead of a confident real/fake. :func:`score_stable` scores them through the
scoring pipeline's decode pool and row builder.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..data import degrade

#: Our default re-deliveries: thumbnails at 512 and 256 px (short side), a JPEG re-save at
#: quality 75 (typical of social networks), and an 80% centre crop.
DEFAULT_VARIANTS = ("downscale:512", "downscale:256", "jpeg:75", "crop:0.8")
DEFAULT_MARGIN = 0.05

#: One re-delivery, with the strengths that make sense: a thumbnail of 16-9999 px (short side),
#: JPEG quality 1-100, a centre crop of 0.1-1 of each side, a blur or noise sigma of 0-99.99.
#: The same expression checks ``--stability-variants`` and types the server's query parameter.
VARIANT = (
    r"(downscale:(1[6-9]|[2-9]\d|[1-9]\d{2,3})"
    r"|jpeg:([1-9]\d?|100)"
    r"|crop:(0?\.[1-9]\d{0,3}|1(\.0{1,4})?)"
    r"|(blur|noise):\d{1,2}(\.\d{1,2})?)"
)
#: Comma-separated variants (the server's ``stability_variants``).
VARIANTS_PATTERN = rf"^{VARIANT}(,{VARIANT})*$"


def centre_crop(image: Image.Image, fraction: float) -> Image.Image:
    w, h = image.size
    cw, ch = max(1, round(w * fraction)), max(1, round(h * fraction))
    left, top = (w - cw) // 2, (h - ch) // 2
    return image.crop((left, top, left + cw, top + ch))


@dataclass(frozen=True)
class Stability:
    """Which re-deliveries to score, and how close to the threshold counts as uncertain."""

    variants: tuple[str, ...] = DEFAULT_VARIANTS
    margin: float = DEFAULT_MARGIN

    def __post_init__(self) -> None:
        for spec in self.variants:
            if not re.fullmatch(VARIANT, spec):
                raise ValueError(
                    f"stability variant {spec!r}: expected downscale:PX (16-9999), jpeg:Q "
                    "(1-100), crop:FRACTION (0.1-1), blur:SIGMA or noise:SIGMA (0-99.99)"
                )
        if not 0 <= self.margin < 0.5:
            raise ValueError(f"margin must be in [0, 0.5), got {self.margin}")

    @classmethod
    def parse(cls, variants: str | None = None, margin: float | None = None) -> Stability:
        chosen = (
            tuple(v.strip() for v in variants.split(",") if v.strip())
            if variants
            else DEFAULT_VARIANTS
        )
        return cls(chosen, DEFAULT_MARGIN if margin is None else float(margin))

    def redeliver(self, image: Image.Image) -> list[tuple[str, Image.Image]]:
        """The image as given, then each re-delivery (a thumbnail larger than the image is the
        image itself)."""
        out = [("as given", image)]
        for spec in self.variants:
            kind, _, value = spec.partition(":")
            if kind == "downscale":
                size = int(float(value))
                out.append(
                    (spec, degrade.downsample(image, size) if min(image.size) > size else image)
                )
            elif kind == "crop":
                out.append((spec, centre_crop(image, float(value))))
            else:
                out.append((spec, degrade.Degradation(kind, float(value))(image)))
        return out

    def inputs(
        self, image: Image.Image, preprocess: Any, view: Any
    ) -> tuple[list[Any], list[Any] | None]:
        """The model inputs (3, S, S) of the image as given and of each re-delivery, in order: one
        each, and None (resize view); or each one's tiles (views of their pixels, not copies),
        and their :class:`~miragedet.data.views.Tiles` (tiles and crop views: each re-delivery
        is tiled and aggregated like the image as given)."""
        images = [im for _, im in self.redeliver(image)]
        if view.kind == "resize":
            return [preprocess(im) for im in images], None
        from ..data.views import inputs

        tiled = [inputs(im, preprocess, view) for im in images]
        return [t for tiles in tiled for t in tiles.pixels], tiled

    def verdict(self, names: list[str], fake_probs: np.ndarray, threshold: float) -> dict[str, Any]:
        """Spread of the scores, whether the verdicts agree, and whether to say "uncertain"."""
        p = np.asarray(fake_probs, dtype=np.float64)
        verdicts = p >= threshold
        disagree = bool(verdicts.any() and not verdicts.all())
        near = bool(abs(p[0] - threshold) < self.margin)
        reasons = []
        if disagree:
            flipped = [n for n, v in zip(names, verdicts, strict=True) if v != verdicts[0]]
            reasons.append("the verdict changes under " + ", ".join(flipped))
        if near:
            reasons.append(f"the score is within {self.margin:g} of the threshold")
        return {
            "scores": {n: float(v) for n, v in zip(names, p, strict=True)},
            "spread": float(p.max() - p.min()),
            "verdicts_agree": not disagree,
            "uncertain": disagree or near,
            "reason": "; ".join(reasons) or None,
        }


def score_stable(
    detector: Any,
    inputs: Iterable[Any],
    provenance: bool,
    stability: Stability,
    read: Callable[[Any], Any] | None = None,
) -> Iterator[Any]:
    """Each readable still image scored with its re-deliveries, as a
    :class:`~miragedet.inference.prediction.Prediction` ("uncertain" when the verdicts disagree
    or sit near the threshold). Decoding, re-delivering and preprocessing run in the detector's
    decode pool ahead of the forward (:func:`miragedet.inference.pipeline.staged_batches`); on a
    GPU, with the resize view, the k + 1 inputs of several images share one forward of up to the
    detector's batch size. ``read``: as for :func:`miragedet.inference.pipeline.score_stream`."""
    import torch

    from ..data.video import video_kind
    from ..provenance.verdict import read_provenance
    from .outcomes import failed, stable
    from .pipeline import safe, staged_batches
    from .prediction import describe, to_image

    resize = detector.view.kind == "resize"

    def work(pair: tuple[int, Any]) -> tuple[str, Any, Any]:
        """(source, error text or (the tensors to forward, the re-deliveries' Tiles),
        provenance)."""
        source = describe(pair[1], pair[0])
        found = safe(prepare)(pair)  # one odd input is its own error row
        return (source, found, None) if isinstance(found, str) else (source, *found)

    def prepare(pair: tuple[int, Any]) -> Any:
        item = pair[1] if read is None else read(pair[1])
        if video_kind(item) is not None:  # as the server and evaluate's degradations say
            return "stability applies to still images only (docs/video.md): score clips without it"
        # an error: the row's text (safe)
        pixels, tiled = stability.inputs(to_image(item), detector.preprocess, detector.view)
        sets = [torch.stack(pixels)] if tiled is None else [t.pixels for t in tiled]
        found = (
            read_provenance(item, detector.trust_anchors, detector.watermarks)
            if provenance
            else None
        )
        return (sets, tiled), found

    def forward(sets: list[Any]) -> np.ndarray:
        """The rows of one image's inputs, in parts of the batch size (``forward_tensors``); the
        resize view's stack as it is, the re-deliveries' tiles joined only now."""
        return detector.forward_tensors(sets[0] if len(sets) == 1 else torch.cat(sets))

    per_batch = max(1, detector.batch_size // (len(stability.variants) + 1)) if resize else 1
    for _, done in staged_batches(enumerate(inputs), work, per_batch, detector.decode_threads):
        to_forward = [r[1][0] for r in done if not isinstance(r[1], str)]
        # a CPU keeps one forward per image (its scores stay bit for bit those of before); a
        # GPU runs one forward for the chunk (resize view), then each image's k + 1 rows
        rows_of: Iterator[np.ndarray] = (forward(sets) for sets in to_forward)
        if to_forward and resize and detector.device.type == "cuda":
            stacks = [sets[0] for sets in to_forward]
            joint = detector.forward_tensors(torch.cat(stacks))
            rows_of = iter(np.split(joint, np.cumsum([len(t) for t in stacks])[:-1]))
        for source, prepared, found in done:
            if isinstance(prepared, str):
                yield failed(source, detector.threshold, prepared)
                continue
            prediction = stable(source, next(rows_of), prepared[1], detector.view,
                                detector.classes, detector.threshold, stability)  # fmt: skip
            if found is not None:
                prediction.set_provenance(found)
            yield prediction
