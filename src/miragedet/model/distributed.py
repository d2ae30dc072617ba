"""Multi-process training on ``torch.distributed`` (launched by ``torchrun``).

The prompts and maps are tiny, so data parallelism is the whole story: every rank holds the frozen
backbone and the trainable prompts (wrapped in ``DistributedDataParallel``), takes its share of
each global batch, and the gradients are averaged by DDP.

MiraGe's discriminative loss is a contrast over the *whole* batch: an image is pulled towards
every other image of its class and the class text anchor, and pushed from the rest. A plain DDP
run would contrast each rank's images only with its own shard (a smaller, different contrast
set). Here each rank gathers the image embeddings of all ranks (:func:`gather_with_grad`:
gradients of the gathered copy are summed back to the rank that owns each row), computes the loss
terms of *its own* anchors against the global set, and the per-rank shares add up to exactly the
single-process loss of the concatenated batch. The memory bank receives the same global batch on
every rank, so banks stay identical and match a single-process run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: rank, world size, local rank (rank on this node)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_from_launcher() -> DistEnv:
    """The rank and world size that ``torchrun`` (or any launcher of its kind) put in the
    environment; a single process when there is none."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    return DistEnv(
        rank=int(os.environ["RANK"]),
        world=world,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def setup(device: torch.device) -> tuple[DistEnv, torch.device]:
    """Join the process group when launched by ``torchrun`` (gloo on CPU, NCCL on CUDA) and
    return this rank's environment and device (``cuda:LOCAL_RANK`` on GPUs)."""
    env = env_from_launcher()
    if not env.enabled:
        return env, device
    if device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.get_world_size() != env.world:
        raise RuntimeError(
            f"WORLD_SIZE={env.world} but the process group has {dist.get_world_size()} ranks"
        )
    return env, device


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _GatherWithGrad(torch.autograd.Function):
    """All-gather rows of equal-width tensors of (possibly) unequal lengths; backward sums the
    gradient of the gathered tensor over ranks and hands each rank the rows it owns."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, sizes: list[int]) -> torch.Tensor:  # type: ignore[override]
        rank = dist.get_rank()
        longest = max(sizes)
        padded = local.new_zeros((longest, *local.shape[1:]))
        padded[: local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        ctx.sizes, ctx.rank = sizes, rank
        return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None


def gathered_sizes(n: int, device: torch.device) -> list[int]:
    """The local batch length of every rank."""
    mine = torch.tensor([n], device=device)
    sizes = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, mine)
    return [int(s) for s in sizes]


def gather_with_grad(local: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """The rows of every rank, in rank order; gradients flow back to each rank's own rows."""
    return _GatherWithGrad.apply(local, sizes)


def gather(local: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Like :func:`gather_with_grad`, for tensors that need no gradient (labels)."""
    with torch.no_grad():
        return _GatherWithGrad.apply(local.detach(), sizes)


def interleave(rows: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Reorder rank-ordered rows into the order of the single-process batch they came from.

    Rank r scores positions r, r + W, r + 2W, ... of each global batch (as a
    ``DistributedSampler`` does), so with equal shares position ``r + W*j`` is row
    ``r*b + j`` of the gathered tensor. Unequal shares (an unreadable image was dropped) keep
    rank order.
    """
    world = len(sizes)
    if len(set(sizes)) != 1:
        return rows
    b = sizes[0]
    return rows.reshape(world, b, *rows.shape[1:]).transpose(0, 1).reshape(rows.shape)


def local_positions(sizes: list[int], rank: int, device: torch.device) -> torch.Tensor:
    """Where this rank's rows sit after :func:`interleave`."""
    world = len(sizes)
    if len(set(sizes)) != 1:
        start = sum(sizes[:rank])
        return torch.arange(start, start + sizes[rank], device=device)
    return rank + world * torch.arange(sizes[rank], device=device)


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum floats over ranks (for logging)."""
    if not active():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def barrier() -> None:
    if active():
        dist.barrier()


def shutdown(sync: bool = False) -> None:
    """Destroy the process group. With ``sync`` (a normal end) the ranks first meet at a
    barrier: a rank tearing gloo down while its peer's last message is still in flight made the
    peer abort ("terminate called without an active exception", seen once in a 2-rank test)."""
    if dist.is_available() and dist.is_initialized():
        if sync:
            dist.barrier()
        dist.destroy_process_group()
