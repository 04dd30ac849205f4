"""The comparison lab: sweeps, ablations, hallucination measurements and reports (``python -m mmsr lab``).

``run`` plans and executes a sweep into a results folder (one CSV row per output), ``report``
turns the folder into Markdown/HTML with the paper's tables and figures; ``load_report`` is the
UI-free entry point the app's Lab tab calls. Heavy modules load lazily.
"""

from __future__ import annotations


def load_report(results_dir):
    """``(markdown, plot paths)`` of a results folder; see :func:`mmsr.lab.report.load_report`."""
    from .report import load_report as _load

    return _load(results_dir)


__all__ = ["load_report"]
