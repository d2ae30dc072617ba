"""What the scoring pipeline hands back and reads in: :class:`Prediction` (one row per input),
the inputs it takes (:data:`ImageInput`), how an input is named in its row and made an RGB image."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from ..data.dataset import MAX_PIXELS, ImageDecodeError, load_image
from .rows import row_of

ImageInput = str | os.PathLike | bytes | Image.Image | np.ndarray


@dataclass
class Prediction:
    """The verdict on one input. ``fake_prob`` is p(not the real class); ``label`` is "fake" when
    it reaches ``threshold``, else "real"; ``top_class`` is the most likely class name."""

    source: str
    fake_prob: float | None
    label: str | None
    threshold: float
    top_class: str | None = None
    probs: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    provenance: dict[str, Any] | None = None
    #: With ``stability``: the scores of the re-deliveries, their spread and the reason for an
    #: "uncertain" label.
    stability: dict[str, Any] | None = None
    #: The pixel label weighed with the metadata (see :func:`miragedet.provenance.combine`), and
    #: what decided it: "pixels", or "declared (c2pa|watermark|xmp|parameters|exif)".
    verdict: str | None = None
    basis: str | None = None
    #: With the ``tiles``/``crop`` view: how the image was tiled (view, rule, size as tiled,
    #: whether every pixel was covered, number of tiles;
    #: :func:`miragedet.inference.tiles.where_map`).
    tiles: dict[str, Any] | None = None
    #: Where and when the evidence is, one compact list for images and clips (docs/video.md):
    #: tiles ``{"box": [left, top, right, bottom], "p": p(fake)}``; a clip's frames ``{"t":
    #: seconds, "p": p(fake)}`` (plus the most suspicious tile's ``box`` with the tiles view).
    regions: list[dict[str, Any]] | None = None
    #: A video or animated image: frames scored, duration, size, decoder, the frames' own
    #: aggregate and, with a temporal head, its p(fake) (:mod:`miragedet.inference.videos`).
    video: dict[str, Any] | None = None
    #: Attribution models adapted with an open-set test (docs/adapt.md): the distance to the
    #: nearest known class, the threshold, and whether the image is an unknown generator (then
    #: ``top_class`` is "unknown generator"; ``label`` stays the pixels' real/fake verdict).
    open_set: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.verdict is None and self.basis is None and self.label is not None:
            self.verdict, self.basis = self.label, "pixels"

    @property
    def clip(self) -> dict[str, Any] | None:
        """:attr:`video` under its name before 0.2 (goes in the next release)."""
        warnings.warn(
            "Prediction.clip is now Prediction.video; .clip goes in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.video

    def set_provenance(self, provenance: dict[str, Any]) -> None:
        from ..provenance.verdict import combine

        self.provenance = provenance
        self.verdict, self.basis = combine(self.label, provenance)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """The row (:mod:`miragedet.inference.rows`, docs/rows.md): the same names and columns
        as detect's JSON and score-dataset's Parquet for the options it was scored with (an
        error row too). ``dataclasses.asdict`` gives the nested fields instead."""
        return row_of(self, getattr(self, "columns", None))


def describe(item: Any, index: int) -> str:
    """How an input is named in its row: the path, or its kind and position."""
    if isinstance(item, str | os.PathLike):
        return str(item)
    if isinstance(item, bytes | bytearray):
        return f"<bytes #{index}>"
    if isinstance(item, Image.Image):
        return f"<image #{index}>"
    if isinstance(item, np.ndarray):
        return f"<array #{index}>"
    return f"<{type(item).__name__} #{index}>"


def to_image(
    item: ImageInput, max_pixels: int = MAX_PIXELS, draft_size: int | None = None
) -> Image.Image:
    """Any supported input as an RGB Pillow image (arrays: HxW or HxWx3/4, uint8 or 0-1 float).
    ``draft_size``: let the JPEG decoder reduce scale, never below that size."""
    if isinstance(item, np.ndarray):
        array = item
        if array.ndim == 2:
            array = np.stack([array] * 3, axis=-1)
        if array.ndim != 3 or array.shape[-1] not in (3, 4):
            raise ImageDecodeError(f"array of shape {item.shape}: expected HxW or HxWx3/4")
        if array.dtype != np.uint8:
            if not np.issubdtype(array.dtype, np.floating):
                raise ImageDecodeError(f"array dtype {array.dtype}: expected uint8 or float")
            array = np.clip(np.round(array * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(np.ascontiguousarray(array[..., :3]), "RGB")
    if isinstance(item, str | os.PathLike | bytes | bytearray | Image.Image):
        source = bytes(item) if isinstance(item, bytearray) else item
        return load_image(source, max_pixels, draft_size=draft_size)
    raise ImageDecodeError(f"unsupported input type {type(item).__name__}")
