"""miragedet: detect AI-generated images with MiraGe (Shi et al., 2025) on a frozen CLIP.

The public names below load on first use (PEP 562), so ``import miragedet`` and the command
line's ``--help`` cost no torch or transformers import; the package's layers are described in
docs/architecture.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ loads these
    from .inference.detector import Detector, Prediction
    from .inference.loader import load_detector
    from .inference.remote import Client
    from .model.backbone import Backbone, BackboneError, load_backbone
    from .model.checkpoint import CheckpointError, save_pretrained
    from .model.config import LossConfig, ModelConfig, OptimConfig
    from .model.losses import MemoryBank, MiraGeLoss, discriminative_loss
    from .model.mirage import MiraGe, MiraGeOutput, load_pretrained

#: public name -> the module that defines it
_LAZY = {
    "Backbone": ".model.backbone",
    "BackboneError": ".model.backbone",
    "load_backbone": ".model.backbone",
    "CheckpointError": ".model.checkpoint",
    "LossConfig": ".model.config",
    "ModelConfig": ".model.config",
    "OptimConfig": ".model.config",
    "MemoryBank": ".model.losses",
    "MiraGeLoss": ".model.losses",
    "discriminative_loss": ".model.losses",
    "MiraGe": ".model.mirage",
    "MiraGeOutput": ".model.mirage",
    "load_pretrained": ".model.mirage",
    "save_pretrained": ".model.checkpoint",
    "Detector": ".inference.detector",
    "Prediction": ".inference.detector",
    "load_detector": ".inference.loader",
    "Client": ".inference.remote",
}

__all__ = [
    "Backbone",
    "BackboneError",
    "CheckpointError",
    "Client",
    "Detector",
    "LossConfig",
    "MemoryBank",
    "MiraGe",
    "MiraGeLoss",
    "MiraGeOutput",
    "ModelConfig",
    "OptimConfig",
    "Prediction",
    "__version__",
    "discriminative_loss",
    "load_backbone",
    "load_detector",
    "load_pretrained",
    "save_pretrained",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'miragedet' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
