"""The Gradio pieces ``app.py`` builds the page with: guarded uploads and the page's look.

Kept apart from the layout and wiring in ``app.py``; like it, UI code that stays out of :mod:`mmsr`.
"""

from __future__ import annotations

import time

import gradio as gr
from gradio.exceptions import InvalidPathError
from PIL import Image, UnidentifiedImageError

MAX_FILE_SIZE = "20mb"
CSS = """
.card {border: 1px solid var(--border-color-primary); border-radius: var(--radius-lg); padding: 6px}
.small {font-size: 0.9em}
footer, footer a, footer button {color: #374151 !important}
#result-slider {min-height: 300px}
@media (max-width: 640px) { #scores table {font-size: 0.85em} }
"""
HEAD = """<script>
const ALT = {"result-slider": ["MMSR result", "baseline result"], "result-gallery": ["result gallery image"],
  "heat-mmsr": ["LR-consistency map of MMSR"], "heat-base": ["LR-consistency map of the baseline"],
  "changes-heat": ["difference between the previous and the current MMSR result"]};
new MutationObserver(() => { for (const [id, alts] of Object.entries(ALT)) {
  document.querySelectorAll(`#${id} img`).forEach((img, i) => { if (!img.alt) img.alt = alts[Math.min(i, alts.length - 1)]; });
} }).observe(document.documentElement, {subtree: true, childList: true});
</script>"""
THEME_TEXT = {"block_label_text_color": "*neutral_700", "block_title_text_color": "*neutral_800",
              "input_placeholder_color": "*neutral_500", "body_text_color_subdued": "*neutral_600"}  # fmt: skip

# Every component of the page by field name; a handler's keyword arguments and returned keys use them.

REPEAT_S = 5.0  # seconds in which one refused upload is reported once
FOREIGN_FILE = "That file did not come through this page's upload. Upload it again."


def refuse_foreign_files(page: gr.Blocks) -> None:
    """A payload naming a file this page never received is one clear ``gr.Error``.

    Gradio refuses such a ``FileData`` (an API client pointing at a server path) with an
    ``InvalidPathError`` whose text holds the absolute path; it is raised before any handler runs,
    so it is turned into the visitor's message here, on the instance (as with :func:`upload_image`).
    """
    preprocess = page.preprocess_data

    async def checked(*args, **kwargs):
        try:
            return await preprocess(*args, **kwargs)
        except InvalidPathError:
            raise gr.Error(FOREIGN_FILE) from None

    page.preprocess_data = checked


def upload_image(**kwargs) -> gr.Image:
    """A ``gr.Image`` whose undecodable uploads become one clear ``gr.Error``.

    Gradio opens every upload with PIL before a handler runs (the handlers then decode it again with
    :func:`mmsr.imageio.load_image`). The instance's ``preprocess`` is wrapped rather than the class
    subclassed: gradio writes a ``.pyi`` stub next to the module of every component subclass. The
    page fires ``change`` twice for one refused upload, so the same file refused again within
    ``REPEAT_S`` seconds fails silently: the visitor reads one message.
    """
    image = gr.Image(**kwargs)
    preprocess = image.preprocess
    refused: dict[str, float] = {}

    def refuse(payload, message: str) -> gr.Error:
        path, now = str(getattr(payload, "path", payload)), time.monotonic()
        for old in [p for p, t in refused.items() if now - t > REPEAT_S]:
            del refused[old]
        repeat = path in refused
        refused[path] = now
        return gr.Error(message, visible=not repeat, print_exception=False)

    def checked(payload):
        try:
            return preprocess(payload)
        except Image.DecompressionBombError as e:
            raise refuse(payload, f"image refused as a decompression bomb: {e}") from e
        except UnidentifiedImageError as e:
            raise refuse(payload, "not an image file (or a format Pillow cannot read)") from e
        except (OSError, SyntaxError, ValueError) as e:
            raise refuse(payload, f"could not read the image: {e}") from e

    image.preprocess = checked
    return image


def launch_options() -> dict:
    """``launch`` keywords shared by ``main`` and the tests: upload limit, errors shown, look (contrast ≥ 4.5:1)."""
    theme = gr.themes.Soft().set(**THEME_TEXT)
    return {"max_file_size": MAX_FILE_SIZE, "show_error": True, "theme": theme, "css": CSS, "head": HEAD}
