"""Image preprocessing: the backbone's own CLIP settings, with Pillow, numpy and torch only.

A checkpoint carries its :class:`Preprocess`, and every scorer reads it from there: a detector fed
images prepared differently from training gives confident nonsense.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image, ImageEnhance

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
    #: The view the checkpoint was trained with (miragedet.data.views): "resize" (CLIP's, the
    #: paper's) or "crop" (random native-resolution crops; such a checkpoint scores with tiles).
    view: str = "resize"

    def __post_init__(self) -> None:
        self.mean = tuple(float(x) for x in self.mean)
        self.std = tuple(float(x) for x in self.std)
        if self.resample not in _RESAMPLE:
            raise ValueError(f"resample must be one of {sorted(_RESAMPLE)}, got {self.resample!r}")
        if self.resize_shortest < self.image_size:
            raise ValueError("resize_shortest must be >= image_size (the crop)")
        if self.view not in ("resize", "crop"):
            raise ValueError(f"a checkpoint's training view is resize or crop, not {self.view!r}")

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

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the resize of the short side to ``resize_shortest``."""
        short = min(width, height)
        if short == self.resize_shortest:
            return width, height
        # Same rounding as transformers' get_resize_output_image_size.
        long = int(self.resize_shortest * max(width, height) / short)
        return (self.resize_shortest, long) if width <= height else (long, self.resize_shortest)

    def centre_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """The (left, top, right, bottom) of the centre crop of a resized image."""
        s = self.image_size
        left, top = (width - s) // 2, (height - s) // 2
        return left, top, left + s, top + s

    def resize_crop(self, image: Image.Image) -> Image.Image:
        """Resize the short side to ``resize_shortest`` and centre-crop ``image_size`` (RGB)."""
        image = image.convert("RGB") if image.mode != "RGB" else image
        size = self.resized_size(*image.size)
        if size != image.size:
            image = image.resize(size, _RESAMPLE[self.resample])
        if image.size != (self.image_size, self.image_size):
            image = image.crop(self.centre_box(*image.size))
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


@dataclass
class Augment:
    """Training augmentations (paper appendix H.2), each applied with its own probability.

    The paper lists the operations but not their probabilities or ranges; the ``robust`` preset
    holds our choices. Randomness is drawn from a generator seeded by (seed, epoch, sample
    index), so a run is reproducible with any number of workers and after a resume.
    """

    p_resized_crop: float = 0.0
    crop_scale: tuple[float, float] = (0.5, 1.0)
    p_rotation: float = 0.0
    max_degrees: float = 15.0
    p_blur: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 3.0)
    p_jpeg: float = 0.0
    jpeg_quality: tuple[int, int] = (30, 95)
    p_color: float = 0.0
    brightness: float = 0.2
    contrast: float = 0.2
    p_grayscale: float = 0.0
    p_noise: float = 0.0
    noise_sigma: tuple[float, float] = (1.0, 8.0)
    seed: int = 0

    PRESETS: ClassVar[dict[str, dict[str, float]]] = {
        "none": {},
        "robust": {
            "p_resized_crop": 0.5,
            "p_rotation": 0.2,
            "p_blur": 0.2,
            "p_jpeg": 0.3,
            "p_color": 0.3,
            "p_grayscale": 0.05,
            "p_noise": 0.1,
        },
    }

    @classmethod
    def preset(cls, name: str, seed: int = 0) -> Augment:
        if name not in cls.PRESETS:
            raise ValueError(f"unknown augmentation preset {name!r}; choose {sorted(cls.PRESETS)}")
        return cls(**cls.PRESETS[name], seed=seed)

    @property
    def active(self) -> bool:
        return any(
            getattr(self, f.name) > 0 for f in dataclasses.fields(self) if f.name.startswith("p_")
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class TrainTransform:
    """Augment (optionally) and preprocess one image; callable as ``transform(image, index)``."""

    def __init__(
        self, preprocess: Preprocess, augment: Augment | None = None, view: str = "resize"
    ) -> None:
        self.preprocess = preprocess
        self.augment = augment or Augment()
        self.view = view  # "crop": a random model-size crop at native resolution, no resize
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, image: Image.Image, index: int = 0) -> torch.Tensor:
        from . import degrade

        a = self.augment
        if not a.active and self.view == "resize":
            return self.preprocess(image)
        rng = np.random.default_rng([a.seed, self.epoch, index])
        if rng.random() < a.p_rotation:
            image = image.rotate(
                rng.uniform(-a.max_degrees, a.max_degrees), resample=Image.Resampling.BILINEAR
            )
        if self.view == "crop":  # native pixels: a resize would average the traces away
            image = self._native_crop(image, rng)
        elif rng.random() < a.p_resized_crop:
            image = self._resized_crop(image, rng)
        else:
            image = self.preprocess.resize_crop(image)
        if rng.random() < a.p_blur:
            image = degrade.blur(image, rng.uniform(*a.blur_sigma))
        if rng.random() < a.p_jpeg:
            image = degrade.jpeg(image, int(rng.integers(a.jpeg_quality[0], a.jpeg_quality[1] + 1)))
        if rng.random() < a.p_color:
            image = ImageEnhance.Brightness(image).enhance(
                1 + rng.uniform(-a.brightness, a.brightness)
            )
            image = ImageEnhance.Contrast(image).enhance(1 + rng.uniform(-a.contrast, a.contrast))
        if rng.random() < a.p_grayscale:
            image = image.convert("L").convert("RGB")
        if rng.random() < a.p_noise:
            image = degrade.noise(image, rng.uniform(*a.noise_sigma), seed=int(rng.integers(2**31)))
        return self.preprocess.to_tensor(image)

    def _native_crop(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        """A model-size crop at a random place on the 8-pixel grid, at native resolution (an
        image smaller than that is scaled up first, as the tiles view does: :mod:`.views`)."""
        from .views import at_least_one_tile

        s = self.preprocess.image_size
        image = image.convert("RGB") if image.mode != "RGB" else image
        image = at_least_one_tile(image, self.preprocess)
        w, h = image.size
        # on the 8-pixel grid: JPEG's 8x8 blocks and generators' 2/4/8-pixel upsampling grids
        # then sit at the same phase in every crop, and in the tiles that score it (views.ALIGN)
        left = 8 * int(rng.integers(0, (w - s) // 8 + 1))
        top = 8 * int(rng.integers(0, (h - s) // 8 + 1))
        return image.crop((left, top, left + s, top + s))

    def _resized_crop(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        w, h = image.size
        area = w * h * rng.uniform(*self.augment.crop_scale)
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw = round(min(w, np.sqrt(area * ratio)))
        ch = round(min(h, np.sqrt(area / ratio)))
        left = int(rng.integers(0, w - cw + 1))
        top = int(rng.integers(0, h - ch + 1))
        s = self.preprocess.image_size
        return image.crop((left, top, left + cw, top + ch)).resize(
            (s, s), _RESAMPLE[self.preprocess.resample]
        )


class EvalTransform:
    """Preprocess only (optionally after a degradation); callable as ``transform(image, index)``."""

    def __init__(self, preprocess: Preprocess) -> None:
        self.preprocess = preprocess

    def __call__(self, image: Image.Image, index: int = 0) -> torch.Tensor:
        return self.preprocess(image)
