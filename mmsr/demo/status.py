"""What the demo tells a visitor, in plain words: component status, schedule, scores, what changed.

Pure functions over the package's objects; no UI library. Server paths never reach the page.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from PIL import Image

from ..conditioning import MODALITIES
from ..metrics import METRICS, abs_difference, residual_heatmap


@dataclass(frozen=True)
class ContextInfo:
    """How one piece of context is described: its name, the model behind it, what else works."""

    label: str
    model: str
    otherwise: str


CONTEXT = {
    "caption": ContextInfo("Caption", "the SmolVLM captioner", "type a caption yourself"),
    "depth": ContextInfo("Depth", "the Depth Anything V2", "or upload your own map"),
    "seg": ContextInfo("Segmentation", "the Mask2Former", "or upload your own label map"),
    "edges": ContextInfo("Edges", "OpenCV Canny", "or upload your own edge map"),
}
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:/[\w.~+-]+){2,}/?")
_MISSING_DOWNLOAD = ("offline", "not in the local", "unreachable", "not cached", "no such")


def scrub(text: str) -> str:
    """``text`` without server paths (``/root/.cache/...`` becomes ``…``)."""
    return _PATH.sub("…", str(text or ""))


def context_line(name: str, available: bool, reason: str = "") -> str:
    """One line per context source: what it is and, when it is off, what to do."""
    info = CONTEXT[name]
    if available:
        return f"**{info.label}**: on ({scrub(reason) or info.model.removeprefix('the ')})"
    if any(word in reason for word in _MISSING_DOWNLOAD):
        why = f"needs {info.model} download, which happens automatically on a Space; {info.otherwise}"
    else:
        why = f"{scrub(reason)}; {info.otherwise}"
    return f"**{info.label}**: off here ({why})"


def status_text(rows: list[tuple[str, str, bool, str]], header: str) -> str:
    """The status panel: ``header``, one line per context source, then baselines and metrics.

    ``rows`` are :func:`mmsr.compare.component_status` rows ``(kind, name, available, why)``.
    """
    lines = [header, ""]
    lines += [f"- {context_line(name, ok, why)}" for kind, name, ok, why in rows if kind == "extractor"]
    ready = [name for kind, name, ok, _ in rows if kind == "baseline" and ok]
    off = [f"{name} ({scrub(why)})" for kind, name, ok, why in rows if kind == "baseline" and not ok]
    lines.append(f"- **Compare with**: {', '.join(ready)}" + (f"; not here: {'; '.join(off)}" if off else ""))
    metrics = [name for kind, name, ok, _ in rows if kind == "metric" and ok]
    missing = [name for kind, name, ok, _ in rows if kind == "metric" and not ok]
    lines.append(f"- **Scores**: {', '.join(metrics) or 'LR-consistency'}")
    if missing:
        lines.append(f"- **Scores not computed here** (their weights are not downloaded): {', '.join(missing)}")
    return "\n".join(lines)


def steps_run(steps: int, strength: float) -> int:
    """How many of a ``steps``-step schedule run at ``strength`` (``MMSRPipeline.get_timesteps``)."""
    return steps - min(steps - 1, round(steps * (1 - strength)))


def schedule_text(steps: int, strength: float, seconds_per_step: float | None) -> str:
    """``"20-step schedule, 7 steps run from strength 0.35 · about 4 s"``."""
    n = steps_run(steps, strength)
    text = f"{steps}-step schedule" + (f", {n} steps run from strength {strength:g}" if n != steps else "")
    if seconds_per_step is None:
        return text + " · time estimate after the first run"
    seconds = n * seconds_per_step
    text += f" · about {seconds:.0f} s" if seconds >= 1 else " · under a second"
    return text + (" (a long run: fewer steps are faster)" if seconds > 30 else "")


SAME_AS_TEXT_ONLY = "Every map is off: MMSR and text-only MMSR are the same computation here (identical images)."


def score_table(scores: dict, lr_psnr: dict) -> tuple[list[list[str]], str]:
    """Rows ``[metric, ↑/↓, MMSR, baseline]`` of the metrics that were computed, and one line naming
    the rest with why (e.g. "PSNR, SSIM: need an HR reference")."""
    rows, missing = [], {}
    for name, info in METRICS.items():
        ours, theirs = scores.get("mmsr", {}).get(name), scores.get("baseline", {}).get(name)
        if ours is None or theirs is None:
            continue
        if ours.value is None or theirs.value is None:
            why = "need an HR reference" if info.needs_reference else "weights not downloaded"
            missing.setdefault(why, []).append(info.label)
            continue
        rows.append([info.label, "↓" if info.lower_better else "↑", f"{ours.value:.4g}", f"{theirs.value:.4g}"])
    if not rows:
        rows.append([METRICS["lr_psnr"].label, "↑", f"{lr_psnr['mmsr']:.4g}", f"{lr_psnr['baseline']:.4g}"])
    note = "; ".join(f"{', '.join(labels)}: {why}" for why, labels in missing.items())
    return rows, (f"Not scored: {note}." if note else "")


def describe_changes(before: dict, after: dict) -> list[str]:
    """Settings that differ between two flat ``{name: value}`` dicts, as ``"guidance 4 → 2"``."""
    out = []
    for key in after:
        old, new = before.get(key), after[key]
        if old == new:
            continue
        if isinstance(new, str) and len(f"{old}{new}") > 40:
            out.append(f"{key} edited")
        else:
            out.append(f"{key} {old!r} → {new!r}" if isinstance(new, str) else f"{key} {old} → {new}")
    return out


def change_map(previous: Image.Image, current: Image.Image) -> tuple[Image.Image, float]:
    """Heatmap of ``|previous - current|`` (mean over RGB, grey levels) and its mean."""
    per_pixel = abs_difference(previous, current)
    return residual_heatmap(per_pixel, current.size), float(per_pixel.mean())


def flat_settings(settings, baseline: str, lr_hash: str) -> dict:
    """The settings a visitor can change, flattened for :func:`describe_changes`."""
    out = {"input": lr_hash[:8], "caption": settings.caption, "negative": settings.negative_prompt}
    out |= {"cfg": settings.cfg_mode, "guidance": settings.guidance, "steps": settings.steps}
    out |= {"strength": settings.strength, "seed": settings.seed, "baseline": baseline, "refine": settings.refine}
    out |= {"residual scale": settings.residual_scale}
    for name in MODALITIES:
        out[name] = "on" if settings.modalities[name] else "off"
        out[f"{name} τ"] = settings.temperatures[name]
    return out
