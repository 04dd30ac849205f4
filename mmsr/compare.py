"""MMSR next to one baseline on one LR image, and run records that reproduce a result.

``compare`` runs MMSR and the chosen baseline with the same seed and settings, then scores both
alike (the scorer's metrics plus LR-consistency and its residual heatmap). ``run_record`` writes
everything that determines the MMSR output (settings, preset, checkpoint hashes, caption, modality
sources, input hash) as a JSON-able dict; ``settings_from_record`` reads it back.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from baselines import BicubicBaseline, TextOnlyMMSRBaseline

from .conditioning import MODALITIES
from .constants import SCALE  # noqa: F401 - the app's import; the one SCALE lives in constants
from .engine import Engine, UpscaleResult
from .metrics import METRICS, Score, Scorer, lr_consistency, residual_heatmap
from .settings import UpscaleSettings

# The paper's text-guided ablation: the registered baseline, on the engine that runs MMSR.
TEXT_ONLY = TextOnlyMMSRBaseline.name
TEXT_ONLY_LABEL = TextOnlyMMSRBaseline.label
RECORD_FORMAT = "mmsr-lab/run-v1"
RECORD_FIELDS = {"preset": str, "baseline": str, "checkpoint": dict, "input": dict, "modalities": dict}
# progress(stage, step, total); raise from it to cancel
Progress = Callable[[str, int, int], None]


@dataclass
class Comparison:
    """Both super-resolved images of one run and how they score.

    ``scores`` and ``heatmaps`` are keyed ``"mmsr"`` and ``"baseline"``; ``lr_psnr`` likewise.
    """

    mmsr: UpscaleResult
    baseline: Image.Image
    baseline_name: str
    baseline_label: str
    bicubic: Image.Image
    scores: dict[str, dict[str, Score]] = field(default_factory=dict)
    lr_psnr: dict[str, float] = field(default_factory=dict)
    heatmaps: dict[str, Image.Image] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def pixel_sha256(image: Image.Image) -> str:
    """Hash of the RGB pixels and size (not of an encoding), so PNG re-saves keep it."""
    rgb = image.convert("RGB")
    return hashlib.sha256(repr(rgb.size).encode() + np.asarray(rgb).tobytes()).hexdigest()


def file_sha256(path: str | Path, chunk: int = 2**20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_hashes(path: str | Path | None) -> dict[str, str]:
    """sha256 of every ``*.safetensors`` file under a checkpoint folder, keyed by relative path."""
    if path is None or not Path(path).is_dir():
        return {}
    root = Path(path)
    return {str(p.relative_to(root)): file_sha256(p) for p in sorted(root.rglob("*.safetensors"))}


def checkpoint_digest(hashes: dict[str, str]) -> str:
    """One sha256 over the per-file hashes (``""`` without files): the weights' fingerprint."""
    if not hashes:
        return ""
    return hashlib.sha256("".join(f"{k}\t{v}\n" for k, v in sorted(hashes.items())).encode()).hexdigest()


def baseline_options(baselines: dict[str, Any]) -> dict[str, tuple[str, bool, str]]:
    """``{name: (label, available, reason)}``, text-only MMSR first (it needs nothing extra)."""
    options = {TEXT_ONLY: (TEXT_ONLY_LABEL, True, "")}
    for name, baseline in baselines.items():
        if name == TEXT_ONLY:
            continue
        ok, reason = baseline.available()
        options[name] = (baseline.label, ok, reason)
    return options


def component_status(
    engine: Engine, scorer: Scorer | None, options: dict, probe: Image.Image
) -> list[tuple[str, str, bool, str]]:
    """``(kind, component, available, source or why not)`` for each extractor, baseline, metric.

    Extractors are tried on ``probe`` (loading their models once, like their first use would);
    ``options`` is :func:`baseline_options`.
    """
    results = {"caption": engine.caption(probe)}
    results.update(engine.extract(probe, dict.fromkeys(MODALITIES, True), flat_guard=False))
    rows = [("extractor", k, r.available, r.source if r.available else r.reason) for k, r in results.items()]
    rows += [("baseline", label, ok, why) for label, ok, why in options.values()]
    available = scorer.availability() if scorer is not None else {}
    rows += [("metric", METRICS[k].label, ok, why) for k, (ok, why) in available.items()]
    return rows


class BaselineCache:
    """LRU of baseline outputs keyed by everything that changes them."""

    def __init__(self, max_entries: int = 16):
        self.max_entries = max_entries
        self._items: OrderedDict[str, Image.Image] = OrderedDict()

    def get_or_run(self, key: str, run: Callable[[], Image.Image]) -> tuple[Image.Image, bool]:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key], True
        image = run()
        self._items[key] = image
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)
        return image, False


def with_text_only(engine: Engine, baselines: dict[str, Any] | None) -> dict[str, Any]:
    """``baselines`` with text-only MMSR on ``engine`` first (it needs nothing but the engine)."""
    others = {k: v for k, v in (baselines or {}).items() if k != TEXT_ONLY}
    return {TEXT_ONLY: TextOnlyMMSRBaseline(engine=engine), **others}


def check_baseline(name: str, baselines: dict[str, Any]) -> Any:
    """The baseline registered as ``name`` if it can run here, else ``ValueError`` saying why."""
    if name not in baselines:
        raise ValueError(f"unknown baseline {name!r}; choose one of {', '.join(baselines)}")
    ok, reason = baselines[name].available()
    if not ok:
        raise ValueError(f"{baselines[name].label} is unavailable here: {reason}")
    return baselines[name]


def run_baseline(
    engine: Engine,
    name: str,
    baselines: dict[str, Any],
    lr: Image.Image,
    settings: UpscaleSettings,
    caption: str,
    progress: Progress | None = None,
    cache: BaselineCache | None = None,
) -> tuple[Image.Image, str, bool]:
    """The baseline's 4x image, its label, and whether it came from ``cache``.

    Every baseline, text-only MMSR included, runs through :meth:`baselines.Baseline.run` under MMSR's
    settings, with the caption MMSR used and MMSR's number of steps.
    """
    baselines = with_text_only(engine, baselines)
    baseline = check_baseline(name, baselines)
    steps = engine.num_steps(settings)
    settings = replace(settings, caption=caption, auto_caption=False, steps=steps)

    def step(i: int, total: int) -> None:
        if progress is not None:
            progress(name, i, total)

    def run() -> Image.Image:
        shared = engine.baseline_from_stage1(name, lr)  # MMSR's stage 1 already made this image
        return shared if shared is not None else baseline.run(lr, settings, step)

    if cache is None:
        return run(), baseline.label, False
    key = f"{name}|{pixel_sha256(lr)}|{sorted(baseline.inputs(settings).items())}"
    image, hit = cache.get_or_run(key, run)
    return image, baseline.label, hit


def _score(scorer: Scorer | None, sr: Image.Image, lr: Image.Image, hr: Image.Image | None) -> dict[str, Score]:
    return {} if scorer is None else scorer.score(sr, lr=lr, hr=hr)


def compare(
    engine: Engine,
    lr: Image.Image,
    settings: UpscaleSettings,
    *,
    baseline: str = TEXT_ONLY,
    baselines: dict[str, Any] | None = None,
    scorer: Scorer | None = None,
    user_maps: dict | None = None,
    hr: Image.Image | None = None,
    progress: Progress | None = None,
    cache: BaselineCache | None = None,
) -> Comparison:
    """Super-resolve ``lr`` with MMSR and with ``baseline`` (same seed and settings) and score both.

    The baseline gets the caption MMSR used (the captioner's when ``settings.caption`` is empty).
    """
    check_baseline(baseline, with_text_only(engine, baselines))  # fail before the diffusion, not after

    def mmsr_step(i: int, total: int) -> None:
        if progress is not None:
            progress("mmsr", i, total)

    mmsr = engine.upscale(lr, settings, user_maps=user_maps, callback=mmsr_step)
    timings = {f"mmsr/{k}": v for k, v in mmsr.timings.items()}
    start = time.perf_counter()
    image, label, hit = run_baseline(engine, baseline, baselines, lr, settings, mmsr.caption, progress, cache)
    timings["baseline" + (" (cached)" if hit else "")] = time.perf_counter() - start
    out = Comparison(mmsr, image, baseline, label, BicubicBaseline()(lr), timings=timings, warnings=list(mmsr.warnings))
    if progress is not None:
        progress("scores", 0, 1)
    start = time.perf_counter()
    for key, sr in (("mmsr", mmsr.image), ("baseline", image)):
        out.lr_psnr[key], residual = lr_consistency(sr, lr)
        out.heatmaps[key] = residual_heatmap(residual, sr.size)
        out.scores[key] = _score(scorer, sr, lr, hr)
    timings["scores"] = time.perf_counter() - start
    return out


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def score_rows(comparison: Comparison) -> list[list[str]]:
    """``[metric label, ↑ or ↓, MMSR value, baseline value, why unavailable]`` per metric."""
    rows = []
    for name, info in METRICS.items():
        ours, theirs = comparison.scores["mmsr"].get(name), comparison.scores["baseline"].get(name)
        if ours is not None and theirs is not None:
            note = ours.reason or theirs.reason
            rows.append([info.label, "↓" if info.lower_better else "↑", _fmt(ours.value), _fmt(theirs.value), note])
    if not rows:  # no scorer: LR-consistency is computed anyway
        psnr = comparison.lr_psnr
        rows.append([METRICS["lr_psnr"].label, "↑", _fmt(psnr["mmsr"]), _fmt(psnr["baseline"]), ""])
    return rows


def timing_rows(comparison: Comparison) -> list[list[str]]:
    """``[stage, seconds, note]``; the note marks extractor results that came from the cache."""
    cached = {f"mmsr/extract_{k}" for k, r in comparison.mmsr.modalities.items() if r.extras.get("cached")}
    return [
        [stage, f"{seconds:.3f}", "cache hit" if stage in cached else ""]
        for stage, seconds in comparison.timings.items()
        if not stage.endswith("unet_step")
    ]


def run_record(
    comparison: Comparison, *, preset: str, checkpoint: str | None = None, hashes: dict[str, str] | None = None
) -> dict[str, Any]:
    """Everything that determines the MMSR output, as a JSON-able dict (see :func:`settings_from_record`).

    The caption is stored as used and ``auto_caption`` off, so a captioner elsewhere cannot change it.
    The checkpoint is named by its preset and weight hashes (and a hub repo id), never by a local
    path: the record is handed to visitors.
    """
    result = comparison.mmsr
    settings = replace(result.settings, caption=result.caption, auto_caption=False)
    weights = {"digest": checkpoint_digest(hashes or {}), "sha256": dict(hashes or {})}
    if checkpoint is not None and _is_repo_id(str(checkpoint)):
        weights = {"repo": str(checkpoint), **weights}
    return {
        "format": RECORD_FORMAT,
        "preset": preset,
        "checkpoint": weights,
        "input": {"sha256": pixel_sha256(result.lr), "size": list(result.lr.size)},
        "settings": settings.to_dict(),
        "baseline": comparison.baseline_name,
        "modalities": result.sources(),
        "maps_sha256": {k: pixel_sha256(r.map) for k, r in result.modalities.items() if r.available},
        "output": {"sha256": pixel_sha256(result.image), "size": list(result.image.size)},
    }


def _is_repo_id(name: str) -> bool:
    """``owner/name`` of the Hugging Face hub, not a folder on this machine."""
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).exists()


def settings_from_record(record: dict[str, Any]) -> tuple[UpscaleSettings, str, list[str]]:
    """``(settings, baseline, notes)`` from a :func:`run_record` dict; ``ValueError`` if it is not one."""
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise ValueError(f'not an MMSR Lab run record (expected "format": "{RECORD_FORMAT}")')
    for key, kind in RECORD_FIELDS.items():  # callers read these fields too: their types are checked here, once
        if record.get(key) is not None and not isinstance(record[key], kind):
            raise ValueError(
                f"{key} must be {'a string' if kind is str else 'an object'}, got {type(record[key]).__name__}"
            )
    settings = UpscaleSettings.from_dict(record.get("settings") or {})
    notes = []
    user = [k for k, source in (record.get("modalities") or {}).items() if source == "user"]
    if user:
        notes.append(f"the run used your own {', '.join(user)} map(s): upload them again to reproduce it")
    return settings, str(record.get("baseline") or TEXT_ONLY), notes
