"""The demo's logic without its UI: handlers (:mod:`.handlers`), plain-language text (:mod:`.status`)
and lab reports (:mod:`.reports`). ``app.py`` lays out the page and wires these to it."""

from .handlers import Control, Demo, DemoError
from .reports import HOW_TO, lab_folders, open_report

__all__ = ["HOW_TO", "Control", "Demo", "DemoError", "lab_folders", "open_report"]
