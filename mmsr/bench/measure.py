"""Clocks, memory, and timed end-to-end runs through :class:`mmsr.engine.Engine`.

Every measured run is the user's path: ``Engine.upscale`` under :class:`UpscaleSettings`, its
stage timings read from the result the engine returns. Each run gets a fresh engine (same
pipeline and extractors, empty caches), so every run pays for its extractors and tokens; the
re-run section measures the warm engine.
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial

import numpy as np
import torch
from PIL import Image

from ..constants import SCALE
from ..engine import Engine
from ..imageio import pil_to_tensor
from ..settings import UpscaleSettings
from ..tiling import resolve_tile, vae_tiling

CAPTION = (
    "A photograph of a city street. Brick buildings with tall windows line both sides of the road. "
    "Parked cars and a cyclist in the foreground. Overcast daylight."
)
# The stages an edited caption or temperature re-runs.
DIFFUSION_STAGES = ("text_encoder", "connector", "vae_encode", "unet", "vae_decode")


# -- clocks and memory ---------------------------------------------------------------------------


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepClock:
    """Step callback that timestamps each denoising step without stalling the GPU (CUDA events)."""

    def __init__(self, device):
        self.device = device
        self.marks: list = []

    def __call__(self, step: int, total: int) -> None:
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def durations(self, unet_total: float) -> list[float]:
        """Seconds per step; the first is what the UNet stage took beyond the later steps."""
        if self.device.type == "cuda":
            sync(self.device)
            rest = [a.elapsed_time(b) / 1000 for a, b in zip(self.marks, self.marks[1:])]
        else:
            rest = [b - a for a, b in zip(self.marks, self.marks[1:])]
        return [max(0.0, unet_total - sum(rest)), *rest]


def reset_peak_memory(device) -> None:
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device) -> dict:
    """GPU: peak allocated/reserved since the last reset. CPU: the process's peak RSS (never reset)."""
    mb = 2**20
    out = {"cpu_rss_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device.type == "cuda":
        sync(device)
        out["gpu_allocated_peak_mb"] = round(torch.cuda.max_memory_allocated(device) / mb, 1)
        out["gpu_reserved_peak_mb"] = round(torch.cuda.max_memory_reserved(device) / mb, 1)
    return out


def wall(fn: Callable[[], object], device) -> tuple[float, object]:
    """``(seconds, fn())``, the device synchronised before and after so queued GPU work is counted."""
    sync(device)
    start = time.perf_counter()
    value = fn()
    sync(device)
    return time.perf_counter() - start, value


def timed(fn: Callable[[], object], device, warmup: int, runs: int) -> float:
    """Median seconds of ``fn()`` over ``runs`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    return statistics.median(wall(fn, device)[0] for _ in range(runs))


# -- inputs and settings -------------------------------------------------------------------------


def test_image(side: int) -> Image.Image:
    """A deterministic, textured RGB test image (LR input), ``side`` square."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:side, 0:side] / side
    base = np.stack([x, y, 0.5 + 0.5 * np.sin(12 * x * y)], axis=-1)
    blocks = np.kron(rng.random((8, 8, 3)), np.ones((side // 8 + 1, side // 8 + 1, 1)))[:side, :side]
    image = 0.6 * base + 0.3 * blocks + 0.1 * rng.random((side, side, 3))
    return Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8))


def bench_settings(steps: int | None, captioned: bool) -> UpscaleSettings:
    """``UpscaleSettings``' defaults with the bench's steps; a fixed caption unless a captioner is timed."""
    if captioned:
        return UpscaleSettings(steps=steps)
    return UpscaleSettings(caption=CAPTION, auto_caption=False, steps=steps)


def layout(pipe, lr: Image.Image, latent_tile: int | None) -> dict:
    """Where ``lr`` lands, by the pipeline's own padding and tiling rules (a bad ``latent_tile`` is a ``ValueError``)."""
    padded, _ = pipe.pad_lr(pil_to_tensor(lr))
    latent = pipe.latent_size(padded)
    with vae_tiling(pipe.vae, SCALE * max(padded.shape[-2:])) as vae_tiled:
        pass
    return {
        "lr_size": lr.width,
        "latent": latent,
        "latent_tile": resolve_tile(*latent, latent_tile, pipe.unet_factor),
        "vae_tiling": vae_tiled,
    }


# -- one output size, end to end -----------------------------------------------------------------


def upscale_once(
    engine: Engine, lr: Image.Image, settings: UpscaleSettings, info: dict
) -> tuple[dict, list, Image.Image]:
    """One ``engine.upscale``: ``(seconds per stage, seconds per UNet step, SR image)``.

    ``pipeline`` is everything but the extractors; ``e2e_offline`` adds back the extractors with real weights.
    """
    device = engine.pipeline.device
    clock = StepClock(device)
    seconds, result = wall(partial(engine.upscale, lr, settings, callback=clock), device)
    times = {"e2e": seconds}
    times |= {("extract_caption" if k == "caption" else k): v for k, v in result.timings.items()}
    extracted = {k.removeprefix("extract_"): v for k, v in times.items() if k.startswith("extract_")}
    times["pipeline"] = times["e2e"] - sum(extracted.values())
    times["e2e_offline"] = times["pipeline"] + sum(v for k, v in extracted.items() if info[k]["weights"] == "real")
    return times, clock.durations(result.timings["unet"]), result.image


def bench_size(make_engine: Callable[[], Engine], settings, info: dict, scorer, size: int, args) -> dict:
    """Warm-up, then ``args.runs`` timed runs at one output size; medians, UNet step spread, peak memory.

    Each run gets a fresh engine from ``make_engine``, so none is served from another's caches.
    """
    lr = test_image(size // SCALE)
    engine = make_engine()
    facts = layout(engine.pipeline, lr, engine.latent_tile)
    reset_peak_memory(engine.pipeline.device)
    runs = [upscale_once(make_engine(), lr, settings, info) for _ in range(args.warmup + args.runs)]
    measured = runs[args.warmup :]
    stages = {k: statistics.median(r[0][k] for r in measured) for k in measured[0][0]}
    steps_s = [s for r in measured for s in r[1]]
    return {
        "size": size,
        **facts,
        "stages": {k: round(v, 5) for k, v in stages.items()},
        "unet_step": {
            "median": round(statistics.median(steps_s), 5),
            "min": round(min(steps_s), 5),
            "max": round(max(steps_s), 5),
        },
        "e2e": {"median": round(stages["e2e"], 5), "runs": [round(r[0]["e2e"], 5) for r in measured]},
        "e2e_offline": round(stages["e2e_offline"], 5),
        "peak_memory": peak_memory(engine.pipeline.device),
        "metrics": time_metrics(scorer, measured[-1][2], lr, args.warmup, args.runs),
    }


def time_metrics(scorer, sr, lr, warmup: int, runs: int) -> dict:
    """Median seconds per no-reference metric (and LR-consistency) on one SR image; unavailable ones say why."""
    for _ in range(warmup):
        scorer.score(sr, lr=lr)
    scores = [scorer.score(sr, lr=lr) for _ in range(runs)]
    out = {}
    for name, first in scores[0].items():
        if first.available:
            out[name] = {"available": True, "seconds": round(statistics.median(s[name].seconds for s in scores), 5)}
        else:
            out[name] = {"available": False, "reason": first.reason}
    return out


# -- Engine re-run: an edited caption or temperature re-runs only the diffusion ------------------


def bench_rerun(engine: Engine, settings: UpscaleSettings, size: int) -> dict:
    """Wall time of a first run of one engine, then of runs after a caption edit and a temperature edit."""
    device = engine.pipeline.device
    lr = test_image(size // SCALE)
    base = replace(settings, caption=CAPTION, auto_caption=False)
    edits = {
        "first run": {},
        "caption edited": {"caption": CAPTION + " Sharp focus."},
        "temperature edited": {"temperatures": {"depth": 0.5, "seg": 1.0, "edges": 2.0}},
    }
    out = {"size": size}
    for label, edit in edits.items():
        cache = engine.extractor_cache
        hits, misses = cache.hits, cache.misses
        seconds, result = wall(partial(engine.upscale, lr, replace(base, **edit)), device)
        out[label] = {
            "seconds": round(seconds, 5),
            "diffusion_seconds": round(sum(result.timings.get(k, 0.0) for k in DIFFUSION_STAGES), 5),
            "extractor_cache_hits": cache.hits - hits,
            "extractors_run": cache.misses - misses,
        }
    return out
