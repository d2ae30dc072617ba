"""P3: one training step (forward + loss + backward + SGD step + bank update) against one
inference forward of the same batch, and the memory each needs.

Only the prompts and maps train, but their gradients must flow back through every frozen layer
after the first prompted one (both towers), so a step costs about a forward plus a backward of
the activations (no weight gradients for the frozen backbone): target <= 3.2x a forward.
Memory: the activations autograd saves for the backward pass (what training needs on top of
inference, any device), and on CUDA the peak allocated above the model's own weights
(torch.cuda.max_memory_allocated) for a forward and for a step.
    python benchmarks/bench_train.py [--backbones tiny,vit-b-32,vit-l-14] [--batch 8]
"""

from __future__ import annotations

import argparse
import warnings

import torch
from common import save, table, timed

from miragedet import MiraGe, ModelConfig, load_backbone
from miragedet.model.config import LossConfig
from miragedet.model.losses import MiraGeLoss
from miragedet.training.config import OptimConfig
from miragedet.training.step import make_optimizer, train_step


def cuda_peak(fn) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def saved_for_backward(fn, model: torch.nn.Module) -> float:
    """MiB of activations autograd keeps for the backward pass during ``fn`` (each storage
    counted once; the model's own weights, which exist anyway, left out): what training needs on
    top of inference, on any device."""
    weights = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values()) / 2**20


def setup(name: str, batch: int, device: torch.device):
    backbone = load_backbone(f"random:{name}")
    model = MiraGe(backbone, ModelConfig.for_method("mirage")).to(device)
    loss_fn = MiraGeLoss(LossConfig(), backbone.model.config.projection_dim).to(device)
    optimizer = make_optimizer(model, OptimConfig())
    size = backbone.preprocess.image_size
    pixels = torch.randn(batch, 3, size, size, device=device)
    labels = torch.arange(batch, device=device) % 2

    def forward() -> None:
        with torch.inference_mode():
            model.eval()(pixels)
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step() -> None:
        train_step(model, loss_fn, optimizer, pixels, labels)
        if device.type == "cuda":
            torch.cuda.synchronize()

    forward.model = model
    return forward, step


def measure(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    forward, step = setup(name, args.batch, device)
    fwd = timed(forward, args.repeats)
    trn = timed(step, args.repeats)
    saved = saved_for_backward(step, forward.model)
    fwd_mem = trn_mem = None
    if device.type == "cuda":
        fwd_mem, trn_mem = cuda_peak(forward), cuda_peak(step)
    model = forward.model
    return {
        "backbone": name,
        "batch": args.batch,
        "forward_ms": fwd * 1000,
        "train_step_ms": trn * 1000,
        "p3_ratio": trn / fwd,
        "saved_for_backward_mib": saved,
        "forward_peak_mib": fwd_mem,
        "train_peak_mib": trn_mem,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbones", default="tiny,vit-b-32,vit-l-14")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="bench_train.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    rows = [measure(name, args, device) for name in args.backbones.split(",")]
    print(
        f"P3: batch {args.batch}, {device}, {torch.get_num_threads()} threads "
        "(ratio = train step / forward; target <= 3.2)"
    )
    table(
        rows,
        [
            ("backbone", "backbone", ""),
            ("forward_ms", "forward ms", ".1f"),
            ("train_step_ms", "train step ms", ".1f"),
            ("p3_ratio", "ratio", ".2f"),
            ("saved_for_backward_mib", "saved for backward MiB", ".0f"),
            ("forward_peak_mib", "forward peak MiB", ".0f"),
            ("train_peak_mib", "train peak MiB", ".0f"),
            ("trainable_params", "trained params", ",d"),
        ],
    )
    save(args.out, rows, device=str(device))


if __name__ == "__main__":
    main()
