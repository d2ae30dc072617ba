"""Verdict stability: does the verdict survive the ways images are delivered on the web?

The same photo can be called real at full size and AI after a resize, a JPEG re-save or a crop.
Besides the image as given, a few realistic re-deliveries are scored in the same batch; when they
disagree about the verdict, or the score lies within ``margin`` of the threshold, the label is
"uncertain" instead of a confident real/fake.
"""

from __future__ import annotations

import re
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
    ) -> tuple[Any, list[Any] | None]:
        """The model inputs of the image as given and of each re-delivery, in order: one each,
        stacked, and None (resize view); or each one's tiles, concatenated, and their
        :class:`~miragedet.data.views.Tiles` (tiles and crop views: each re-delivery is tiled
        and aggregated like the image as given)."""
        import torch

        images = [im for _, im in self.redeliver(image)]
        if view.kind == "resize":
            return torch.stack([preprocess(im) for im in images]), None
        from ..data.views import inputs

        tiled = [inputs(im, preprocess, view) for im in images]
        return torch.cat([t.pixels for t in tiled]), tiled

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
