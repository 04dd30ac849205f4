"""One interface over everything the lab compares: MMSR (the engine), text-only MMSR, the baselines.

A :class:`Method` takes an LR image, a caption, a seed and a :class:`Setting` and returns a 4x image
with its timings. Each method declares the setting ``axes`` it consumes; the planner projects every
setting onto them, so a baseline that ignores the guidance is run once, not once per guidance.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from PIL import Image

from baselines.mmsr_text_only import TextOnlyMMSRBaseline

from ..conditioning import MODALITIES
from ..presets import CHECKPOINTS
from ..settings import SPECS, UpscaleSettings
from .results import LEGACY_METHODS

TEXT_ONLY = TextOnlyMMSRBaseline.name  # text-only MMSR: the engine's own weights with every modality m_0
TWIN = "lite-text-only"
TWIN_CHECKPOINT = CHECKPOINTS / TWIN
# axes of the sweep a method can consume (``caption`` = the caption kind: true, swap, empty)
MMSR_AXES = frozenset({"cfg_mode", "guidance", "subset", "temperatures", "caption"})
TEXT_AXES = frozenset({"cfg_mode", "guidance", "caption"})
SETTING_AXES = ("cfg_mode", "guidance")  # the sweep axes that are also run settings a baseline may share
WRONG_CONTEXT = "wrong-context"
# subset -> (modalities switched to m_0, caption dropped); ``wrong-context``: every map is another image's
SUBSETS = {
    "all": (frozenset(), False),
    "text-only": (frozenset(MODALITIES), False),
    "none": (frozenset(MODALITIES), True),
    "-text": (frozenset(), True),
    **{f"-{m}": (frozenset({m}), False) for m in MODALITIES},
    WRONG_CONTEXT: (frozenset(), False),
}


def check_subset(name: str) -> str:
    if name not in SUBSETS:
        raise ValueError(f"unknown modality subset {name!r}; choose from {', '.join(SUBSETS)}")
    return name


@dataclass(frozen=True)
class Setting:
    """One point of the sweep; fields a method does not consume are blank (``""``/``None``).

    ``temperatures`` holds only the modalities whose tau differs from 1, sorted by name.
    """

    cfg_mode: str = ""
    guidance: float | None = None
    subset: str = ""
    temperatures: tuple[tuple[str, float], ...] = ()
    caption: str = "true"

    def project(self, axes: frozenset[str]) -> Setting:
        """This setting as seen by a method that consumes only ``axes``."""
        blank = Setting(caption="")
        return replace(self, **{f.name: getattr(blank, f.name) for f in fields(self) if f.name not in axes})

    def tau(self, modality: str) -> float:
        return dict(self.temperatures).get(modality, SPECS["temperatures"].default)

    def settings(
        self, *, caption: str, seed: int, steps: int | None, residual_scale: float | None = None
    ) -> UpscaleSettings:
        """The run settings of this point (blank fields: the defaults of :data:`mmsr.settings.SPECS`);
        ``steps`` and ``residual_scale`` are the run's own, the same at every point."""
        off, drop_text = SUBSETS[self.subset or "all"]
        return UpscaleSettings(
            caption="" if drop_text else caption,
            cfg_mode=self.cfg_mode or SPECS["cfg_mode"].default,
            guidance=self.guidance,
            steps=steps,
            residual_scale=residual_scale,
            seed=seed,
            modalities={m: m not in off for m in MODALITIES},
            temperatures={m: self.tau(m) for m in MODALITIES},
            auto_caption=False,  # the lab resolves captions itself, the same for every method
        )

    def slug(self) -> str:
        """A short file-name-safe name, e.g. ``m-cfg_w4_all_depth0.5_cap-swap``."""
        parts = [
            self.cfg_mode,
            "" if self.guidance is None else f"w{self.guidance:g}",
            self.subset,
        ]
        parts += [f"{k}{v:g}" for k, v in self.temperatures]
        parts.append(f"cap-{self.caption}" if self.caption else "")
        return "_".join(p for p in parts if p) or "default"


@dataclass
class MethodOutput:
    image: Image.Image
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class Method:
    """A named super-resolution method with ``available()`` and ``run(...)``."""

    name: str
    label: str
    uses_caption: bool = False
    axes: frozenset[str] = frozenset()

    def available(self) -> tuple[bool, str]:
        return True, ""

    def load(self) -> str:
        """Load weights now, so the first row's timing is not the loading; returns why it failed."""
        return ""

    def run(
        self,
        lr: Image.Image,
        *,
        caption: str,
        seed: int,
        setting: Setting,
        maps: dict[str, Image.Image] | None = None,
        context: Image.Image | None = None,
    ) -> MethodOutput:
        """``maps``: the user's maps (modality -> image), used instead of the extractors';
        ``context``: another image whose extracted maps replace ``lr``'s (the wrong-context
        ablation, where ``maps`` are that image's user maps too)."""
        raise NotImplementedError


class EngineMethod(Method):
    """MMSR through :class:`mmsr.engine.Engine`: every axis of the sweep applies."""

    uses_caption = True
    axes = MMSR_AXES

    def __init__(
        self,
        engine,
        *,
        name: str = "mmsr",
        label: str = "MMSR",
        steps: int | None = None,
        residual_scale: float | None = None,
    ):
        self.engine, self.name, self.label, self.steps = engine, name, label, steps
        self.residual_scale = residual_scale

    def run(
        self,
        lr: Image.Image,
        *,
        caption: str,
        seed: int,
        setting: Setting,
        maps: dict[str, Image.Image] | None = None,
        context: Image.Image | None = None,
    ) -> MethodOutput:
        settings = setting.settings(caption=caption, seed=seed, steps=self.steps, residual_scale=self.residual_scale)
        maps = dict(maps or {})
        if context is not None:
            # another image's maps, stretched onto lr: its user maps, the extractors' for the rest
            maps = {k: m.resize(lr.size, Image.Resampling.NEAREST) for k, m in maps.items()}
            maps = {**self.context_maps(context, lr, settings, skip=set(maps)), **maps}
        result = self.engine.upscale(lr, settings, user_maps=maps or None)
        return MethodOutput(result.image, dict(result.timings), list(result.warnings))

    def context_maps(
        self, context: Image.Image, lr: Image.Image, settings: UpscaleSettings, skip: set[str] = frozenset()
    ) -> dict:
        """The maps the extractors make of ``context`` at ``lr``'s size (so they fit ``lr`` as user
        maps), except those in ``skip``."""
        context = context.convert("RGB").resize(lr.size, Image.Resampling.BICUBIC)
        enabled = {k: on and k not in skip for k, on in settings.modalities.items()}
        results = self.engine.extract(context, enabled, flat_guard=settings.flat_guard)
        return {k: r.map.resize(lr.size, Image.Resampling.NEAREST) for k, r in results.items() if r.available}


class BaselineMethod(Method):
    """A member of :data:`baselines.BASELINES`; text-only MMSR also gets the guidance settings."""

    def __init__(
        self, baseline, *, name: str | None = None, steps: int | None = None, residual_scale: float | None = None
    ):
        self.baseline = baseline
        self.name = name or baseline.name
        self.label = baseline.label
        self.uses_caption = baseline.uses_caption
        self.steps, self.residual_scale = steps, residual_scale
        shared = [a for a in SETTING_AXES if a in baseline.shared]
        self.axes = frozenset([*shared, *(["caption"] if self.uses_caption else [])])

    def available(self) -> tuple[bool, str]:
        return self.baseline.available()

    def load(self) -> str:
        try:
            self.baseline.load()
        except Exception as e:  # noqa: BLE001 - a baseline that cannot load is reported, not fatal
            return f"could not load: {type(e).__name__}: {e}"
        return ""

    def run(
        self,
        lr: Image.Image,
        *,
        caption: str,
        seed: int,
        setting: Setting,
        maps: dict[str, Image.Image] | None = None,
        context: Image.Image | None = None,
    ) -> MethodOutput:
        """Baselines see only the LR and the caption: ``maps`` and ``context`` do not apply."""
        start = time.perf_counter()
        settings = setting.settings(caption=caption, seed=seed, steps=self.steps, residual_scale=self.residual_scale)
        image = self.baseline.run(lr, settings)
        return MethodOutput(image, {"method": time.perf_counter() - start})


def method_names(requested: list[str]) -> list[str]:
    """Expand ``all`` and aliases; keep order, drop repeats, reject unknown names."""
    from baselines import BASELINES

    from ..cli import deprecated

    known = ["mmsr", TEXT_ONLY, *[b for b in BASELINES if b != TEXT_ONLY], TWIN]
    out: list[str] = []
    for name in requested:
        if name in LEGACY_METHODS:
            deprecated(f"method {name!r}", repr(LEGACY_METHODS[name]))
            name = LEGACY_METHODS[name]
        expanded = known if name == "all" else [name]
        for n in expanded:
            if n not in known:
                raise ValueError(f"unknown method {n!r}; choose from all, {', '.join(known)}")
            if n not in out:
                out.append(n)
    return out


@dataclass
class MethodSet:
    methods: dict[str, Method]
    unavailable: dict[str, str]
    engine: object | None


def build_methods(
    names: list[str],
    *,
    preset: str,
    checkpoint: str | None,
    device: str,
    steps: int | None,
    engine=None,
    residual_scale: float | None = None,
) -> MethodSet:
    """Instantiate the requested methods on ``device``; unavailable ones come back with a reason.

    The engine (MMSR's weights) is shared by ``mmsr`` and ``text-only-mmsr``; ``lite-text-only`` is the
    separately trained text-only twin in ``checkpoints/lite-text-only`` (lite preset only).
    ``steps`` and ``residual_scale`` (``None``: the preset's and the checkpoint's) apply to every MMSR model.
    """
    fixed = dict(steps=steps, residual_scale=residual_scale)
    from baselines import get_baseline

    from ..engine import Engine

    names = method_names(names)
    if engine is None and any(n in ("mmsr", TEXT_ONLY) for n in names):
        engine = Engine.load(preset, checkpoint=checkpoint, device=device)
    methods: dict[str, Method] = {}
    unavailable: dict[str, str] = {}
    for name in names:
        if name == "mmsr":
            methods[name] = EngineMethod(engine, **fixed)
        elif name == TEXT_ONLY:
            methods[name] = BaselineMethod(get_baseline(TEXT_ONLY, engine=engine, device=device), **fixed)
        elif name == TWIN:
            reason = _twin_blocker(preset)
            if reason:
                unavailable[name] = reason
                continue
            twin = Engine.load(preset, checkpoint=str(TWIN_CHECKPOINT), device=device)
            methods[name] = BaselineMethod(
                get_baseline(TEXT_ONLY, engine=twin, device=device),
                name=TWIN,
                **fixed,
            )
            methods[name].label = "Text-only model (lite, trained without modalities)"
        else:
            methods[name] = BaselineMethod(get_baseline(name, device=device))
    for name in list(methods):
        ok, reason = methods[name].available()
        if ok:
            reason = methods[name].load()
        if reason:
            unavailable[name] = reason
            del methods[name]
    return MethodSet(methods, unavailable, engine)


def _twin_blocker(preset: str) -> str:
    if preset != "lite":
        return f"the text-only twin exists for the lite preset only (this run uses {preset})"
    if not Path(TWIN_CHECKPOINT).is_dir():
        return f"{TWIN_CHECKPOINT} does not exist (the text-only twin has not been trained)"
    return ""
