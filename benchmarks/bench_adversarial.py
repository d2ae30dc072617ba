"""Cost of adversarial robustness: ms per attacked image, and a training step with --adv-train.

Attacks (the Adversarial Robustness Toolbox's FGSM and PGD, through the detector's own resize,
crop and normalisation, in fp32 as `evaluate --attack` runs them) on photo-like 640 x 480
images, a batch of ``--batch`` at a time, beside the plain scoring of the same images (the
Detector at ``--precision``). Then one SGD step of MiraGe on ``--train-batch`` preprocessed
images, plain and with ``--adv-train`` at two fractions of the batch (the attack's steps
included). Random-weight backbones of the real shapes; median of ``--repeats``.
    python benchmarks/bench_adversarial.py [--backbones vit-b-32,vit-l-14] [--batch 4]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from common import photo, save, table, timed

from miragedet import MiraGe, ModelConfig, load_backbone
from miragedet.inference.attacks import Adversary, Attack, perturb
from miragedet.inference.detector import Detector
from miragedet.training import LossConfig, MiraGeLoss, OptimConfig
from miragedet.training.step import make_optimizer, train_step


def attack_rows(name: str, model: MiraGe, args: argparse.Namespace) -> list[dict]:
    images = [np.asarray(photo(640, 480, seed)) for seed in range(args.batch)]
    labels = [1] * len(images)  # pushed towards real: the attacker's direction
    detector = Detector(model, precision=args.precision, batch_size=args.batch)
    score_ms = 1000 * timed(lambda: detector.score(images), args.repeats) / len(images)
    rows = [
        {
            "backbone": name,
            "what": f"score ({detector.precision})",
            "ms_per_image": score_ms,
            "vs_score": 1.0,
        }
    ]
    for spec in args.attacks.split(";"):
        attack = Attack.parse(spec)

        def run(attack: Attack = attack) -> None:
            perturb(model, images, labels, attack, model.backbone.preprocess, detector.view,
                    batch_size=args.batch)  # fmt: skip

        ms = 1000 * timed(run, args.repeats) / len(images)
        rows.append(
            {"backbone": name, "what": attack.name, "ms_per_image": ms, "vs_score": ms / score_ms}
        )
        print(f"  {name} {attack.name}: {ms:.0f} ms/image")
    return rows


def train_rows(name: str, backbone, args: argparse.Namespace) -> list[dict]:
    size = backbone.preprocess.image_size
    pixels = torch.randn(
        args.train_batch, 3, size, size, generator=torch.Generator().manual_seed(0)
    )
    labels = torch.arange(args.train_batch) % 2
    rows = []
    plain_s = None
    for fraction in (0.0, 0.5, 1.0):
        torch.manual_seed(0)
        model = MiraGe(backbone, ModelConfig.for_method("mirage"))
        dim = backbone.model.config.projection_dim
        loss_fn = MiraGeLoss(LossConfig.for_method("mirage", bank_size=64), dim=dim)
        optimizer = make_optimizer(model, OptimConfig(batch_size=args.train_batch))
        adversary = (
            Adversary(Attack.parse(args.adv_train), fraction, backbone.preprocess)
            if fraction
            else None
        )

        def step(model=model, loss_fn=loss_fn, optimizer=optimizer, adversary=adversary) -> None:
            train_step(model, loss_fn, optimizer, pixels, labels, adversary)

        seconds = timed(step, args.repeats)
        plain_s = plain_s or seconds
        rows.append(
            {
                "backbone": name,
                "what": "train step"
                + (f", --adv-train {args.adv_train} x {fraction:g}" if fraction else ""),
                "ms_per_image": 1000 * seconds / args.train_batch,
                "vs_score": None,
                "step_s": seconds,
                "vs_plain_step": seconds / plain_s,
            }
        )
        print(f"  {name} train step, adversarial fraction {fraction:g}: {seconds:.2f} s")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="vit-b-32,vit-l-14")
    parser.add_argument("--batch", type=int, default=4, help="images attacked together")
    parser.add_argument("--attacks", default="fgsm:eps=2;pgd:eps=2,steps=10")
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--adv-train", default="pgd:eps=2,steps=5")
    parser.add_argument("--precision", default="auto", help="of the plain scoring row")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="bench_adversarial.json")
    args = parser.parse_args()
    rows = []
    for name in args.backbones.split(","):
        backbone = load_backbone(f"random:{name}")
        model = MiraGe(backbone, ModelConfig.for_method("mirage")).eval()
        rows += attack_rows(name, model, args)
        rows += train_rows(name, backbone, args)
    table(
        rows,
        [
            ("backbone", "backbone", "s"),
            ("what", "what", "s"),
            ("ms_per_image", "ms/image", ".1f"),
            ("vs_score", "x scoring", ".1f"),
            ("step_s", "s/step", ".2f"),
            ("vs_plain_step", "x plain step", ".2f"),
        ],
    )
    save(args.out, rows, batch=args.batch, train_batch=args.train_batch)


if __name__ == "__main__":
    main()
