"""Text-only MMSR: the same model with every spatial modality set to ``m_0`` (the paper's text-guided ablation)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any

from PIL import Image

from mmsr.constants import MODALITIES
from mmsr.settings import UpscaleSettings

from .base import Baseline

# every run setting except those the ablation fixes (modalities off, no refinement) or that are not settings
SETTING_NAMES = tuple(
    f.name for f in fields(UpscaleSettings) if f.name not in ("caption", "seed", "modalities", "refine", "notes")
)


def text_only(settings: UpscaleSettings) -> UpscaleSettings:
    """``settings`` with every spatial modality switched to ``m_0`` (and so no zero-modal refinement)."""
    return replace(settings, modalities=dict.fromkeys(MODALITIES, False), refine=False)


class TextOnlyMMSRBaseline(Baseline):
    """Runs the given MMSR engine with depth, segmentation and edges all switched to ``m_0``.

    Pass the engine that runs MMSR (``engine=``) so both use one set of weights, the same seed and
    the same settings; only the modality tokens differ. Keyword settings are MMSR's run settings
    (``guidance``, ``cfg_mode``, ``steps`` ...).
    """

    name = "text-only-mmsr"
    label = "Text-only MMSR (every modality = m_0)"
    uses_caption = True
    shared = SETTING_NAMES

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
        return self.run(lr, UpscaleSettings(caption=caption, seed=seed, **settings))

    def run(
        self, lr: Image.Image, settings: UpscaleSettings, callback: Callable[[int, int], None] | None = None
    ) -> Image.Image:
        """The engine's output under ``settings`` with every modality ``m_0`` (progress per denoising step)."""
        ok, reason = self.available()
        if not ok:
            raise RuntimeError(reason)
        return self.engine.upscale(lr, text_only(settings), callback=callback).image
