"""``python -m mmsr train --evaluate``: score the lite checkpoints next to the baselines.

Methods: ``bicubic``, ``realesrgan`` (x4plus), ``twin`` (the text-only twin checkpoint, every
modality ``m_0``), ``mmsr_m0`` (lite MMSR, every modality ``m_0``), ``mmsr`` (lite MMSR with maps
from the engine: Canny edges of the bicubic-upsampled LR, the set's VOC label map from
``DATA/seg/eval`` as the user segmentation map, depth ``m_0``). Captions come from
``captions.json``. Sets with ground truth use ``eval_lr/<set>/{bicubic_x4,degraded_x4}``;
``realset65`` uses its own images as LR (those longer than 256 px are first downscaled, bicubic)
and gets no-reference scores only. Scores follow ``../shared/tools/sr_eval.py`` (``mmsr.metrics``).

SR images are written to ``OUT/<set>/<kind>/<method>/<stem>.png`` and reused when present, so
several processes (one per method) can share the work and a rerun only scores.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

METHODS = ("bicubic", "realesrgan", "twin", "mmsr_m0", "mmsr")
METRIC_NAMES = ("psnr", "ssim", "niqe", "piqe", "lr_psnr")
REAL_MAX_SIDE = 256


def eval_inputs(data: Path, set_name: str, limit: int | None) -> list[tuple[str, str, Path, Path | None]]:
    """``(kind, stem, lr_path, hr_path)`` for every image of a set (first ``limit`` per kind)."""
    if set_name == "realset65":
        files = sorted((data / "eval" / "realset65").iterdir())[:limit]
        return [("real", p.stem, p, None) for p in files]
    out = []
    for kind in ("bicubic_x4", "degraded_x4"):
        files = sorted((data / "eval_lr" / set_name / kind).iterdir())[:limit]
        out += [(kind, p.stem, p, data / "eval" / set_name / f"{p.stem}.png") for p in files]
    return out


def load_lr(path: Path, real: bool) -> Image.Image:
    image = Image.open(path).convert("RGB")
    if real and max(image.size) > REAL_MAX_SIDE:
        s = REAL_MAX_SIDE / max(image.size)
        image = image.resize((round(image.width * s), round(image.height * s)), Image.BICUBIC)
    return image


class Runner:
    """Makes the SR image of one method; models load on first use."""

    def __init__(self, data: Path, checkpoints: Path, samples: int | None = None, guidance: float | None = None):
        self.data, self.checkpoints, self.samples, self.guidance = data, checkpoints, samples, guidance
        self.captions = json.loads((data / "captions.json").read_text())
        self._models: dict[str, object] = {}

    def _engine(self, name: str):
        if name not in self._models:
            from ..engine import Engine

            engine = Engine.load("lite", checkpoint=self.checkpoints / name, device="cpu")
            if self.samples is not None:
                engine.num_samples = self.samples
            self._models[name] = engine
        return self._models[name]

    def _baseline(self, name: str):
        if name not in self._models:
            from baselines import get_baseline

            self._models[name] = get_baseline(name)
        return self._models[name]

    def seg_map(self, set_name: str, stem: str) -> Image.Image | None:
        """The set's VOC label map drawn in the VOC palette at its own size (the input's aspect ratio)."""
        from ..modalities.palette import label_colours

        path = self.data / "seg" / "eval" / set_name / f"{stem}.png"
        return Image.fromarray(label_colours(np.asarray(Image.open(path)))) if path.is_file() else None

    def __call__(self, method: str, lr: Image.Image, set_name: str, stem: str, stage1: Image.Image | None = None):
        """The method's SR image; ``stage1``: the saved Real-ESRGAN image of ``lr``, which MMSR's stage 1 reuses."""
        from ..settings import UpscaleSettings

        if method in ("bicubic", "realesrgan"):
            return self._baseline(method)(lr)
        caption = self.captions.get(f"eval/{set_name}/{stem}.png", "")
        settings = UpscaleSettings(caption=caption, auto_caption=False, seed=0, guidance=self.guidance)
        engine = self._engine("lite-text-only" if method == "twin" else "lite")
        if stage1 is not None:
            engine.remember_stage1(lr, stage1)
        if method == "twin":
            return engine.text_only(lr, settings).image
        if method == "mmsr_m0":
            return engine.text_only(lr, settings).image
        seg = self.seg_map(set_name, stem)
        return engine.upscale(lr, settings, user_maps={"seg": seg} if seg is not None else None).image


def run(
    data: Path,
    out: Path,
    checkpoints: Path,
    sets: list[str],
    methods: list[str],
    limit: int | None,
    samples: int | None = None,
    guidance: float | None = None,
) -> dict:
    """Make (or reuse) every SR image and score it; returns ``{set: {kind: {method: {metric: mean}}}}``.

    ``samples`` / ``guidance``: MMSR's samples per output and guidance weight (default: the preset's);
    saved images are reused as they are, so other values need a fresh ``out``."""
    from ..metrics import Scorer

    runner, scorer = Runner(data, checkpoints, samples, guidance), Scorer(names=list(METRIC_NAMES))
    results: dict = {}
    for set_name in sets:
        for kind, stem, lr_path, hr_path in eval_inputs(data, set_name, limit):
            lr = load_lr(lr_path, kind == "real")
            hr = None if hr_path is None else Image.open(hr_path).convert("RGB")
            for method in methods:
                path = out / set_name / kind / method / f"{stem}.png"
                if path.is_file():
                    sr = Image.open(path).convert("RGB")
                else:
                    saved = out / set_name / kind / "realesrgan" / f"{stem}.png"
                    stage1 = Image.open(saved).convert("RGB") if saved.is_file() else None
                    sr = runner(method, lr, set_name, stem, stage1)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    sr.save(path)
                scores = scorer.score(sr, lr=lr, hr=hr)
                row = results.setdefault(set_name, {}).setdefault(kind, {}).setdefault(method, {})
                for name, score in scores.items():
                    if score.available:
                        row.setdefault(name, []).append(score.value)
                print(
                    f"{set_name}/{kind}/{method}/{stem}: "
                    + " ".join(f"{k}={v.value:.3f}" for k, v in scores.items() if v.available),
                    flush=True,
                )
    return {
        s: {
            k: {m: {n: (float(np.mean(v)), len(v)) for n, v in row.items()} for m, row in ms.items()}
            for k, ms in ks.items()
        }
        for s, ks in results.items()
    }


def markdown(table: dict) -> str:
    lines = []
    for set_name, kinds in table.items():
        for kind, methods in kinds.items():
            names = [n for n in METRIC_NAMES if any(n in row for row in methods.values())]
            count = max(c for row in methods.values() for _, c in row.values())
            lines += [
                f"**{set_name}, {kind}** ({count} images)",
                "",
                "| method | " + " | ".join(names) + " |",
                "|---" * (len(names) + 1) + "|",
            ]
            for method, row in methods.items():
                cells = [f"{row[n][0]:.3f}" if n in row else "-" for n in names]
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


SHEET_EXAMPLES = ("astronaut", "coffee", "chelsea", "rocket")
SHEET_METHODS = ("bicubic", "realesrgan", "twin", "mmsr")


def contact_sheet(runner: Runner, path: Path, lr_side: int = 64) -> None:
    """One row per ``skimage.data`` example (a centre crop, bicubic /4 to ``lr_side``), one column per method."""
    from skimage import data as examples

    rows = []
    for name in SHEET_EXAMPLES:
        image = Image.fromarray(getattr(examples, name)()).convert("RGB")
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        lr = image.crop((left, top, left + side, top + side)).resize((lr_side, lr_side), Image.BICUBIC)
        stage1 = runner("realesrgan", lr, "skimage", name)
        rows.append([np.asarray(runner(m, lr, "skimage", name, stage1)) for m in SHEET_METHODS])
    sheet = np.concatenate([np.concatenate(row, axis=1) for row in rows], axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(path)
    print(f"contact sheet ({' | '.join(SHEET_METHODS)}) written to {path}")


def main(args: argparse.Namespace) -> None:
    from ..presets import CHECKPOINTS

    samples = getattr(args, "samples", None)
    if samples is not None and samples < 1:
        raise ValueError(f"--samples must be at least 1, got {samples}")
    guidance = getattr(args, "guidance", None)
    if guidance is not None and guidance < 0:
        raise ValueError(f"--guidance must be >= 0, got {guidance}")
    if getattr(args, "contact_sheet", None):
        contact_sheet(Runner(args.data, CHECKPOINTS, samples, guidance), args.contact_sheet)
        return
    out = args.out or Path("runs/eval")
    methods = [m for m in (args.methods.split(",") if args.methods else METHODS) if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}")
    sets = [s for s in args.sets.split(",") if s]
    table = run(args.data, out, CHECKPOINTS, sets, methods, args.limit, samples, guidance)
    # One file per method and set subset, so processes splitting either never overwrite each other.
    stem = "-".join(["results", *([] if args.methods == "" else methods), *sets])
    (out / f"{stem}.json").write_text(json.dumps(table, indent=2))
    (out / f"{stem}.md").write_text(markdown(table))
    print(markdown(table))


# Issue gates of lite v2 against Real-ESRGAN x4plus: (metric, allowed margin, higher is better).
GATES = (("psnr", -0.2, True), ("ssim", -0.01, True), ("lr_psnr", 0.0, True), ("niqe", 0.2, False))


def gate_rows(table: dict, method: str = "mmsr", reference: str = "realesrgan") -> list[str]:
    """Markdown rows: ``method`` minus ``reference`` per set, LR kind and metric, and whether each gate holds."""
    lines = ["| set | LR | " + " | ".join(f"{m} (gate)" for m, _, _ in GATES) + " |", "|---" * (len(GATES) + 2) + "|"]
    for set_name, kinds in table.items():
        for kind, methods in kinds.items():
            if method not in methods or reference not in methods:
                continue
            cells = []
            for metric, margin, higher in GATES:
                if metric not in methods[method]:
                    cells.append("-")
                    continue
                delta = methods[method][metric][0] - methods[reference][metric][0]
                ok = delta >= margin if higher else delta <= margin
                cells.append(f"{delta:+.3f} ({'pass' if ok else 'FAIL'})")
            lines.append(f"| {set_name} | {kind} | " + " | ".join(cells) + " |")
    return lines


def merge(files: list[Path]) -> dict:
    """Merge tables written by processes that each ran some methods."""
    table: dict = {}
    for f in files:
        for s, kinds in json.loads(f.read_text()).items():
            for k, methods in kinds.items():
                table.setdefault(s, {}).setdefault(k, {}).update(methods)
    order = {m: i for i, m in enumerate(METHODS)}
    return {
        s: {k: dict(sorted(ms.items(), key=lambda kv: order.get(kv[0], 99))) for k, ms in ks.items()}
        for s, ks in table.items()
    }
