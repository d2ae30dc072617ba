"""Degradations for robustness sweeps (paper section 6.4): JPEG, blur, down-sampling, scaling,
noise.

Each takes and returns an RGB Pillow image; the model's own preprocessing then brings the result
to its input size, as when a degraded image is scored in the wild.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    """Re-encode as JPEG at ``quality`` (1-95, Pillow's scale) and decode again."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    decoded = Image.open(buffer)
    decoded.load()
    return decoded.convert("RGB")


def blur(image: Image.Image, sigma: float) -> Image.Image:
    """Gaussian blur with standard deviation ``sigma`` pixels (Pillow's GaussianBlur radius)."""
    return image.filter(ImageFilter.GaussianBlur(radius=float(sigma))) if sigma > 0 else image


def downsample(image: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is ``size`` pixels (bicubic), keeping the aspect ratio."""
    w, h = image.size
    scale = size / min(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    return image.resize(new, Image.Resampling.BICUBIC)


def scale(image: Image.Image, factor: float) -> Image.Image:
    """Resize by ``factor`` on both sides (bicubic): ``scale:0.5`` halves the image, as a
    platform's resize of an upload does."""
    w, h = image.size
    new = (max(1, round(w * factor)), max(1, round(h * factor)))
    return image.resize(new, Image.Resampling.BICUBIC)


def noise(image: Image.Image, sigma: float, seed: int = 0) -> Image.Image:
    """Add Gaussian noise of ``sigma`` grey levels (0-255 scale), seeded."""
    rng = np.random.default_rng(seed)
    array = np.asarray(image.convert("RGB"), dtype=np.float64)
    array = array + rng.normal(0.0, float(sigma), size=array.shape)
    return Image.fromarray(np.clip(np.round(array), 0, 255).astype(np.uint8), "RGB")


KINDS = {"jpeg": jpeg, "blur": blur, "downsample": downsample, "scale": scale, "noise": noise}
#: The paper's settings (section 6.4): down-sampling to 112 / 64 px, JPEG QF 65 / 30, blur 3 / 5.
PAPER = ("downsample:112", "downsample:64", "jpeg:65", "jpeg:30", "blur:3", "blur:5")


@dataclass(frozen=True)
class Degradation:
    """One degradation at one strength, written ``kind:value`` (e.g. ``jpeg:65``)."""

    kind: str
    value: float

    @classmethod
    def parse(cls, text: str) -> Degradation:
        kind, _, value = text.partition(":")
        if kind not in KINDS or not value:
            raise ValueError(
                f"degradation {text!r}: expected KIND:VALUE with KIND one of "
                f"{', '.join(KINDS)} (e.g. jpeg:65, blur:3, downsample:112, scale:0.5, noise:5)"
            )
        return cls(kind, float(value))

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.value:g}"

    def __call__(self, image: Image.Image, seed: int = 0) -> Image.Image:
        if self.kind == "noise":
            return noise(image, self.value, seed)
        if self.kind in ("jpeg", "downsample"):
            return KINDS[self.kind](image, int(self.value))
        return KINDS[self.kind](image, self.value)


def parse_degradations(specs: list[str] | tuple[str, ...]) -> list[Degradation]:
    """Parse ``kind:value`` specs; ``paper`` expands to the paper's six settings."""
    out: list[Degradation] = []
    for spec in specs:
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            out += (
                [Degradation.parse(p) for p in PAPER]
                if part == "paper"
                else [Degradation.parse(part)]
            )
    return out


@dataclass(frozen=True)
class Alignment:
    """Re-encode every image the same way (``jpeg:Q`` or ``png``), whatever its class.

    Used to take the file format out of the comparison (`--align`): when reals are JPEGs and
    fakes PNGs, a detector may have learned the format. PNG is lossless, so ``png`` leaves the
    decoded pixels as they are (JPEG traces already in an image stay); ``jpeg:Q`` gives every
    image the same compression.
    """

    format: str
    quality: int | None = None

    @classmethod
    def parse(cls, text: str) -> Alignment:
        kind, _, value = text.partition(":")
        if kind == "png" and not value:
            return cls("png")
        if kind == "jpeg" and value.isdigit() and 1 <= int(value) <= 100:
            return cls("jpeg", int(value))
        raise ValueError(f"--align {text!r}: expected jpeg:QUALITY (1-100) or png")

    @property
    def name(self) -> str:
        return f"align:{self.format}" + (f":{self.quality}" if self.quality else "")

    def encode(self, image: Image.Image) -> bytes:
        buffer = io.BytesIO()
        if self.format == "jpeg":
            image.convert("RGB").save(buffer, format="JPEG", quality=self.quality)
        else:
            image.save(buffer, format="PNG")
        return buffer.getvalue()

    def __call__(self, image: Image.Image, seed: int = 0) -> Image.Image:
        decoded = Image.open(io.BytesIO(self.encode(image)))
        decoded.load()
        return decoded.convert("RGB")
