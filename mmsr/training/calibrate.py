"""``python -m mmsr.training.calibrate``: choose ``lite``'s sampler defaults on held-out training photos.

The issue's gates compare MMSR with Real-ESRGAN x4plus on set14, bsd68 and realset65. Picking the
number of averaged samples or the guidance weight by those numbers would fit the evaluation sets,
so this command measures the same gate margins (MMSR minus Real-ESRGAN: PSNR, SSIM, LR-consistency,
NIQE) on the photos that training held out of every batch (``--val-photos``, the same seed), built
exactly as training built them: one seeded 256 px window per photo, one second-order degradation
and one bicubic x4 LR, Canny edges of the LR as the engine extracts them, the VOC label map where
the photo has one, the photo's caption.

Each (guidance, seed) pair is sampled once (one sample per run); the mean of the first K seeds is
the K-sample output, so a whole grid of K costs one run per seed. The residual scale s is applied to
that mean afterwards, ``stage 1 + s * (output - stage 1)`` (the pipeline scales each sample before
clipping; the two differ only where a sample clips), so the s grid costs no sampling at all::

    python -m mmsr.training.calibrate --samples 1,2,4,6,8 --guidance 1,4,7 --residual-scale 0.6,0.8,1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..modalities.palette import label_colours
from . import stage1 as stage1_cache
from .data import ImageBank
from .diffusion import held_out
from .evaluate import GATES

KINDS = ("degraded", "bicubic")  # the order of ``stage1.lr_versions`` with two LR versions


def held_out_inputs(
    data: Path, val_photos: int, seed: int = 0, crop_side: int = 256, max_side: int = 512, min_side: int = 128
):
    """``(key, kind, hr, lr, seg, caption)`` for every held-out photo and LR version, as training made them.

    The defaults are those ``lite`` was trained with (``--max-side 512 --crop 128``, stage 1 ``--crop-side 256``);
    ``crop_side=0`` takes each whole photo instead (NIQE behaves differently on 256 px windows).
    """
    bank = ImageBank(data, min_side=min_side, max_side=max_side)
    val_ids, _ = held_out(len(bank), val_photos, seed)
    for i in val_ids:
        sample = bank.samples[i]
        (y, x), hr = stage1_cache.photo_window(sample.image, sample.key, crop_side, seed)
        h, w = hr.shape[:2]
        lrs = stage1_cache.lr_versions(hr, len(KINDS), stage1_cache.photo_seed(sample.key, seed))
        seg = None
        if sample.seg is not None:
            seg = Image.fromarray(label_colours(sample.seg[y : y + h, x : x + w]))
        for kind, lr in zip(KINDS, lrs):
            yield sample.key, kind, Image.fromarray(hr), Image.fromarray(lr), seg, sample.caption


def margins(scores: dict, reference: dict) -> dict[str, float]:
    """Gate margins (positive = the gate holds with that much room) of mean ``scores`` against ``reference``.

    A metric either side lacks is left out."""
    out = {}
    for metric, allowed, higher in GATES:
        if not scores.get(metric) or not reference.get(metric):
            continue
        delta = np.mean(scores[metric]) - np.mean(reference[metric])
        out[metric] = float(delta - allowed if higher else allowed - delta)
    return out


def worst(margin: dict[str, float]) -> float:
    """The smallest margin in units of its gate's tolerance (LR-consistency, whose gate is 0, in dB)."""
    return min(margin[metric] / (abs(allowed) or 1.0) for metric, allowed, _ in GATES if metric in margin)


def run(args: argparse.Namespace) -> dict:
    from ..engine import Engine
    from ..metrics import Scorer
    from ..settings import UpscaleSettings

    engine = Engine.load("lite", checkpoint=args.checkpoint, device="cpu")
    engine.num_samples = 1
    scorer = Scorer(names=[m for m, _, _ in GATES])
    ks, ws, scales = args.samples, args.guidance, args.residual_scale
    if scales != [1.0] and engine.pipeline.config.stage1 is None:
        raise ValueError("--residual-scale needs a checkpoint with a stage 1 (lite); this one has none")
    scores = {(kind, k, w, s): {} for kind in KINDS for k in ks for w in ws for s in scales}
    reference: dict = {kind: {} for kind in KINDS}

    def add(row: dict, image: Image.Image, lr: Image.Image, hr: Image.Image) -> None:
        for name, s in scorer.score(image, lr=lr, hr=hr).items():
            if s.available:  # e.g. NIQE needs a large enough image
                row.setdefault(name, []).append(s.value)

    realesrgan = None
    inputs = held_out_inputs(args.data, args.val_photos, args.seed, crop_side=args.crop_side)
    for n, (key, kind, hr, lr, seg, caption) in enumerate(inputs):
        baseline = engine.baseline_from_stage1("realesrgan", lr)  # lite: its own stage 1, computed once
        if baseline is None:
            from baselines import get_baseline

            realesrgan = realesrgan or get_baseline("realesrgan")
            baseline = realesrgan(lr)
        add(reference[kind], baseline, lr, hr)
        for w in ws:
            samples = []
            for seed in range(max(ks)):
                settings = UpscaleSettings(caption=caption, auto_caption=False, seed=seed, guidance=w, residual_scale=1)
                result = engine.upscale(lr, settings, user_maps={"seg": seg} if seg is not None else None)
                samples.append(np.asarray(result.image, dtype=np.float64))
            stage1 = np.asarray(baseline, dtype=np.float64)
            for k in ks:
                mean = np.mean(samples[:k], axis=0)
                for s in scales:
                    blend = (stage1 + s * (mean - stage1)).clip(0, 255).round().astype(np.uint8)
                    add(scores[(kind, k, w, s)], Image.fromarray(blend), lr, hr)
        print(f"calibrate {n + 1}: {key} {kind}", flush=True)
    table = {}
    for (kind, k, w, s), row in scores.items():
        key = f"{kind} K={k} w={w} s={s}"
        table[key] = {"kind": kind, "samples": k, "guidance": w, "residual_scale": s, **margins(row, reference[kind])}
    return table


def markdown(table: dict) -> str:
    names = [m for m, _, _ in GATES]
    lines = [
        "| LR | samples | guidance | residual scale | "
        + " | ".join(f"{m} margin" for m in names)
        + " | worst (tolerances) |",
        "|---" * (len(names) + 5) + "|",
    ]
    for row in table.values():
        margin = {m: row[m] for m in names if m in row}
        cells = " | ".join(f"{row[m]:+.3f}" if m in row else "-" for m in names)
        setting = f"{row['samples']} | {row['guidance']:g} | {row.get('residual_scale', 1):g}"
        lines.append(f"| {row['kind']} | {setting} | {cells} | {worst(margin):+.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m mmsr.training.calibrate", description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("../shared/data"))
    p.add_argument("--checkpoint", type=Path, default=None, help="lite MMSR checkpoint (default: the committed one)")
    p.add_argument("--val-photos", type=int, default=32, help="as training held them out (same --seed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--crop-side", type=int, default=256, help="the training window side (0: the whole photo, <= 512 px)"
    )
    p.add_argument("--samples", default="1,2,4,6,8", help="comma-separated sample counts K")
    p.add_argument("--guidance", default="4", help="comma-separated guidance weights w")
    p.add_argument(
        "--residual-scale", default="1", help="comma-separated residual scales s in [0, 1] (stage 1 + s * residual)"
    )
    p.add_argument("--out", type=Path, default=Path("runs/calibrate"))
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    args.samples = sorted({int(v) for v in args.samples.split(",") if v})
    args.guidance = [float(v) for v in args.guidance.split(",") if v]
    args.residual_scale = [float(v) for v in args.residual_scale.split(",") if v]
    if not args.samples or min(args.samples) < 1:
        p.error("--samples takes whole numbers >= 1")
    if not args.residual_scale or not all(0 <= s <= 1 for s in args.residual_scale):
        p.error("--residual-scale takes numbers in [0, 1]")
    if args.threads:
        torch.set_num_threads(args.threads)
    table = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "calibration.json").write_text(json.dumps(table, indent=2))
    text = markdown(table)
    (args.out / "calibration.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
