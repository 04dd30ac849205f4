"""Text-only diffusion SR: the Stable Diffusion x4 upscaler through diffusers.

Stability AI withdrew the ``stabilityai/stable-diffusion-2*`` repositories in November 2025 and
several community mirrors went with them, so the baseline takes an ordered list of repository ids
(or local folders) and uses the first that resolves: a local folder, a repository in the local
Hugging Face cache, or, when the Hub is reachable, one it still serves. Offline (``HF_HUB_OFFLINE=1``
or the Hub unreachable, as :func:`mmsr.modalities.hub.offline_reason` decides for every hub model
of the project) only the cache is consulted, so :meth:`SDUpscalerBaseline.available` answers at
once.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .base import SCALE, Baseline

DEFAULT_REPO_IDS = (
    "stabilityai/stable-diffusion-x4-upscaler",
    "sd2-community/stable-diffusion-x4-upscaler",
    "radames/stable-diffusion-x4-upscaler-img2img",
)
HUB_TIMEOUT_S = 5.0


def _in_cache(repo_id: str, cache_dir: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "model_index.json", cache_dir=cache_dir), str)
    except ValueError:  # not a valid repository id
        return False


def _locate(repo_id: str, cache_dir: str | None, offline: str | None) -> tuple[bool, str]:
    """Whether one repository id resolves, and why not; ``offline`` is why the Hub can't be asked."""
    if Path(repo_id).is_dir():
        if Path(repo_id, "model_index.json").is_file():
            return True, ""
        return False, f"{repo_id}: a folder without model_index.json"
    if _in_cache(repo_id, cache_dir):
        return True, ""
    if offline is not None:
        return False, f"{repo_id}: not in the local Hugging Face cache and {offline}"
    from huggingface_hub import model_info

    try:
        model_info(repo_id, timeout=HUB_TIMEOUT_S)
    except Exception as error:  # any Hub failure (withdrawn, gated, timeout) means "does not resolve"
        return False, f"{repo_id}: {type(error).__name__}"
    return True, ""


def _pad_to_multiple(image: Image.Image, multiple: int) -> Image.Image:
    """Edge-pad right and bottom so both sides are multiples of ``multiple`` (the pipeline would
    otherwise shrink the image to fit its VAE)."""
    pad_h, pad_w = -image.height % multiple, -image.width % multiple
    if not (pad_h or pad_w):
        return image
    return Image.fromarray(np.pad(np.asarray(image), ((0, pad_h), (0, pad_w), (0, 0)), mode="edge"))


# diffusers' names for the settings that MMSR calls ``guidance`` and ``steps`` (accepted, deprecated)
DIFFUSERS_NAMES = {"guidance_scale": "guidance", "num_inference_steps": "steps"}


@dataclasses.dataclass
class SDUpscalerSettings:
    """Sampling settings (diffusers' defaults). ``guidance`` is w of eq. (4), as everywhere in MMSR:
    diffusers' ``guidance_scale`` is ``1 + w`` (its default 9 is w = 8); w = 0 turns guidance off."""

    negative_prompt: str = ""
    guidance: float = 8.0
    steps: int = 75
    noise_level: int = 20

    def __post_init__(self) -> None:
        if self.guidance < 0:
            raise ValueError(f"guidance must be >= 0, got {self.guidance}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.noise_level < 0:
            raise ValueError(f"noise_level must be >= 0, got {self.noise_level}")

    @property
    def guidance_scale(self) -> float:
        """diffusers' ``s = 1 + w``."""
        return 1.0 + self.guidance


class SDUpscalerBaseline(Baseline):
    """``StableDiffusionUpscalePipeline`` conditioned on the caption only.

    Args:
        device, dtype: where and in which precision the pipeline runs.
        repo_ids: repository ids or local folders, tried in order.
        pipeline: a ready ``StableDiffusionUpscalePipeline`` to use as is (tests, custom setups);
            ``repo_ids`` are then ignored.
        cache_dir: Hugging Face cache to look in (default: the standard one).
    """

    name = "sd-x4-upscaler"
    label = "Stable Diffusion x4 upscaler (text only)"
    uses_caption = True
    settings_type = SDUpscalerSettings
    shared = ("negative_prompt", "guidance", "steps")

    def __init__(
        self,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        repo_ids: str | Sequence[str] = DEFAULT_REPO_IDS,
        pipeline: Any = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        super().__init__(device=device, dtype=dtype)
        self.repo_ids = (repo_ids,) if isinstance(repo_ids, str) else tuple(repo_ids)
        if not self.repo_ids and pipeline is None:
            raise ValueError("give at least one repository id or a pipeline")
        self.cache_dir = str(cache_dir) if cache_dir is not None else None
        self._model = pipeline
        self._resolved: tuple[str | None, str] | None = None

    def make_settings(self, **settings: Any) -> SDUpscalerSettings:
        """As :meth:`Baseline.make_settings`; diffusers' ``guidance_scale`` (s = 1 + w) and
        ``num_inference_steps`` still work, with a ``FutureWarning``."""
        for old, new in DIFFUSERS_NAMES.items():
            if old in settings:
                warnings.warn(f"{self.name}: {old} is deprecated; pass {new} (w of eq. 4)", FutureWarning, stacklevel=3)
                value = settings.pop(old)
                settings[new] = value - 1.0 if old == "guidance_scale" else value
        return super().make_settings(**settings)

    def resolve(self) -> tuple[str | None, str]:
        """The first repository id that resolves (or ``None``) and why the others did not."""
        if self._resolved is None:
            from mmsr.modalities.hub import offline_reason

            offline, reasons = offline_reason(), []
            for repo_id in self.repo_ids:
                found, reason = _locate(repo_id, self.cache_dir, offline)
                if found:
                    self._resolved = (repo_id, "")
                    break
                reasons.append(reason)
            else:
                self._resolved = (None, "; ".join(reasons))
        return self._resolved

    def available(self) -> tuple[bool, str]:
        if self._model is not None:
            return True, ""
        repo_id, reason = self.resolve()
        return repo_id is not None, reason

    def _load_model(self) -> Any:
        repo_id, reason = self.resolve()
        if repo_id is None:
            raise RuntimeError(f"{self.label} is unavailable: {reason}")
        from diffusers import StableDiffusionUpscalePipeline

        from mmsr.modalities.hub import offline_reason

        pipeline = StableDiffusionUpscalePipeline.from_pretrained(
            repo_id, dtype=self.dtype, cache_dir=self.cache_dir, local_files_only=offline_reason() is not None
        )
        return pipeline.to(self.device)

    def upscale(self, lr: Image.Image, *, caption: str, seed: int, settings: Any) -> Image.Image:
        pipeline = self.load()
        result = pipeline(
            prompt=caption,
            image=_pad_to_multiple(lr, pipeline.vae_scale_factor),
            negative_prompt=settings.negative_prompt or None,
            guidance_scale=settings.guidance_scale,
            num_inference_steps=settings.steps,
            noise_level=settings.noise_level,
            generator=torch.Generator("cpu").manual_seed(seed),
        ).images[0]
        return result.crop((0, 0, lr.width * SCALE, lr.height * SCALE))
