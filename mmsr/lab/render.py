"""Report blocks to Markdown and HTML, with text from the data escaped and links kept inside.

A report is a list of :data:`Block`: :class:`Heading`, :class:`Paragraph`, :class:`Bullets`,
:class:`Figure` and :class:`Table`. Heading, paragraph and list texts are Markdown written by the
sections, which pass every name that comes from the data (file and folder names, methods,
captions, errors) through :func:`escape`; table cells and figure captions are plain text, escaped
here. A report read back from disk may have been written by anyone: :func:`keep_links_inside`
drops every link and image that does not resolve to a file inside the report's folder.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Heading:
    level: int
    text: str  # Markdown


@dataclass(frozen=True)
class Paragraph:
    text: str  # Markdown


@dataclass(frozen=True)
class Bullets:
    items: Sequence[str]  # Markdown, one per item


@dataclass(frozen=True)
class Figure:
    path: str  # relative to the report
    alt: str  # plain text, also the caption


@dataclass(frozen=True)
class Table:
    header: Sequence[str]  # plain text
    rows: Sequence[Sequence[str]]  # plain text
    bold: frozenset[tuple[int, int]] | set[tuple[int, int]] = field(default_factory=frozenset)  # (row, column)


Block = Heading | Paragraph | Bullets | Figure | Table

# CommonMark lets any ASCII punctuation be backslash-escaped; these are the ones that start
# markup here (emphasis, code, links, images, HTML, tables, headings, strike-through, maths)
_SPECIAL = re.compile(r"([\\`*_\[\]()<>#|!~&$])")
_ESCAPED = re.compile(r"\\([!-/:-@\[-`{-~])")
_LINK = re.compile(r"(\\.)|(!?)\[((?:\\.|[^\]\\])*)\]\(([^)]*)\)")  # an escaped character, or a link
_DEFINITION = re.compile(r"^ {0,3}\[(?:\\.|[^\]\\])+\]:[ \t]*<?([^\s>]*)>?.*$", re.MULTILINE)  # [x]: target
_HTML = re.compile(r"(\\.)|<[^>]*>")  # an escaped character is kept, a raw tag removed


def escape(text: object) -> str:
    """``text`` as literal Markdown: metacharacters backslash-escaped, line breaks made spaces."""
    return _SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def render_markdown(blocks: list[Block]) -> str:
    return "\n\n".join(_markdown(block) for block in blocks) + "\n"


def _markdown(block: Block) -> str:
    match block:
        case Heading(level, text):
            return "#" * level + " " + text
        case Paragraph(text):
            return text
        case Bullets(items):
            return "\n".join(f"- {item}" for item in items)
        case Figure(path, alt):
            return f"![{escape(alt)}]({path})"
        case Table(header, rows, bold):
            lines = ["| " + " | ".join(map(escape, header)) + " |", "|" + "---|" * len(header)]
            for i, row in enumerate(rows):
                cells = [f"**{escape(c)}**" if (i, j) in bold else escape(c) for j, c in enumerate(row)]
                lines.append("| " + " | ".join(cells) + " |")
            return "\n".join(lines)
    raise TypeError(f"not a report block: {block!r}")


def _inline(text: str) -> str:
    """The Markdown subset the sections write (``**bold**``, ``code``, escapes) as HTML."""
    parts = _ESCAPED.split(text)  # odd items: the escaped characters, literal
    text = "".join(f"&#{ord(p)};" if i % 2 else html.escape(p) for i, p in enumerate(parts))
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def _html(block: Block) -> str:
    match block:
        case Heading(level, text):
            return f"<h{level}>{_inline(text)}</h{level}>"
        case Paragraph(text):
            return f"<p>{_inline(text)}</p>"
        case Bullets(items):
            return "<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>"
        case Figure(path, alt):
            src, alt = html.escape(path), html.escape(alt)
            return f'<figure><img src="{src}" alt="{alt}"><figcaption>{alt}</figcaption></figure>'
        case Table(header, rows, bold):
            head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
            trs = "".join(
                "<tr>"
                + "".join(
                    f"<td><b>{html.escape(c)}</b></td>" if (i, j) in bold else f"<td>{html.escape(c)}</td>"
                    for j, c in enumerate(row)
                )
                + "</tr>"
                for i, row in enumerate(rows)
            )
            return f"<table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>"
    raise TypeError(f"not a report block: {block!r}")


def render_html(blocks: list[Block], title: str) -> str:
    body = [_html(block) for block in blocks]
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "th{background:#f3f3f3}img{max-width:100%}figcaption{color:#555;font-size:90%}"
    )
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style></head><body>{''.join(body)}</body></html>\n"


def link_target(folder: Path, target: str) -> Path | None:
    """The file a relative link of a report in ``folder`` names, if it lies inside ``folder``
    (after symlinks); ``None`` for URLs, absolute paths, ``..`` escapes and missing files."""
    target = target.strip().split()[0] if target.strip() else ""
    if not target or any(c in target for c in ":%\\") or target.startswith(("/", "#")):
        return None
    folder = folder.resolve()
    path = (folder / target).resolve()
    return path if path.is_relative_to(folder) and path.is_file() else None


def keep_links_inside(markdown: str, folder: Path) -> tuple[str, list[Path]]:
    """``markdown`` with every link and image that leaves ``folder`` dropped (its text kept, an
    image's removed), link definitions too, and raw HTML tags removed; plus the files of the images
    kept, in order."""
    images: list[Path] = []

    def check(match: re.Match) -> str:
        escaped, bang, text, target = match.groups()
        if escaped:
            return escaped
        path = link_target(folder, target)
        if path is None:
            return "" if bang else text
        if bang:
            images.append(path)
        return match.group(0)

    def definition(match: re.Match) -> str:
        return match.group(0) if link_target(folder, match.group(1)) else ""

    while True:  # until nothing changes: a removal must not join the pieces of a new link
        images.clear()
        cleaned = _HTML.sub(lambda m: m.group(1) or "", markdown)
        cleaned = _DEFINITION.sub(definition, _LINK.sub(check, cleaned))
        if cleaned == markdown:
            return cleaned, images
        markdown = cleaned
