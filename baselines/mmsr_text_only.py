"""Text-only MMSR: the same model with every spatial modality set to ``m_0`` (the paper's text-guided ablation)."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from PIL import Image

from mmsr.settings import UpscaleSettings

from .base import Baseline

SETTING_NAMES = tuple(f.name for f in fields(UpscaleSettings) if f.name not in ("caption", "seed", "modalities"))


class TextOnlyMMSRBaseline(Baseline):
    """Runs the given MMSR engine with depth, segmentation and edges all switched to ``m_0``.

    Pass the engine that runs MMSR (``engine=``) so both use one set of weights, the same seed and
    the same settings; only the modality tokens differ.
    """

    name = "text-only-mmsr"
    label = "Text-only MMSR (all modalities m_0)"
    uses_caption = True

    def __init__(self, *, engine=None, **kwargs: Any):
        super().__init__(**kwargs)
        self.engine = engine

    def available(self) -> tuple[bool, str]:
        if self.engine is None:
            return False, "needs a loaded MMSR engine (pass engine=)"
        return True, ""

    def make_settings(self, **settings: Any) -> dict:
        unknown = sorted(set(settings) - set(SETTING_NAMES))
        if unknown:
            raise ValueError(f"{self.name} does not accept {unknown}; its settings are: {', '.join(SETTING_NAMES)}")
        return settings

    def upscale(self, lr: Image.Image, *, caption: str, seed: int, settings: dict) -> Image.Image:
        ok, reason = self.available()
        if not ok:
            raise RuntimeError(reason)
        run = UpscaleSettings(caption=caption, seed=seed, **settings)
        return self.engine.text_only(lr, run).image
