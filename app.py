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


import inspect
import json
import os
from pathlib import Path

import gradio as gr
from PIL import Image

from mmsr.compare import TEXT_ONLY
from mmsr.conditioning import MODALITIES
from mmsr.demo import HOW_TO, Control, Demo, DemoError, lab_folders, open_report
from mmsr.demo.status import CONTEXT
from mmsr.settings import spec
from page import launch_options, refuse_foreign_files, upload_image

ROOT = Path(__file__).resolve().parent
EXAMPLES = ROOT / "assets" / "examples"
LAB_ROOT = Path(os.environ.get("MMSR_LAB_ROOT", ROOT / "runs"))
QUEUE_SIZE = 16
BASELINE_ORDER = ("realesrgan", "sd-x4-upscaler", "bicubic")  # after text-only MMSR, which `compare` runs itself
INTRO = """
# MMSR Lab: multimodal diffusion super-resolution
x4 super-resolution guided by a caption and depth, segmentation and edge maps (Mei et al., CVPR 2025).
Upload a small image or pick an example below, edit the caption, press **Run**, and drag the slider.
"""
PROGRESS = gr.Progress(track_tqdm=True)
PER_MODALITY = ("preview", "source", "on", "tau", "map")
FIELDS = (
    ("image", "caption", "recaption", "run", "stop", "info", "slider", "run_status", "dl_mmsr", "dl_base")
    + ("dl_json", "gallery", "scores", "scores_note", "timings", "heat_mmsr", "heat_base", "changes_heat")
    + tuple(f"{m}_{part}" for m in MODALITIES for part in PER_MODALITY)
    + ("cfg_mode", "guidance", "steps", "strength", "residual_scale", "settings_note", "seed", "dice", "baseline")
    + ("negative",)
    + ("refine", "downscale", "hr", "import_json", "import_note", "lab_folder", "lab_refresh", "lab_report")
    + ("previous",)
)
SWITCHES = tuple(f"{m}_on" for m in MODALITIES)
TAUS = tuple(f"{m}_tau" for m in MODALITIES)
MAPS = tuple(f"{m}_map" for m in MODALITIES)
CONTROLS = ("caption", "negative", "cfg_mode", "guidance", "steps", "strength", "residual_scale", "seed", "refine")
CONTROLS += (*SWITCHES, *TAUS)
PREPARE_INPUTS = ("image", "downscale", *SWITCHES, *MAPS)
RUN_INPUTS = ("image", *CONTROLS, *MAPS, "hr", "downscale", "baseline", "previous")
RUN_OUTPUTS = ("slider", "gallery", "heat_mmsr", "heat_base", "scores", "scores_note", "timings", "caption")
RUN_OUTPUTS += tuple(f"{m}_{p}" for m in MODALITIES for p in ("preview", "source", "tau"))
RUN_OUTPUTS += ("dl_mmsr", "dl_base", "dl_json", "changes_heat", "run_status", "previous")
NOTE_INPUTS = ("steps", "strength", "baseline", *SWITCHES)
DOWNLOADS = ("dl_mmsr", "dl_base", "dl_json")


def _examples() -> list[list[str]]:
    captions = json.loads((EXAMPLES / "examples.json").read_text())
    return [[str(EXAMPLES / name), caption] for name, caption in captions.items()]


def _update(name: str, value):
    """A handler's plain value as what gradio sets on the component ``name``."""
    if isinstance(value, Control):
        kwargs = {} if value.value is None else {"value": value.value}
        return gr.update(interactive=value.enabled, info=value.note or None, **kwargs)
    if name in DOWNLOADS:
        return gr.update(value=value, interactive=value is not None)
    return value


def wire(ui: dict, fn, inputs: tuple[str, ...], outputs: tuple[str, ...], *, session=False, progress=False):
    """``fn(**{field: value})`` -> ``{field: value}`` as a gradio handler over the components ``ui``.

    Its signature names the fields (the API's parameter names); ``DemoError`` becomes one ``gr.Error``;
    with ``session`` or ``progress``, ``fn`` also gets the session id or a progress callback.
    """

    def handler(*values, request: gr.Request | None = None, bar=PROGRESS):
        kwargs = dict(zip(inputs, values, strict=True))
        if session:
            kwargs["session"] = getattr(request, "session_hash", None) or ""
        if progress:
            kwargs["progress"] = lambda i, total, desc: bar((i, total), desc=desc, unit="steps")
        try:
            out = fn(**kwargs) or {}
        except DemoError as e:
            raise gr.Error(str(e)) from e
        assert set(out) <= set(outputs), f"{fn.__name__} returned fields it is not wired to: {set(out) - set(outputs)}"
        if not out:  # an empty dict would be read as one output's value
            return gr.skip() if len(outputs) == 1 else tuple(gr.skip() for _ in outputs) or None
        return {ui[name]: _update(name, value) for name, value in out.items()}

    params = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in inputs]
    keyword = inspect.Parameter.KEYWORD_ONLY  # gradio fills these in: the request and the progress bar
    params += [inspect.Parameter("request", keyword, default=None, annotation=gr.Request)]
    params += [inspect.Parameter("bar", keyword, default=PROGRESS)]
    handler.__signature__ = inspect.Signature(params)
    handler.__name__ = fn.__name__
    return dict(fn=handler, inputs=[ui[n] for n in inputs], outputs=[ui[n] for n in outputs])


def _slider(name: str, **kwargs) -> gr.Slider:
    """A slider whose bounds, step and default come from ``UpscaleSettings``' table."""
    s = spec(name)
    return gr.Slider(s.min, s.max, step=s.step, **({"value": s.default} | kwargs))


def _input_column(ui: dict, demo: Demo) -> None:
    ui["image"] = upload_image(label="Low-resolution input (upload or paste)", elem_id="lr-input", type="filepath",
                               image_mode=None, sources=["upload", "clipboard"], height=220, format="png")  # fmt: skip
    with gr.Row(equal_height=True):
        ui["caption"] = gr.Textbox("", label="Caption (editable)", elem_id="caption", lines=2, scale=5,
                                   placeholder="Describe the picture, e.g. a cat on a wooden floor")  # fmt: skip
        ui["recaption"] = gr.Button("Re-caption", size="sm", scale=1, min_width=90, elem_id="recaption",
                                    interactive=not demo.captioner_reason)  # fmt: skip
    with gr.Row():
        ui["run"] = gr.Button("Run", variant="primary", size="lg", scale=3, elem_id="run-btn")
        ui["stop"] = gr.Button("Stop", variant="stop", size="lg", scale=1, elem_id="stop-btn")
    gr.Markdown(demo.captioner_reason, elem_classes="small")
    ui["info"] = gr.Markdown("", elem_id="input-info", elem_classes="small")


def _result_column(ui: dict) -> None:
    ui["slider"] = gr.ImageSlider(label="MMSR (left) ⟷ baseline (right)", elem_id="result-slider", type="pil",
                                  format="png", height=420)  # fmt: skip
    ui["run_status"] = gr.Markdown("", elem_id="run-status")
    with gr.Row():
        for name, label in zip(DOWNLOADS, ("Download MMSR", "Download baseline", "Export settings"), strict=True):
            ui[name] = gr.DownloadButton(label, size="sm", interactive=False, min_width=120)


def _compare_tab(ui: dict) -> None:
    ui["gallery"] = gr.Gallery(label="LR (nearest) · bicubic · baseline · MMSR", elem_id="result-gallery",
                               columns=2, format="png", height="auto", object_fit="contain")  # fmt: skip
    ui["scores"] = gr.Dataframe(label="Scores (↑ higher is better, ↓ lower is better)", elem_id="scores",
                                interactive=False, wrap=True)  # fmt: skip
    ui["scores_note"] = gr.Markdown("", elem_classes="small")
    gr.Markdown("**What changed**: |previous − current| MMSR output, 0 (dark) to 64 grey levels (bright).")
    ui["changes_heat"] = gr.Image(label="change since the previous run", elem_id="changes-heat", format="png",
                                  interactive=False, height=300)  # fmt: skip
    gr.Markdown("**LR-consistency**: |downscaled SR − LR|; bright regions do not downscale back to the input.")
    with gr.Row():
        ui["heat_mmsr"] = gr.Image(label="residual: MMSR", elem_id="heat-mmsr", format="png", interactive=False)
        ui["heat_base"] = gr.Image(label="residual: baseline", elem_id="heat-base", format="png", interactive=False)
    ui["timings"] = gr.Dataframe(label="Per-stage timings", interactive=False, max_height=260)


def _context_tab(ui: dict) -> None:
    with gr.Row(equal_height=True):
        for m in MODALITIES:
            label = CONTEXT[m].label
            with gr.Column(min_width=220, elem_classes="card"):
                ui[f"{m}_preview"] = gr.Image(label=f"{label} map", interactive=False, height=170, format="png")
                ui[f"{m}_source"] = gr.Markdown("", elem_classes="small")
                ui[f"{m}_on"] = gr.Checkbox(value=spec("modalities").default, label=f"Use {label.lower()} (off = m₀)")
                ui[f"{m}_tau"] = _slider("temperatures", label=f"{label} temperature τ (smaller = stronger)")
                with gr.Accordion(f"{label}: upload your own map", open=False):
                    ui[f"{m}_map"] = upload_image(label=f"your own {label.lower()} map", type="filepath",
                                                  sources=["upload"], height=120)  # fmt: skip


def _settings_tab(ui: dict, demo: Demo) -> None:
    with gr.Row():
        ui["cfg_mode"] = gr.Radio(list(spec("cfg_mode").choices), value=spec("cfg_mode").default,
                                  label="guidance mode (negative branch)")  # fmt: skip
        ui["guidance"] = _slider("guidance", value=demo.engine.preset.default_guidance, label="guidance w (0 = off)")
        ui["steps"] = _slider("steps", value=demo.engine.preset.default_steps, label="denoising schedule (steps)")
        ui["strength"] = _slider("strength", value=demo.default_strength(), label="strength (1 = from pure noise)",
                                 visible=demo.default_strength() < 1)  # fmt: skip
        ui["residual_scale"] = _slider("residual_scale", value=demo.default_residual_scale(),
                                       label="residual scale (0 = stage 1 only, 1 = full)",
                                       visible=demo.has_stage1())  # fmt: skip
    ui["settings_note"] = gr.Markdown(
        demo.settings_note(demo.engine.preset.default_steps, baseline=demo.default_baseline())
    )
    with gr.Row(equal_height=True):
        s = spec("seed")
        ui["seed"] = gr.Number(value=s.default, precision=0, minimum=s.min, maximum=s.max, label="seed")
        ui["dice"] = gr.Button("Random seed", size="sm", scale=0, min_width=120)
        ui["baseline"] = gr.Dropdown(demo.baseline_choices(), value=demo.default_baseline(), label="compare with")
        ui["negative"] = gr.Textbox("", label="negative prompt", placeholder="e.g. blurry, noisy")
    with gr.Row():
        ui["refine"] = gr.Checkbox(value=spec("refine").default, label="zero-modal refinement (two passes)")
        ui["downscale"] = gr.Checkbox(value=True, label=f"downscale inputs larger than {demo.max_side} px")
    with gr.Accordion("HR reference (optional, for PSNR/SSIM/LPIPS/DISTS)", open=False):
        ui["hr"] = upload_image(label="HR reference", type="filepath", image_mode=None, sources=["upload"], height=160)
    with gr.Row(equal_height=True):
        ui["import_json"] = gr.UploadButton("Import settings (JSON)", file_types=[".json"], size="sm")
        ui["import_note"] = gr.Markdown("")


def _lab_tab(ui: dict) -> None:
    names = list(lab_folders(LAB_ROOT))
    first = names[0] if names else None
    with gr.Row(equal_height=True):
        ui["lab_folder"] = gr.Dropdown(names, value=first, label="lab results", scale=4)
        ui["lab_refresh"] = gr.Button("refresh list", scale=1)
    gr.Markdown(HOW_TO, elem_classes="small")
    ui["lab_report"] = gr.Markdown(open_report(first, LAB_ROOT) if first else "", elem_id="lab-report")


def _layout(demo: Demo) -> dict:
    ui: dict = {}
    gr.Markdown(INTRO)
    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=320):
            _input_column(ui, demo)
        with gr.Column(scale=6, min_width=320):
            _result_column(ui)
    gr.Examples(_examples(), inputs=[ui["image"], ui["caption"]], label="Examples (image and caption)")
    with gr.Tabs():
        with gr.Tab("Compare in detail"):
            _compare_tab(ui)
        with gr.Tab("Context maps"):
            _context_tab(ui)
        with gr.Tab("Settings"):
            _settings_tab(ui, demo)
        with gr.Tab("What runs here"):
            gr.Markdown(demo.status(), elem_id="status")
        with gr.Tab("Lab reports"):
            _lab_tab(ui)
    ui["previous"] = gr.State(None)
    assert tuple(ui) == FIELDS or set(ui) == set(FIELDS), sorted(set(ui) ^ set(FIELDS))
    return ui


def _wire_inputs(ui: dict, demo: Demo) -> None:
    gpu = {"concurrency_id": "gpu"}
    cards = tuple(f"{m}_{p}" for m in MODALITIES for p in ("preview", "source", "tau"))
    check = ui["image"].change(**wire(ui, demo.check, ("image", "downscale"), ()), api_name="check_input", **gpu)
    check.success(**wire(ui, demo.prepare, PREPARE_INPUTS, (*cards, "info")), api_name="prepare", **gpu)
    check.failure(lambda: (None, ""), None, [ui["image"], ui["info"]], api_name="clear_input", queue=False)
    for m in (*SWITCHES, *MAPS):
        ui[m].change(**wire(ui, demo.prepare, PREPARE_INPUTS, (*cards, "info")), api_name=f"prepare_{m}", **gpu)

    # the upload's `check` reports a bad file; the caption event then stays silent (no second message)
    def caption(image, downscale) -> dict:  # unpreprocessed: the upload's file payload
        return demo.caption(image.get("path") if isinstance(image, dict) else image, downscale)

    describe = wire(ui, caption, ("image", "downscale"), ("caption",))
    ui["image"].upload(**describe, api_name="auto_caption", preprocess=False, show_progress="hidden", **gpu)
    ui["recaption"].click(**describe, api_name="recaption", preprocess=False, **gpu)
    for name in NOTE_INPUTS:
        ui[name].change(**wire(ui, demo.settings_note, NOTE_INPUTS, ("settings_note",)),
                        api_name=f"settings_note_{name}", queue=False)  # fmt: skip


def _wire_run(ui: dict, demo: Demo) -> None:
    gpu = {"concurrency_id": "gpu"}
    go = ui["run"].click(**wire(ui, demo.check_run, ("image", "downscale"), ()), api_name="check_run", queue=False)
    run = go.success(**wire(ui, demo.run, RUN_INPUTS, RUN_OUTPUTS, session=True, progress=True), api_name="run", **gpu)
    run.then(**wire(ui, demo.settings_note, NOTE_INPUTS, ("settings_note",)), api_name="settings_note", queue=False)
    ui["stop"].click(**wire(ui, demo.stop, (), (), session=True), api_name="stop", concurrency_limit=None)
    ui["dice"].click(**wire(ui, lambda: {"seed": demo.random_seed()}, (), ("seed",)), api_name="random_seed",
                     queue=False)  # fmt: skip
    imported = (*CONTROLS, "baseline", "import_note")
    ui["import_json"].upload(**wire(ui, demo.import_settings, ("import_json", "image", "downscale"), imported),
                             api_name="import_settings")  # fmt: skip


def _wire_lab(ui: dict) -> None:
    def report(lab_folder) -> dict:
        try:
            return {"lab_report": open_report(lab_folder, LAB_ROOT) if lab_folder else ""}
        except ValueError as e:
            raise DemoError(str(e)) from e

    refresh = wire(ui, lambda: {"lab_folder": gr.update(choices=list(lab_folders(LAB_ROOT)))}, (), ("lab_folder",))
    ui["lab_refresh"].click(**refresh, api_name="lab_folders")
    ui["lab_folder"].change(**wire(ui, report, ("lab_folder",), ("lab_report",)), api_name="lab_report")


def build_demo(engine, scorer=None, baselines=None, **options) -> gr.Blocks:
    """The page around one :class:`mmsr.demo.Demo`; ``options`` go to it (checkpoint, notice, max_side)."""
    probe = Image.open(EXAMPLES / "astronaut.png").convert("RGB")
    demo = Demo(engine, scorer, baselines, probe=probe, **options)
    for name, seconds in (("prepare", 60), ("caption", 60), ("run", 180)):  # GPU work; no-op off ZeroGPU
        setattr(demo, name, GPU(duration=seconds)(getattr(demo, name)))
    with gr.Blocks(title="MMSR Lab", delete_cache=(3600, 7200)) as page:
        ui = _layout(demo)
        _wire_inputs(ui, demo)
        _wire_run(ui, demo)
        _wire_lab(ui)
    page.lab, page.ui = demo, ui
    refuse_foreign_files(page)
    return page


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
    from mmsr.engine import Engine, check_device
    from mmsr.presets import PresetUnavailable, checkpoint_dir

    preset, notice = _preset_and_notice()
    device = os.environ.get("MMSR_DEVICE") or None
    if device:
        try:
            check_device(device)
        except ValueError as e:
            notice = " ".join(filter(None, [notice, f"MMSR_DEVICE ignored ({e}); using the default device."]))
            device = None
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
    order = [n for n in dict.fromkeys([*(n for n in BASELINE_ORDER if n in BASELINES), *BASELINES]) if n != TEXT_ONLY]
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
