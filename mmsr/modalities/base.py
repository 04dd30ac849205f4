"""The one interface every modality extractor follows.

An extractor looks at a low-resolution image and returns a :class:`ModalityResult`: either a map
(spatial modalities: a 256x256 RGB image the modality tokenizer consumes) or a caption, together
with the backend that produced it and the time it took; or *absent*, with a reason a person can
read. An absent spatial modality becomes 256 copies of the null token ``m_0`` in the pipeline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from PIL import Image

from ..constants import MAP_SIZE  # noqa: F401 - re-exported for the extractors
from ..constants import MODALITIES as SPATIAL_MODALITIES  # noqa: F401 - the maps; the caption is not one


@dataclass
class ModalityResult:
    """What one extractor produced for one image.

    Attributes:
        name: ``"depth"``, ``"seg"``, ``"edges"`` or ``"caption"``.
        map: 256x256 RGB ``PIL.Image`` for the tokenizer (spatial modalities), else ``None``.
        raw: the raw output for display (numpy depth or label map, caption text), or ``None``.
        source: the backend that produced it (``"canny"``, ``"depth-anything-v2"``, ``"user"``...).
        seconds: wall time of the extraction.
        reason: why the modality is absent (``None`` when it is present).
        text: the caption (caption modality only).
        extras: backend details for display (thresholds, flatness statistics, ``cached``).
    """

    name: str
    map: Image.Image | None = None
    raw: Any = None
    source: str = ""
    seconds: float = 0.0
    reason: str | None = None
    text: str | None = None
    extras: dict = field(default_factory=dict)

    @property
    def available(self) -> bool:
        return self.reason is None and (self.map is not None or self.text is not None)

    @classmethod
    def absent(cls, name: str, reason: str, source: str = "", seconds: float = 0.0) -> ModalityResult:
        return cls(name=name, source=source or "m_0", reason=reason, seconds=seconds)


class BackendUnavailable(RuntimeError):
    """A backend cannot run here (no user map, offline, no API key...); the message says why."""


Backend = Callable[[], ModalityResult]


def as_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as RGB; ``TypeError`` for anything else, ``ValueError`` for an empty image."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(image).__name__}")
    if image.width < 1 or image.height < 1:
        raise ValueError(f"image is {image.width}x{image.height}: nothing to extract from")
    return image if image.mode == "RGB" else image.convert("RGB")


class ModalityExtractor:
    """One modality, several backends tried in priority order (the user's map first).

    Subclasses set ``name`` and ``source`` and implement :meth:`from_image` (and :meth:`from_user`),
    or override :meth:`backends`; models load lazily on first use and are reused. Any backend failure becomes part of the *absent* reason, so the pipeline falls back to
    ``m_0`` and says why instead of crashing.

    Args:
        device: where models run (``"cpu"``, ``"cuda"``, a ``torch.device``).
        dtype: model dtype; ``None`` means ``torch.float32``.
    """

    name: ClassVar[str] = ""
    source: ClassVar[str] = ""

    def __init__(self, device: Any = "cpu", dtype: Any = None):
        self.device = device
        self.dtype = dtype

    def backends(self, image: Image.Image, user_map: Any, upscaled: bool) -> list[tuple[str, Backend]]:
        """``(source, run)`` pairs in priority order; ``run()`` returns a result or raises.

        By default: the user's map (when given), then the extractor's own ``source``.
        """
        user = [] if user_map is None else [("user", lambda: self.from_user(user_map))]
        return [*user, (self.source, lambda: self.from_image(image, upscaled))]

    def from_user(self, user_map: Any) -> ModalityResult:
        """The result for the user's own map; ``ValueError`` when it is not usable."""
        raise BackendUnavailable(f"{self.name}: user maps are not supported")

    def from_image(self, image: Image.Image, upscaled: bool) -> ModalityResult:
        """The result of the extractor's own backend (a model, Canny...) on an RGB image."""
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """Everything besides the inputs that changes the output (part of the cache key)."""
        return {"device": str(self.device), "dtype": str(self.dtype)}

    def __call__(self, image: Image.Image, *, user_map: Any = None, upscaled: bool = False) -> ModalityResult:
        """Run the backends on ``image`` (any PIL image: an LR or an SR result) until one succeeds.

        Args:
            image: the input picture.
            user_map: the user's own map (or caption text) for this modality, tried first.
            upscaled: ``image`` is already at output scale (zero-modal refinement), so no extra
                bicubic x4 is applied where a backend would otherwise upsample.
        """
        image = as_rgb(image)
        start = time.perf_counter()
        reasons = []
        for source, run in self.backends(image, user_map, upscaled):
            try:
                result = run()
            except BackendUnavailable as e:
                reasons.append(str(e))
            except Exception as e:  # noqa: BLE001 - any backend failure means m_0, with the reason shown
                reasons.append(f"{source} failed: {type(e).__name__}: {e}")
            else:
                result.source, result.seconds = source, time.perf_counter() - start
                return result
        reason = "; ".join(reasons) or "no backend available"
        return ModalityResult.absent(self.name, reason, seconds=time.perf_counter() - start)
