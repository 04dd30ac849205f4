"""``lab report``: one Markdown + HTML report of a results folder, with the paper's tables and figures.

The report is a list of blocks (headings, paragraphs, lists, tables, images) rendered twice, to
``report.md`` and ``report.html``; plots go to ``plots/``. The merge of the shards runs first, so a
report of an interrupted multi-process run still sees every finished row.

Viewing (:func:`load_report`, the app's Lab section) never writes into a results folder: a missing
or stale report is built into a scratch folder, and only folders whose real path lies under the
lab root are offered (:func:`results_folders`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..files import temp_beside
from ..metrics import METRICS
from .render import Block, Bullets, Heading, escape, keep_links_inside, render_html, render_markdown
from .results import RESULTS, RUN_FILE, SHARDS, collect, merge, number, row_file
from .sections import Context, sections
from .stats import CI_METHOD, per_image

REPORT = "report.md"
PLOTS = "plots"
MAX_DEPTH = 2  # results folders are offered at most this many levels under the lab root


def build_report(results_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write ``report.md``, ``report.html`` and ``plots/*.png``; return the .md path.

    Into ``results_dir`` after merging its shards (``lab report``), or, given ``out_dir``, into that
    folder without writing anything into ``results_dir`` (viewing).
    """
    root = Path(results_dir)
    if not (root / RESULTS).is_file() and not (root / SHARDS).is_dir():
        raise ValueError(f"{root}: no {RESULTS} here; run `python -m mmsr lab run --out {root}` first")
    out = Path(out_dir) if out_dir is not None else root
    rows = merge(root) if out_dir is None else collect(root)
    info = json.loads((root / RUN_FILE).read_text(encoding="utf-8")) if (root / RUN_FILE).is_file() else {}
    ctx = Context(root, rows, info, out)
    blocks = [
        Heading(1, "MMSR Lab report"),
        *_overview(ctx),
        *sections(ctx),
        *_notes(ctx),
    ]
    out.mkdir(parents=True, exist_ok=True)
    _write(out / REPORT, render_markdown(blocks))
    _write(out / "report.html", render_html(blocks, title=f"MMSR Lab report: {root.name}"))
    return out / REPORT


def results_folders(lab_root: str | Path) -> dict[str, Path]:
    """``{name relative to lab_root: real path}`` of the lab results folders at most ``MAX_DEPTH``
    levels under ``lab_root``. A folder or ``results.csv`` reached through a symlink that leaves
    ``lab_root`` is not offered."""
    root = Path(lab_root).resolve()
    if not root.is_dir():
        return {}
    found = {}
    for depth in range(MAX_DEPTH + 1):
        for csv_file in sorted(root.glob("/".join(["*"] * depth + [RESULTS]))):
            folder = csv_file.parent.resolve()
            if folder.is_relative_to(root) and csv_file.resolve().is_relative_to(folder):
                found[csv_file.parent.relative_to(root).as_posix()] = folder
    return found


def load_report(results_dir: str | Path, *, scratch: str | Path | None = None) -> tuple[str, list[Path]]:
    """The report of ``results_dir`` as ``(markdown, image paths)``, for the app's Lab section.

    Reads ``report.md`` when it is newer than the results; else builds the report into ``scratch``
    (a folder of the viewer's own), and without one raises ``ValueError`` saying to run ``lab
    report``: viewing never writes into ``results_dir``. Links and images that do not resolve
    inside the report's folder are dropped; the image paths returned (absolute, in order) all lie
    inside it. Every failure is a ``ValueError`` whose message names no server path.
    """
    root = Path(results_dir).resolve()
    try:
        folder = root if _is_fresh(root) else _rebuild(root, scratch)
        markdown = (folder / REPORT).read_text(encoding="utf-8")
    except Exception as e:  # noqa: BLE001 - a damaged folder gets a sentence, not a traceback with paths
        message = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
        for path, name in ((root, root.name), (Path(scratch or root).resolve(), "scratch")):
            message = message.replace(str(path), name)
        raise ValueError(f"cannot show the report of {root.name}: {message}") from e
    return keep_links_inside(markdown, folder)


def _is_fresh(root: Path) -> bool:
    report = root / REPORT
    sources = [root / RESULTS, root / RUN_FILE, *(root / SHARDS).glob("*.csv")]
    newest = max((p.stat().st_mtime for p in sources if p.is_file()), default=0.0)
    return report.is_file() and report.stat().st_mtime >= newest


def _rebuild(root: Path, scratch: str | Path | None) -> Path:
    if scratch is None:
        raise ValueError(
            f"its report is missing or older than the results; run `python -m mmsr lab report --results {root.name}`"
        )
    out = Path(scratch)
    build_report(root, out)
    return out


def _write(path: Path, text: str) -> None:
    fd, tmp = temp_beside(path)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    tmp.replace(path)


# -- overview and notes ---------------------------------------------------------------------------


def _overview(ctx: Context) -> list[Block]:
    inv = ctx.info.get("invariants", {})
    ok = ctx.ok
    images = sorted({r["image"] for r in ok})
    methods = list(dict.fromkeys(r["method"] for r in ok))
    steps = escape(inv.get("steps") or "preset default")
    scale = inv.get("residual_scale")
    scale = "each checkpoint's" if scale is None else escape(f"{scale:g}")
    data = Path(str(inv.get("data", "?"))).name  # the folder's name: the report never shows a server path
    facts = [
        (
            f"**{len(ok)}** rows ({len(ctx.rows) - len(ok)} failed) over **{len(images)}** images and "
            f"**{len(methods)}** methods: {', '.join(map(escape, methods)) or 'none'}."
        ),
        f"Preset {escape(inv.get('preset', '?'))}, steps: {steps}, residual scale: {scale}, LR {escape(inv.get('lr', '?'))}"
        + (f" (central {escape(inv['crop'])} px crops)" if inv.get("crop") else "")
        + f", data folder {escape(data)}.",
        f"Base setting: cfg mode {escape(ctx.base.cfg_mode)}, guidance {ctx.base.guidance:g}, all modalities, tau = 1, true captions.",
        f"Intervals: {CI_METHOD}.",
    ]
    return [Bullets(facts), *_summary(ctx)]


def _summary(ctx: Context) -> list[Block]:
    """Who wins on which metric at the base setting, with intervals and the paired difference."""
    lines = []
    base_rows = [r for r in ctx.ok if ctx.is_base(r)]
    for name in ctx.metrics:
        info = METRICS[name]
        by_method = per_image(base_rows, lambda r, n=name: number(r, n), lambda r: r["method"])
        if not by_method:
            continue
        ranked = sorted(
            by_method,
            key=lambda m: ctx.estimate(by_method[m]).mean,
            reverse=not info.lower_better,
        )
        best = ranked[0]
        text = f"**{info.label}** ({'lower' if info.lower_better else 'higher'} is better): **{escape(best)}** {ctx.estimate(by_method[best]).text()}"
        if len(ranked) > 1:
            second = ranked[1]
            diff = ctx.difference(by_method[best], by_method[second])
            verdict = "the interval excludes 0" if diff.excludes_zero else "not separable on these images"
            text += f", ahead of {escape(second)} {ctx.estimate(by_method[second]).text()}; difference {diff.text()}, {verdict}"
        lines.append(text + ".")
    lines += ctx.hallucination_summary()
    if not lines:
        return []
    return [Heading(2, "Summary"), Bullets(lines)]


def _notes(ctx: Context) -> list[Block]:
    notes = [f"{m} not run: {why}" for m, why in ctx.info.get("unavailable_methods", {}).items()]
    notes += [f"{METRICS[m].label} unavailable: {why}" for m, why in ctx.unavailable_metrics().items()]
    notes += ctx.info.get("notes", [])
    errors = [r for r in ctx.rows if r["status"] == "error"]
    notes += [f"failed: {r['method']} on {r['image']} ({describe_setting(r)}): {r['error']}" for r in errors[:10]]
    if len(errors) > 10:
        notes.append(f"... and {len(errors) - 10} more failures (see {RESULTS}, column error)")
    missing = [r["output"] for r in ctx.ok if row_file(ctx.root, r["output"]) is None]
    if missing:
        notes.append(f"{len(missing)} output images listed in {RESULTS} are missing (e.g. {missing[0]}); left out")
    notes = list(map(escape, notes))
    return [Heading(2, "Notes"), Bullets(notes)] if notes else []


def describe_setting(row: dict) -> str:
    parts = [
        row.get("cfg_mode"),
        f"w={row['guidance']}" if row.get("guidance") else "",
        row.get("subset"),
    ]
    return ", ".join(p for p in parts if p) + f", seed {row['seed']}"
