"""Distributed training on CPU with gloo: cross-rank loss, and 2 processes train like 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from miragedet.data.synthetic import write_layout
from miragedet.model.config import LossConfig
from miragedet.model.losses import MiraGeLoss

N, D, C = 12, 16, 2


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return {
        "feats": F.normalize(torch.randn(N, D, generator=g), dim=1),
        "labels": torch.randint(0, C, (N,), generator=g),
        "text": F.normalize(torch.randn(C, D, generator=g), dim=1),
        "bank": F.normalize(torch.randn(5, D, generator=g), dim=1),
        "bank_labels": torch.randint(0, C, (5,), generator=g),
    }


def _loss_fn() -> MiraGeLoss:
    return MiraGeLoss(LossConfig(lambda_dis=0.5, tau=0.1, bank_size=10), D)


def _run(loss_fn, feats, labels, text, bank, bank_labels):
    loss_fn.bank.push(bank, bank_labels)
    feats = feats.clone().requires_grad_(True)
    text = text.clone().requires_grad_(True)
    logits = 10.0 * feats @ text.t()
    out = loss_fn(logits, feats, text, labels)
    out.loss.backward()
    return out, feats.grad, text.grad


def _worker(rank: int, world: int, init_file: str, out_dir: str, split: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        b = _batch()
        if split == "interleaved":  # what the trainer's sampler gives rank r: positions r::W
            mine = torch.arange(rank, N, world)
        else:  # unequal shares, in rank order
            mine = torch.arange(0, 7) if rank == 0 else torch.arange(7, N)
        loss_fn = _loss_fn()
        out, grad, text_grad = _run(
            loss_fn, b["feats"][mine], b["labels"][mine], b["text"], b["bank"], b["bank_labels"]
        )
        dist.all_reduce(text_grad)
        bank_feats, bank_labels = loss_fn.bank.contents()
        save_file(
            {
                "loss": out.loss.detach().reshape(1),
                "grad": grad,
                "text_grad": text_grad,
                "mine": mine,
                "bank": bank_feats.contiguous(),
                "bank_labels": bank_labels.contiguous(),
            },
            os.path.join(out_dir, f"rank{rank}.safetensors"),
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("split", ["interleaved", "unequal"])
def test_cross_rank_loss_and_gradients_equal_single_process(tmp_path, split):
    b = _batch()
    torch.multiprocessing.spawn(
        _worker, args=(2, str(tmp_path / "init"), str(tmp_path), split), nprocs=2, join=True
    )
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2)]
    mine = torch.cat([r["mine"] for r in ranks])
    # the single-process batch: the original order when the ranks took positions r::2, else
    # the concatenation of the ranks' shares
    order = torch.arange(N) if split == "interleaved" else mine
    feats, labels = b["feats"][order], b["labels"][order]
    reference = _loss_fn()
    out, grad, text_grad = _run(reference, feats, labels, b["text"], b["bank"], b["bank_labels"])
    grad = grad[torch.argsort(order)][mine]  # the reference gradient of each rank's rows
    assert out.dis.item() > 0
    shares = sum(r["loss"].item() for r in ranks)
    assert shares == pytest.approx(out.loss.item(), abs=1e-5)
    # each rank's images got exactly the gradient of the single-process loss
    local = torch.cat([r["grad"] for r in ranks])
    torch.testing.assert_close(local, grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ranks[0]["text_grad"], text_grad, atol=1e-6, rtol=1e-5)
    # the memory banks of both ranks hold what a single process would hold
    ref_bank, ref_labels = reference.bank.contents()
    for r in ranks:
        if split == "interleaved":  # batch order restored: identical FIFO
            torch.testing.assert_close(r["bank"], ref_bank)
            assert torch.equal(r["bank_labels"], ref_labels)
        else:
            assert sorted(r["bank_labels"].tolist()) == sorted(ref_labels.tolist())


def _train(data, out, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "miragedet", "train", str(data), "-o", str(out)]
    command += ["--backbone", "tiny", "--batch-size", "16", "--epochs", "2", "--depth", "2"]
    command += ["--bank-size", "24", "--workers", "0", "--lr", "0.05", *extra]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_two_processes_train_like_one_and_resume_across_world_sizes(tmp_path):
    data = write_layout(tmp_path / "data", "generic", ("grid-2",), n_per_class=32)
    _train(data, tmp_path / "one")
    printed = _train(data, tmp_path / "two", "--nproc", "2")
    assert "2 ranks" in printed
    # started on 2 processes, killed after 3 of 8 steps, finished on 1
    _train(data, tmp_path / "mixed", "--nproc", "2", "--max-steps", "3")
    assert load_file(str(tmp_path / "mixed" / "last" / "model.safetensors"))
    _train(data, tmp_path / "mixed", "--resume")
    one = load_file(str(tmp_path / "one" / "last" / "model.safetensors"))
    start = _initial(data)
    for name in ("two", "mixed"):
        other = load_file(str(tmp_path / name / "last" / "model.safetensors"))
        assert set(other) == set(one)
        for key in one:
            torch.testing.assert_close(other[key], one[key], atol=1e-5, rtol=1e-4)
    # and training moved the prompts (the equality above is not two untouched initialisations)
    assert any(not torch.allclose(one[k], start[k]) for k in one if k in start)
    logs = [(tmp_path / n / "log.jsonl").read_text().splitlines() for n in ("one", "two")]
    assert len(logs[0]) == len(logs[1]) > 0


def _initial(data) -> dict[str, torch.Tensor]:
    """The trainable tensors of a fresh model with the same seed (before any step)."""
    from miragedet.model.backbone import load_backbone
    from miragedet.model.config import ModelConfig
    from miragedet.model.mirage import MiraGe

    torch.manual_seed(0)
    model = MiraGe(load_backbone("tiny"), ModelConfig.for_method("mirage", depth=2))
    return {k: v.detach() for k, v in model.state_dict().items()}


def test_a_rank_whose_share_is_all_unreadable_still_steps_with_the_others(tmp_path):
    data = write_layout(tmp_path / "data", "generic", ("grid-2",), n_per_class=8)
    images = sorted(p for p in data.rglob("*.png"))
    for path in images[::2]:  # half the files are junk: some rank shares are all junk
        path.write_bytes(b"junk")
    out = tmp_path / "run"
    command = [sys.executable, "-m", "miragedet", "train", str(data), "-o", str(out)]
    command += ["--backbone", "tiny", "--batch-size", "2", "--epochs", "1", "--depth", "2"]
    command += ["--workers", "0", "--nproc", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((out / "train_report.json").read_text())
    assert report["global_step"] == 8
    assert len(report["skipped"]) == len(images[::2])  # gathered from both ranks
