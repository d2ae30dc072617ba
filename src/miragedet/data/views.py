"""Views: how an image becomes model inputs (resize, a native-resolution crop, or tiles).

- ``resize`` (default, the paper's protocol): CLIP's resize of the short side and centre crop.
  A 4000 x 3000 photo is shrunk about 13x, which averages away pixel-level generator traces.
- ``crop``: one model-size crop from the centre of the image at native resolution (its corner
  on the 8-pixel grid).
- ``tiles``: model-size crops at native resolution covering every pixel, neighbours overlapping
  by ``overlap`` of a tile (the last row and column are placed flush with the far edges). More
  than ``max_tiles`` are thinned evenly over the grid (rows and columns alike, corners kept): then
  coverage is no longer complete, which the prediction says (``covered``).

An image smaller than a tile on either side is first scaled up (bicubic) until its short side
equals the tile, keeping its aspect ratio: padding would add borders that no camera or
generator made (a 30 x 30 icon becomes one 224 x 224 tile). A sliver that this would make longer
than 64 tiles (a 1 x 20000 strip would become 224 x 4,480,000) is instead resized and
centre-cropped as the ``resize`` view does: one tile, never a memory blow-up.

A view also names how its tile scores become one p(fake) (``aggregate``: ``top-k``, the default,
``mean-logit`` or ``max``); scoring the tiles, aggregating them and the where-map of the per-tile
p(fake) are inference's work (:mod:`miragedet.inference.tiles`). This module is geometry and
pixels only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

VIEWS = ("resize", "crop", "tiles")
#: Tiles start on multiples of this many pixels (but the last row and column, flush with the
#: edges), like training's native crops: JPEG's 8x8 blocks and generators' 2/4/8-pixel
#: upsampling grids then sit at one phase in every tile, as the detector learned them.
ALIGN = 8
#: The rules that make one p(fake) of the tiles' (:func:`miragedet.inference.tiles.aggregate`).
AGGREGATES = ("mean-logit", "top-k", "max")


@dataclass(frozen=True)
class View:
    kind: str = "resize"
    max_tiles: int = 16
    overlap: float = 0.25
    #: measured, benchmarks/aggregate_study.py: as good as mean-logit on whole-image fakes,
    #: catches partial fakes; max catches slightly more but its reals' scores rise with the
    #: number of tiles (one threshold cannot serve images of every size)
    aggregate: str = "top-k"

    def __post_init__(self) -> None:
        if self.kind not in VIEWS:
            raise ValueError(f"view must be one of {', '.join(VIEWS)}, not {self.kind!r}")
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}")
        if self.max_tiles < 1 or not 0 <= self.overlap < 1:
            raise ValueError("max_tiles must be >= 1 and overlap in [0, 1)")


def default_kind(trained: str) -> str:
    """The view a checkpoint scores with by default: tiles for one trained on native-resolution
    crops (what it learned from), else resize."""
    return "tiles" if trained == "crop" else "resize"


def resolve(requested: View | str | dict[str, Any] | None, trained: str) -> View:
    """A :class:`View` from what a caller asked for: a View, a kind ("tiles"), options
    (``{"kind": None, "max_tiles": 8}``: a missing kind is the checkpoint's default), or None
    (everything default) for a checkpoint trained with the ``trained`` view."""
    if isinstance(requested, View):
        return requested
    if isinstance(requested, str):
        return View(kind=requested)
    options = {k: v for k, v in (requested or {}).items() if v is not None}
    return View(**{**options, "kind": options.get("kind") or default_kind(trained)})


@dataclass
class Tiles:
    """The inputs of one image under the ``crop`` or ``tiles`` view."""

    pixels: torch.Tensor  # (n, 3, S, S)
    boxes: list[tuple[int, int, int, int]]  # (left, top, right, bottom) in the image as scored
    rows: int
    cols: int
    cells: list[tuple[int, int]]  # (row, col) of each tile in the full grid
    size: tuple[int, int]  # the image's (width, height) as tiled (after any upscaling)
    covered: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def _starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    n = math.ceil((length - tile) / stride) + 1
    return [min(i * stride, length - tile) for i in range(n)]


def _thin(values: list[int], keep: int) -> list[int]:
    if len(values) <= keep:
        return values
    picks = np.linspace(0, len(values) - 1, keep).round().astype(int)
    return [values[i] for i in sorted(set(picks.tolist()))]


def tile_boxes(
    width: int, height: int, tile: int, overlap: float = 0.25, max_tiles: int = 16
) -> tuple[list[tuple[int, int, int, int]], list[tuple[int, int]], int, int, bool]:
    """Boxes of model-size tiles over a ``width`` x ``height`` image (each side >= ``tile``):
    (boxes, (row, col) cells, rows, cols of the full grid, whether every pixel is covered)."""
    stride = max(ALIGN, round(tile * (1 - overlap) / ALIGN) * ALIGN)
    xs, ys = _starts(width, tile, stride), _starts(height, tile, stride)
    rows, cols = len(ys), len(xs)
    keep_r, keep_c = rows, cols
    while keep_r * keep_c > max_tiles:  # thin the longer direction first
        if keep_c >= keep_r and keep_c > 1:
            keep_c -= 1
        elif keep_r > 1:
            keep_r -= 1
        else:
            break
    row_idx = _thin(list(range(rows)), keep_r)
    col_idx = _thin(list(range(cols)), keep_c)
    cells = [(r, c) for r in row_idx for c in col_idx]
    boxes = [(xs[c], ys[r], xs[c] + tile, ys[r] + tile) for r, c in cells]
    covered = len(row_idx) == rows and len(col_idx) == cols
    return boxes, cells, rows, cols, covered


def tiled_size(width: int, height: int, tile: int) -> tuple[int, int] | None:
    """The size an image is tiled at (:func:`at_least_one_tile`): its own when both sides hold a
    tile, else scaled up until the short side is one tile; None for a sliver that would become
    longer than 64 tiles (it is resized and centre-cropped instead)."""
    if min(width, height) >= tile:
        return width, height
    scale = tile / min(width, height)
    if max(width, height) * scale > 64 * tile:
        return None
    return max(tile, round(width * scale)), max(tile, round(height * scale))


def at_least_one_tile(image: Image.Image, preprocess: Any) -> Image.Image:
    """``image`` if both sides hold a tile; else scaled up (bicubic) until the short side is one
    tile, or, for a sliver that would become longer than 64 tiles, resized and centre-cropped
    as the resize view does. Shared by tiling and by training's native crops."""
    size = tiled_size(*image.size, preprocess.image_size)
    if size is None:
        return preprocess.resize_crop(image)
    return image if size == image.size else image.resize(size, Image.Resampling.BICUBIC)


def inputs(image: Image.Image, preprocess: Any, view: View) -> Tiles:
    """The model inputs of ``image`` (RGB, native resolution) under a ``crop``/``tiles`` view."""
    image = at_least_one_tile(image, preprocess)
    boxes, cells, rows, cols, covered = view_boxes(*image.size, preprocess.image_size, view)
    pixels = torch.stack([preprocess.to_tensor(image.crop(box)) for box in boxes])
    return Tiles(pixels, boxes, rows, cols, cells, image.size, covered)


def view_boxes(
    width: int, height: int, tile: int, view: View
) -> tuple[list[tuple[int, int, int, int]], list[tuple[int, int]], int, int, bool]:
    """:func:`tile_boxes` for the tiles view, the one centre box (on the grid) for crop."""
    if view.kind == "tiles":
        return tile_boxes(width, height, tile, view.overlap, view.max_tiles)
    left, top = (width - tile) // 2 // ALIGN * ALIGN, (height - tile) // 2 // ALIGN * ALIGN
    covered = width == tile and height == tile
    return [(left, top, left + tile, top + tile)], [(0, 0)], 1, 1, covered
