"""``python -m mmsr bench``: its arguments, the run that builds the report, and printing it."""

from __future__ import annotations

import argparse
import json
import os
import platform
from functools import partial

import torch

from ..cli import UserError, device_arg, setting_argument
from ..engine import Engine, pick_device
from ..errors import ResourceError
from ..metrics import Scorer
from ..presets import PRESETS, PresetUnavailable, load_pipeline
from ..settings import UpscaleSettings
from .measure import bench_rerun, bench_settings, bench_size
from .report import check_targets, format_report, paper_reference, plot_scaling
from .scaling import SCALING_SIZES, bench_scaling
from .standins import build_extractors

NO_REFERENCE_METRICS = ("musiq", "niqe", "clipiqa", "maniqa", "piqe", "lr_psnr")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="lite", choices=list(PRESETS))
    p.add_argument("--checkpoint", help="MMSR checkpoint (full; lite: overrides checkpoints/lite)")
    p.add_argument("--random-weights", action="store_true", help="time the preset's architecture without its weights")
    p.add_argument(
        "--device", type=device_arg, help="cpu, cuda, cuda:1 ... (default: cuda when present; bf16/fp16 on GPU)"
    )
    p.add_argument("--size", type=int, nargs="+", default=[512], help="output sides in pixels (LR = size / 4)")
    setting_argument(p, "steps")
    p.add_argument("--runs", type=int, default=3, help="measured runs per size (the median is reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per size first")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet (warm-up includes compiling)")
    p.add_argument("--latent-tile", type=int, help="force latent tiles of this side (0: never; default: auto)")
    p.add_argument("--no-rerun", action="store_true", help="skip the Engine re-run after a caption/temperature edit")
    p.add_argument("--scaling", action="store_true", help="also measure cost against output size and token count")
    p.add_argument("--scaling-sizes", type=int, nargs="+", default=list(SCALING_SIZES))
    p.add_argument("--plot", help="write the scaling plot here (implies --scaling)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def main(args: argparse.Namespace) -> None:
    try:
        report = run(args)
    except (ValueError, PresetUnavailable, ResourceError) as e:
        raise UserError(str(e)) from e
    if args.plot:
        plot_scaling(report["scaling"], args.plot)
    print(json.dumps(report, indent=2) if args.json else format_report(report))


def check_args(args: argparse.Namespace) -> None:
    for size in [*args.size, *(args.scaling_sizes if args.scaling or args.plot else [])]:
        if size % 4 or not 64 <= size <= 2048:
            raise ValueError(f"--size {size}: output sides must be multiples of 4 in [64, 2048]")
    if args.runs < 1 or args.warmup < 0:
        raise ValueError("--runs must be >= 1 and --warmup >= 0")


def run(args: argparse.Namespace) -> dict:
    """Load, time every size through the Engine, and build the report (a JSON-ready dict)."""
    check_args(args)
    device, dtype = pick_device(args.device)
    pipe = load_pipeline(args.preset, args.checkpoint, device, dtype, random_weights=args.random_weights)
    if args.compile:
        pipe.unet.compile()
    extractors, extractor_info = build_extractors(args.preset, device)
    make_engine = partial(Engine, pipe, args.preset, extractors=extractors, latent_tile=args.latent_tile)
    settings = bench_settings(args.steps, captioned="caption" in extractors)
    engine = make_engine()
    steps, guidance = engine.num_steps(settings), engine.guidance(settings)
    scorer = Scorer(names=NO_REFERENCE_METRICS, device=device)
    with torch.no_grad():
        results = [bench_size(make_engine, settings, extractor_info, scorer, size, args) for size in args.size]
        rerun = None if args.no_rerun else bench_rerun(make_engine(), settings, min(args.size))
        scaling = bench_scaling(pipe, args, steps, results[0]) if args.scaling or args.plot else None
    meta = environment(args, device, dtype, settings, steps, guidance)
    return {
        "meta": meta,
        "extractors": extractor_info,
        "results": results,
        "engine_rerun": rerun,
        "scaling": scaling,
        "targets": check_targets(meta, results),
        "paper_reference": paper_reference(meta, results),
    }


def environment(
    args: argparse.Namespace, device, dtype, settings: UpscaleSettings, steps: int, guidance: float
) -> dict:
    """What the numbers depend on: preset, device, dtype, the run's settings, threads and load."""
    return {
        "preset": args.preset,
        "random_weights": bool(args.random_weights),
        "device": str(device),
        "device_kind": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "steps": steps,
        "cfg_mode": settings.cfg_mode,
        "guidance": guidance,
        "warmup": args.warmup,
        "runs": args.runs,
        "compile": bool(args.compile),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
