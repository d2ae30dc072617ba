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
    from .data.views import View
    from .inference.detector import Detector, Prediction, load_detector
    from .inference.detector_config import DetectorConfig
    from .inference.remote import Client
    from .inference.stability import Stability
    from .model.backbone import Backbone, BackboneError, load_backbone
    from .model.checkpoint import CheckpointError, save_pretrained
    from .model.config import ModelConfig
    from .model.mirage import MiraGe, MiraGeOutput, load_pretrained

#: public name -> the module that defines it: what a user of a detector needs (training's names
#: are in :mod:`miragedet.training`, docs/python.md)
_LAZY = {
    "load_detector": ".inference.detector",
    "Detector": ".inference.detector",
    "DetectorConfig": ".inference.detector_config",
    "Prediction": ".inference.detector",
    "Client": ".inference.remote",
    "View": ".data.views",
    "Stability": ".inference.stability",
    "Backbone": ".model.backbone",
    "BackboneError": ".model.backbone",
    "load_backbone": ".model.backbone",
    "MiraGe": ".model.mirage",
    "MiraGeOutput": ".model.mirage",
    "ModelConfig": ".model.config",
    "load_pretrained": ".model.mirage",
    "save_pretrained": ".model.checkpoint",
    "CheckpointError": ".model.checkpoint",
}
#: training's names, once here: still importable from ``miragedet`` for one release, with a
#: DeprecationWarning naming their new home
_MOVED = ("LossConfig", "OptimConfig", "MemoryBank", "MiraGeLoss", "discriminative_loss")

__all__ = [
    "Backbone",
    "BackboneError",
    "CheckpointError",
    "Client",
    "Detector",
    "DetectorConfig",
    "MiraGe",
    "MiraGeOutput",
    "ModelConfig",
    "Prediction",
    "Stability",
    "View",
    "__version__",
    "load_backbone",
    "load_detector",
    "load_pretrained",
    "save_pretrained",
]


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        import warnings

        warnings.warn(
            f"miragedet.{name} moved to miragedet.training.{name} (docs/python.md); the old "
            "name goes in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(".training", __name__), name)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'miragedet' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
