"""The one interface every baseline follows.

A baseline turns a low-resolution ``PIL.Image`` into an RGB image exactly ``SCALE`` (4) times as
wide and as high, the scale MMSR works at, so results can be compared pixel for pixel::

    baseline = get_baseline("realesrgan", device="cuda", dtype=torch.float16)
    ok, reason = baseline.available()
    sr = baseline(lr, caption="a red barn in snow", seed=0, tile=256)

Keyword settings beyond ``caption`` and ``seed`` are the fields of the baseline's
``settings_type`` dataclass; unknown ones raise ``ValueError``. Models load lazily on the first
call and are reused afterwards.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from PIL import Image

SCALE = 4


@dataclasses.dataclass
class NoSettings:
    """Settings of a baseline that has none."""


def check_lr(lr: Image.Image) -> Image.Image:
    """Validate a low-resolution input and return it as RGB."""
    if not isinstance(lr, Image.Image):
        raise TypeError(f"the low-resolution input must be a PIL image, got {type(lr).__name__}")
    if lr.width < 1 or lr.height < 1:
        raise ValueError(f"the low-resolution input is empty ({lr.width}x{lr.height})")
    return lr if lr.mode == "RGB" else lr.convert("RGB")


class Baseline:
    """Base class of the super-resolution baselines MMSR is compared with.

    Subclasses set the class attributes, override :meth:`upscale`, and, when they run a model,
    :meth:`_load_model` (called once by :meth:`load`) and :meth:`available`.

    Attributes:
        name: registry key, e.g. ``"realesrgan"``.
        label: what the UI shows, e.g. ``"Real-ESRGAN x4plus"``.
        uses_caption: whether the caption changes the result.
        settings_type: dataclass whose fields are the accepted keyword settings.
    """

    name: ClassVar[str]
    label: ClassVar[str]
    uses_caption: ClassVar[bool] = False
    settings_type: ClassVar[type] = NoSettings

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

    def __call__(self, lr: Image.Image, *, caption: str = "", seed: int = 0, **settings: Any) -> Image.Image:
        """Super-resolve ``lr`` by ``SCALE``: returns an RGB image of ``SCALE`` x its size."""
        lr = check_lr(lr)
        sr = self.upscale(lr, caption=caption, seed=seed, settings=self.make_settings(**settings))
        expected = (lr.width * SCALE, lr.height * SCALE)
        if sr.size != expected:
            raise RuntimeError(f"{self.name} returned {sr.size}, expected {expected}")
        return sr if sr.mode == "RGB" else sr.convert("RGB")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(device={str(self.device)!r}, dtype={self.dtype})"
