"""The one interface every baseline follows.

A baseline turns a low-resolution ``PIL.Image`` into an RGB image exactly ``SCALE`` (4) times as
wide and as high, the scale MMSR works at, so results can be compared pixel for pixel::

    baseline = get_baseline("realesrgan", device="cuda", dtype=torch.float16)
    ok, reason = baseline.available()
    sr = baseline(lr, caption="a red barn in snow", seed=0, tile=256)
    sr = baseline.run(lr, settings)  # under MMSR's UpscaleSettings: what the app, the lab and the bench call

Keyword settings beyond ``caption`` and ``seed`` are the fields of the baseline's
``settings_type`` dataclass; unknown ones raise ``ValueError``. The ones that are also run
settings of MMSR (``shared``) keep MMSR's names and meanings (``guidance`` is w of eq. 4). Models
load lazily on the first call and are reused afterwards.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from PIL import Image

from mmsr.constants import SCALE
from mmsr.modalities.base import as_rgb
from mmsr.settings import UpscaleSettings


@dataclasses.dataclass
class NoSettings:
    """Settings of a baseline that has none."""


class Baseline:
    """Base class of the super-resolution baselines MMSR is compared with.

    Subclasses set the class attributes, override :meth:`upscale`, and, when they run a model,
    :meth:`_load_model` (called once by :meth:`load`) and :meth:`available`.

    Attributes:
        name: registry key, e.g. ``"realesrgan"``.
        label: what the UI shows, e.g. ``"Real-ESRGAN x4plus"``.
        uses_caption: whether the caption changes the result.
        settings_type: dataclass whose fields are the accepted keyword settings.
        shared: the fields of :class:`mmsr.settings.UpscaleSettings` that :meth:`run` passes on
            (same name, same meaning; ``None`` values are left to the baseline's default).
    """

    name: ClassVar[str]
    label: ClassVar[str]
    uses_caption: ClassVar[bool] = False
    settings_type: ClassVar[type] = NoSettings
    shared: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        self.device = torch.device(device)
        self.dtype = dtype
        self._model: Any = None

    def available(self) -> tuple[bool, str]:
        """Whether the baseline can run here, and if not, why (the reason is empty when it can)."""
        return True, ""

    def load(self) -> Any:
        """Load the model on first use; later calls return the same object."""
        if self._model is None:
            self._model = self._load_model()
        return self._model

    def _load_model(self) -> Any:
        return None

    def make_settings(self, **settings: Any) -> Any:
        """Build ``settings_type`` from keyword settings, rejecting unknown names."""
        known = [field.name for field in dataclasses.fields(self.settings_type)]
        unknown = sorted(set(settings) - set(known))
        if unknown:
            accepted = ", ".join(known) or "none"
            raise ValueError(f"{self.name} does not accept {unknown}; its settings are: {accepted}")
        return self.settings_type(**settings)

    def upscale(self, lr: Image.Image, *, caption: str, seed: int, settings: Any) -> Image.Image:
        """Super-resolve a validated RGB image; ``settings`` is a ``settings_type`` instance."""
        raise NotImplementedError

    def inputs(self, settings: UpscaleSettings) -> dict[str, Any]:
        """The keyword arguments :meth:`run` calls the baseline with: everything its output depends on."""
        shared = {k: getattr(settings, k) for k in self.shared if getattr(settings, k) is not None}
        return {"caption": settings.caption if self.uses_caption else "", "seed": settings.seed, **shared}

    def run(
        self, lr: Image.Image, settings: UpscaleSettings, callback: Callable[[int, int], None] | None = None
    ) -> Image.Image:
        """Super-resolve ``lr`` under MMSR's run settings; ``callback(step, total)`` reports progress."""
        if callback is not None:
            callback(0, 1)
        return self(lr, **self.inputs(settings))

    def __call__(self, lr: Image.Image, *, caption: str = "", seed: int = 0, **settings: Any) -> Image.Image:
        """Super-resolve ``lr`` by ``SCALE``: returns an RGB image of ``SCALE`` x its size."""
        lr = as_rgb(lr)
        sr = self.upscale(lr, caption=caption, seed=seed, settings=self.make_settings(**settings))
        expected = (lr.width * SCALE, lr.height * SCALE)
        if sr.size != expected:
            raise RuntimeError(f"{self.name} returned {sr.size}, expected {expected}")
        return sr if sr.mode == "RGB" else sr.convert("RGB")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(device={str(self.device)!r}, dtype={self.dtype})"
