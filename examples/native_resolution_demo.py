"""Why native resolution matters, on synthetic data (random-weight tiny CLIP, offline, ~1 min).

Images 8x the model's input size carry a 2-pixel generator trace. A detector trained and scored
through CLIP's resize sees the trace averaged away; one trained on native-resolution crops
(`train --view crop`) and scored with tiles (`detect --view tiles`) finds it. The same
comparison is asserted in tests/test_views.py.
    python examples/native_resolution_demo.py
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from miragedet import MiraGe, ModelConfig, load_backbone
from miragedet.data.synthetic import SEEN, smooth_scene
from miragedet.data.transforms import TrainTransform
from miragedet.data.views import View
from miragedet.inference.detector import Detector
from miragedet.training import LossConfig, MiraGeLoss, OptimConfig
from miragedet.training.step import fit_tensors


def images(n_per_class: int, side: int, seed: int) -> tuple[list[Image.Image], np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(2 * n_per_class):
        pixels = smooth_scene(rng, side) + (SEEN.pattern(side, side)[:, :, None] if i % 2 else 0)
        out.append(Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8)))
    return out, np.arange(2 * n_per_class) % 2


def fit(backbone, pixels: torch.Tensor, labels: np.ndarray) -> MiraGe:
    torch.manual_seed(0)
    model = MiraGe(backbone, ModelConfig.for_method("mirage", depth=2))
    loss = MiraGeLoss(LossConfig.for_method("mirage", bank_size=256), dim=64)
    optim = OptimConfig(lr=0.02, batch_size=64)
    fit_tensors(model, loss, pixels, torch.from_numpy(labels), optim, steps=300)
    return model


def main() -> None:
    backbone = load_backbone("tiny")
    side = 8 * backbone.preprocess.image_size
    train, y = images(150, side, seed=1)
    test, y_test = images(50, side, seed=2)
    crop = TrainTransform(backbone.preprocess, view="crop")
    crops = torch.stack([crop(im, i) for i, im in enumerate(train + train)])
    rows = [
        ("resize (paper)", fit(backbone, backbone.preprocess.batch(train), y), "resize"),
        ("crop + tiles", fit(backbone, crops, np.concatenate([y, y])), View("tiles")),
    ]
    print(f"{side} x {side} images, 2 px trace, {len(test)} test images, tiny random CLIP")
    print(f"{'trained / scored':<16}  accuracy")
    for name, model, view in rows:
        p = Detector(model, precision="fp32", view=view).predict_proba(test)[:, 1]
        print(f"{name:<16}  {100 * ((p >= 0.5) == y_test).mean():7.1f}%")


if __name__ == "__main__":
    main()
