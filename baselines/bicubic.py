"""Bicubic interpolation, the floor every super-resolution method must beat."""

from __future__ import annotations

from typing import Any

from PIL import Image

from .base import SCALE, Baseline


class BicubicBaseline(Baseline):
    """PIL bicubic resize by 4; no model, caption and seed are ignored."""

    name = "bicubic"
    label = "Bicubic"

    def upscale(self, lr: Image.Image, *, caption: str, seed: int, settings: Any) -> Image.Image:
        return lr.resize((lr.width * SCALE, lr.height * SCALE), Image.Resampling.BICUBIC)
