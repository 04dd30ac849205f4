"""Run settings as plain dataclasses, validated early with messages a user understands."""

from __future__ import annotations

import unicodedata
from dataclasses import asdict, dataclass, field, fields

from .constants import MODALITIES, TAU_RANGE
from .guidance import check_cfg_mode

MAX_CAPTION_CHARS = 2000
GUIDANCE_RANGE = (0.0, 30.0)
STEPS_RANGE = (1, 200)
SEED_RANGE = (0, 2**32 - 1)


def sanitize_text(text: str) -> tuple[str, list[str]]:
    """Drop control characters, collapse whitespace, cap the length (the encoder truncates further).

    Returns the text and notes for the user (the cut, if any). Not the captioner's ``clean_caption``,
    which strips a VLM's preamble.
    """
    notes = []
    text = "".join(" " if unicodedata.category(c).startswith("C") else c for c in str(text or ""))
    text = " ".join(text.split())
    if len(text) > MAX_CAPTION_CHARS:
        notes.append(f"caption was {len(text)} characters; kept the first {MAX_CAPTION_CHARS}")
        text = text[:MAX_CAPTION_CHARS]
    return text, notes


@dataclass
class UpscaleSettings:
    """Everything that determines an MMSR output (with the LR image, preset and checkpoint)."""

    caption: str = ""
    negative_prompt: str = ""
    cfg_mode: str = "m-cfg"
    guidance: float = 4.0
    steps: int | None = None
    strength: float | None = None
    seed: int = 0
    modalities: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(MODALITIES, True))
    temperatures: dict[str, float] = field(default_factory=lambda: dict.fromkeys(MODALITIES, 1.0))
    auto_caption: bool = True
    refine: bool = False
    flat_guard: bool = True

    def validated(self) -> UpscaleSettings:
        """Raise ``ValueError`` naming the first bad field; return self with cleaned captions."""
        check_cfg_mode(self.cfg_mode)
        _check_range("guidance", self.guidance, GUIDANCE_RANGE)
        if self.steps is not None:
            _check_range("steps", self.steps, STEPS_RANGE, integer=True)
        _check_range("seed", self.seed, SEED_RANGE, integer=True)
        if self.strength is not None:
            _check_range("strength", self.strength, (0.05, 1.0))
        for name in (*self.modalities, *self.temperatures):
            if name not in MODALITIES:
                raise ValueError(f"unknown modality {name!r}; expected one of {', '.join(MODALITIES)}")
        for name, tau in self.temperatures.items():
            _check_range(f"temperature of {name}", tau, TAU_RANGE)
        self.caption, _ = sanitize_text(self.caption)
        self.negative_prompt, _ = sanitize_text(self.negative_prompt)
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> UpscaleSettings:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown settings {sorted(unknown)}")
        return cls(**data).validated()


def _check_range(name: str, value, bounds: tuple, integer: bool = False) -> None:
    lo, hi = bounds
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and int(value) != value):
        raise ValueError(f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must lie in [{lo}, {hi}], got {value}")


def parse_temperatures(text: str) -> dict[str, float]:
    """``"depth=0.5,seg=1,edges=2"`` -> ``{"depth": 0.5, "seg": 1.0, "edges": 2.0}``."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"temperature {part!r} must look like name=value, e.g. depth=0.5")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"temperature {part!r}: {value!r} is not a number") from None
    return out
