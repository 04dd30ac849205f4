"""Modality extractors: caption, depth, segmentation, edges."""

from .base import MAP_SIZE, SPATIAL_MODALITIES, ModalityResult

__all__ = ["MAP_SIZE", "SPATIAL_MODALITIES", "ModalityResult"]
