"""Cost of the tiles view: ms per tile against ms per image of the resize view.

For each backbone shape (random weights) and each tile count (1, 4, 16, 64: JPEGs of 224, 392,
728 and 1400 px, i.e. 1x1 to 8x8 tiles of 224 with the default 25% overlap), a folder of
photo-like JPEGs is scored end to end by the Detector (decode in threads, tiles of several images
sharing forward batches of ``--batch``) with ``--view tiles``; the same files, listed again until
there are as many images as tiles, are scored with ``--view resize``, so both views run the
same number of forwards of the same batch size. Calls alternate (median of ``--repeats``). The
forward is the same network, so ms per tile should be close to ms per image of the resize view;
what differs is the decode at native resolution and the cropping.
    python benchmarks/bench_tiles.py [--backbones vit-b-32,vit-l-14] [--batch 16] [--tiles 64]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from common import save, table, write_jpegs

from miragedet import MiraGe, ModelConfig, load_backbone
from miragedet.data.views import View
from miragedet.inference.detector import Detector


def side_for(n_tiles: int, tile: int) -> int:
    """The side of a square image that holds exactly sqrt(n) x sqrt(n) tiles at the default
    25% overlap (224 px tiles: 224, 392, 728, 1400 px for 1, 4, 16, 64)."""
    per_side = round(n_tiles**0.5)
    stride = max(8, round(tile * 0.75 / 8) * 8)
    return tile + (per_side - 1) * stride


def measure(name: str, args: argparse.Namespace, tmp: Path) -> list[dict]:
    backbone = load_backbone(f"random:{name}")
    model = MiraGe(backbone, ModelConfig.for_method("mirage"))
    views = {"tiles": View("tiles", max_tiles=64), "resize": View("resize")}
    detectors = {
        k: Detector(model, batch_size=args.batch, precision=args.precision, view=v)
        for k, v in views.items()
    }
    rows = []
    for n_tiles in (int(v) for v in args.counts.split(",")):
        side = side_for(n_tiles, backbone.preprocess.image_size)
        n_images = max(1, args.tiles // n_tiles)
        folder = write_jpegs(tmp / f"{side}", n_images, [(side, side)])
        paths = sorted(str(p) for p in folder.iterdir())
        [check] = detectors["tiles"].score(paths[:1])
        assert len(check.regions) == n_tiles, len(check.regions)
        inputs = {"tiles": paths, "resize": (paths * n_tiles)[: n_images * n_tiles]}
        times: dict[str, list[float]] = {"tiles": [], "resize": []}
        for k in ("tiles", "resize"):  # warm-up
            detectors[k].score(inputs[k])
        for _ in range(args.repeats):
            for k in ("tiles", "resize"):
                start = time.perf_counter()
                detectors[k].score(inputs[k])
                times[k].append(time.perf_counter() - start)
        per_tile = 1000 * float(np.median(times["tiles"])) / (n_images * n_tiles)
        per_image = 1000 * float(np.median(times["resize"])) / len(inputs["resize"])
        rows.append(
            {
                "backbone": name,
                "precision": detectors["tiles"].precision,
                "tiles": n_tiles,
                "side": side,
                "images": n_images,
                "batch": args.batch,
                "tiles_ms_per_image": per_tile * n_tiles,
                "tiles_ms_per_tile": per_tile,
                "resize_ms_per_image": per_image,
                "ratio": per_tile / per_image,
            }
        )
        print(f"  {name} {n_tiles} tiles: {per_tile:.1f} ms/tile, resize {per_image:.1f} ms/image")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="vit-b-32,vit-l-14")
    parser.add_argument("--counts", default="1,4,16,64")
    parser.add_argument("--tiles", type=int, default=64, help="tiles per folder (all counts)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--out", default="bench_tiles.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.backbones.split(","):
            rows += measure(name, args, Path(tmp))
    table(
        rows,
        [
            ("backbone", "backbone", "s"),
            ("precision", "precision", "s"),
            ("tiles", "tiles/image", "d"),
            ("side", "px", "d"),
            ("images", "images", "d"),
            ("batch", "batch", "d"),
            ("tiles_ms_per_image", "tiles ms/image", ".1f"),
            ("tiles_ms_per_tile", "ms/tile", ".2f"),
            ("resize_ms_per_image", "resize ms/image", ".2f"),
            ("ratio", "tile/resize", ".3f"),
        ],
    )
    save(args.out, rows, batch=args.batch, tiles_per_folder=args.tiles)


if __name__ == "__main__":
    main()
