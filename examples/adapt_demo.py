"""Few-shot adaptation on stand-in generators (docs/adapt.md): a tiny random CLIP trained on
grid-2 learns stripes-3 from 16 images per class by each mode, beside plain fine-tuning; then
the sequence grid-2 -> stripes-3 -> chroma-2 and the open-set test of an attribution model.

    python examples/adapt_demo.py [--work DIR]

Prints the table the README shows (about a minute on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from miragedet import Detector, MiraGe, ModelConfig, load_backbone, save_pretrained
from miragedet.data.layouts import find_images
from miragedet.data.synthetic import SEEN, make_set, write_layout
from miragedet.training import LossConfig, MiraGeLoss, OptimConfig
from miragedet.training.adapt import AdaptConfig, adapt, draw_shots
from miragedet.training.continual import continual
from miragedet.training.step import fit_tensors


def train(backbone, images, labels, classes=None, model=None, steps=400, lr=0.02):
    model = model or MiraGe(
        backbone,
        ModelConfig.for_method("mirage", depth=2, **({"classes": classes} if classes else {})),
    )
    loss = MiraGeLoss(LossConfig.for_method("mirage", bank_size=256), dim=64)
    pixels = backbone.preprocess.batch(images)
    fit_tensors(model, loss, pixels, torch.tensor(labels), OptimConfig(lr=lr, batch_size=64), steps)
    return model


def load(samples):
    return [Image.open(s.path).convert("RGB") for s in samples]


def accuracy(model, samples) -> float:
    detector = Detector(model, precision="fp32")
    predictions = detector.score([s.path for s in samples])
    return float(
        np.mean(
            [
                (p.label == "fake") == (s.label != 0)
                for p, s in zip(predictions, samples, strict=True)
            ]
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=None, help="Folder for the data and checkpoints.")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="adapt-demo-"))
    torch.manual_seed(0)
    tiny = load_backbone("tiny")
    images, labels = make_set(1000, tiny.preprocess.image_size, SEEN, seed=1)
    save_pretrained(train(tiny, images, labels), work / "base")
    for name, n, seed in (("grid-2", 460, 21), ("stripes-3", 216, 22), ("chroma-2", 216, 23)):
        write_layout(work / name, "ufd", (name,), n_per_class=n, seed=seed)
    old = find_images(work / "grid-2").samples[::4]
    stripes = find_images(work / "stripes-3")
    shots, rest = draw_shots(stripes, 16, 0)
    new = [s for group in rest.values() for s in group]
    rows = {"base model (trained on grid-2)": MiraGe.from_pretrained(work / "base")}

    shot_list = [s for group in shots.values() for s in group]
    plain = MiraGe.from_pretrained(work / "base")
    rows["plain fine-tuning on the 32 shots"] = train(
        tiny, load(shot_list), [min(s.label, 1) for s in shot_list], model=plain, steps=50
    )
    for mode in ("prompt", "prototype"):
        config = AdaptConfig(mode=mode, old_data=str(work / "grid-2"), split=None,
                             old_split=None, force=True)  # fmt: skip
        result = adapt(work / "base", work / "stripes-3", work / mode, config)
        label = "--mode prompt (replay + distillation)" if mode == "prompt" else "--mode prototype"
        rows[label] = result.model
    print("16 shots per class of stripes-3; accuracy on held-out images (tiny random CLIP)")
    print(f"{'':42s} {'grid-2 (old)':>13s} {'stripes-3 (new)':>16s}")
    for label, model in rows.items():
        print(
            f"{label:42s} {100 * accuracy(model, old):12.1f}% {100 * accuracy(model, new):15.1f}%"
        )

    tasks = [str(work / n) for n in ("grid-2", "stripes-3", "chroma-2")]
    report = continual(
        work / "base", tasks, work / "sequence", AdaptConfig(split=None, old_split=None)
    )
    accuracy_, forgetting = report["average_accuracy"], report["average_forgetting"]
    print(
        f"\nsequence grid-2 -> stripes-3 -> chroma-2: average accuracy {accuracy_:.1f}%, "
        f"average forgetting {forgetting:.1f} points"
    )

    write_layout(work / "attr-train", "generic", ("grid-2",), n_per_class=600, seed=11)
    write_layout(work / "attr-old", "generic", ("grid-2",), n_per_class=460, seed=12)
    write_layout(work / "attr-new", "generic", ("stripes-3",), n_per_class=216, seed=13)
    write_layout(work / "attr-fresh", "generic", ("grid-2", "stripes-3"), n_per_class=150, seed=15)
    write_layout(work / "attr-unseen", "generic", ("chroma-2",), n_per_class=200, seed=14)
    train_set = find_images(work / "attr-train")
    model = train(
        tiny, load(train_set.samples), [s.label for s in train_set.samples], train_set.classes
    )
    save_pretrained(model, work / "attr-base")
    config = AdaptConfig(old_data=str(work / "attr-old"), split=None, old_split=None,
                         unknown_rate=0.02)  # fmt: skip
    adapt(work / "attr-base", work / "attr-new", work / "attr", config)
    detector = Detector.from_pretrained(work / "attr", precision="fp32")
    known = detector.score([s.path for s in find_images(work / "attr-fresh").samples])
    unseen = [s.path for s in find_images(work / "attr-unseen").samples if s.label]
    rate = lambda ps: 100 * np.mean([p.top_class == "unknown generator" for p in ps])  # noqa: E731
    print(
        f"open set (attribution real/grid-2 + stripes-3 adapted): chroma-2 called 'unknown "
        f"generator' {rate(detector.score(unseen)):.1f}%, known classes {rate(known):.1f}%"
    )


if __name__ == "__main__":
    main()
