"""``python -m mmsr lab {run,report}``: sweeps, ablations, hallucination measurements and reports.

Example::

    python -m mmsr lab run --data ../shared/data/eval/set5 --captions ../shared/data/captions.json \\
        --out runs/set5 --methods mmsr,text-only-mmsr,bicubic,realesrgan --preset lite \\
        --guidance 1,4,7 --cfg-modes m-cfg,m0-cfg,cfg --subsets all,-depth,-seg,-edges,text-only \\
        --temperature depth=0.5/1/2 --seeds 0,1,2
    accelerate launch --num_processes 4 -m mmsr lab run ...   # the same, split over 4 GPUs
    python -m mmsr lab report --results runs/set5
    python -m mmsr lab run --data ../shared/data/eval/set14 --maps seg=../shared/data/seg/eval/set14 \
        --lr degraded --methods mmsr --subsets all,wrong-context --out runs/set14-context

Several CPU processes: accelerate's ``--cpu`` launcher starts one process unless MPI is set up;
``accelerate launch --multi_gpu --num_processes 2 -m mmsr lab run ... --device cpu`` (torchrun,
gloo) starts two.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cli import device_arg
from ..guidance import CFG_MODES
from ..presets import PRESETS
from ..settings import SPECS, parse_temperature_sweep
from .data import LR_MODES


def _split(text: str) -> list[str]:
    return [p.strip() for p in str(text).split(",") if p.strip()]


def parse_list(text: str, kind=str, what: str = "value") -> list:
    try:
        return [kind(p) for p in _split(text)]
    except ValueError:
        raise ValueError(f"--{what} must be a comma-separated list, got {text!r}") from None


def parse_temperature_sweeps(specs: list[str]) -> dict[str, list[float]]:
    """``["depth=0.5/1/2,seg=2", "all=0.5"]`` -> taus per modality, in the grammar of ``upscale --temperature``
    (``name=value`` pairs, commas between modalities) with ``/`` between the values of a sweep.

    The old spelling ``depth=0.5,1,2;seg=2`` (commas between values) is read with a deprecation note.
    """
    from ..cli import deprecated

    out: dict[str, list[float]] = {}
    for spec in specs:
        new = _legacy_temperature(spec)
        if new is not None:
            deprecated(f"--temperature {spec!r}", f"--temperature {new!r}")
        for m, taus in parse_temperature_sweep(new or spec).items():
            out[m] = list(dict.fromkeys([*out.get(m, []), *taus]))
    return out


def _legacy_temperature(spec: str) -> str | None:
    """``depth=0.5,1,2;seg=2`` -> ``depth=0.5/1/2,seg=2``; ``None`` when ``spec`` is not the old spelling."""
    groups = [[p.strip() for p in g.split(",") if p.strip()] for g in spec.split(";")]
    if ";" not in spec and all("=" in p for g in groups for p in g):
        return None
    out = []
    for part in (p for g in groups for p in g):
        if "=" in part or not out:
            out.append(part)
        else:
            out[-1] += f"/{part}"
    return ",".join(out)


def parse_maps(specs: list[str]) -> dict[str, Path]:
    """``["seg=DIR", "depth=A,edges=B"]`` -> ``{"seg": Path("DIR"), ...}``."""
    out = {}
    for spec in specs:
        for part in _split(spec):
            name, sep, folder = part.partition("=")
            if not sep or not name.strip() or not folder.strip():
                raise ValueError(f"--maps takes MODALITY=FOLDER, got {part!r}")
            out[name.strip()] = Path(folder.strip())
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="lab_command", required=True)
    run = sub.add_parser("run", help="run (or resume) a sweep; one CSV row per output image")
    run.add_argument(
        "--data",
        required=True,
        type=Path,
        help="folder of images (HR, or LR with --lr given)",
    )
    run.add_argument("--out", required=True, type=Path, help="results folder (rerun to resume)")
    run.add_argument(
        "--captions",
        type=Path,
        help="JSON {file name or relative path: caption} (default DATA/captions.json)",
    )
    run.add_argument(
        "--auto-caption",
        action="store_true",
        help="caption images without one with the engine's captioner (default: empty caption)",
    )
    run.add_argument(
        "--lr",
        default="bicubic",
        choices=LR_MODES,
        help="how the LR input is made (default bicubic x4 of the HR)",
    )
    run.add_argument(
        "--lr-seed",
        type=int,
        default=0,
        help="seed of the degradation for --lr degraded",
    )
    run.add_argument(
        "--crop",
        type=int,
        help="use a central CROP x CROP LR patch (HR: 4 x CROP), to keep runs small",
    )
    run.add_argument("--limit", type=int, help="only the first N images (sorted by path)")
    run.add_argument(
        "--methods",
        default="all",
        help="comma list: all, mmsr, text-only-mmsr (the engine with every map m_0), lite-text-only (the twin) and the baselines",
    )
    run.add_argument("--preset", default="lite", choices=list(PRESETS))
    run.add_argument("--checkpoint", help="MMSR checkpoint (default: the preset's)")
    run.add_argument(
        "--device",
        type=device_arg,
        help="cpu, cuda ... (default: each process's own accelerator; leave unset under multi-GPU accelerate launch)",
    )
    run.add_argument("--steps", type=int, help=f"MMSR's {SPECS['steps'].describe()}")
    run.add_argument("--residual-scale", type=float, help=f"every MMSR model's {SPECS['residual_scale'].describe()}")
    run.add_argument("--guidance", help=f"{SPECS['guidance'].describe()}, e.g. 1,4,7")
    run.add_argument("--cfg-modes", default=SPECS["cfg_mode"].default, help=f"comma list of {', '.join(CFG_MODES)}")
    run.add_argument(
        "--subsets",
        default="all",
        help="modality subsets: all, -depth, -seg, -edges, -text, text-only, none, wrong-context (every map "
        "another image's) (write --subsets=-depth,... when the list starts with -)",
    )
    run.add_argument(
        "--temperature",
        action="append",
        default=[],
        help=f"{SPECS['temperatures'].describe()} sweep, one modality at a time, e.g. depth=0.5/1/2,seg=2 (repeatable)",
    )
    run.add_argument(
        "--seeds",
        default="0",
        help="seeds, e.g. 0,1,2 (seed variance needs two or more)",
    )
    run.add_argument(
        "--caption-kinds",
        default="true,swap",
        help="captions: true, swap (another image's), empty",
    )
    run.add_argument(
        "--metrics",
        help="comma list of metrics (default: all of mmsr.metrics.METRICS that work here)",
    )
    run.add_argument(
        "--maps",
        action="append",
        default=[],
        help="user maps instead of an extractor's, e.g. seg=../shared/data/seg/eval/set14 (a map per image, "
        "same relative path or file name, any image suffix; repeatable or comma-separated)",
    )
    run.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    report = sub.add_parser("report", help="merge the results and write report.md, report.html and plots/")
    report.add_argument("--results", required=True, type=Path, help="a folder written by `lab run`")


def config_from_args(args: argparse.Namespace):
    from .run import RunConfig

    return RunConfig(
        data=args.data,
        out=args.out,
        methods=parse_list(args.methods, what="methods"),
        lr=args.lr,
        captions=args.captions,
        auto_caption=args.auto_caption,
        guidance=None if args.guidance is None else parse_list(args.guidance, float, "guidance"),
        cfg_modes=parse_list(args.cfg_modes, what="cfg-modes"),
        subsets=parse_list(args.subsets, what="subsets"),
        temperatures=parse_temperature_sweeps(args.temperature),
        seeds=parse_list(args.seeds, int, "seeds"),
        caption_kinds=parse_list(args.caption_kinds, what="caption-kinds"),
        preset=args.preset,
        checkpoint=args.checkpoint,
        steps=args.steps,
        residual_scale=args.residual_scale,
        device=args.device,
        metrics=parse_list(args.metrics, what="metrics") if args.metrics else None,
        crop=args.crop,
        lr_seed=args.lr_seed,
        limit=args.limit,
        report=not args.no_report,
        maps=parse_maps(args.maps),
    ).validate()


def main(args: argparse.Namespace) -> None:
    from ..cli import UserError
    from ..presets import PresetUnavailable

    try:
        if args.lab_command == "report":
            from .report import build_report

            path = build_report(args.results)
            print(f"report: {path} (and {path.with_suffix('.html').name})")
            return
        from ..metrics import METRICS
        from .methods import method_names
        from .run import run_lab

        config = config_from_args(args)
        method_names(config.methods)
        for name in config.metrics or []:
            if name not in METRICS:
                raise ValueError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")
        summary = run_lab(config)
    except (ValueError, PresetUnavailable, FileExistsError) as e:
        raise UserError(str(e)) from e
    if not summary.main_process:
        return
    for name, reason in summary.unavailable.items():
        print(f"note: {name} skipped: {reason}")
    for note in summary.notes:
        print(f"note: {note}")
    print(
        f"{summary.planned} rows planned, {summary.skipped} already done, {summary.ran} run here"
        f" ({summary.errors} failed); results in {Path(args.out) / 'results.csv'}"
    )
    if summary.planned and not summary.ok:
        raise UserError(f"no row succeeded; the first failure: {summary.first_error}")
