"""Hallucination measurements over the lab's results (paper sec. 5: context constrains the output).

* Caption swap: the same job with the image's own caption and with another image's (a cyclic
  derangement). A method that invents content from text moves more: lower PSNR/SSIM between the
  two outputs and a larger change of LR-consistency. The paper's claim: MMSR moves less.
* Output change: the mean absolute change of an output (grey levels, 0-255) from the same job at a
  reference setting (a modality switched to m_0, a temperature moved, another image's maps): how
  much the model uses what was changed.
* Seed variance: the per-pixel standard deviation of the outputs over seeds (grey levels, mean
  over RGB); a heatmap per (image, method) and its mean per method.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from ..conditioning import MODALITIES
from ..metrics import abs_difference
from .results import number, row_file
from .stats import Estimate, bootstrap, per_image

SETTING_COLUMNS = ("cfg_mode", "guidance", "subset", *[f"tau_{m}" for m in MODALITIES])
IDENTICAL_PSNR = 100.0  # PSNR of identical outputs is infinite; cap it so means stay finite


def setting_key(row: dict) -> tuple:
    return tuple(row.get(c, "") for c in SETTING_COLUMNS)


def _open(root: Path, rel: str) -> Image.Image | None:
    """A row's output image, ``None`` when it is missing, unreadable or outside ``root`` (skipped)."""
    path = row_file(root, rel)
    if path is None:
        return None
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def caption_swap(rows: list[dict], root: str | Path) -> dict[str, dict[str, Estimate]]:
    """``{method: {"psnr", "ssim", "change", "lr_true", "lr_swap", "lr_delta"}}``, Estimates over images.

    ``psnr``/``ssim``: between the outputs with the true and the swapped caption (higher = moved
    less); ``change``: their mean absolute difference (grey levels); ``lr_delta``: LR-consistency with the swapped caption minus with the true one (dB).
    """
    from ..metrics import psnr, ssim

    root = Path(root)
    true = {(r["image"], r["method"], setting_key(r), r["seed"]): r for r in rows if r["caption_kind"] == "true"}
    pairs = []
    for swap in (r for r in rows if r["caption_kind"] == "swap"):
        ref = true.get((swap["image"], swap["method"], setting_key(swap), swap["seed"]))
        if ref is None:
            continue
        a, b = _open(root, ref["output"]), _open(root, swap["output"])
        if a is None or b is None or a.size != b.size:
            continue
        lr_true, lr_swap = number(ref, "lr_psnr"), number(swap, "lr_psnr")
        pairs.append({
            "image": swap["image"], "method": swap["method"],
            "psnr": min(psnr(a, b), IDENTICAL_PSNR), "ssim": ssim(a, b), "change": float(abs_difference(a, b).mean()),
            "lr_true": lr_true, "lr_swap": lr_swap,
            "lr_delta": None if lr_true is None or lr_swap is None else lr_swap - lr_true,
        })  # fmt: skip
    out: dict[str, dict[str, Estimate]] = {}
    for key in ("psnr", "ssim", "change", "lr_true", "lr_swap", "lr_delta"):
        for method, images in per_image(pairs, lambda p, k=key: p[k], lambda p: p["method"]).items():
            out.setdefault(method, {})[key] = bootstrap(images.values())
    return out


def output_change(
    rows: list[dict], root: str | Path, reference: Callable[[dict], bool], group: Callable[[dict], object]
) -> dict[object, Estimate]:
    """Per ``group(row)``, the mean absolute change of the outputs from the ``reference`` row of the
    same image, method, seed and caption kind (grey levels; an Estimate over images)."""
    root = Path(root)
    job = lambda r: (r["image"], r["method"], r["seed"], r["caption_kind"])  # noqa: E731
    refs = {job(r): r for r in rows if reference(r)}
    changes = []
    for r in rows:
        ref = refs.get(job(r))
        if ref is None:
            continue
        if ref is r:
            change = 0.0
        else:
            a, b = _open(root, ref["output"]), _open(root, r["output"])
            if a is None or b is None or a.size != b.size:
                continue
            change = float(abs_difference(a, b).mean())  # the number the app shows after a rerun
        changes.append({"image": r["image"], "group": group(r), "change": change})
    return {
        g: bootstrap(v.values()) for g, v in per_image(changes, lambda c: c["change"], lambda c: c["group"]).items()
    }


def seed_variance(
    rows: list[dict], root: str | Path, select: Callable[[dict], bool]
) -> tuple[dict[str, Estimate], dict[tuple[str, str], np.ndarray]]:
    """Per method the mean per-pixel std over seeds (Estimate over images), and the std maps
    ``{(image, method): (H, W) float32}``, for the rows ``select`` keeps (one setting per method)."""
    root = Path(root)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if select(r):
            groups[(r["image"], r["method"], setting_key(r), r["caption_kind"])].append(r)
    maps: dict[tuple[str, str], np.ndarray] = {}
    values = []
    for (image, method, _, _), group in groups.items():
        seeds = {r["seed"]: r for r in group}
        if len(seeds) < 2 or (image, method) in maps:
            continue
        images = [_open(root, r["output"]) for r in seeds.values()]
        if any(i is None for i in images) or len({i.size for i in images}) > 1:
            continue
        stack = np.stack([np.asarray(i, np.float32) for i in images])
        maps[(image, method)] = stack.std(axis=0).mean(axis=2)
        values.append(
            {
                "image": image,
                "method": method,
                "std": float(maps[(image, method)].mean()),
            }
        )
    table = {
        m: bootstrap(images.values())
        for m, images in per_image(values, lambda v: v["std"], lambda v: v["method"]).items()
    }
    return table, maps
