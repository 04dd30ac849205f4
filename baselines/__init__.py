"""Baselines MMSR is compared with, all behind one interface (:class:`Baseline`).

``BASELINES`` maps a name to its class; the UI and the tests iterate it. Heavy backends
(diffusers, the Hub) are imported only when a baseline loads.
"""

from __future__ import annotations

from typing import Any

from .base import SCALE, Baseline
from .bicubic import BicubicBaseline
from .mmsr_text_only import TextOnlyMMSRBaseline
from .realesrgan import RealESRGANBaseline
from .sd_upscaler import SDUpscalerBaseline

BASELINES: dict[str, type[Baseline]] = {
    BicubicBaseline.name: BicubicBaseline,
    RealESRGANBaseline.name: RealESRGANBaseline,
    SDUpscalerBaseline.name: SDUpscalerBaseline,
    TextOnlyMMSRBaseline.name: TextOnlyMMSRBaseline,
}


def get_baseline(name: str, **kwargs: Any) -> Baseline:
    """Instantiate the baseline registered as ``name`` (``device=``, ``dtype=`` and its own
    keyword arguments pass through)."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose one of: {', '.join(BASELINES)}")
    return BASELINES[name](**kwargs)


__all__ = [
    "BASELINES",
    "SCALE",
    "Baseline",
    "BicubicBaseline",
    "RealESRGANBaseline",
    "SDUpscalerBaseline",
    "TextOnlyMMSRBaseline",
    "get_baseline",
]
