"""Checkpoints in transformers' style: a directory with config.json, model.safetensors, README.md.

Only the trained tensors are stored (a few MB); the backbone is named by its source and pinned by
a fingerprint of its shape and weights. Nothing is pickled: JSON and safetensors only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._version import __version__
from .config import LossConfig

if TYPE_CHECKING:  # torch loads only where tensors are read or written: `miragedet info` needs none
    import torch

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
FORMAT = "miragedet-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is malformed, or does not fit the backbone it is loaded onto."""


def save_pretrained(
    model: torch.nn.Module,
    directory: str | os.PathLike,
    *,
    loss_config: LossConfig | None = None,
    threshold: float | None = None,
    metadata: dict[str, Any] | None = None,
    write_extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write the trained tensors and config of ``model`` (a MiraGe) to ``directory``, atomically.

    The directory is built beside the target and renamed into place, so a crash never leaves a
    half-written checkpoint where a complete one is expected. ``write_extra(staging_dir)`` may
    add files (e.g. the trainer's resume state) that must land together with the weights.
    """
    directory = Path(directory)
    threshold = model.threshold if threshold is None else float(threshold)
    tensors = {
        k: v.detach().to("cpu").contiguous().clone()
        for k, v in model.trainable_state_dict().items()
    }
    backbone = model.backbone
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "miragedet_version": __version__,
        "model": {**model.config.to_dict(), "resolved_depth": model.depth},
        "loss": (loss_config or LossConfig.for_method(model.config.method)).to_dict(),
        "backbone": {
            "source": backbone.source,
            "description": backbone.describe(),
            "shape": backbone.shape(),
            "fingerprint": backbone.fingerprint,
        },
        "preprocess": backbone.preprocess.to_dict(),
        "threshold": threshold,
        "tensors": {k: list(v.shape) for k, v in tensors.items()},
        "metadata": metadata or {},
    }
    directory.parent.mkdir(parents=True, exist_ok=True)
    recover(directory)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{directory.name}.tmp-{os.getpid()}-", dir=directory.parent)
    )
    try:
        from safetensors.torch import save_file

        save_file(tensors, str(staging / WEIGHTS_NAME), metadata={"format": FORMAT})
        (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        (staging / CARD_NAME).write_text(_model_card(config))
        if write_extra is not None:
            write_extra(staging)
        _replace_dir(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover(directory: str | os.PathLike) -> None:
    """Finish what a save killed midway left behind.

    A save writes ``.NAME.tmp-PID-*`` and then swaps it in with two renames (NAME to
    ``.NAME.old-PID``, the new one to NAME). A kill between the two leaves no NAME: the previous
    checkpoint is renamed back. Leftovers of processes that no longer run are deleted.
    """
    directory = Path(directory)
    parent, name = directory.parent, directory.name
    if not parent.is_dir():
        return
    olds = sorted(parent.glob(f".{name}.old-*"), key=lambda p: p.stat().st_mtime)
    if not directory.exists() and olds:
        os.replace(olds.pop(), directory)
    for leftover in [*olds, *parent.glob(f".{name}.tmp-*")]:
        try:
            pid = int(leftover.name.rsplit(".", 1)[1].split("-")[1])
        except (IndexError, ValueError):
            continue
        if not _alive(pid):
            shutil.rmtree(leftover, ignore_errors=True)


def _replace_dir(new: Path, target: Path) -> None:
    if not target.exists():
        os.replace(new, target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a checkpoint's config.json."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a miragedet checkpoint: no {CONFIG_NAME}")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object, not {type(config).__name__}")
    if config.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a miragedet checkpoint (format={config.get('format')!r})"
        )
    if int(config.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {config['format_version']}; this "
            f"miragedet ({__version__}) reads up to {FORMAT_VERSION}: upgrade it"
        )
    return config


def set_threshold(
    directory: str | os.PathLike, threshold: float, calibration: dict[str, Any] | None = None
) -> None:
    """Store a new decision threshold in a checkpoint's config.json (atomic replace)."""
    config = read_config(directory)
    config["threshold"] = float(threshold)
    if calibration is not None:
        config["calibration"] = calibration
    path = Path(directory) / CONFIG_NAME
    tmp = path.with_name(f".{CONFIG_NAME}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp, path)


#: A training run's checkpoints (``miragedet train -o RUN``), the one a scorer takes first.
RUN_CHECKPOINTS = ("best", "last")


def run_checkpoint(folder: Path) -> Path:
    """The checkpoint a folder holds: itself, else a training run's ``best``, else its
    ``last``; a clear error naming what was looked for when it holds none."""
    for name in RUN_CHECKPOINTS:
        if (folder / name / CONFIG_NAME).is_file():
            return folder / name
    raise CheckpointError(
        f"{folder} holds no checkpoint: no {CONFIG_NAME} in it, nor in a training run's "
        f"{' or '.join(f'{n}/' for n in RUN_CHECKPOINTS)} inside it"
    )


def resolve(path_or_id: str | os.PathLike) -> Path:
    """A local checkpoint folder (a training run's folder: its best, else its last checkpoint),
    or a hub repository downloaded."""
    path = Path(path_or_id)
    if not path.exists():
        with contextlib.suppress(OSError):  # a save killed between its two renames
            recover(path)
    if path.is_dir():
        return path if (path / CONFIG_NAME).is_file() else run_checkpoint(path)
    if path.exists() or str(path_or_id).startswith((".", "/", "~")):
        raise CheckpointError(f"checkpoint directory {str(path_or_id)!r} does not exist")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(path_or_id)))
    except Exception as exc:
        raise CheckpointError(
            f"{str(path_or_id)!r} is neither a local checkpoint directory nor a hub repository "
            f"that could be downloaded here (cause: {exc})"
        ) from exc


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The trained tensors of checkpoint ``directory``."""
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{directory} has no {WEIGHTS_NAME}")
    try:
        from safetensors.torch import load_file

        return load_file(str(weights))
    except Exception as exc:
        raise CheckpointError(f"{weights} is not a readable safetensors file: {exc}") from exc


def load_trainable(
    model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str = "tensors"
) -> None:
    """Copy trained tensors into ``model``, refusing any missing, extra or misshapen tensor."""
    expected = model.trainable_state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    wrong = sorted(
        k
        for k in set(expected) & set(tensors)
        if tuple(expected[k].shape) != tuple(tensors[k].shape)
    )
    if missing or extra or wrong:
        details = []
        if missing:
            details.append(f"missing {missing}")
        if extra:
            details.append(f"unexpected {extra}")
        if wrong:
            details.append(
                "wrong shape "
                + ", ".join(
                    f"{k} {tuple(tensors[k].shape)} != {tuple(expected[k].shape)}" for k in wrong
                )
            )
        raise CheckpointError(f"{source} does not fit this model: " + "; ".join(details))
    targets = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    import torch

    with torch.no_grad():
        for name, value in tensors.items():
            targets[name].copy_(value.to(targets[name].dtype))


def _model_card(config: dict[str, Any]) -> str:
    m, b = config["model"], config["backbone"]
    meta = config.get("metadata") or {}
    lines = [
        "---",
        "library_name: miragedet",
        "tags: [ai-generated-image-detection, clip, mirage]",
        "---",
        f"# miragedet checkpoint: {m['method']}",
        "",
        f"- method: `{m['method']}` (classes: {', '.join(m['classes'])}; class 0 is real)",
        f"- backbone: `{b['source']}` ({b['description']}), weights fingerprint "
        f"`{b['fingerprint']['weights']}`",
        f"- prompts: n_ctx={m['n_ctx']}, depth J={m['resolved_depth']}, "
        f"vision prompts={'on' if m['vision_prompts'] else 'off'}",
        f"- decision threshold on p(fake): {config['threshold']}",
        f"- written by miragedet {config['miragedet_version']}",
        "",
        "Load with `miragedet.load_pretrained(path)`.",
    ]
    if b["source"].startswith("random:"):
        lines += [
            "",
            "**The backbone has random weights: this is a pipeline check, not a "
            "detector of real images.**",
        ]
    if meta:
        lines += ["", "## Training", "", "```json", json.dumps(meta, indent=2), "```"]
    return "\n".join(lines) + "\n"
