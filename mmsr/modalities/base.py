"""The one interface every modality extractor follows.

An extractor looks at a low-resolution image and returns a :class:`ModalityResult`: either a map
(spatial modalities: a 256x256 RGB image the modality tokenizer consumes) or a caption, together
with the backend that produced it and the time it took; or *absent*, with a reason a person can
read. An absent spatial modality becomes 256 copies of the null token ``m_0`` in the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image

SPATIAL_MODALITIES = ("depth", "seg", "edges")
MAP_SIZE = 256


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
