"""Lab reports for the demo: the shipped example and folders under one root, plots inlined.

A page shows a report's Markdown, whose image links are relative to its folder; a browser would
fetch them from the server's root and get 404. They are inlined as ``data:`` URIs instead, so no
folder has to be served.
"""

from __future__ import annotations

import base64
import hashlib
import re
import tempfile
from pathlib import Path

EXAMPLE_REPORT = Path(__file__).resolve().parent.parent.parent / "assets" / "lab-example"
EXAMPLE_NAME = "example (shipped: skimage.data photos, tiny run)"
SCRATCH = Path(tempfile.gettempdir()) / "mmsr-lab-reports"
_IMAGE_LINK = re.compile(r"(!\[[^\]]*\]\()([^)]+)(\))")
HOW_TO = (
    "Make a report of your own: `python -m mmsr lab run --data FOLDER --out runs/NAME` "
    "(images, optionally with `captions.json`), then set `MMSR_LAB_ROOT` to the parent of `runs/NAME` "
    "and reload this page."
)


def lab_folders(root: Path | None) -> dict[str, Path]:
    """``{name: folder}``: the example report first, then the result folders under ``root``."""
    from ..lab.report import results_folders

    found = {EXAMPLE_NAME: EXAMPLE_REPORT} if (EXAMPLE_REPORT / "results.csv").is_file() else {}
    if root is None or not root.is_dir():
        return found
    # Real paths only, and none that a symlink takes out of ``root``.
    return found | results_folders(root)


def inline_images(markdown: str, *folders: Path) -> str:
    """Relative PNG links of ``markdown`` as ``data:`` URIs, found in the first of ``folders`` that
    holds them; links leaving those folders are dropped."""
    roots = [f.resolve() for f in folders]

    def inline(match: re.Match) -> str:
        found = [p for root in roots if (p := (root / match.group(2)).resolve()).is_relative_to(root) and p.is_file()]
        if not found:
            return ""
        path = found[0]
        data = base64.b64encode(path.read_bytes()).decode()
        return f"{match.group(1)}data:image/png;base64,{data}{match.group(3)}"

    return _IMAGE_LINK.sub(inline, markdown)


def open_report(name: str, root: Path | None) -> str:
    """The report of the folder listed as ``name``, plots inlined; ``ValueError`` for other names."""
    from ..lab.report import load_report

    folders = lab_folders(root)
    if name not in folders:
        raise ValueError(f"no lab results named {name!r}; choose one from the list")
    folder = folders[name]
    scratch = SCRATCH / hashlib.sha1(str(folder).encode()).hexdigest()[:16]  # a stale report is rebuilt here
    markdown, _ = load_report(folder, scratch=scratch)
    return inline_images(markdown, folder, scratch)
