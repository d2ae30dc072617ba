"""miragedet: detect AI-generated images with MiraGe (Shi et al., 2025) on a frozen CLIP."""

__version__ = "0.1.0"

from .backbone import Backbone, BackboneError, load_backbone
from .checkpoint import CheckpointError, load_pretrained, save_pretrained
from .config import LossConfig, ModelConfig, OptimConfig
from .losses import MemoryBank, MiraGeLoss, discriminative_loss
from .model import MiraGe, MiraGeOutput

__all__ = [
    "Backbone",
    "BackboneError",
    "CheckpointError",
    "LossConfig",
    "MemoryBank",
    "MiraGe",
    "MiraGeLoss",
    "MiraGeOutput",
    "ModelConfig",
    "OptimConfig",
    "__version__",
    "discriminative_loss",
    "load_backbone",
    "load_pretrained",
    "save_pretrained",
]
