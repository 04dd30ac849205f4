"""``python -m mmsr {upscale,train,lab,bench}``: the command-line user paths.

User errors (bad files, out-of-range settings, missing weights) exit with status 2 and one line on
stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path
from typing import NoReturn

from .constants import MODALITIES
from .presets import PRESETS
from .settings import SPECS

# subcommand -> module with ``add_arguments(parser)`` and ``main(args)``; imported only when used
COMMANDS = {
    "upscale": ("mmsr.cli", "super-resolve one image x4"),
    "train": ("mmsr.training.cli", "train a preset's components (accelerate)"),
    "lab": ("mmsr.lab.cli", "sweeps, ablations, hallucination measurements and reports"),
    "bench": ("mmsr.bench", "per-stage latency and peak memory"),
}


class UserError(Exception):
    """An error caused by the user's input: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse that keeps the CLI's promise: a usage error is one line and a pointer to ``--help``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def device_arg(text: str) -> str:
    """``--device``: a torch device this machine has (an argparse ``type``, so a bad one is one line)."""
    from .engine import check_device

    try:
        check_device(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="low-resolution image (any common format)")
    p.add_argument("-o", "--output", required=True, help="where to write the 4x image (.png, .jpg, .webp)")
    p.add_argument("--preset", default="lite", choices=list(PRESETS))
    p.add_argument(
        "--checkpoint", help="MMSR checkpoint dir or repo id (full preset; lite: overrides checkpoints/lite)"
    )
    p.add_argument("--device", type=device_arg, help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    setting_argument(p, "caption")
    setting_argument(p, "negative_prompt")
    p.add_argument("--no-caption", action="store_true", help="use the empty caption; do not run the captioner")
    for name in MODALITIES:
        p.add_argument(f"--no-{name}", action="store_true", help=f"switch {name} off (m_0)")
        p.add_argument(f"--{name}-map", type=Path, help=f"use this image as the {name} map")
    for name in ("cfg_mode", "guidance", "steps", "seed", "strength", "residual_scale"):
        setting_argument(p, name)
    p.add_argument(
        "--temperature",
        default="",
        help=f"{SPECS['temperatures'].describe()} per modality, e.g. depth=0.5,seg=1,edges=2 (default 1)",
    )
    p.add_argument("--refine", action="store_true", help=SPECS["refine"].help)
    p.add_argument("--no-flat-guard", action="store_true", help="keep maps even when the input looks flat")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--json", action="store_true", help="print settings, modality sources and per-stage timings")


def deprecated(old: str, new: str) -> None:
    """The one-line note for an old spelling that still works."""
    print(f"note: {old} is deprecated; write {new}", file=sys.stderr)


def setting_argument(p: argparse.ArgumentParser, name: str) -> None:
    """``--name`` with the default, type, choices and help of ``SPECS[name]``; checked when the settings are built."""
    s = SPECS[name]
    choices = list(s.choices) or None
    p.add_argument(f"--{name.replace('_', '-')}", type=s.type, default=s.default, choices=choices, help=s.describe())


def main(args: argparse.Namespace) -> None:
    from .constants import SCALE
    from .engine import MAX_LR_SIDE, Engine
    from .errors import ResourceError
    from .imageio import ImageError, check_size, load_image, output_format, save_atomic
    from .presets import PresetUnavailable
    from .settings import UpscaleSettings, parse_temperatures

    out = Path(args.output)
    try:
        _check_output(out, Path(args.input), args.overwrite)  # every output check now, not after the diffusion
        lr, notes = load_image(args.input)
        check_size(lr, MAX_LR_SIDE)  # before the (slow) model load
        output_format(out, (SCALE * lr.width, SCALE * lr.height))
        user_maps = {k: _load_map(getattr(args, f"{k}_map"), k) for k in MODALITIES if getattr(args, f"{k}_map")}
        settings = UpscaleSettings(
            caption=args.caption,
            negative_prompt=args.negative_prompt,
            cfg_mode=args.cfg_mode,
            guidance=args.guidance,
            steps=args.steps,
            seed=args.seed,
            strength=args.strength,
            residual_scale=args.residual_scale,
            modalities={k: not getattr(args, f"no_{k}") for k in MODALITIES},
            temperatures=parse_temperatures(args.temperature),
            auto_caption=not args.no_caption,
            refine=args.refine,
            flat_guard=not args.no_flat_guard,
        )
        engine = Engine.load(args.preset, checkpoint=args.checkpoint, device=args.device)
        result = engine.upscale(lr, settings, user_maps=user_maps)
    except (ImageError, ValueError, PresetUnavailable, ResourceError) as e:
        raise UserError(str(e)) from e
    try:
        save_atomic(result.image, out, overwrite=args.overwrite)
    except FileExistsError as e:  # created by someone else during the run
        raise UserError(str(e)) from e
    except OSError as e:  # unwritable folder, full disk: save_atomic left no partial file
        raise UserError(f"could not write {out}: {e.strerror or e}") from e
    for note in notes + result.warnings:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        report = {
            "input": str(args.input),
            "output": str(out),
            "preset": args.preset,
            "size": {"lr": list(lr.size), "sr": list(result.image.size)},
            "caption": result.caption,
            "settings": result.settings.to_dict(),
            "modalities": result.sources(),
            "timings": {k: round(v, 4) for k, v in result.timings.items()},
            "warnings": notes + result.warnings,
        }
        print(json.dumps(report, indent=2))


def _check_output(out: Path, source: Path, overwrite: bool) -> None:
    """Never write over the input (also through a link), nor over an output without ``--overwrite``;
    the format must hold the image and the folder must be writable (it is created when missing)."""
    from .imageio import output_format

    same = out.resolve() == source.resolve() or (out.exists() and source.exists() and out.samefile(source))
    if same:
        raise UserError("the output path is the input: refusing to overwrite an input")
    if out.is_dir():
        raise UserError(f"{out} is a folder; name the output file, e.g. {out / 'out.png'}")
    if out.exists() and not overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it")
    output_format(out)
    folder = next(p for p in (out.parent, *out.parent.parents) if p.exists())
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {out}: {folder} is not a writable folder")


def _load_map(path: Path, name: str):
    from .imageio import ImageError, load_image

    try:
        return load_image(path)[0]
    except ImageError as e:
        raise UserError(f"--{name}-map: {e}") from e


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m mmsr", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError:
            continue
        sp = sub.add_parser(name, help=help_text, description=help_text)
        mod.add_arguments(sp)
        sp.set_defaults(func=mod.main)
    return parser


def run(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
