"""Data: images from folders and layouts, preprocessing, degradations, synthetic test sets."""

from .transforms import Preprocess

__all__ = ["Preprocess"]
