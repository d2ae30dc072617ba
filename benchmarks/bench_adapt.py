"""Few-shot adaptation's cost: wall time and peak memory of each mode (prototype, prompt) for K
shots per class, against one training epoch of the same images (pool + shots) and against the
time of 50 forwards; random-weight backbones of the real shapes, synthetic 224-px images.

"adapt s" is the whole command: the features of the known images (the memory), of the shots,
fitting, and scoring the held-out images before and after (the forgetting table). "learn s" is
the learning alone: the shots' features and the fit (prototype) or the tuning (prompt), what a
second adaptation costs when the memory is stored; "/ 50 fwd" compares it with 50 forwards.
    python benchmarks/bench_adapt.py [--backbones vit-b-32,vit-l-14] [--shots 4,16,64]
        [--memory 32] [--held-out 16] [--steps 20]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
import warnings
from pathlib import Path

import torch
from common import save, table

from miragedet import MiraGe, ModelConfig, load_backbone, save_pretrained
from miragedet.data.synthetic import write_layout
from miragedet.model.config import LossConfig
from miragedet.model.losses import MiraGeLoss
from miragedet.training.adapt import AdaptConfig, adapt
from miragedet.training.config import OptimConfig
from miragedet.training.step import make_optimizer, train_step


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def per_image(model: MiraGe, batch: int = 8) -> tuple[float, float]:
    """Seconds per image of a forward (inference) and of a training step (fp32)."""
    size = model.backbone.preprocess.image_size
    pixels = torch.randn(batch, 3, size, size)
    labels = torch.tensor([0, 1] * (batch // 2))
    with torch.inference_mode():
        model.eval()(pixels)
        start = time.perf_counter()
        model(pixels)
        forward = (time.perf_counter() - start) / batch
    loss_fn = MiraGeLoss(LossConfig(), model.backbone.model.config.projection_dim)
    optimizer = make_optimizer(model, OptimConfig())
    train_step(model, loss_fn, optimizer, pixels, labels)
    start = time.perf_counter()
    train_step(model, loss_fn, optimizer, pixels, labels)
    return forward, (time.perf_counter() - start) / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", default="vit-b-32,vit-l-14")
    parser.add_argument("--shots", default="4,16,64")
    parser.add_argument("--modes", default="prototype,prompt")
    parser.add_argument("--memory", type=int, default=32, help="known images per source")
    parser.add_argument("--held-out", type=int, default=16, help="images per source scored")
    parser.add_argument("--steps", type=int, default=20, help="prompt mode's steps")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--out", default="bench_adapt.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="prompt depth")
    shots = [int(k) for k in args.shots.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        n_new = max(shots) + args.held_out
        write_layout(work / "old", "ufd", ("grid-2",), args.memory + args.held_out, args.size, 1)
        write_layout(work / "new", "ufd", ("stripes-3",), n_new, args.size, 2)
        for name in args.backbones.split(","):
            model = MiraGe(load_backbone(f"random:{name}"), ModelConfig.for_method("mirage"))
            forward, step = per_image(model)
            save_pretrained(model, work / name)
            for mode in args.modes.split(","):
                for k in shots:
                    config = AdaptConfig(
                        shots=k, mode=mode, old_data=str(work / "old"), split=None,
                        old_split=None, memory=args.memory, held_out=args.held_out,
                        steps=args.steps, batch_size=16, force=True,
                    )  # fmt: skip
                    stages: dict[str, float] = {}

                    def mark(text: str, stages: dict[str, float] = stages) -> None:
                        stages[text.split(" ")[0]] = time.perf_counter()

                    start = time.perf_counter()
                    adapt(work / name, work / "new", work / f"{name}-{mode}-{k}", config, mark)
                    seconds = time.perf_counter() - start
                    # learning: the shots' features and the fit (or the tuning), without the
                    # known images' features and the before/after scoring
                    shots_at = [t for key, t in stages.items() if key == "features"][-1]
                    learn = stages["scoring"] - shots_at
                    images = 2 * args.memory + 2 * k  # the pool and the shots
                    rows.append(
                        {
                            "backbone": name,
                            "mode": mode,
                            "shots": k,
                            "seconds": seconds,
                            "learn_s": learn,
                            "forward_ms": 1000 * forward,
                            "vs_50_forwards": learn / (50 * forward),
                            "epoch_s": step * images,
                            "vs_epoch": seconds / (step * images),
                            "peak_mib": peak_mib(),
                        }
                    )
                    print(rows[-1], flush=True)
                    # kept after every row: a run stopped early still leaves what it measured
                    save(args.out, rows, memory=args.memory, held_out=args.held_out)
    table(
        rows,
        [
            ("backbone", "backbone", ""),
            ("mode", "mode", ""),
            ("shots", "K", "d"),
            ("seconds", "adapt s", ".1f"),
            ("learn_s", "learn s", ".2f"),
            ("forward_ms", "fwd ms/img", ".1f"),
            ("vs_50_forwards", "/ 50 fwd", ".1f"),
            ("epoch_s", "1 epoch s", ".1f"),
            ("vs_epoch", "/ epoch", ".2f"),
            ("peak_mib", "peak MiB", ".0f"),
        ],
    )
    save(args.out, rows, memory=args.memory, held_out=args.held_out, steps=args.steps)


if __name__ == "__main__":
    main()
