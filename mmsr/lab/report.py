"""``lab report``: one Markdown + HTML report of a results folder, with the paper's tables and figures.

The report is a list of blocks (headings, paragraphs, lists, tables, images) rendered twice, to
``report.md`` and ``report.html``; plots go to ``plots/``. The merge of the shards runs first, so a
report of an interrupted multi-process run still sees every finished row.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

from ..metrics import METRICS
from .results import RESULTS, SHARDS, merge, number
from .run import RUN_FILE
from .sections import Context, sections
from .stats import CI_METHOD, per_image

REPORT = "report.md"
PLOTS = "plots"
_IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(([^)]+)\)")


def build_report(results_dir: str | Path) -> Path:
    """Merge the shards, write ``report.md``, ``report.html`` and ``plots/*.png``; return the .md path."""
    root = Path(results_dir)
    if not (root / RESULTS).is_file() and not (root / SHARDS).is_dir():
        raise ValueError(f"{root}: no {RESULTS} here; run `python -m mmsr lab run --out {root}` first")
    rows = merge(root)
    info = json.loads((root / RUN_FILE).read_text()) if (root / RUN_FILE).is_file() else {}
    ctx = Context(root, rows, info, root / PLOTS)
    blocks = [
        ("h", 1, "MMSR Lab report"),
        *_overview(ctx),
        *sections(ctx),
        *_notes(ctx),
    ]
    _write(root / REPORT, render_markdown(blocks))
    _write(root / "report.html", render_html(blocks, title=f"MMSR Lab report: {root.name}"))
    return root / REPORT


def load_report(results_dir: str | Path) -> tuple[str, list[Path]]:
    """The report of ``results_dir`` as ``(markdown, plot paths)``, for the app's Lab tab.

    Rebuilds it when missing or older than the results (or a shard); image links in the Markdown
    are relative to ``results_dir``, the paths returned are absolute, in order of appearance.
    Raises ``ValueError`` when the folder holds no lab results.
    """
    root = Path(results_dir).resolve()
    report = root / REPORT
    sources = [root / RESULTS, root / RUN_FILE, *(root / SHARDS).glob("*.csv")]
    newest = max((p.stat().st_mtime for p in sources if p.is_file()), default=0.0)
    if not report.is_file() or report.stat().st_mtime < newest:
        build_report(root)
    markdown = report.read_text(encoding="utf-8")
    return markdown, [root / p for p in _IMAGE_LINK.findall(markdown)]


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


# -- overview and notes ---------------------------------------------------------------------------


def _overview(ctx: Context) -> list:
    inv = ctx.info.get("invariants", {})
    ok = ctx.ok
    images = sorted({r["image"] for r in ok})
    methods = list(dict.fromkeys(r["method"] for r in ok))
    steps = inv.get("steps") or "preset default"
    facts = [
        (
            f"**{len(ok)}** rows ({len(ctx.rows) - len(ok)} failed) over **{len(images)}** images and "
            f"**{len(methods)}** methods: {', '.join(methods) or 'none'}."
        ),
        f"Preset `{inv.get('preset', '?')}`, steps: {steps}, LR `{inv.get('lr', '?')}`"
        + (f" (central {inv['crop']} px crops)" if inv.get("crop") else "")
        + f", data `{inv.get('data', '?')}`.",
        f"Base setting: cfg mode `{ctx.base.cfg_mode}`, guidance {ctx.base.guidance:g}, all modalities, tau = 1, true captions.",
        f"Intervals: {CI_METHOD}.",
    ]
    return [("ul", facts), *_summary(ctx)]


def _summary(ctx: Context) -> list:
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
        text = f"**{info.label}** ({'lower' if info.lower_better else 'higher'} is better): **{best}** {ctx.estimate(by_method[best]).text()}"
        if len(ranked) > 1:
            second = ranked[1]
            diff = ctx.difference(by_method[best], by_method[second])
            verdict = "the interval excludes 0" if diff.excludes_zero else "not separable on these images"
            text += f", ahead of {second} {ctx.estimate(by_method[second]).text()}; difference {diff.text()}, {verdict}"
        lines.append(text + ".")
    lines += ctx.hallucination_summary()
    if not lines:
        return []
    return [("h", 2, "Summary"), ("ul", lines)]


def _notes(ctx: Context) -> list:
    notes = [f"{m} not run: {why}" for m, why in ctx.info.get("unavailable_methods", {}).items()]
    notes += [f"{METRICS[m].label} unavailable: {why}" for m, why in ctx.unavailable_metrics().items()]
    notes += ctx.info.get("notes", [])
    errors = [r for r in ctx.rows if r["status"] == "error"]
    notes += [f"failed: {r['method']} on {r['image']} ({describe_setting(r)}): {r['error']}" for r in errors[:10]]
    if len(errors) > 10:
        notes.append(f"... and {len(errors) - 10} more failures (see {RESULTS}, column error)")
    return [("h", 2, "Notes"), ("ul", notes)] if notes else []


def describe_setting(row: dict) -> str:
    parts = [
        row.get("cfg_mode"),
        f"w={row['guidance']}" if row.get("guidance") else "",
        row.get("subset"),
    ]
    return ", ".join(p for p in parts if p) + f", seed {row['seed']}"


# -- rendering ------------------------------------------------------------------------------------


def render_markdown(blocks: list) -> str:
    out = []
    for block in blocks:
        kind = block[0]
        if kind == "h":
            out.append("#" * block[1] + " " + block[2])
        elif kind == "p":
            out.append(block[1])
        elif kind == "ul":
            out.append("\n".join(f"- {item}" for item in block[1]))
        elif kind == "img":
            out.append(f"![{block[2]}]({block[1]})")
        elif kind == "table":
            header, rows, bold = block[1], block[2], block[3]
            lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            for i, row in enumerate(rows):
                cells = [f"**{c}**" if (i, j) in bold else c for j, c in enumerate(row)]
                lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
            out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def render_html(blocks: list, title: str) -> str:
    body = []
    for block in blocks:
        kind = block[0]
        if kind == "h":
            body.append(f"<h{block[1]}>{_inline(block[2])}</h{block[1]}>")
        elif kind == "p":
            body.append(f"<p>{_inline(block[1])}</p>")
        elif kind == "ul":
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in block[1]) + "</ul>")
        elif kind == "img":
            body.append(
                f'<figure><img src="{html.escape(block[1])}" alt="{html.escape(block[2])}"><figcaption>{_inline(block[2])}</figcaption></figure>'
            )
        elif kind == "table":
            header, rows, bold = block[1], block[2], block[3]
            head = "".join(f"<th>{_inline(h)}</th>" for h in header)
            trs = [
                "<tr>"
                + "".join(
                    f"<td>{'<b>' if (i, j) in bold else ''}{_inline(c)}{'</b>' if (i, j) in bold else ''}</td>"
                    for j, c in enumerate(row)
                )
                + "</tr>"
                for i, row in enumerate(rows)
            ]
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(trs)}</tbody></table>")
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "th{background:#f3f3f3}img{max-width:100%}figcaption{color:#555;font-size:90%}"
    )
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style></head><body>{''.join(body)}</body></html>\n"
