"""Where is the evidence? A where-map of a partly faked image (synthetic, offline, ~30 s).

A tiny MiraGe (random-weight CLIP) is trained on native-resolution crops of 256 px images with and
without the synthetic 2 px generator trace (as examples/native_resolution_demo.py does). It then
scores, with the tiles view, a real-looking scene whose lower-right quadrant alone carries the
trace (a pasted or inpainted region), prints the per-tile p(fake) grid and draws the where-map
as `miragedet detect --where` does.
    python examples/where_map_demo.py [--out docs/img/where-map.png]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from PIL import Image

from miragedet import MiraGe, ModelConfig, load_backbone
from miragedet.apps.where_plot import plot_where
from miragedet.data.synthetic import SEEN, make_image
from miragedet.data.transforms import TrainTransform
from miragedet.data.views import View
from miragedet.inference.detector import Detector
from miragedet.training import LossConfig, MiraGeLoss, OptimConfig
from miragedet.training.step import fit_tensors


def scene(rng: np.random.Generator, side: int, faked: tuple[int, int, int] | None) -> Image.Image:
    """A smooth scene; ``faked`` (top, left, size) carries the 2 px trace."""
    return make_image(rng, side, SEEN if faked else None, faked)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="where-map.png")
    args = parser.parse_args()
    backbone = load_backbone("tiny")
    side = 8 * backbone.preprocess.image_size
    rng = np.random.default_rng(1)
    images = [scene(rng, side, (0, 0, side) if i % 2 else None) for i in range(300)]
    crop = TrainTransform(backbone.preprocess, view="crop")
    crops = torch.stack([crop(im, i) for i, im in enumerate(images + images)])
    labels = torch.tensor([i % 2 for i in range(300)] * 2)
    torch.manual_seed(0)
    model = MiraGe(backbone, ModelConfig.for_method("mirage", depth=2))
    loss = MiraGeLoss(LossConfig.for_method("mirage", bank_size=256), dim=64)
    fit_tensors(model, loss, crops, labels, OptimConfig(lr=0.02, batch_size=64), steps=300)

    half = side // 2
    image = scene(np.random.default_rng(7), side, (half, half, half))  # lower-right quadrant
    detector = Detector(model, precision="fp32", view=View("tiles", max_tiles=64, overlap=0.0))
    [prediction] = detector.score([image])
    print(f"{side} x {side} scene, the 2 px trace in its lower-right quadrant only")
    print(f"p(fake) {prediction.fake_prob:.3f} ({prediction.label}); per-tile p(fake):")
    tops = sorted({r["box"][1] for r in prediction.regions})
    for top in tops:  # the regions, row by row of tiles
        row = [r for r in prediction.regions if r["box"][1] == top]
        row.sort(key=lambda r: r["box"][0])
        print("  " + " ".join(f"{r['p']:.2f}" for r in row))
    where = {**prediction.tiles, "regions": prediction.regions}
    plot_where(image, where, args.out, "lower-right quadrant faked (synthetic)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
