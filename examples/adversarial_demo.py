"""What an attacker gets, on synthetic data (random-weight tiny CLIP, offline, ~1 min on 2 cores).

A tiny MiraGe learns the synthetic 2-pixel generator trace (32 px images), once plainly and once
with adversarial training of its prompts (`train --adv-train pgd:eps=2,steps=5`: PGD examples
for half of each batch). Both are attacked with PGD (10 steps, L-infinity) through their own
preprocessing; each adversarial image is rounded to 8 bits (the PNG a user would upload) and
rescored; the survivors of a JPEG 90 re-save are counted too. The same effects are asserted in
tests/test_attacks.py.
    python examples/adversarial_demo.py
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from miragedet import MiraGe, ModelConfig, load_backbone
from miragedet.data.synthetic import SEEN, make_set
from miragedet.inference.attacks import Adversary, Attack, perturb
from miragedet.inference.detector import Detector
from miragedet.training import LossConfig, MiraGeLoss, OptimConfig
from miragedet.training.step import fit_tensors


def fit(backbone, pixels: torch.Tensor, labels: list[int], adversary=None) -> MiraGe:
    torch.manual_seed(0)
    model = MiraGe(backbone, ModelConfig.for_method("mirage", depth=2))
    loss = MiraGeLoss(LossConfig.for_method("mirage", bank_size=256), dim=64)
    optim = OptimConfig(lr=0.02, batch_size=64)
    fit_tensors(model, loss, pixels, torch.tensor(labels), optim, steps=300, adversary=adversary)
    return model


def jpeg(array: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def accuracy(detector: Detector, images: list[np.ndarray], labels: list[int]) -> float:
    p = detector.predict_proba(images)[:, 1]
    return float(((p >= detector.threshold) == (np.asarray(labels) == 1)).mean())


def main() -> None:
    backbone = load_backbone("tiny")
    images, labels = make_set(300, 32, SEEN, seed=1)
    pixels = backbone.preprocess.batch(images)
    test, test_labels = make_set(100, 32, SEEN, seed=5)
    test = [np.asarray(im) for im in test]
    adversary = Adversary(Attack.parse("pgd:eps=2,steps=5"), 0.5, backbone.preprocess)
    models = {
        "plain training": fit(backbone, pixels, labels),
        "--adv-train pgd:eps=2": fit(backbone, pixels, labels, adversary),
    }
    budgets = (1, 2, 3, 4)
    print(f"{len(test)} test images (32 px, 2 px trace), tiny random CLIP; PGD 10 steps, eps in")
    print("grey levels; accuracy on the rescored 8-bit adversarial images (after JPEG 90)")
    print(f"{'detector':<24}{'clean':>7}" + "".join(f"{f'eps {e}':>16}" for e in budgets))
    for name, model in models.items():
        detector = Detector(model, precision="fp32")
        cells = []
        for eps in budgets:
            attack = Attack.parse(f"pgd:eps={eps},steps=10")
            attacked = perturb(model, test, test_labels, attack, backbone.preprocess, detector.view)
            robust = accuracy(detector, attacked, test_labels)
            resaved = accuracy(detector, [jpeg(a, 90) for a in attacked], test_labels)
            cells.append(f"{100 * robust:6.1f}% ({100 * resaved:5.1f}%)")
        clean = accuracy(detector, test, test_labels)
        print(f"{name:<24}{100 * clean:6.1f}%" + "".join(f"{c:>16}" for c in cells))


if __name__ == "__main__":
    main()
