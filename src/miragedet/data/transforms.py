"""Image preprocessing: the backbone's own CLIP settings, with Pillow, numpy and torch only.

A checkpoint carries its :class:`Preprocess`, and every scorer reads it from there: a detector fed
images prepared differently from training gives confident nonsense.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass
class Preprocess:
    """CLIP preprocessing: resize the short side, centre-crop, scale to [0, 1], normalise."""

    image_size: int = 224
    resize_shortest: int = 224
    mean: tuple[float, ...] = field(default=OPENAI_CLIP_MEAN)
    std: tuple[float, ...] = field(default=OPENAI_CLIP_STD)
    resample: str = "bicubic"

    def __post_init__(self) -> None:
        self.mean = tuple(float(x) for x in self.mean)
        self.std = tuple(float(x) for x in self.std)
        if self.resample not in _RESAMPLE:
            raise ValueError(f"resample must be one of {sorted(_RESAMPLE)}, got {self.resample!r}")
        if self.resize_shortest < self.image_size:
            raise ValueError("resize_shortest must be >= image_size (the crop)")

    @classmethod
    def from_image_processor(cls, processor: Any) -> Preprocess:
        """Read the settings of a transformers ``CLIPImageProcessor``."""
        size = processor.size
        shortest = size.get("shortest_edge") if hasattr(size, "get") else size.shortest_edge
        crop = processor.crop_size
        crop_h = crop.get("height") if hasattr(crop, "get") else crop.height
        resample = {v: k for k, v in _RESAMPLE.items()}.get(
            Image.Resampling(int(processor.resample)), "bicubic"
        )
        return cls(
            image_size=int(crop_h),
            resize_shortest=int(shortest or crop_h),
            mean=tuple(processor.image_mean),
            std=tuple(processor.image_std),
            resample=resample,
        )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        return cls(**data)

    # -- the transform itself ------------------------------------------------------------------

    def resize_crop(self, image: Image.Image) -> Image.Image:
        """Resize the short side to ``resize_shortest`` and centre-crop ``image_size`` (RGB)."""
        image = image.convert("RGB") if image.mode != "RGB" else image
        w, h = image.size
        short = min(w, h)
        if short != self.resize_shortest:
            # Same rounding as transformers' get_resize_output_image_size.
            long = int(self.resize_shortest * max(w, h) / short)
            new_w, new_h = (self.resize_shortest, long) if w <= h else (long, self.resize_shortest)
            image = image.resize((new_w, new_h), _RESAMPLE[self.resample])
            w, h = image.size
        s = self.image_size
        if (w, h) != (s, s):
            left, top = (w - s) // 2, (h - s) // 2
            image = image.crop((left, top, left + s, top + s))
        return image

    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        """A (3, S, S) float32 tensor of a resized and cropped RGB image, normalised."""
        array = np.asarray(image, dtype=np.float32) / 255.0
        array = (array - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.to_tensor(self.resize_crop(image))

    def batch(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Stack a list of images into one (N, 3, S, S) batch."""
        return torch.stack([self(im) for im in images])
