"""Decode images safely and feed them to PyTorch, one bad file never stopping the rest."""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from . import formats
from .formats import ImageDecodeError
from .layouts import Sample

formats.register()

#: Images above this many pixels are refused (decompression bombs); 2 x 89.5 MP by default.
MAX_PIXELS = 179_000_000


def load_image(
    source: str | os.PathLike | bytes | Image.Image,
    max_pixels: int = MAX_PIXELS,
    draft_size: int | None = None,
) -> Image.Image:
    """Open an image as people see it, in RGB: EXIF orientation applied, the embedded ICC profile
    converted to sRGB, the first frame of animations, 16-bit scaled; HEIC/HEIF, AVIF, JPEG XL and
    camera RAW/DNG through the decoders of :mod:`miragedet.data.formats`.

    ``draft_size`` lets the JPEG decoder reduce scale while decoding (never below that size),
    which is much faster for large photos (RAW: LibRaw's half size). Raises
    :class:`ImageDecodeError` with a readable reason for anything that is not a decodable image.
    """
    try:
        image = source if isinstance(source, Image.Image) else _open(source, max_pixels, draft_size)
        icc = image.info.get("icc_profile")
        image = formats.to_srgb(ImageOps.exif_transpose(image), icc)
        return _to_rgb(image)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"decompression bomb refused: {exc}", "size") from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageDecodeError("not a recognised image format", "format") from exc
    except FileNotFoundError as exc:
        raise ImageDecodeError(f"file not found: {exc.filename}", "missing") from exc
    except IsADirectoryError as exc:
        raise ImageDecodeError(f"is a folder, not an image: {exc.filename}", "format") from exc
    except (OSError, ValueError, SyntaxError, EOFError, TypeError) as exc:
        raise ImageDecodeError(f"corrupt or truncated image: {exc}") from exc
    except Exception as exc:  # plugin decoders (libjxl, libheif, LibRaw) raise their own types
        raise ImageDecodeError(f"corrupt or truncated image: {type(exc).__name__}: {exc}") from exc


def _open(source: str | os.PathLike | bytes, max_pixels: int, draft_size: int | None):
    """Decode ``source`` (path or bytes), choosing the decoder by the file's signature."""
    kind = formats.sniff(formats.read_head(source))
    if kind == "VIDEO":
        raise ImageDecodeError(
            "a video clip, not an image: it is scored by its frames (detect, score-dataset, "
            "the server, the Python API's Detector), docs/video.md",
            "format",
        )
    if kind is not None and (missing := formats.missing_decoder(kind)):
        raise ImageDecodeError(missing, "format")
    named_raw = not isinstance(source, bytes | bytearray) and (
        Path(source).suffix.lower() in formats.RAW_EXTENSIONS
    )
    if kind == "RAW" or (kind in (None, "TIFF") and named_raw):
        return formats.decode_raw(_readable(source), max_pixels, draft_size)
    stream = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(stream)
    except Image.UnidentifiedImageError:
        if kind != "TIFF":
            raise
        # TIFF-structured but no TIFF Pillow reads: a RAW whose first IFD holds the sensor data
        if missing := formats.missing_decoder("RAW"):
            raise ImageDecodeError(
                f"a TIFF-based file Pillow cannot read; if it is a camera RAW: {missing}", "format"
            ) from None
        return formats.decode_raw(_readable(source), max_pixels, draft_size)
    if image.format == "TIFF" and formats.looks_like_raw_tiff(image):
        # a DNG or TIFF-based RAW: Pillow would give the small preview of its first IFD
        if missing := formats.missing_decoder("RAW"):
            raise ImageDecodeError(missing, "format")
        try:
            return formats.decode_raw(_readable(source), max_pixels, draft_size)
        except ImageDecodeError as exc:
            if exc.kind != "format":
                raise  # an ordinary TIFF whose first IFD is flagged reduced: Pillow reads it
    w, h = image.size
    if w * h > max_pixels:
        raise ImageDecodeError(f"image too large: {w}x{h} pixels (limit {max_pixels})", "size")
    if w == 0 or h == 0:
        raise ImageDecodeError(f"image has no pixels ({w}x{h})")
    if draft_size and image.format in ("JPEG", "MPO"):  # MPO: phones' multi-picture JPEGs
        image.draft("RGB", (draft_size, draft_size))
    image.load()
    return image


def _readable(source: str | os.PathLike | bytes) -> bytes | str:
    return source if isinstance(source, bytes | bytearray) else os.fspath(source)


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
            if getattr(sample, "frame", None) is not None:  # a frame of a clip
                from .video import read_frame

                image = read_frame(sample.path, sample.frame)
            else:
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
