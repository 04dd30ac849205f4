"""``python -m mmsr bench``: per-stage latency, peak memory, how cost grows, and the performance targets.

Every output size is timed end to end through :class:`mmsr.engine.Engine` -- extractors, then the
pipeline (text encoder, modality tokenizer, connector, VAE encode, each UNet step, VAE decode) --
after warm-up runs, under :class:`mmsr.settings.UpscaleSettings`' defaults; the median of the
measured runs is reported with the peak memory. An extractor whose weights are not on disk is timed
as a random-weight model of the same architecture (:mod:`.standins`); the captioner is timed only
when a model is available.

``cli`` parses and runs, ``measure`` times (clocks, memory, engine runs), ``scaling`` measures how
cost grows, ``report`` compares with the targets and formats.
"""

from .cli import add_arguments, main, run
from .report import TARGETS, check_targets, format_report, paper_reference, plot_scaling
from .scaling import CONNECTOR_LENGTHS, SCALING_SIZES

__all__ = [
    "CONNECTOR_LENGTHS",
    "SCALING_SIZES",
    "TARGETS",
    "add_arguments",
    "check_targets",
    "format_report",
    "main",
    "paper_reference",
    "plot_scaling",
    "run",
]
