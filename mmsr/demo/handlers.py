"""The demo's handlers: plain values in, ``{field name: value}`` out, no UI library.

``app.py`` names every component by a field name and wires these methods to them; a handler
returns only the fields it changes. A problem the visitor can fix raises :class:`DemoError` (shown
once); notes for the visitor travel in the returned text, never as extra pop-ups.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ..compare import (
    SCALE,
    TEXT_ONLY,
    BaselineCache,
    baseline_options,
    checkpoint_digest,
    checkpoint_hashes,
    compare,
    component_status,
    pixel_sha256,
    run_record,
    settings_from_record,
    timing_rows,
)
from ..conditioning import MODALITIES
from ..errors import ResourceError
from ..imageio import ImageError, check_size, downscale_to_fit, load_image
from ..settings import SEED_RANGE, UpscaleSettings
from . import status as text

Progress = Callable[[int, int, str], None]  # (step, total, what is running)
STAGES = {"mmsr": "MMSR denoising", "scores": "scoring"}


class DemoError(ValueError):
    """A problem the visitor can fix; the message says how."""


class RunCancelled(Exception):
    """The visitor pressed Stop."""


@dataclass(frozen=True)
class Control:
    """A control's new value, whether it can act, and a one-line reason when it cannot."""

    value: Any
    enabled: bool = True
    note: str = ""


def upload_name(upload) -> str | None:
    """What a message calls an upload: its file name, never the server path Gradio stored it under."""
    return Path(upload).name if isinstance(upload, (str, Path)) else None


def _settings(controls: dict) -> UpscaleSettings:
    """``UpscaleSettings`` from the page's field values; unset fields keep the settings' defaults."""
    names = {"caption": "caption", "negative": "negative_prompt", "cfg_mode": "cfg_mode", "guidance": "guidance"}
    names |= {"steps": "steps", "strength": "strength", "seed": "seed", "refine": "refine"}
    names |= {"residual_scale": "residual_scale"}
    unknown = set(controls) - set(names) - {f"{m}_{p}" for m in MODALITIES for p in ("on", "tau")}
    if unknown:
        raise TypeError(f"unknown controls {sorted(unknown)}")
    kwargs = {names[k]: v for k, v in controls.items() if k in names}
    defaults = UpscaleSettings()
    kwargs["modalities"] = {m: bool(controls.get(f"{m}_on", defaults.modalities[m])) for m in MODALITIES}
    kwargs["temperatures"] = {m: controls.get(f"{m}_tau", defaults.temperatures[m]) for m in MODALITIES}
    try:
        return UpscaleSettings(**kwargs).validated()
    except (TypeError, ValueError) as e:
        raise DemoError(f"settings: {e}") from e


class Demo:
    """One served model with its extractors, baselines and scorer, and what the page shows of them.

    Args:
        engine: a loaded :class:`mmsr.engine.Engine`.
        scorer: a :class:`mmsr.metrics.Scorer`, or ``None`` for LR-consistency only.
        baselines: ``{name: Baseline}`` besides text-only MMSR, which is always offered.
        probe: an image the extractors are tried on once, for the status panel.
        checkpoint: the checkpoint folder or repo id (recorded in exported settings).
        notice: a warning for the status line (e.g. the preset fallback).
        max_side: longest LR side accepted (larger inputs are downscaled or refused).
    """

    def __init__(self, engine, scorer=None, baselines=None, *, probe, checkpoint=None, notice="", max_side=256):
        self.engine, self.scorer, self.baselines = engine, scorer, dict(baselines or {})
        self.checkpoint, self.notice, self.max_side = checkpoint, notice, max_side
        self.hashes = checkpoint_hashes(checkpoint)
        self.options = baseline_options(self.baselines)
        self.cache = BaselineCache()
        self.workdir = Path(tempfile.mkdtemp(prefix="mmsr-lab-"))  # the last 32 runs' downloads
        # Visitors' outputs go when the demo does, or at interpreter exit at the latest.
        self.close = weakref.finalize(self, shutil.rmtree, self.workdir, ignore_errors=True)
        self.seconds_per_step: float | None = None
        self._cancelled: set[str] = set()
        self.components = component_status(engine, scorer, self.options, probe)
        caption = next(row for row in self.components if row[:2] == ("extractor", "caption"))
        self.captioner_reason = "" if caption[2] else "No captioner here: type a caption (it stays as you typed it)."

    # -- what the page says ---------------------------------------------------------------------------

    def headline(self) -> str:
        """Preset, device and weights in one line, after the fallback notice if any."""
        digest = checkpoint_digest(self.hashes)[:12]
        weights = f"checkpoint `{digest}…` ({len(self.hashes)} files)" if digest else "random weights"
        line = f"Model: **{self.engine.preset.name}** on {self.engine.pipeline.device.type} · {weights}"
        return f"⚠ **{self.notice}**\n\n{line}" if self.notice else line

    def status(self) -> str:
        return text.status_text(self.components, self.headline())

    def baseline_choices(self) -> list[tuple[str, str]]:
        return [(label, name) for name, (label, ok, _) in self.options.items() if ok]

    def default_baseline(self) -> str:
        """Real-ESRGAN when it runs here (what a visitor wants to beat), else the first available."""
        names = [name for _, name in self.baseline_choices()]
        return "realesrgan" if "realesrgan" in names else names[0]

    def default_strength(self) -> float:
        return self.engine.preset.default_strength

    def default_residual_scale(self) -> float:
        return self.engine.residual_scale(UpscaleSettings())

    def has_stage1(self) -> bool:
        """Whether the model adds a residual to a stage-1 image (``lite``), so the residual scale applies."""
        return bool(self.engine.pipeline.config.residual)

    def settings_note(self, steps, strength=None, baseline=TEXT_ONLY, **switches) -> str:
        """The schedule that will run, a time estimate, and whether MMSR equals its baseline."""
        line = text.schedule_text(int(steps), float(strength or self.default_strength()), self.seconds_per_step)
        if baseline == TEXT_ONLY and not any(switches.get(f"{m}_on", True) for m in MODALITIES):
            line += f"\n\n{text.SAME_AS_TEXT_ONLY}"
        return line

    # -- inputs ---------------------------------------------------------------------------------------

    def load_lr(self, image, downscale: bool = True) -> tuple[Image.Image, list[str]]:
        """The visitor's image as RGB within the limits, with notes (downscaled, first frame)."""
        if image is None:
            raise DemoError("Upload an image first (or pick an example).")
        try:
            lr, notes = load_image(image, name=upload_name(image))
            if downscale and max(lr.size) > self.max_side:
                notes.append(f"downscaled from {lr.width}x{lr.height} to fit {self.max_side} px")
                lr = downscale_to_fit(lr, self.max_side)
            check_size(lr, self.max_side)
        except ImageError as e:
            raise DemoError(str(e)) from e
        return lr, notes

    def check(self, image, downscale: bool = True) -> None:
        """Raise :class:`DemoError` for an image that cannot be used; no image is fine."""
        if image is not None:
            self.load_lr(image, downscale)

    def check_run(self, image, downscale: bool = True) -> None:
        """Raise :class:`DemoError` unless ``image`` can be run (before the queue, so once)."""
        self.load_lr(image, downscale)

    @staticmethod
    def _user_map(path: str | None, name: str) -> Image.Image | None:
        if not path:
            return None
        try:
            return load_image(path, name=upload_name(path))[0]
        except ImageError as e:
            raise DemoError(f"your {name} map: {e}") from e

    def _cards(self, results: dict) -> dict:
        """Map preview, source line and temperature control per modality."""
        out = {}
        for name in MODALITIES:
            r, label = results.get(name), text.CONTEXT[name].label
            if r is not None and r.available:
                cached = " · cached" if r.extras.get("cached") else ""
                out |= {
                    f"{name}_preview": r.map,
                    f"{name}_source": f"source: **{r.source}** ({r.seconds:.2f} s{cached})",
                }
                out[f"{name}_tau"] = Control(None)
                continue
            off = r is None or r.reason == "switched off"
            reason = "switched off" if off else text.context_line(name, False, r.reason).split(": ", 1)[1]
            out |= {f"{name}_preview": None, f"{name}_source": f"**m₀**: {reason}"}
            out[f"{name}_tau"] = Control(1.0, enabled=False, note=f"{label} is m₀ here: its temperature has no effect")
        return out

    def prepare(self, image, downscale=True, **context) -> dict:
        """Context maps of a new input (cached), the temperature controls, and the size line."""
        if image is None:
            return self._cards({}) | {"info": ""}
        lr, notes = self.load_lr(image, downscale)
        enabled = {m: bool(context.get(f"{m}_on", True)) for m in MODALITIES}
        maps = {m: self._user_map(context.get(f"{m}_map"), m) for m in MODALITIES}
        try:
            results = self.engine.extract(lr, enabled, {k: v for k, v in maps.items() if v is not None})
        except ImageError as e:
            raise DemoError(str(e)) from e
        info = f"input {lr.width}x{lr.height} → output {SCALE * lr.width}x{SCALE * lr.height}"
        return self._cards(results) | {"info": " · ".join([info, *notes])}

    def caption(self, image, downscale=True) -> dict:
        """The captioner's caption, only when it produced text: a typed caption is never erased."""
        try:
            lr, _ = self.load_lr(image, downscale)
        except DemoError:
            return {}  # the upload's own check reports it, once
        result = self.engine.caption(lr)
        return {"caption": result.text} if result.available and result.text else {}

    # -- run ------------------------------------------------------------------------------------------

    def run(self, image, hr=None, downscale=True, baseline=None, previous=None, session="", progress=None, **controls):
        """MMSR and the baseline (same seed and settings), scores, downloads, and what changed."""
        lr, _ = self.load_lr(image, downscale)
        maps = {m: map_ for m in MODALITIES if (map_ := self._user_map(controls.pop(f"{m}_map", None), m))}
        settings = _settings(controls)
        hr_image = self._user_map(hr, "HR reference")
        baseline = baseline or self.default_baseline()
        self._cancelled.discard(session)
        reached = [0, 0]

        def report(stage: str, i: int, total: int) -> None:
            if session in self._cancelled:
                raise RunCancelled
            reached[:] = [i, total] if stage == "mmsr" else reached
            if progress is not None:
                progress(i, total, STAGES.get(stage) or f"baseline: {self.options.get(stage, (stage,))[0]}")

        try:
            result = compare(self.engine, lr, settings, baseline=baseline, baselines=self.baselines,
                             scorer=self.scorer, user_maps=maps, hr=hr_image, progress=report, cache=self.cache)  # fmt: skip
        except RunCancelled:
            return {"run_status": f"**Stopped** at step {reached[0]} of {reached[1]}; the last result stays."}
        except (ImageError, ValueError, ResourceError) as e:
            raise DemoError(str(e)) from e
        self._measure(result, settings)
        return self.outputs(result, previous)

    def _measure(self, result, settings) -> None:
        steps = text.steps_run(self.engine.num_steps(settings), settings.strength or 1.0)
        unet = result.mmsr.timings.get("unet")
        if unet:
            self.seconds_per_step = unet / max(1, steps * (2 if settings.refine else 1))

    def outputs(self, result, previous: dict | None = None) -> dict:
        """The page's result fields for one :class:`mmsr.compare.Comparison`."""
        mmsr = result.mmsr
        nearest = mmsr.lr.resize(mmsr.image.size, Image.Resampling.NEAREST)
        rows, not_scored = text.score_table(result.scores, result.lr_psnr)
        current = {"image": mmsr.image, "settings": text.flat_settings(mmsr.settings, result.baseline_name,
                                                                      pixel_sha256(mmsr.lr))}  # fmt: skip
        heat, changed = self._changes(previous, current)
        shown = tuple(f"{k}: using m_0" for k in MODALITIES)  # the cards say it
        notes = [n for n in dict.fromkeys([*mmsr.settings.notes, *result.warnings]) if not n.startswith(shown)]
        if result.baseline_name == TEXT_ONLY and not any(r.available for r in mmsr.modalities.values()):
            notes.insert(0, text.SAME_AS_TEXT_ONLY)
        return {
            "slider": (mmsr.image, result.baseline),
            "gallery": [
                (nearest, "LR input (nearest)"),
                (result.bicubic, "Bicubic"),
                (result.baseline, result.baseline_label),
                (mmsr.image, "MMSR"),
            ],  # fmt: skip
            "heat_mmsr": result.heatmaps["mmsr"],
            "heat_base": result.heatmaps["baseline"],
            "scores": {"headers": ["metric", "better", "MMSR", result.baseline_name], "data": rows},
            "scores_note": not_scored,
            "timings": {"headers": ["stage", "seconds", "note"], "data": timing_rows(result)},
            **({"caption": mmsr.caption} if mmsr.caption else {}),
            **self._cards(mmsr.modalities),
            **self._save(result),
            "changes_heat": heat,
            "run_status": "\n".join([f"**Done.** {changed}", *(f"- {n}" for n in notes)]),
            "previous": current,
        }

    @staticmethod
    def _changes(previous: dict | None, current: dict) -> tuple[Image.Image | None, str]:
        if not previous:
            return None, "Change a setting and run again to see what changed."
        changed = text.describe_changes(previous["settings"], current["settings"])
        if previous["image"].size != current["image"].size or "input" in " ".join(changed):
            return None, "New input: nothing to compare with yet."
        heat, mean = text.change_map(previous["image"], current["image"])
        what = ", ".join(changed) or "no setting changed"
        return heat, f"Since the last run: {what}; mean change {mean:.2f} grey levels (map below)."

    def _save(self, result) -> dict:
        record = run_record(result, preset=self.engine.preset.name,
                            checkpoint=None if self.checkpoint is None else str(self.checkpoint), hashes=self.hashes)  # fmt: skip
        folder = self._run_folder(record["output"]["sha256"][:16])
        result.mmsr.image.save(folder / "mmsr.png")
        result.baseline.save(folder / f"{result.baseline_name}.png")
        (folder / "mmsr-run.json").write_text(json.dumps(record, indent=2))
        names = {"dl_mmsr": "mmsr.png", "dl_base": f"{result.baseline_name}.png", "dl_json": "mmsr-run.json"}
        return {field: str(folder / name) for field, name in names.items()}

    def _run_folder(self, name: str, keep: int = 32) -> Path:
        folders = sorted(self.workdir.iterdir(), key=lambda p: p.stat().st_mtime)
        for old in folders[: max(0, len(folders) - keep + 1)]:
            shutil.rmtree(old, ignore_errors=True)
        folder = self.workdir / f"{time.strftime('%H%M%S')}-{name}"
        folder.mkdir(exist_ok=True)
        return folder

    def stop(self, session: str = "") -> None:
        """Ask the running diffusion of ``session`` to stop at its next step."""
        self._cancelled.add(session)

    @staticmethod
    def random_seed() -> int:
        return random.randint(*SEED_RANGE)

    # -- settings files -------------------------------------------------------------------------------

    def import_settings(self, import_json: str | None, image=None, downscale=True) -> dict:
        """Controls from an exported run JSON (the file ``import_json``), and a note on what differs."""
        path = import_json
        if not path:
            raise DemoError("Choose a run JSON exported by this app.")
        try:
            record = json.loads(Path(path).read_text())
            settings, baseline, notes = settings_from_record(record)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError, TypeError, ValueError) as e:
            raise DemoError(f"could not import the settings: {e}") from e
        if record.get("preset") != self.engine.preset.name:
            notes.append(f"recorded with preset {record.get('preset')!r}; this app runs {self.engine.preset.name!r}")
        elif (record.get("checkpoint") or {}).get("sha256", {}) != self.hashes:
            notes.append("recorded with other checkpoint weights (sha256 differs): the output will differ")
        if image is not None and pixel_sha256(self.load_lr(image, downscale)[0]) != record.get("input", {}).get(
            "sha256"
        ):
            notes.append("the current input differs from the recorded one")
        s, out = settings, {}
        if baseline in {name for _, name in self.baseline_choices()}:
            out["baseline"] = baseline
        else:
            notes.append(f"baseline {baseline!r} is unavailable here; kept the current choice")
        out |= {
            "caption": s.caption,
            "negative": s.negative_prompt,
            "cfg_mode": s.cfg_mode,
            "guidance": self.engine.guidance(s),
        }
        out |= {"steps": self.engine.num_steps(s), "seed": s.seed, "refine": s.refine}
        residual_scale = self.engine.residual_scale(s)
        if not self.has_stage1() and residual_scale != 1:
            notes.append(f"residual scale {residual_scale:g} needs a model over a stage 1; this one runs without (1)")
            residual_scale = 1.0
        out |= {"strength": s.strength or self.default_strength(), "residual_scale": residual_scale}
        out |= {f"{m}_on": s.modalities[m] for m in MODALITIES} | {f"{m}_tau": s.temperatures[m] for m in MODALITIES}
        note = " · ".join(notes) or "settings match this app; upload the same input and Run."
        return out | {"import_note": f"Imported: {note}"}
