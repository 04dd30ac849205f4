"""Run settings: one table of defaults, ranges and help, and the dataclass built from it.

:data:`SPECS` is the only place a run setting's default, type and range are written. The CLI's
argparse defaults, the app's widget bounds, the lab's sweep parser and the bench read them from
here. :class:`UpscaleSettings` validates (strictly: ``"yes"`` is not a boolean, 1.5 is not a seed)
when it is built, so every instance is valid and the layers below trust what they get.
"""

from __future__ import annotations

import math
import numbers
import unicodedata
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .constants import MODALITIES, TAU_RANGE
from .guidance import CFG_MODES

MAX_CAPTION_CHARS = 2000


@dataclass(frozen=True)
class Spec:
    """One run setting. For ``modalities`` and ``temperatures`` it describes each modality's value.

    ``optional``: ``None`` is accepted and means "the preset's"; ``step``: a widget's increment.
    """

    default: Any
    type: type
    help: str
    min: float | None = None
    max: float | None = None
    step: float | None = None
    choices: tuple[str, ...] = ()
    optional: bool = False

    @property
    def range(self) -> tuple[float, float]:
        return self.min, self.max

    def describe(self) -> str:
        """``help`` with the range or the choices, for ``--help`` and tooltips."""
        if self.choices:
            return f"{self.help} ({', '.join(self.choices)})"
        if self.min is not None:
            return f"{self.help} [{self.min}, {self.max}]"
        return self.help

    def check(self, name: str, value: Any) -> Any:
        """``value`` as this setting's type, or ``ValueError`` naming ``name``; never rounds or guesses.

        ``name`` is the field name (``cfg_mode``) or a phrase (``temperature of depth``).
        """
        name = name.replace("_", " ")
        if value is None and self.optional:
            return None
        value = _strict(name, value, self.type)
        if self.choices and value not in self.choices:
            raise ValueError(f"{name} must be one of {', '.join(self.choices)}, not {value!r}")
        if self.min is not None and not self.min <= value <= self.max:  # NaN fails here too
            raise ValueError(f"{name} must lie in [{self.min}, {self.max}], got {value}")
        return value


def _strict(name: str, value: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, bool) or type(value).__name__ == "bool_":  # numpy's bool too
            return bool(value)
        raise ValueError(f"{name} must be true or false, got {value!r}")
    if kind is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{name} must be text, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    if kind is int:
        if isinstance(value, numbers.Integral) or (math.isfinite(value) and float(value).is_integer()):
            return int(value)
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return float(value)


SPECS: dict[str, Spec] = {
    "caption": Spec("", str, "the caption (empty: the captioner's, when one is available)"),
    "negative_prompt": Spec("", str, "negative prompt of classifier-free guidance"),
    "cfg_mode": Spec("m-cfg", str, "guidance mode: the negative branch of eq. (4)", choices=CFG_MODES),
    "guidance": Spec(
        None, float, "guidance weight w of eq. (4); 0 = off (default: the preset's)", 0, 30, step=0.5, optional=True
    ),
    "steps": Spec(None, int, "denoising steps (default: the preset's)", 1, 200, step=1, optional=True),
    "strength": Spec(
        None,
        float,
        "1 = denoise from pure noise (paper); <1 starts from the noised LR (default: the preset's)",
        0.05,
        1,
        step=0.05,
        optional=True,
    ),  # fmt: skip
    "residual_scale": Spec(
        None,
        float,
        "share of the generated residual added to the stage-1 image: 1 = the model's estimate, "
        "0 = stage 1 alone (default: the checkpoint's)",
        0,
        1,
        step=0.05,
        optional=True,
    ),  # fmt: skip
    "seed": Spec(0, int, "seed of the diffusion noise", 0, 2**32 - 1, step=1),
    "modalities": Spec(True, bool, "use the modality (off = m_0)"),
    "temperatures": Spec(1.0, float, "attention temperature tau of eq. (5); smaller = stronger", *TAU_RANGE, step=0.1),
    "auto_caption": Spec(True, bool, "caption with the captioner when the caption is empty"),
    "refine": Spec(False, bool, "zero-modal refinement: maps from a first m_0-only pass"),
    "flat_guard": Spec(True, bool, "drop maps when the input looks flat"),
}
PER_MODALITY = ("modalities", "temperatures")
GUIDANCE_RANGE = SPECS["guidance"].range
STEPS_RANGE = SPECS["steps"].range
SEED_RANGE = SPECS["seed"].range


def spec(name: str) -> Spec:
    return SPECS[name]


def _default(name: str):
    value = SPECS[name].default
    if name in PER_MODALITY:
        return field(default_factory=lambda: dict.fromkeys(MODALITIES, value))
    return field(default=value)


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
        text = text[:MAX_CAPTION_CHARS].rstrip()  # idempotent: a record's caption reads back unchanged
    return text, notes


@dataclass(frozen=True)
class UpscaleSettings:
    """Everything that determines an MMSR output (with the LR image, preset and checkpoint).

    Built valid or not at all (``ValueError`` naming the first bad field; see :data:`SPECS`).
    ``modalities`` and ``temperatures`` always hold every modality (missing ones get the default).
    ``notes`` are for the user (e.g. a cut caption) and travel to the result, so every front door
    shows them; they are not a setting and are not exported.
    """

    caption: str = _default("caption")
    negative_prompt: str = _default("negative_prompt")
    cfg_mode: str = _default("cfg_mode")
    guidance: float = _default("guidance")
    steps: int | None = _default("steps")
    strength: float | None = _default("strength")
    residual_scale: float | None = _default("residual_scale")
    seed: int = _default("seed")
    modalities: dict[str, bool] = _default("modalities")
    temperatures: dict[str, float] = _default("temperatures")
    auto_caption: bool = _default("auto_caption")
    refine: bool = _default("refine")
    flat_guard: bool = _default("flat_guard")
    notes: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        clean = {name: SPECS[name].check(name, getattr(self, name)) for name in SPECS if name not in PER_MODALITY}
        for name in PER_MODALITY:
            clean[name] = _per_modality(name, getattr(self, name))
        notes = list(self.notes)
        for name in ("caption", "negative_prompt"):
            clean[name], cut = sanitize_text(clean[name])
            notes += [n.replace("caption", name.replace("_", " "), 1) for n in cut]
        clean["notes"] = tuple(dict.fromkeys(notes))
        for name, value in clean.items():
            object.__setattr__(self, name, value)

    def validated(self) -> UpscaleSettings:
        """Kept for callers written before validation moved into the constructor: returns self."""
        return self

    def to_dict(self) -> dict:
        """The settings as JSON-able values (without ``notes``)."""
        out = asdict(self)
        del out["notes"]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> UpscaleSettings:
        """From :meth:`to_dict` output (e.g. a JSON record); ``ValueError`` for anything else."""
        if not isinstance(data, dict):
            raise ValueError(f"settings must be an object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)} - {"notes"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown settings {sorted(unknown)}")
        return cls(**data)


def _per_modality(name: str, values: Any) -> dict:
    """``{modality: value}`` checked against ``SPECS[name]``, every modality present, in order."""
    if not isinstance(values, dict):
        raise ValueError(f"{name} must map modality names to values, got {values!r}")
    unknown = [k for k in values if k not in MODALITIES]
    if unknown:
        raise ValueError(f"unknown modality {unknown[0]!r}; expected one of {', '.join(MODALITIES)}")
    what = {"modalities": "switch of {}", "temperatures": "temperature of {}"}[name]
    s = SPECS[name]
    return {m: s.check(what.format(m), values.get(m, s.default)) for m in MODALITIES}


def parse_temperatures(text: str) -> dict[str, float]:
    """``"depth=0.5,seg=1,edges=2"`` -> ``{"depth": 0.5, "seg": 1.0, "edges": 2.0}``.

    The one temperature grammar: ``name=value`` pairs separated by commas (the lab's sweeps give
    several values of one modality as ``depth=0.5/1/2``, see :func:`parse_temperature_sweep`).
    """
    out = {}
    for name, values in parse_temperature_sweep(text).items():
        if len(values) > 1:
            raise ValueError(f"temperature of {name}: one value here, got {'/'.join(f'{v:g}' for v in values)}")
        out[name] = values[0]
    return out


def parse_temperature_sweep(text: str) -> dict[str, list[float]]:
    """``"depth=0.5/1/2,seg=2"`` -> ``{"depth": [0.5, 1.0, 2.0], "seg": [2.0]}``; ``all=`` means every modality."""
    out: dict[str, list[float]] = {}
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        name, sep, values = (s.strip() for s in part.partition("="))
        if not sep:
            raise ValueError(f"temperature {part!r} must look like name=value, e.g. depth=0.5")
        if name not in MODALITIES and name != "all":
            raise ValueError(
                f"temperature {part!r}: unknown modality {name!r}; expected {', '.join(MODALITIES)} or all"
            )
        taus = []
        for value in filter(None, (v.strip() for v in values.split("/"))):
            try:
                taus.append(float(value))
            except ValueError:
                raise ValueError(f"temperature {part!r}: {value!r} is not a number") from None
        if not taus:
            raise ValueError(f"temperature {part!r} has no value")
        for m in MODALITIES if name == "all" else [name]:
            out[m] = list(dict.fromkeys([*out.get(m, []), *taus]))
    return out
