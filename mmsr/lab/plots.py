"""Figures of the paper, redrawn on the user's data (matplotlib, Agg; no CSV knowledge here).

Each function takes aggregated numbers or image paths, writes one PNG and returns its path.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from .stats import Estimate

DPI = 110


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False  # labels are names from the data: a "$" is a dollar sign
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.part.png")
    fig.savefig(tmp, dpi=DPI, bbox_inches="tight")
    _pyplot().close(fig)
    tmp.replace(path)
    return path


def _err(e: Estimate) -> tuple[float, float]:
    if e.n < 2 or math.isnan(e.low):
        return 0.0, 0.0
    return e.mean - e.low, e.high - e.mean


def tradeoff(
    lines: dict[str, list[tuple[float, Estimate, Estimate]]],
    x_label: str,
    y_labels: list[str],
    path: Path,
) -> Path:
    """Perception-distortion trade-off (paper Fig. 10, Table 3): one line per cfg mode, points
    along the guidance ``w``. ``lines[mode] = [(w, x, y0, y1, ...)]``, one panel per y metric."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(y_labels), figsize=(4.6 * len(y_labels), 3.8), squeeze=False)
    for k, (ax, y_label) in enumerate(zip(axes[0], y_labels)):
        for mode, points in sorted(lines.items()):
            points = sorted(points, key=lambda p: p[0])
            xs = [p[1].mean for p in points]
            ys = [p[2 + k].mean for p in points]
            xerr = np.array([_err(p[1]) for p in points]).T
            yerr = np.array([_err(p[2 + k]) for p in points]).T
            ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, marker="o", capsize=3, label=mode)
            for (w, *_), x, y in zip(points, xs, ys):
                ax.annotate(
                    f"w={w:g}",
                    (x, y),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=7,
                )
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        ax.grid(alpha=0.3)
    axes[0][0].legend(title="cfg mode")
    fig.suptitle("Perception-distortion trade-off across guidance")
    return _save(fig, path)


def bars(groups: list[str], panels: dict[str, dict[str, Estimate]], title: str, path: Path) -> Path:
    """One bar chart per metric (``panels[metric][group]``), bars in ``groups`` order, 95% CI whiskers;
    the modality ablation (paper Fig. 8) and the caption-swap chart."""
    plt = _pyplot()
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(max(3.2, 0.55 * len(groups) + 1.6) * len(panels), 3.6),
        squeeze=False,
    )
    for ax, (label, values) in zip(axes[0], panels.items()):
        present = [g for g in groups if g in values]
        est = [values[g] for g in present]
        ax.bar(
            range(len(present)),
            [e.mean for e in est],
            yerr=np.array([_err(e) for e in est]).T,
            capsize=3,
            color="#4c72b0",
        )
        ax.set_xticks(range(len(present)), present, rotation=35, ha="right")
        ax.set_title(label, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path)


def crop_center(image: Image.Image, side: int) -> Image.Image:
    w, h = min(side, image.width), min(side, image.height)
    left, top = (image.width - w) // 2, (image.height - h) // 2
    return image.crop((left, top, left + w, top + h))


def contact_sheet(
    cells: dict[str, dict[float, Path]],
    title: str,
    path: Path,
    crop: int = 128,
    reference: tuple[str, Image.Image] | None = None,
) -> Path:
    """Temperature sweep (paper Fig. 9): one row per modality, one column per tau, central crops;
    ``reference`` = ``(label, 4x-size image)`` adds a last column (the HR, or the LR enlarged)."""
    plt = _pyplot()
    columns: list = sorted({t for row in cells.values() for t in row}) + ([reference[0]] if reference else [])
    fig, axes = plt.subplots(
        len(cells),
        len(columns),
        figsize=(1.9 * len(columns), 2.0 * len(cells)),
        squeeze=False,
    )
    for i, (modality, row) in enumerate(cells.items()):
        for j, column in enumerate(columns):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if reference and column == reference[0]:
                ax.imshow(crop_center(reference[1].convert("RGB"), crop))
            elif column in row:
                with Image.open(row[column]) as image:
                    ax.imshow(crop_center(image.convert("RGB"), crop))
            else:
                ax.set_facecolor("#eeeeee")
            if i == 0:
                ax.set_title(column if isinstance(column, str) else f"tau = {column:g}", fontsize=9)
            if j == 0:
                ax.set_ylabel(modality, fontsize=9)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def heatmaps(
    maps: dict[tuple[str, str], np.ndarray],
    title: str,
    path: Path,
    vmax: float | None = None,
) -> Path:
    """Grid of per-pixel std maps: one row per image, one column per method, one colour scale."""
    plt = _pyplot()
    images = list(dict.fromkeys(k[0] for k in maps))
    methods = list(dict.fromkeys(k[1] for k in maps))
    vmax = vmax or max(float(np.percentile(m, 99)) for m in maps.values()) or 1.0
    fig, axes = plt.subplots(
        len(images),
        len(methods),
        figsize=(2.3 * len(methods) + 0.8, 2.2 * len(images)),
        squeeze=False,
    )
    shown = None
    for i, image in enumerate(images):
        for j, method in enumerate(methods):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if (image, method) in maps:
                shown = ax.imshow(maps[(image, method)], cmap="magma", vmin=0, vmax=vmax)
            if i == 0:
                ax.set_title(method, fontsize=9)
            if j == 0:
                ax.set_ylabel(image, fontsize=8)
    if shown is not None:
        fig.colorbar(
            shown,
            ax=axes.ravel().tolist(),
            shrink=0.8,
            label="std over seeds (grey levels)",
        )
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)
