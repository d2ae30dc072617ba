"""Video on synthetic clips (docs/video.md): a tiny random CLIP trained on grid-2 stills scores
clips by their frames; how each aggregation rule turns frames into a clip score when the
fingerprint fills the clip or only a fifth of it; and a flicker that only a temporal head sees.

    python examples/video_demo.py [--work DIR] [--clips 24]

Prints the tables the README and docs/video.md show (about a minute on a 2-core CPU; nothing is
timed, the figures are the same on any CPU).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from miragedet import Detector, MiraGe, ModelConfig, load_backbone, save_pretrained
from miragedet.data.synthetic import make_set
from miragedet.data.synthetic_video import write_video_set
from miragedet.data.views import AGGREGATES, View
from miragedet.training import LossConfig, MiraGeLoss, OptimConfig
from miragedet.training.step import fit_tensors
from miragedet.training.temporal import TemporalConfig, train_temporal


def frame_detector(work: Path) -> Path:
    """The tests' recipe: 300 + 300 grid-2 stills, 400 steps."""
    torch.manual_seed(0)
    tiny = load_backbone("tiny")
    images, labels = make_set(300, 32, seed=1)
    model = MiraGe(tiny, ModelConfig.for_method("mirage", depth=2))
    loss = MiraGeLoss(LossConfig.for_method("mirage", bank_size=256), dim=64)
    fit_tensors(model, loss, tiny.preprocess.batch(images), torch.tensor(labels),
                OptimConfig(lr=0.02, batch_size=64), steps=400)  # fmt: skip
    save_pretrained(model, work / "frames")
    return work / "frames"


def scores(checkpoint: Path, folder: Path, aggregate: str = "top-k") -> tuple[list, np.ndarray]:
    paths = sorted(str(p) for p in folder.rglob("*.mkv"))
    view = View(aggregate=aggregate)
    predictions = Detector.from_pretrained(checkpoint, precision="fp32", view=view).score(paths)
    return predictions, np.array([0 if "0_real" in p else 1 for p in paths])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--clips", type=int, default=24, help="clips per class per set")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="miragedet-video-"))
    n = args.clips
    checkpoint = frame_detector(work)
    full = write_video_set(work / "full", n, "fake", frames=100, seed=3)
    span = write_video_set(work / "span", n, "span", frames=100, span=(40, 60), seed=4)
    print(f"{n} real + {n} fake clips per set, 100 frames at 8 fps, 16 frames scored per clip")
    print(f"{'rule':<12} {'AUC, fingerprint in every frame':>32} {'AUC, only frames 40-60':>24}")
    for rule in AGGREGATES:
        row = []
        for folder in (full, span):
            predictions, truth = scores(checkpoint, folder, rule)
            row.append(roc_auc_score(truth, [p.fake_prob for p in predictions]))
        print(f"{rule:<12} {row[0]:>32.3f} {row[1]:>24.3f}")
    predictions, truth = scores(checkpoint, span)
    fakes = [p for p, t in zip(predictions, truth, strict=True) if t == 1]
    inside = [5.0 <= max(p.regions, key=lambda r: r["p"])["t"] < 7.5 for p in fakes]
    print(f"span clips whose timeline peaks inside frames 40-60: {100 * np.mean(inside):.1f}%")

    train = write_video_set(work / "flicker-train", 32, "temporal", frames=16, seed=7)
    test = write_video_set(work / "flicker-test", 16, "temporal", frames=16, seed=8)
    train_temporal(checkpoint, train, work / "temporal", TemporalConfig())
    accuracy = {}
    models = (("frames alone (top-k)", checkpoint), ("train --temporal", work / "temporal"))
    for name, model in models:
        predictions, truth = scores(model, test)
        right = [(p.fake_prob >= 0.5) == t for p, t in zip(predictions, truth, strict=True)]
        accuracy[name] = np.mean(right)
    print("flicker (no single frame shows it), 16 + 16 held-out clips, accuracy at 0.5:")
    for name, value in accuracy.items():
        print(f"  {name:<22} {100 * value:.1f}%")


if __name__ == "__main__":
    main()
