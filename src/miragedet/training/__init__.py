"""Training: the step, the trainer loop with its state and logs, the dry run, few-shot adaptation.

The second tier of the public API (docs/python.md): what training and adapting a detector needs.
Its names load on first use, like the top-level package's. Imports evaluation (validation) and
below; never apps.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..model.config import LossConfig
    from ..model.losses import MemoryBank, MiraGeLoss, discriminative_loss
    from .adapt import AdaptConfig, AdaptResult
    from .adapt import adapt as adapt_checkpoint
    from .config import OptimConfig, TrainConfig, TrainResult
    from .step import make_optimizer, train_step
    from .trainer import Trainer

_LAZY = {
    "Trainer": ".trainer",
    "TrainConfig": ".config",
    "TrainResult": ".config",
    "train_step": ".step",
    "make_optimizer": ".step",
    "LossConfig": "..model.config",
    "OptimConfig": ".config",
    "MemoryBank": "..model.losses",
    "MiraGeLoss": "..model.losses",
    "discriminative_loss": "..model.losses",
    "AdaptConfig": ".adapt",
    "AdaptResult": ".adapt",
}
#: names given here under another (``adapt`` is the submodule ``miragedet.training.adapt``)
_RENAMED = {"adapt_checkpoint": (".adapt", "adapt")}

__all__ = [
    "AdaptConfig",
    "AdaptResult",
    "LossConfig",
    "MemoryBank",
    "MiraGeLoss",
    "OptimConfig",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "adapt_checkpoint",
    "discriminative_loss",
    "make_optimizer",
    "train_step",
]


def __getattr__(name: str) -> Any:
    module, attribute = _RENAMED.get(name, (_LAZY.get(name), name))
    if module is None:
        raise AttributeError(f"module 'miragedet.training' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_RENAMED))
