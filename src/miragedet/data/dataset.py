"""Decode images safely and feed them to PyTorch, one bad file never stopping the rest."""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from .layouts import Sample

#: Images above this many pixels are refused (decompression bombs); 2 x 89.5 MP by default.
MAX_PIXELS = 179_000_000


class ImageDecodeError(ValueError):
    """An input could not be decoded into an RGB image.

    ``kind`` says why: "format" (not an image, or a format Pillow cannot read), "size" (too
    many pixels: a decompression bomb), "corrupt" (truncated or damaged), "missing" (no file).
    """

    def __init__(self, message: str, kind: str = "corrupt") -> None:
        super().__init__(message)
        self.kind = kind


def load_image(
    source: str | os.PathLike | bytes | Image.Image,
    max_pixels: int = MAX_PIXELS,
    draft_size: int | None = None,
) -> Image.Image:
    """Open an image as RGB: EXIF orientation applied, first frame of animations, 16-bit scaled.

    ``draft_size`` lets the JPEG decoder reduce scale while decoding (never below that size),
    which is much faster for large photos. Raises :class:`ImageDecodeError` with a readable
    reason for anything that is not a decodable image.
    """
    try:
        if isinstance(source, Image.Image):
            image = source
        else:
            stream = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(stream)
            w, h = image.size
            if w * h > max_pixels:
                raise ImageDecodeError(
                    f"image too large: {w}x{h} pixels (limit {max_pixels})", "size"
                )
            if w == 0 or h == 0:
                raise ImageDecodeError(f"image has no pixels ({w}x{h})")
            if draft_size and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image.load()
        image = ImageOps.exif_transpose(image)
        return _to_rgb(image)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"decompression bomb refused: {exc}", "size") from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageDecodeError("not a recognised image format", "format") from exc
    except FileNotFoundError as exc:
        raise ImageDecodeError(f"file not found: {exc.filename}", "missing") from exc
    except (OSError, ValueError, SyntaxError, EOFError, TypeError) as exc:
        raise ImageDecodeError(f"corrupt or truncated image: {exc}") from exc


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
    elif image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        span = max(array.max() - array.min(), 1e-12)
        image = Image.fromarray(((array - array.min()) / span * 255).astype(np.uint8))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image if image.mode == "RGB" else image.convert("RGB")


class ImageDataset(torch.utils.data.Dataset):
    """Samples -> dicts of pixel_values, label, index, error; a bad file is an error, not a crash.

    ``transform(image, index)`` turns a decoded RGB image into a tensor; it receives the sample
    index so that random augmentations can be seeded per sample (reproducible with any number of
    workers, and after a resume).
    """

    def __init__(
        self,
        samples: list[Sample],
        transform: Callable[[Image.Image, int], torch.Tensor],
        image_transform: Callable[[Image.Image, int], Image.Image] | None = None,
        draft_size: int | None = None,
    ) -> None:
        self.samples = samples
        self.transform = transform
        self.image_transform = image_transform
        self.draft_size = draft_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        item: dict[str, Any] = {
            "label": sample.label,
            "index": index,
            "error": None,
            "pixel_values": None,
        }
        try:
            image = load_image(sample.path, draft_size=self.draft_size)
            if self.image_transform is not None:
                image = self.image_transform(image, index)
            item["pixel_values"] = self.transform(image, index)
        except ImageDecodeError as exc:
            item["error"] = str(exc)
        except Exception as exc:  # a transform failing on one odd image must not stop the run
            item["error"] = f"{type(exc).__name__}: {exc}"
        return item


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the good items; report the bad ones as (index, error) pairs."""
    good = [it for it in items if it["error"] is None]
    errors = [(it["index"], it["error"]) for it in items if it["error"] is not None]
    pixels = torch.stack([it["pixel_values"] for it in good]) if good else torch.empty(0)
    return {
        "pixel_values": pixels,
        "labels": torch.tensor([it["label"] for it in good], dtype=torch.long),
        "indices": torch.tensor([it["index"] for it in good], dtype=torch.long),
        "errors": errors,
    }
