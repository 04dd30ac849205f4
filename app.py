"""MMSR Lab: the Gradio demo of multimodal diffusion super-resolution (Mei et al., CVPR 2025).

This file only builds the UI and converts between files/PIL and the package's objects; the work is
done by :mod:`mmsr` (``Engine``, ``compare``, ``Scorer``) and :mod:`baselines`. Models load in
``main()``, never at import time. Environment: ``MMSR_PRESET`` (``lite``, ``tiny-random``, ``full``),
``MMSR_CHECKPOINT``, ``MMSR_DEVICE``, ``MMSR_MAX_SIDE``, ``GRADIO_SERVER_PORT`` (default 7860).
"""

from __future__ import annotations

try:  # ZeroGPU needs `spaces` imported before torch; elsewhere spaces.GPU returns the function as is
    import spaces

    GPU = spaces.GPU
except ImportError:  # pragma: no cover - the requirements install it

    def GPU(task=None, **_):
        return task if callable(task) else (lambda fn: fn)


import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import gradio as gr
import pandas as pd
from PIL import Image, UnidentifiedImageError

from mmsr.compare import (
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
    score_rows,
    settings_from_record,
    timing_rows,
)
from mmsr.conditioning import MODALITIES
from mmsr.connector import TAU_RANGE
from mmsr.errors import ResourceError
from mmsr.guidance import CFG_MODES
from mmsr.imageio import ImageError, check_size, downscale_to_fit, load_image
from mmsr.settings import SEED_RANGE, UpscaleSettings

ROOT = Path(__file__).resolve().parent
EXAMPLES = ROOT / "assets" / "examples"
MAX_FILE_SIZE = "20mb"
QUEUE_SIZE = 16
BASELINE_ORDER = ("sd-x4-upscaler", "realesrgan", "bicubic")  # after text-only MMSR, which `compare` runs itself
MODALITY_LABELS = {"depth": "Depth", "seg": "Segmentation", "edges": "Edges (Canny)"}
STAGES = {"mmsr": "MMSR denoising", "scores": "scoring"}
INTRO = """
# MMSR Lab: multimodal diffusion super-resolution
x4 super-resolution conditioned on a caption **and** depth, segmentation and edge maps, after
Mei et al., [*The Power of Context: How Multimodality Improves Image Super-Resolution*](https://arxiv.org/abs/2503.14503)
(CVPR 2025). Upload a small image (or pick an example), check the context, press **Run**, and compare
MMSR with a baseline. Switch a modality off (it becomes the null token m₀) or change its
temperature (smaller = stronger influence) and run again: only the diffusion re-runs.
"""
HEATMAP_HELP = (
    "**LR-consistency**: |bicubic-downscaled SR − LR| per pixel, 0 (dark) to 64 grey levels (bright). "
    "Bright regions do not downscale back to the input: that content was invented."
)
PROGRESS = gr.Progress(track_tqdm=True)  # gradio fills in the event's tracker
CSS = """
.card {border: 1px solid var(--border-color-primary); border-radius: var(--radius-lg); padding: 6px}
.source {font-size: 0.85em; min-height: 3.2em}
.status {font-size: 0.9em}
"""


def upload_image(**kwargs) -> gr.Image:
    """A ``gr.Image`` whose undecodable uploads become a clear ``gr.Error``.

    Gradio opens every upload with PIL before a handler runs (the handlers then decode it again with
    :func:`mmsr.imageio.load_image`). The instance's ``preprocess`` is wrapped rather than the class
    subclassed: gradio writes a ``.pyi`` stub next to the module of every component subclass.
    """
    image = gr.Image(**kwargs)
    preprocess = image.preprocess

    def checked(payload):
        try:
            return preprocess(payload)
        except Image.DecompressionBombError as e:
            raise gr.Error(f"image refused as a decompression bomb: {e}") from e
        except UnidentifiedImageError as e:
            raise gr.Error("not an image file (or a format Pillow cannot read)") from e
        except (OSError, SyntaxError, ValueError) as e:
            raise gr.Error(f"could not read the image: {e}") from e

    image.preprocess = checked
    return image


class RunCancelled(Exception):
    """The user pressed Stop."""


def _yes(ok: bool) -> str:
    return "✓" if ok else "✗"


def _short(text: str, limit: int = 110) -> str:
    """Long reasons trimmed for a card; the status table keeps them whole."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


class Lab:
    """The demo's handlers: plain values in, plain values out (testable without a browser).

    Args:
        engine: a loaded :class:`mmsr.engine.Engine`.
        scorer: a :class:`mmsr.metrics.Scorer`, or ``None`` for LR-consistency only.
        baselines: ``{name: Baseline}`` besides text-only MMSR, which is always offered.
        checkpoint: the checkpoint folder or repo id (recorded in exported settings).
        notice: a warning for the status line (e.g. the preset fallback).
        max_side: longest LR side accepted (larger inputs are downscaled or refused).
    """

    def __init__(self, engine, scorer=None, baselines=None, *, checkpoint=None, notice="", max_side=256):
        self.engine, self.scorer, self.baselines = engine, scorer, dict(baselines or {})
        self.checkpoint, self.notice, self.max_side = checkpoint, notice, max_side
        self.hashes = checkpoint_hashes(checkpoint)
        self.options = baseline_options(self.baselines)
        self.cache = BaselineCache()
        self.workdir = Path(tempfile.mkdtemp(prefix="mmsr-lab-"))
        self._cancelled: set[str] = set()
        probe = Image.open(EXAMPLES / "astronaut.png").convert("RGB")
        self.components = component_status(engine, scorer, self.options, probe)
        for name, seconds in (("prepare", 60), ("caption", 60), ("run", 180)):  # GPU work; no-op off ZeroGPU
            setattr(self, name, GPU(duration=seconds)(getattr(self, name)))

    # -- status -----------------------------------------------------------------------------------

    def status(self) -> tuple[str, str]:
        """A one-line summary and a table of every component with why it is unavailable."""
        rows = self.components
        counts = {
            kind: f"{sum(ok for k, _, ok, _ in rows if k == kind)}/{sum(k == kind for k, *_ in rows)}"
            for kind in ("extractor", "baseline", "metric")
        }
        digest = checkpoint_digest(self.hashes)[:12]
        line = (
            f"**Preset `{self.engine.preset.name}`** on `{self.engine.pipeline.device}`"
            + (f" · checkpoint `{digest}…` ({len(self.hashes)} safetensors files)" if digest else " · random weights")
            + f" · extractors {counts['extractor']} · baselines {counts['baseline']}"
            + f" · metrics {counts['metric']} available (details below)"
        )
        if self.notice:
            line = f"⚠ **{self.notice}**\n\n{line}"
        table = "| kind | component | available | source or why not |\n|---|---|---|---|\n" + "\n".join(
            f"| {kind} | {name} | {_yes(ok)} | {why or ''} |" for kind, name, ok, why in rows
        )
        return line, table

    def baseline_choices(self) -> list[tuple[str, str]]:
        return [(label, name) for name, (label, ok, _) in self.options.items() if ok]

    # -- inputs -----------------------------------------------------------------------------------

    def load_lr(self, image: str | Image.Image | None, downscale: bool = True) -> Image.Image:
        """The user's image as RGB within the preset's limits, or a ``gr.Error`` saying why not."""
        if image is None:
            raise gr.Error("Upload an image first (or pick an example).")
        try:
            lr, notes = load_image(image)
            if downscale and max(lr.size) > self.max_side:
                notes.append(f"downscaled the {lr.width}x{lr.height} input to fit {self.max_side} px")
                lr = downscale_to_fit(lr, self.max_side)
            check_size(lr, self.max_side)
        except ImageError as e:
            raise gr.Error(str(e)) from e
        for note in notes:
            gr.Warning(note)
        return lr

    @staticmethod
    def _user_map(path: str | None, name: str) -> Image.Image | None:
        if not path:
            return None
        try:
            return load_image(path)[0]
        except ImageError as e:
            raise gr.Error(f"your {name} map: {e}") from e

    def _cards(self, results: dict) -> list:
        """Map preview and source line per modality card."""
        out = []
        for name in MODALITIES:
            r = results.get(name)
            if r is None:
                out += [None, ""]
            elif r.available:
                cached = " · cached" if r.extras.get("cached") else ""
                out += [r.map, f"source: **{r.source}** ({r.seconds:.2f} s{cached})"]
            else:
                out += [None, f"**m₀**: {_short(r.reason)}"]
        return out

    # -- handlers ---------------------------------------------------------------------------------

    def prepare(self, image, downscale, depth_on, seg_on, edges_on, depth_map, seg_map, edges_map, progress=PROGRESS):
        """Extract the context maps of a new input (cached); returns the card contents and an info line."""
        if image is None:
            return [None, ""] * len(MODALITIES) + [""]
        lr = self.load_lr(image, downscale)
        progress(0.5, desc="extracting depth, segmentation, edges")
        enabled = dict(zip(MODALITIES, (depth_on, seg_on, edges_on), strict=True))
        maps = {k: self._user_map(p, k) for k, p in zip(MODALITIES, (depth_map, seg_map, edges_map), strict=True)}
        try:
            results = self.engine.extract(lr, enabled, {k: m for k, m in maps.items() if m is not None})
        except ImageError as e:
            raise gr.Error(str(e)) from e
        info = f"input {lr.width}x{lr.height} → output {SCALE * lr.width}x{SCALE * lr.height}"
        return [*self._cards(results), info]

    def caption(self, image, downscale):
        """The captioner's caption of the input, or the empty string with a warning saying why."""
        if image is None:
            return ""
        result = self.engine.caption(self.load_lr(image, downscale))
        if not result.available:
            gr.Warning(f"No automatic caption ({result.reason}). Type one, or leave it empty.")
            return ""
        return result.text

    def run(
        self,
        image,
        caption,
        negative,
        cfg_mode,
        guidance,
        steps,
        seed,
        baseline,
        depth_on,
        seg_on,
        edges_on,
        depth_tau,
        seg_tau,
        edges_tau,
        depth_map,
        seg_map,
        edges_map,
        hr=None,
        downscale=True,
        refine=False,
        request: gr.Request | None = None,
        progress=PROGRESS,
    ):
        """Super-resolve with MMSR and the chosen baseline (same seed and settings); see ``outputs``."""
        lr = self.load_lr(image, downscale)
        try:
            settings = UpscaleSettings(
                caption=caption or "",
                negative_prompt=negative or "",
                cfg_mode=cfg_mode,
                guidance=float(guidance),
                steps=int(steps),
                seed=int(seed),
                refine=bool(refine),
                modalities=dict(zip(MODALITIES, map(bool, (depth_on, seg_on, edges_on)), strict=True)),
                temperatures=dict(zip(MODALITIES, map(float, (depth_tau, seg_tau, edges_tau)), strict=True)),
            ).validated()
        except (TypeError, ValueError) as e:
            raise gr.Error(f"settings: {e}") from e
        paths = dict(zip(MODALITIES, (depth_map, seg_map, edges_map), strict=True))
        maps = {k: m for k, p in paths.items() if (m := self._user_map(p, k)) is not None}
        hr_image = self._user_map(hr, "HR reference")
        session = getattr(request, "session_hash", None) or ""
        self._cancelled.discard(session)

        def report(stage: str, i: int, total: int) -> None:
            if session in self._cancelled:
                raise RunCancelled
            label = STAGES.get(stage) or f"baseline: {self.options.get(stage, (stage,))[0]}"
            progress((i, total), desc=label, unit="steps")

        try:
            result = compare(
                self.engine,
                lr,
                settings,
                baseline=baseline,
                baselines=self.baselines,
                scorer=self.scorer,
                user_maps=maps,
                hr=hr_image,
                progress=report,
                cache=self.cache,
            )
        except RunCancelled:
            raise gr.Error("Stopped.") from None
        except (ImageError, ValueError, ResourceError) as e:
            raise gr.Error(str(e)) from e
        shown_on_cards = tuple(f"{k}: using m_0" for k in MODALITIES)
        for note in result.warnings:
            if not note.startswith(shown_on_cards):
                gr.Warning(note)
        return self.outputs(result)

    def outputs(self, result) -> list:
        """Slider, gallery, two heatmaps, scores, timings, caption, cards, three downloads, notes."""
        mmsr = result.mmsr
        nearest = mmsr.lr.resize(mmsr.image.size, Image.Resampling.NEAREST)
        gallery = [
            (nearest, "LR input (nearest)"),
            (result.bicubic, "Bicubic"),
            (result.baseline, result.baseline_label),
            (mmsr.image, "MMSR"),
        ]
        record = run_record(
            result,
            preset=self.engine.preset.name,
            checkpoint=None if self.checkpoint is None else str(self.checkpoint),
            hashes=self.hashes,
        )
        folder = self._run_folder(record["output"]["sha256"][:16])
        mmsr.image.save(folder / "mmsr.png")
        result.baseline.save(folder / f"{result.baseline_name}.png")
        (folder / "mmsr-run.json").write_text(json.dumps(record, indent=2))
        notes = "\n".join(f"- {w}" for w in result.warnings) or "No warnings."
        return [
            (mmsr.image, result.baseline),
            gallery,
            result.heatmaps["mmsr"],
            result.heatmaps["baseline"],
            pd.DataFrame(
                [[*r[:4], _short(r[4], 60)] for r in score_rows(result)],
                columns=["metric", "better", "MMSR", result.baseline_name, "note"],
            ),
            pd.DataFrame(timing_rows(result), columns=["stage", "seconds", "note"]),
            mmsr.caption,
            *self._cards(mmsr.modalities),
            str(folder / "mmsr.png"),
            str(folder / f"{result.baseline_name}.png"),
            str(folder / "mmsr-run.json"),
            f"**Modalities:** {', '.join(f'{k}: {v}' for k, v in mmsr.sources().items())}\n\n{notes}",
        ]

    def _run_folder(self, name: str, keep: int = 32) -> Path:
        folders = sorted(self.workdir.iterdir(), key=lambda p: p.stat().st_mtime)
        for old in folders[: max(0, len(folders) - keep + 1)]:
            shutil.rmtree(old, ignore_errors=True)
        folder = self.workdir / f"{time.strftime('%H%M%S')}-{name}"
        folder.mkdir(exist_ok=True)
        return folder

    def stop(self, request: gr.Request | None = None) -> None:
        """Ask the running diffusion of this session to stop at its next step."""
        self._cancelled.add(getattr(request, "session_hash", None) or "")

    @staticmethod
    def random_seed() -> int:
        return random.randint(*SEED_RANGE)

    def import_settings(self, path: str | None, image=None, downscale=True) -> list:
        """Controls from an exported run JSON: caption, negative, cfg, guidance, steps, seed, baseline,
        switches, temperatures, refinement, and a note on what differs from this app."""
        if not path:
            raise gr.Error("Choose a run JSON exported by this app.")
        try:
            record = json.loads(Path(path).read_text())
            settings, baseline, notes = settings_from_record(record)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, ValueError) as e:
            raise gr.Error(f"could not import the settings: {e}") from e
        if record.get("preset") != self.engine.preset.name:
            notes.append(f"recorded with preset {record.get('preset')!r}; this app runs {self.engine.preset.name!r}")
        elif (record.get("checkpoint") or {}).get("sha256", {}) != self.hashes:
            notes.append("recorded with other checkpoint weights (sha256 differs): the output will differ")
        if image is not None and pixel_sha256(self.load_lr(image, downscale)) != record.get("input", {}).get("sha256"):
            notes.append("the current input differs from the recorded one")
        if baseline not in {name for _, name in self.baseline_choices()}:
            notes.append(f"baseline {baseline!r} is unavailable here; kept the current choice")
            baseline = gr.update()
        for note in notes:
            gr.Warning(note)
        s = settings
        return [
            s.caption,
            s.negative_prompt,
            s.cfg_mode,
            s.guidance,
            s.steps or self.engine.preset.default_steps,
            s.seed,
            baseline,
            *(s.modalities[k] for k in MODALITIES),
            *(s.temperatures[k] for k in MODALITIES),
            s.refine,
            "Imported: " + (" · ".join(notes) or "settings match this app; upload the same input and Run."),
        ]


def _examples() -> list[list[str]]:
    captions = json.loads((EXAMPLES / "examples.json").read_text())
    return [[str(EXAMPLES / name), caption] for name, caption in captions.items()]


LAB_ROOT = Path(os.environ.get("MMSR_LAB_ROOT", ROOT / "runs"))


def lab_folders() -> list[str]:
    """Lab result folders under ``LAB_ROOT``: the only ones the page opens (no arbitrary paths)."""
    if not LAB_ROOT.is_dir():
        return []
    found = [*LAB_ROOT.glob("results.csv"), *LAB_ROOT.glob("*/results.csv"), *LAB_ROOT.glob("*/*/results.csv")]
    return sorted(str(p.parent.relative_to(LAB_ROOT)) for p in found)


def open_lab_report(name: str):
    """Markdown and plots of a ``python -m mmsr lab run`` results folder (built by ``lab report``)."""
    from mmsr.lab.report import load_report

    if name not in lab_folders():
        raise gr.Error(f"no lab results named {name!r} under {LAB_ROOT}")
    try:
        markdown, plots = load_report(LAB_ROOT / name)
    except ValueError as e:
        raise gr.Error(str(e)) from e
    return markdown, [str(p) for p in plots]


def build_demo(engine, scorer=None, baselines=None, **lab_options) -> gr.Blocks:
    """The whole UI around one :class:`Lab`; ``lab_options`` go to ``Lab`` (checkpoint, notice, max_side)."""
    lab = Lab(engine, scorer, baselines, **lab_options)
    status_line, status_table = lab.status()
    with gr.Blocks(title="MMSR Lab", delete_cache=(3600, 7200)) as demo:
        gr.Markdown(INTRO)
        gr.Markdown(status_line, elem_classes="status")
        with gr.Accordion("What runs here (extractors, baselines, metrics) and why not", open=False):
            gr.Markdown(status_table)
        with gr.Row(equal_height=False):
            with gr.Column(scale=4):
                image = upload_image(
                    label="1 · Low-resolution input (upload or paste)",
                    elem_id="lr-input",
                    type="filepath",
                    image_mode=None,
                    sources=["upload", "clipboard"],
                    height=260,
                    format="png",
                )
                info = gr.Markdown("")
                downscale = gr.Checkbox(value=True, label=f"Downscale large inputs (longest side > {lab.max_side} px)")
                with gr.Accordion("HR reference (optional, for PSNR/SSIM/LPIPS/DISTS)", open=False):
                    hr = upload_image(
                        show_label=False, type="filepath", image_mode=None, sources=["upload"], height=160
                    )
            with gr.Column(scale=7):
                with gr.Row(equal_height=False):
                    caption = gr.Textbox(
                        "",
                        label="2 · Caption (editable)",
                        elem_id="caption",
                        lines=2,
                        scale=6,
                        placeholder="Describe the picture; empty = the captioner's caption, if one is available",
                    )
                    recaption = gr.Button("Re-caption", scale=1, size="sm")
                switches, taus, previews, sources, user_maps = [], [], [], [], []
                with gr.Row(equal_height=True):
                    for name in MODALITIES:
                        with gr.Column(min_width=200, elem_classes="card"):
                            previews.append(
                                gr.Image(label=MODALITY_LABELS[name], interactive=False, height=170, format="png")
                            )
                            sources.append(gr.Markdown("", elem_classes="source"))
                            switches.append(gr.Checkbox(value=True, label=f"use {name} (off = m₀)"))
                            taus.append(gr.Slider(*TAU_RANGE, value=1.0, step=0.1, label="temperature τ"))
                            with gr.Accordion("upload your own map", open=False):
                                user_maps.append(
                                    upload_image(show_label=False, type="filepath", sources=["upload"], height=120)
                                )
        with gr.Accordion("Examples: click one to load its image and caption", open=True):
            gr.Examples(_examples(), inputs=[image, caption], label=None)
        with gr.Accordion("3 · Settings", open=True):
            with gr.Row():
                cfg_mode = gr.Radio(list(CFG_MODES), value="m-cfg", label="guidance mode (negative branch)")
                guidance = gr.Slider(0, 15, value=4.0, step=0.5, label="guidance w (0 = off)")
                steps = gr.Slider(1, 100, value=engine.preset.default_steps, step=1, label="denoising steps")
            with gr.Row(equal_height=True):
                seed = gr.Number(value=0, precision=0, minimum=SEED_RANGE[0], maximum=SEED_RANGE[1], label="seed")
                dice = gr.Button("Random seed", size="sm", scale=0, min_width=120)
                choices = lab.baseline_choices()
                baseline = gr.Dropdown(choices, value=choices[0][1], label="compare with", scale=2)
                negative = gr.Textbox("", label="negative prompt", placeholder="e.g. blurry, noisy", scale=2)
                refine = gr.Checkbox(value=False, label="zero-modal refinement (two passes)")
        with gr.Row():
            run_btn = gr.Button("Run", variant="primary", size="lg", scale=4, elem_id="run-btn")
            stop_btn = gr.Button("Stop", variant="stop", size="lg", scale=1)
        gr.Markdown("### 4 · Result (both runs use the same seed and settings)")
        with gr.Row(equal_height=False):
            slider = gr.ImageSlider(
                label="MMSR (left) ⟷ baseline (right)", elem_id="result-slider", type="pil", format="png", scale=3
            )
            gallery = gr.Gallery(
                label="LR (nearest) · bicubic · baseline · MMSR",
                elem_id="result-gallery",
                columns=2,
                format="png",
                scale=2,
                height=520,
            )
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                scores = gr.Dataframe(
                    label="Scores (↑ higher is better, ↓ lower is better)",
                    elem_id="scores",
                    interactive=False,
                    wrap=True,
                    column_widths=["24%", "9%", "14%", "14%", "39%"],
                )
                timings = gr.Dataframe(label="Per-stage timings", interactive=False, max_height=260)
            with gr.Column(scale=4):
                gr.Markdown(HEATMAP_HELP)
                with gr.Row():
                    heat = {"format": "png", "interactive": False, "height": 300}
                    heat_mmsr = gr.Image(label="residual: MMSR", **heat)
                    heat_base = gr.Image(label="residual: baseline", **heat)
        notes = gr.Markdown("")
        with gr.Row():
            dl_mmsr = gr.DownloadButton("Download MMSR (PNG)", size="sm")
            dl_base = gr.DownloadButton("Download baseline (PNG)", size="sm")
            dl_json = gr.DownloadButton("Export settings (JSON)", size="sm")
            upload_json = gr.UploadButton("Import settings (JSON)", file_types=[".json"], size="sm")

        context = [*switches, *taus, *user_maps]
        card_outputs = [c for pair in zip(previews, sources, strict=True) for c in pair]
        gpu = {"concurrency_id": "gpu"}
        prepare_inputs = [image, downscale, *switches, *user_maps]
        gr.on(
            [image.change, *(m.change for m in user_maps)],
            lab.prepare,
            prepare_inputs,
            [*card_outputs, info],
            api_name="prepare",
            **gpu,
        )
        image.upload(lab.caption, [image, downscale], caption, api_name="auto_caption", **gpu)
        recaption.click(lab.caption, [image, downscale], caption, api_name="recaption", **gpu)
        dice.click(lab.random_seed, None, seed, api_name="random_seed", queue=False)
        run_inputs = [
            image,
            caption,
            negative,
            cfg_mode,
            guidance,
            steps,
            seed,
            baseline,
            *context,
            hr,
            downscale,
            refine,
        ]
        run_outputs = [
            slider,
            gallery,
            heat_mmsr,
            heat_base,
            scores,
            timings,
            caption,
            *card_outputs,
            dl_mmsr,
            dl_base,
            dl_json,
            notes,
        ]
        run_event = run_btn.click(lab.run, run_inputs, run_outputs, api_name="run", **gpu)
        stop_btn.click(lab.stop, None, None, cancels=[run_event], api_name="stop", concurrency_limit=None)
        upload_json.upload(
            lab.import_settings,
            [upload_json, image, downscale],
            [caption, negative, cfg_mode, guidance, steps, seed, baseline, *switches, *taus, refine, notes],
            api_name="import_settings",
        )
        with gr.Accordion("Lab: reports of `python -m mmsr lab run` (folders under MMSR_LAB_ROOT)", open=False):
            with gr.Row():
                lab_folder = gr.Dropdown(choices=lab_folders(), label="results folder", scale=4)
                lab_refresh = gr.Button("refresh list", scale=1)
            lab_report = gr.Markdown()
            lab_plots = gr.Gallery(label="plots", columns=3, height=360)
        lab_refresh.click(lambda: gr.Dropdown(choices=lab_folders()), None, lab_folder, api_name="lab_folders")
        lab_folder.change(open_lab_report, lab_folder, [lab_report, lab_plots], api_name="lab_report")
    demo.lab = lab
    return demo


def launch_options() -> dict:
    """``launch`` keywords shared by ``main`` and the tests: upload limit, errors shown, look."""
    return {"max_file_size": MAX_FILE_SIZE, "show_error": True, "theme": gr.themes.Soft(), "css": CSS}


def _preset_and_notice() -> tuple[str, str]:
    """``MMSR_PRESET`` if set, else ``lite`` when its checkpoint exists, else ``tiny-random`` with a warning."""
    from mmsr.presets import checkpoint_dir

    preset = os.environ.get("MMSR_PRESET", "").strip()
    if preset:
        return preset, ""
    if (checkpoint_dir("lite") / "unet").is_dir():
        return "lite", ""
    return "tiny-random", (
        f"No lite checkpoint in {checkpoint_dir('lite')}: running the tiny-random preset (random weights, "
        "outputs are noise-like). Train lite with `python -m mmsr train --preset lite`."
    )


def load_engine() -> tuple:
    """``(engine, checkpoint, notice)`` for the configured preset; an unusable one falls back to tiny-random."""
    from mmsr.engine import Engine
    from mmsr.presets import PresetUnavailable, checkpoint_dir

    preset, notice = _preset_and_notice()
    device = os.environ.get("MMSR_DEVICE") or None
    checkpoint = os.environ.get("MMSR_CHECKPOINT") or (str(checkpoint_dir("lite")) if preset == "lite" else None)
    try:
        engine = Engine.load(preset, checkpoint=checkpoint, device=device)
    except (PresetUnavailable, ValueError) as e:
        notice = f"Preset {preset!r} is unavailable here ({e}). Running tiny-random (random weights) instead."
        preset, checkpoint = "tiny-random", None
        engine = Engine.load(preset, device=device)
    return engine, None if preset == "tiny-random" else checkpoint, notice


def main() -> None:
    from baselines import BASELINES, get_baseline
    from mmsr.engine import MAX_LR_SIDE
    from mmsr.metrics import Scorer

    engine, checkpoint, notice = load_engine()
    device = engine.pipeline.device
    scorer = Scorer(device=device)
    order = [n for n in BASELINE_ORDER if n in BASELINES] + [
        n for n in BASELINES if n not in (*BASELINE_ORDER, TEXT_ONLY)
    ]
    baselines = {name: get_baseline(name, device=device, dtype=engine.pipeline.dtype) for name in order}
    max_side = int(os.environ.get("MMSR_MAX_SIDE") or (MAX_LR_SIDE if device.type == "cuda" else 256))
    demo = build_demo(engine, scorer, baselines, checkpoint=checkpoint, notice=notice, max_side=max_side)
    demo.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        **launch_options(),
    )


if __name__ == "__main__":
    main()
