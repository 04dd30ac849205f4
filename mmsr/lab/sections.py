"""The report's sections, each reproducing one table or figure of the paper on the lab's rows.

A section returns report blocks (see :mod:`mmsr.lab.report`) or nothing when the results hold too
little for it (e.g. one guidance value: no trade-off curve).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from PIL import Image

from ..conditioning import MODALITIES
from ..metrics import METRICS
from ..presets import PRESETS
from ..settings import SPECS
from . import hallucination, plots
from .methods import SUBSETS, TEXT_ONLY, TWIN, WRONG_CONTEXT, Setting
from .render import Block, Figure, Heading, Paragraph, Table, escape
from .results import number, row_file
from .stats import Estimate, bootstrap, paired_difference, per_image

MMSR = "mmsr"
NO_REFERENCE = ("musiq", "clipiqa", "maniqa", "niqe", "piqe")
MAX_SHEETS = 3
MAX_HEATMAP_IMAGES = 4


@dataclass
class Context:
    """The rows of one results folder plus what the sections share (base setting, metrics).

    ``root`` holds the results (read only through :func:`row_file`); ``out`` is the folder the
    report goes to, its plots in ``out/plots`` and its links relative to ``out``.
    """

    root: Path
    rows: list[dict]
    info: dict
    out: Path
    ok: list[dict] = field(init=False)
    base: Setting = field(init=False)
    metrics: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.ok = [r for r in self.rows if r["status"] == "ok"]
        b = self.info.get("base") or {}  # a run.json without it (older runs): the defaults of the run's preset
        preset = PRESETS.get(str(self.info.get("preset")), PRESETS["lite"])
        w = b.get("guidance", preset.default_guidance)
        self.base = Setting(b.get("cfg_mode", SPECS["cfg_mode"].default), float(w), "all", caption="true")
        self.metrics = [m for m in METRICS if any(number(r, m) is not None for r in self.ok)]

    @property
    def plots(self) -> Path:
        return self.out / "plots"

    def link(self, path: Path) -> str:
        return path.relative_to(self.out).as_posix()

    @staticmethod
    def estimate(by_image: dict[str, float]) -> Estimate:
        return bootstrap(by_image.values())

    @staticmethod
    def difference(a: dict[str, float], b: dict[str, float]) -> Estimate:
        return paired_difference(a, b)

    def taus_are_one(self, row: dict) -> bool:
        return all(number(row, f"tau_{m}") in (None, 1.0) for m in MODALITIES)

    def at_base_guidance(self, row: dict) -> bool:
        g = number(row, "guidance")
        return row["cfg_mode"] in ("", self.base.cfg_mode) and (g is None or g == self.base.guidance)

    def is_base_but_subset(self, row: dict) -> bool:
        """At the base guidance with tau = 1: the rows the subset studies compare."""
        return self.at_base_guidance(row) and self.taus_are_one(row)

    def is_base(self, row: dict) -> bool:
        """The row is its method's projection of the base setting (Table 1's column)."""
        return (
            row["caption_kind"] in ("true", "")
            and row["subset"] in ("", "all")
            and self.at_base_guidance(row)
            and self.taus_are_one(row)
        )

    def unavailable_metrics(self) -> dict[str, str]:
        reasons: dict[str, str] = {}
        for row in self.ok:
            for name, why in json.loads(row.get("unavailable") or "{}").items():
                if name not in self.metrics:
                    reasons.setdefault(name, why)
        return reasons

    @cached_property
    def swap(self) -> dict[str, dict[str, Estimate]]:
        return hallucination.caption_swap(self.ok, self.root)

    @cached_property
    def seeds(self) -> tuple[dict[str, Estimate], dict]:
        return hallucination.seed_variance(self.ok, self.root, self.is_base)

    def hallucination_summary(self) -> list[str]:
        lines = []
        if self.swap:
            still = max(self.swap, key=lambda m: self.swap[m]["psnr"].mean)
            lines.append(
                f"**Caption swap**: {escape(still)} moves least (PSNR between its two outputs {self.swap[still]['psnr'].text()} dB)."
            )
            for other, label in ((TEXT_ONLY, "text-only MMSR"), (TWIN, "the text-only twin")):
                if MMSR in self.swap and other in self.swap:
                    a, b = self.swap[MMSR]["psnr"].mean, self.swap[other]["psnr"].mean
                    verdict = (
                        "as the paper claims" if a > b else "not what the paper reports (untrained or weak weights?)"
                    )
                    lines.append(
                        f"MMSR {'moves less' if a > b else 'moves more'} than {label} under a swapped caption ({a:.3g} vs {b:.3g} dB): {verdict}."
                    )
        table, _ = self.seeds
        stochastic = {m: e for m, e in table.items() if e.mean > 0}
        if stochastic:
            steady = min(stochastic, key=lambda m: stochastic[m].mean)
            fixed = sorted(set(table) - set(stochastic))
            lines.append(
                f"**Seed variance**: of the methods that depend on the seed, {escape(steady)} varies least "
                f"({stochastic[steady].text()} grey levels per pixel)"
                + (f"; seed-independent: {', '.join(map(escape, fixed))}." if fixed else ".")
            )
        return lines


def sections(ctx: Context) -> list[Block]:
    return [
        *method_table(ctx),
        *tradeoff(ctx),
        *ablation(ctx),
        *wrong_context(ctx),
        *temperature(ctx),
        *caption_swap(ctx),
        *seed_variance(ctx),
    ]


def _header(name: str) -> str:
    info = METRICS[name]
    return f"{info.label} {'↓' if info.lower_better else '↑'}"


def _table(
    groups: list[str],
    by_metric: dict[str, dict[str, dict[str, float]]],
    first: str,
    extra: tuple[str, Callable[[str], str]] | None = None,
) -> Table:
    """A table block: one row per group, one column per metric (mean over images), best in bold."""
    names = [m for m in by_metric if by_metric[m]]
    rows, bold = [], set()
    for g in groups:
        cells = [g]
        for name in names:
            values = by_metric[name].get(g)
            cells.append("" if not values else f"{bootstrap(values.values()).mean:.4g}")
        rows.append(cells + ([extra[1](g)] if extra else []))
    for j, name in enumerate(names, start=1):
        means = {i: float(r[j]) for i, r in enumerate(rows) if r[j]}
        if len(means) > 1:
            best = (min if METRICS[name].lower_better else max)(means.values())
            bold |= {(i, j) for i, v in means.items() if v == best}
    header = [first, *map(_header, names)] + ([extra[0]] if extra else [])
    return Table(header, rows, bold)


def method_table(ctx: Context) -> list[Block]:
    """Table 1: methods x metrics at the base setting."""
    rows = [r for r in ctx.ok if ctx.is_base(r)]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    if not methods:
        return []
    by_metric = {m: per_image(rows, lambda r, m=m: number(r, m), lambda r: r["method"]) for m in ctx.metrics}
    seconds = per_image(rows, lambda r: number(r, "seconds_method"), lambda r: r["method"])
    n = len({r["image"] for r in rows})
    return [
        Heading(2, "Method comparison (paper Table 1)"),
        Paragraph(f"Mean over {n} images (seeds averaged per image) at the base setting; best in bold."),
        _table(
            methods,
            by_metric,
            "method",
            ("s / image", lambda m: f"{bootstrap(seconds.get(m, {}).values()).mean:.3g}"),
        ),
    ]


def tradeoff(ctx: Context) -> list[Block]:
    """Fig. 10 / Table 3: distortion vs perception across guidance, one line per cfg mode."""
    rows = [
        r
        for r in ctx.ok
        if r["method"] == MMSR and r["subset"] == "all" and r["caption_kind"] == "true" and ctx.taus_are_one(r)
    ]
    points = {(r["cfg_mode"], float(r["guidance"])) for r in rows}
    x = "psnr" if "psnr" in ctx.metrics else "lr_psnr"
    ys = [m for m in NO_REFERENCE if m in ctx.metrics][:2] or [
        m for m in ("ssim", "lr_psnr") if m in ctx.metrics and m != x
    ][:1]
    if len(points) < 2 or x not in ctx.metrics or not ys:
        return []
    est = {
        name: per_image(
            rows,
            lambda r, n=name: number(r, n),
            lambda r: (r["cfg_mode"], float(r["guidance"])),
        )
        for name in [x, *ys]
    }
    lines: dict[str, list] = {}
    table = []
    for mode, w in sorted(points):
        values = [bootstrap(est[n].get((mode, w), {}).values()) for n in [x, *ys]]
        lines.setdefault(mode, []).append((w, *values))
        table.append([mode, f"{w:g}", *[v.text() for v in values]])
    path = plots.tradeoff(
        lines,
        METRICS[x].label,
        [METRICS[y].label for y in ys],
        ctx.plots / "tradeoff.png",
    )
    return [
        Heading(2, "Perception-distortion trade-off (paper Fig. 10, Table 3)"),
        Paragraph(
            f"MMSR over guidance w for each cfg mode: x = {METRICS[x].label}, y = {', '.join(METRICS[y].label for y in ys)}; bars are 95% intervals."
        ),
        Figure(ctx.link(path), "Trade-off across guidance, one line per cfg mode"),
        Table(["cfg mode", "w", *map(_header, [x, *ys])], table),
        *_guidance_slopes(est, sorted(points), [x, *ys]),
    ]


def _guidance_slopes(est: dict, points: list[tuple[str, float]], names: list[str]) -> list[Block]:
    """Per cfg mode, each metric at its highest w minus its lowest, paired per image (the means
    above differ across images far more than one image's output differs across w)."""
    table = []
    for mode in dict.fromkeys(m for m, _ in points):
        ws = [w for m, w in points if m == mode]
        if len(ws) > 1:
            lo, hi = (mode, ws[0]), (mode, ws[-1])
            diffs = [paired_difference(est[n].get(hi, {}), est[n].get(lo, {})).text() for n in names]
            table.append([mode, f"{ws[-1]:g} - {ws[0]:g}", *diffs])
    if not table:
        return []
    return [
        Paragraph("Highest minus lowest w of each cfg mode, paired per image (95% bootstrap interval)."),
        Table(["cfg mode", "w", *map(_header, names)], table),
    ]


def ablation(ctx: Context) -> list[Block]:
    """Fig. 8: MMSR with modality subsets removed, at the base guidance."""
    rows = [
        r
        for r in ctx.ok
        if r["method"] == MMSR and r["caption_kind"] == "true" and ctx.at_base_guidance(r) and ctx.taus_are_one(r)
    ]
    subsets = [s for s in SUBSETS if any(r["subset"] == s for r in rows)]
    if len(subsets) < 2:
        return []
    by_metric = {m: per_image(rows, lambda r, m=m: number(r, m), lambda r: r["subset"]) for m in ctx.metrics}
    shown = [m for m in ("psnr", "ssim", "lpips", "lr_psnr", *NO_REFERENCE) if m in ctx.metrics][:4]
    panels = {_header(m): {s: bootstrap(v.values()) for s, v in by_metric[m].items()} for m in shown}
    path = plots.bars(subsets, panels, "Modality ablation (MMSR)", ctx.plots / "ablation.png")
    change = hallucination.output_change(rows, ctx.root, lambda r: r["subset"] in ("", "all"), lambda r: r["subset"])
    return [
        Heading(2, "Modality ablation (paper Fig. 8)"),
        Paragraph(
            "`-x`: modality x replaced by m_0; `-text`: empty caption; `text-only`: every map m_0; `none`: nothing but "
            "the LR. Last column: mean absolute change of the output from `all` (grey levels, 0-255, 95% interval)."
        ),
        Figure(ctx.link(path), "Modality ablation, 95% intervals"),
        _table(subsets, by_metric, "subset", (CHANGE_HEADER, lambda s: change.get(s, _NA).text())),
    ]


def wrong_context(ctx: Context) -> list[Block]:
    """MMSR given another image's maps (a fixed derangement) against its own maps, at the base setting."""
    rows = [r for r in ctx.ok if r["method"] == MMSR and r["caption_kind"] == "true" and ctx.is_base_but_subset(r)]
    kinds = {"own maps": "all", "wrong maps": WRONG_CONTEXT}
    table = []
    for name in ctx.metrics:
        by = per_image(rows, lambda r, n=name: number(r, n), lambda r: r["subset"])
        own, wrong = by.get("all"), by.get(WRONG_CONTEXT)
        if not own or not wrong:
            continue
        diff = ctx.difference(wrong, own)
        verdict = "the interval excludes 0" if diff.excludes_zero else "not separable on these images"
        cells = [ctx.estimate(by[s]).text() for s in kinds.values()]
        table.append([_header(name), *cells, diff.text(), verdict])
    if not table:
        return []
    change = hallucination.output_change(rows, ctx.root, lambda r: r["subset"] == "all", lambda r: r["subset"])
    if WRONG_CONTEXT in change:
        moved = change[WRONG_CONTEXT].text()
        table.append([CHANGE_HEADER, "0 (the reference)", moved, moved, "how far the wrong maps move the output"])
    return [
        Heading(2, "Wrong context: another image's maps"),
        Paragraph(
            "MMSR with every map taken from another image of the set (a derangement with a fixed seed) against "
            "the same model with its own maps, same caption and seed. Values are means with 95% bootstrap "
            "intervals over images; the difference is paired per image (wrong - own)."
        ),
        Table(["metric", *kinds, "difference", "verdict"], table),
    ]


def _tau_point(row: dict) -> tuple[str | None, float] | None:
    changed = [(m, number(row, f"tau_{m}")) for m in MODALITIES if number(row, f"tau_{m}") not in (None, 1.0)]
    if len(changed) > 1:
        return None
    return changed[0] if changed else (None, 1.0)


def temperature(ctx: Context) -> list[Block]:
    """Fig. 9: one modality's tau changed at a time; a contact sheet of output crops per image."""
    rows = [
        r
        for r in ctx.ok
        if r["method"] == MMSR and r["subset"] == "all" and r["caption_kind"] == "true" and ctx.at_base_guidance(r)
    ]
    points = {id(r): p for r in rows if (p := _tau_point(r)) is not None}
    modalities = [m for m in MODALITIES if any(p[0] == m for p in points.values())]
    if not modalities:
        return []
    blocks = [
        Heading(2, "Modality temperature (paper Fig. 9)"),
        Paragraph(
            "Smaller tau = stronger influence of that modality (eq. 5). Central crops of the outputs, first seed."
        ),
    ]
    for i, image in enumerate(sorted({r["image"] for r in rows})[:MAX_SHEETS]):
        cells: dict[str, dict[float, Path]] = {m: {} for m in modalities}
        for r in sorted(
            (r for r in rows if r["image"] == image and id(r) in points),
            key=lambda r: int(r["seed"]),
            reverse=True,
        ):
            m, tau = points[id(r)]
            path = row_file(ctx.root, r["output"])
            if path is None:  # missing (the report notes it) or outside the folder
                continue
            for target in [m] if m else modalities:
                cells[target][tau] = path
        if not any(cells.values()):
            continue
        path = plots.contact_sheet(
            cells,
            f"{image}: tau sweep",
            ctx.plots / f"temperature_{i}_{_slug(image)[:40]}.png",  # the index keeps names apart
            reference=_reference(ctx, image),
        )
        blocks.append(Figure(ctx.link(path), f"Temperature sweep on {image}"))
    shown = [m for m in ("psnr", "lr_psnr", *NO_REFERENCE) if m in ctx.metrics][:3]
    table = []
    for m in modalities:
        swept = [r for r in rows if id(r) in points and points[id(r)][0] in (m, None)]
        values = {n: per_image(swept, lambda r, n=n: number(r, n), lambda r: points[id(r)][1]) for n in shown}
        for tau in sorted({t for v in values.values() for t in v}):
            table.append(
                [
                    m,
                    f"{tau:g}",
                    *[bootstrap(values[n].get(tau, {}).values()).text() for n in shown],
                ]
            )
    change = hallucination.output_change(
        [r for r in rows if id(r) in points], ctx.root, lambda r: points[id(r)] == (None, 1.0), lambda r: points[id(r)]
    )
    for line in table:
        m, tau = line[0], float(line[1])
        line.append(change.get((None, 1.0) if tau == 1 else (m, tau), _NA).text())
    blocks.append(Table(["modality", "tau", *map(_header, shown), CHANGE_HEADER], table))
    return blocks


def caption_swap(ctx: Context) -> list[Block]:
    """Hallucination (a): how far each caption-conditioned method moves under a misleading caption."""
    if not ctx.swap:
        return []
    methods = list(ctx.swap)
    table = [
        [
            m,
            str(e["psnr"].n),
            e["psnr"].text(),
            e["ssim"].text(),
            e.get("change", _NA).text(),
            e.get("lr_true", _NA).text(),
            e.get("lr_swap", _NA).text(),
            e.get("lr_delta", _NA).text(),
        ]
        for m, e in ctx.swap.items()
    ]
    panels = {
        "PSNR true vs swapped output (dB) ↑": {m: ctx.swap[m]["psnr"] for m in methods},
        "SSIM true vs swapped output ↑": {m: ctx.swap[m]["ssim"] for m in methods},
    }
    if any("lr_delta" in ctx.swap[m] for m in methods):
        panels["Δ LR-consistency (dB), swap - true"] = {
            m: ctx.swap[m]["lr_delta"] for m in methods if "lr_delta" in ctx.swap[m]
        }
    path = plots.bars(
        methods,
        panels,
        "Caption swap: how much the output moves",
        ctx.plots / "caption_swap.png",
    )
    return [
        Heading(2, "Hallucination: caption swap"),
        Paragraph(
            "Each method run with the image's caption and with another image's (cyclic derangement), same seed and "
            "settings. Higher PSNR/SSIM between the two outputs = moved less; identical outputs count as "
            f"{hallucination.IDENTICAL_PSNR:g} dB."
        ),
        Figure(ctx.link(path), "Caption swap, 95% intervals"),
        Table(SWAP_HEADER, table),
    ]


SWAP_HEADER = (
    "method",
    "images",
    "PSNR true vs swap ↑",
    "SSIM true vs swap ↑",
    "mean abs. change (grey levels)",
    "LR-cons. true",
    "LR-cons. swap",
    "Δ LR-cons.",
)


_NA = Estimate(math.nan, math.nan, math.nan, 0)
CHANGE_HEADER = "output change vs reference (grey levels)"


def seed_variance(ctx: Context) -> list[Block]:
    """Hallucination (b): per-pixel standard deviation of the outputs over seeds."""
    table, maps = ctx.seeds
    if not table:
        return []
    images = sorted({k[0] for k in maps})[:MAX_HEATMAP_IMAGES]
    path = plots.heatmaps(
        {k: v for k, v in maps.items() if k[0] in images},
        "Per-pixel std over seeds",
        ctx.plots / "seed_variance.png",
    )
    return [
        Heading(2, "Hallucination: seed variance"),
        Paragraph(
            "Standard deviation over seeds of each output pixel (grey levels, mean over RGB) at the base setting; deterministic methods give 0."
        ),
        Figure(ctx.link(path), "Seed variance heatmaps"),
        Table(["method", "images", "mean std over seeds ↓"], [[m, str(e.n), e.text()] for m, e in table.items()]),
    ]


def _reference(ctx: Context, image: str) -> tuple[str, Image.Image] | None:
    """The image's HR (or its LR enlarged x4 with nearest neighbour) for the contact sheet."""
    row = next(r for r in ctx.ok if r["image"] == image)
    for column, label in (("hr_path", "HR"), ("lr_path", "LR (x4 nearest)")):
        path = row_file(ctx.root, row.get(column))
        if path is not None:
            with Image.open(path) as found:
                image = found.convert("RGB")
            if label != "HR":
                image = image.resize((image.width * 4, image.height * 4), Image.NEAREST)
            return label, image
    return None


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)
