"""A training run's resume state: optimiser, scheduler, memory bank, RNGs and position, saved
beside the checkpoint's weights so that ``--resume`` continues exactly where a run stopped."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..model.checkpoint import load_trainable


def write_state(trainer: Any, directory: Path) -> None:
    """Write what resuming needs beside the weights: optimiser, memory bank, scheduler, RNGs,
    position in the epoch (trainer_state.json + trainer_state.safetensors)."""
    tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
    for i, state in trainer.optimizer.state_dict()["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{i}.{key}"] = value.detach().cpu().contiguous()
    for key, value in trainer.loss_fn.bank.state_dict().items():
        tensors[f"bank.{key}"] = value.detach().cpu().contiguous()
    save_file(tensors, str(directory / "trainer_state.safetensors"))
    state = {
        "epoch": trainer.epoch,
        "step_in_epoch": trainer.step_in_epoch,
        "global_step": trainer.global_step,
        "best": trainer.best,
        "scheduler": {k: v for k, v in trainer.scheduler.state_dict().items() if k != "lr_lambdas"},
        "param_groups": [
            {k: v for k, v in g.items() if k != "params"}
            for g in trainer.optimizer.state_dict()["param_groups"]
        ],
        "rng_python": _jsonable(random.getstate()),
        "rng_numpy": np.random.get_state()[1].tolist(),
        "rng_numpy_pos": int(np.random.get_state()[2]),
        "config": trainer.config.to_dict(),
    }
    (directory / "trainer_state.json").write_text(json.dumps(state, indent=1))


def load_state(trainer: Any, directory: Path) -> None:
    """Restore :func:`write_state`'s state (and the weights) of checkpoint ``directory``."""
    state = json.loads((directory / "trainer_state.json").read_text())
    tensors = load_file(str(directory / "trainer_state.safetensors"))
    weights = load_file(str(directory / "model.safetensors"))
    load_trainable(trainer.model, weights, source=str(directory))
    optim_state = trainer.optimizer.state_dict()
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, idx, key = name.split(".", 2)
            optim_state["state"].setdefault(int(idx), {})[key] = value.to(trainer.device)
    for group, saved in zip(optim_state["param_groups"], state["param_groups"], strict=True):
        group.update(saved)  # the scheduled learning rate at the time of saving
    trainer.optimizer.load_state_dict(optim_state)
    trainer.loss_fn.bank.load_state_dict(
        {
            k.removeprefix("bank."): v.to(trainer.device)
            for k, v in tensors.items()
            if k.startswith("bank.")
        }
    )
    sched = trainer.scheduler.state_dict()
    sched.update(state["scheduler"])
    trainer.scheduler.load_state_dict(sched)
    torch.set_rng_state(tensors["rng.torch"])
    random.setstate(_tupled(state["rng_python"]))
    np.random.set_state(
        (
            "MT19937",
            np.array(state["rng_numpy"], dtype=np.uint32),
            state["rng_numpy_pos"],
            0,
            0.0,
        )
    )
    trainer.epoch, trainer.step_in_epoch = state["epoch"], state["step_in_epoch"]
    trainer.global_step, trainer.best = state["global_step"], state["best"]


def _jsonable(value: Any) -> Any:
    return [_jsonable(v) for v in value] if isinstance(value, tuple | list) else value


def _tupled(value: Any) -> Any:
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value
