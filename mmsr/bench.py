"""``python -m mmsr bench``: per-stage latency, peak memory, how cost grows, and the performance targets.

Every output size is timed end to end -- extractors, then the pipeline (text encoder, modality
tokenizer, connector, VAE encode, each UNet step, VAE decode) -- after warm-up runs; the median of
the measured runs is reported with the peak memory. An extractor whose weights are not on disk is
timed as a random-weight model of the same architecture built from its transformers config (timing
does not depend on weight values); the captioner is timed only when a model is available.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from functools import partial

CAPTION = (
    "A photograph of a city street. Brick buildings with tall windows line both sides of the road. "
    "Parked cars and a cyclist in the foreground. Overcast daylight."
)
NO_REFERENCE_METRICS = ("musiq", "niqe", "clipiqa", "maniqa", "piqe", "lr_psnr")
SCALING_SIZES = (256, 512, 1024, 2048)
CONNECTOR_LENGTHS = (77, 333, 589, 845, 1690, 3380)
# The paper's reported seconds per image (MMSR on a TPU, the others on a GPU), compared with this run at 512 px.
PAPER_SECONDS = (("MMSR", 6.06, "tpu"), ("PASD", 5.60, "cuda"), ("SUPIR", 18.01, "cuda"), ("SeeSR", 30.86, "cuda"))


@dataclass(frozen=True)
class Target:
    """A performance target; it applies only to a run of this preset, device kind, size and steps."""

    key: str
    what: str
    value: float
    unit: str
    preset: str
    device: str
    size: int
    field: str = "e2e"
    steps: int | None = None  # None: the preset's default


# key, what, target, unit, preset, device kind, output size, measured field, steps
TARGETS = tuple(
    Target(*row)
    for row in (
        ("full_512_e2e", "full, 512 px, 50 steps, all extractors (H100/H200)", 1.5, "s", "full", "cuda", 512, "e2e", 50),
        ("full_1024_e2e", "full, 1024 px, 50 steps, all extractors (H100/H200)", 4.0, "s", "full", "cuda", 1024, "e2e", 50),
        ("full_512_peak_gpu", "full, 512 px, peak GPU memory", 10.0, "GB", "full", "cuda", 512, "peak_gpu_gb", 50),
        ("lite_cpu_512_e2e", "lite, 128 -> 512 px, offline extractors (2-core CPU)", 15.0, "s", "lite", "cpu", 512,
         "e2e_offline", None),
    )
)  # fmt: skip


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .cli import device_arg
    from .presets import PRESETS

    p.add_argument("--preset", default="lite", choices=list(PRESETS))
    p.add_argument("--checkpoint", help="MMSR checkpoint (full; lite: overrides checkpoints/lite)")
    p.add_argument("--random-weights", action="store_true", help="time the preset's architecture without its weights")
    p.add_argument(
        "--device", type=device_arg, help="cpu, cuda, cuda:1 ... (default: cuda when present; bf16/fp16 on GPU)"
    )
    p.add_argument("--size", type=int, nargs="+", default=[512], help="output sides in pixels (LR = size / 4)")
    p.add_argument("--steps", type=int, help="denoising steps (default: the preset's)")
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
    from .cli import UserError
    from .presets import PresetUnavailable

    try:
        report = run(args)
    except (ValueError, PresetUnavailable) as e:
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
    """Load, time every size, and build the report (a JSON-ready dict)."""
    import torch

    from .engine import pick_device
    from .metrics import Scorer
    from .presets import get_preset, load_pipeline

    check_args(args)
    device, dtype = pick_device(args.device)
    steps = args.steps or get_preset(args.preset).default_steps
    pipe = load_pipeline(args.preset, args.checkpoint, device, dtype, random_weights=args.random_weights)
    if args.compile:
        pipe.unet.compile()
    extractors, extractor_info = build_extractors(args.preset, device)
    scorer = Scorer(names=NO_REFERENCE_METRICS, device=device)
    with torch.no_grad():
        results = [bench_size(pipe, extractors, extractor_info, scorer, size, steps, args) for size in args.size]
        rerun = None if args.no_rerun else bench_rerun(pipe, args.preset, extractors, min(args.size), steps)
        scaling = bench_scaling(pipe, args, steps, results[0]) if args.scaling or args.plot else None
    meta = environment(args, device, dtype, steps)
    return {
        "meta": meta,
        "extractors": extractor_info,
        "results": results,
        "engine_rerun": rerun,
        "scaling": scaling,
        "targets": check_targets(meta, results),
        "paper_reference": paper_reference(meta, results),
    }


# -- environment and clocks ----------------------------------------------------------------------


def environment(args: argparse.Namespace, device, dtype, steps: int) -> dict:
    import torch

    meta = {
        "preset": args.preset,
        "random_weights": bool(args.random_weights),
        "device": str(device),
        "device_kind": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "steps": steps,
        "cfg_mode": "m-cfg",
        "guidance": 4.0,
        "warmup": args.warmup,
        "runs": args.runs,
        "compile": bool(args.compile),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    return meta


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepClock:
    """Step callback that timestamps each denoising step without stalling the GPU (CUDA events)."""

    def __init__(self, device):
        self.device = device
        self.marks: list = []

    def __call__(self, step: int, total: int) -> None:
        import torch

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
    import torch

    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device) -> dict:
    """GPU: peak allocated/reserved since the last reset. CPU: the process's peak RSS (never reset)."""
    import resource

    import torch

    mb = 2**20
    out = {"cpu_rss_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device.type == "cuda":
        sync(device)
        out["gpu_allocated_peak_mb"] = round(torch.cuda.max_memory_allocated(device) / mb, 1)
        out["gpu_reserved_peak_mb"] = round(torch.cuda.max_memory_reserved(device) / mb, 1)
    return out


def timed(fn, device, warmup: int, runs: int) -> float:
    """Median seconds of ``fn()`` over ``runs`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(runs):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


# -- extractors ----------------------------------------------------------------------------------


def _depth_stand_in(tiny: bool):
    """Depth Anything V2 (small, or toy for tiny-random) architecture with random weights, and its processor."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    width, layers, heads, side = (32, 4, 2, 56) if tiny else (384, 12, 6, 518)
    backbone = Dinov2Config(
        hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=4 * width,
        patch_size=14, image_size=side, out_indices=[layers // 4 * (i + 1) for i in range(4)],
        reshape_hidden_states=False,
    )  # fmt: skip
    necks = [8, 16, 32, 32] if tiny else [48, 96, 192, 384]
    config = DepthAnythingConfig(
        backbone_config=backbone, reassemble_hidden_size=width, neck_hidden_sizes=necks,
        fusion_hidden_size=16 if tiny else 64, head_hidden_size=8 if tiny else 32,
    )  # fmt: skip
    processor = DPTImageProcessor(
        size={"height": side, "width": side}, keep_aspect_ratio=True, ensure_multiple_of=14, resample=3
    )
    return DepthAnythingForDepthEstimation(config).eval(), processor


def _seg_stand_in(tiny: bool):
    """Mask2Former Swin-S (COCO panoptic, 133 classes; toy for tiny-random) with random weights, and a processor.

    The processor resizes the short side to 384 (assumed from the hub checkpoint; it drives the cost).
    """
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessor,
        SwinConfig,
    )

    from .modalities import COCO_TO_VOC

    names = [*COCO_TO_VOC, *(f"class {i}" for i in range(len(COCO_TO_VOC), 133))]
    labels = dict(enumerate(names))
    options = {}
    if tiny:
        stages = [f"stage{i}" for i in range(1, 5)]
        backbone = SwinConfig(embed_dim=16, depths=[1] * 4, num_heads=[1] * 4, out_features=stages)
        options = dict(
            backbone_config=backbone, hidden_dim=32, num_queries=8, decoder_layers=2, encoder_layers=1,
            feature_size=32, mask_feature_size=32, dim_feedforward=64, num_attention_heads=2,
        )  # fmt: skip
    config = Mask2FormerConfig(id2label=labels, label2id={v: k for k, v in labels.items()}, **options)
    short = 64 if tiny else 384
    processor = Mask2FormerImageProcessor(size={"shortest_edge": short, "longest_edge": 1333})
    return Mask2FormerForUniversalSegmentation(config).eval(), processor


def build_extractors(preset: str, device) -> tuple[dict, dict]:
    """``({name: extractor}, {name: facts})``: real models where their weights are on disk, else stand-ins."""
    from .modalities import BackendUnavailable, CaptionExtractor, DepthExtractor, EdgeExtractor, SegmentationExtractor

    tiny = preset == "tiny-random"
    extractors, info = {}, {}
    caption = CaptionExtractor(device=device, use_gemini=False)
    try:
        if tiny:
            raise BackendUnavailable("tiny-random: no caption model")
        caption.model.get()
        extractors["caption"], info["caption"] = caption, {"weights": "real", "model": caption.model_id}
    except BackendUnavailable as e:
        info["caption"] = {"weights": None, "unavailable": str(e)}
    for name, cls, stand_in, arch in (
        ("depth", DepthExtractor, _depth_stand_in, "Depth Anything V2 small"),
        ("seg", SegmentationExtractor, _seg_stand_in, "Mask2Former Swin-S"),
    ):
        real = cls(device=device)
        try:
            if tiny:
                raise BackendUnavailable("tiny-random: toy architecture")
            real.model.get()
            extractors[name], info[name] = real, {"weights": "real", "model": real.model_id}
        except BackendUnavailable as e:
            model, processor = stand_in(tiny)
            arch = f"toy {arch}" if tiny else arch
            extractors[name] = cls(device=device, model=model, processor=processor)
            params = sum(p.numel() for p in model.parameters()) / 1e6
            info[name] = {"weights": "random", "model": f"{arch} architecture, {params:.1f}M", "why": str(e)}
    extractors["edges"], info["edges"] = EdgeExtractor(device=device), {"weights": "real", "model": "OpenCV Canny"}
    return extractors, info


def test_image(side: int):
    """A deterministic, textured RGB test image (LR input), ``side`` square."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:side, 0:side] / side
    base = np.stack([x, y, 0.5 + 0.5 * np.sin(12 * x * y)], axis=-1)
    blocks = np.kron(rng.random((8, 8, 3)), np.ones((side // 8 + 1, side // 8 + 1, 1)))[:side, :side]
    image = 0.6 * base + 0.3 * blocks + 0.1 * rng.random((side, side, 3))
    return Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8))


# -- one output size, end to end -----------------------------------------------------------------


def run_once(pipe, extractors: dict, info: dict, lr, steps: int, latent_tile: int | None) -> tuple[dict, list, object]:
    """One end-to-end run: ``(seconds per stage, seconds per UNet step, SR image)``."""
    import torch

    from .conditioning import MODALITIES
    from .imageio import pil_to_tensor, tensor_to_pil

    device = pipe._execution_device
    times, results = {}, {}
    sync(device)
    start = time.perf_counter()
    for name, extractor in extractors.items():
        results[name] = extractor(lr)
        sync(device)
        times[f"extract_{name}"] = results[name].seconds
    caption = results["caption"].text if "caption" in results and results["caption"].available else CAPTION
    maps = {k: pil_to_tensor(results[k].map) for k in MODALITIES if k in results and results[k].available}
    clock = StepClock(device)
    pipe_start = time.perf_counter()
    out = pipe(
        pil_to_tensor(lr), prompt=caption, maps=maps, cfg_mode="m-cfg", guidance_scale=4.0,
        num_inference_steps=steps, generator=torch.Generator("cpu").manual_seed(0), callback=clock,
        latent_tile=latent_tile,
    )  # fmt: skip
    sync(device)
    end = time.perf_counter()
    times.update(out.timings)
    times["pipeline"] = end - pipe_start
    times["e2e"] = end - start
    offline = sum(times[f"extract_{k}"] for k in extractors if info[k]["weights"] == "real")
    times["e2e_offline"] = times["pipeline"] + offline
    return times, clock.durations(out.timings["unet"]), tensor_to_pil(out.images)


def bench_size(pipe, extractors: dict, info: dict, scorer, size: int, steps: int, args) -> dict:
    """Warm-up, then ``args.runs`` timed runs at one output size; medians, UNet step spread, peak memory."""
    from .tiling import VAE_TILE_ABOVE, resolve_tile

    device = pipe._execution_device
    lr = test_image(size // 4)
    padded_side = 4 * (size // 4 + -(size // 4) % pipe.lr_multiple)
    latent = [padded_side // pipe.vae_scale_factor] * 2
    reset_peak_memory(device)
    runs = [run_once(pipe, extractors, info, lr, steps, args.latent_tile) for _ in range(args.warmup + args.runs)]
    measured = runs[args.warmup :]
    stages = {k: statistics.median(r[0][k] for r in measured) for k in measured[0][0]}
    steps_s = [s for r in measured for s in r[1]]
    return {
        "size": size,
        "lr_size": size // 4,
        "latent": latent,
        "latent_tile": resolve_tile(*latent, args.latent_tile, pipe.unet_factor),
        "vae_tiling": padded_side > VAE_TILE_ABOVE,
        "stages": {k: round(v, 5) for k, v in stages.items()},
        "unet_step": {
            "median": round(statistics.median(steps_s), 5),
            "min": round(min(steps_s), 5),
            "max": round(max(steps_s), 5),
        },
        "e2e": {"median": round(stages["e2e"], 5), "runs": [round(r[0]["e2e"], 5) for r in measured]},
        "e2e_offline": round(stages["e2e_offline"], 5),
        "peak_memory": peak_memory(device),
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


def bench_rerun(pipe, preset: str, extractors: dict, size: int, steps: int) -> dict:
    """Wall time of a first Engine run, then of runs after a caption edit and a temperature edit."""
    from .conditioning import MODALITIES
    from .engine import Engine
    from .settings import UpscaleSettings

    device = pipe._execution_device
    engine = Engine(pipe, preset, extractors={k: extractors[k] for k in MODALITIES})
    lr = test_image(size // 4)
    edits = {
        "first run": {},
        "caption edited": {"caption": CAPTION + " Sharp focus."},
        "temperature edited": {"temperatures": {"depth": 0.5, "seg": 1.0, "edges": 2.0}},
    }
    out = {"size": size}
    for label, edit in edits.items():
        settings = UpscaleSettings(**{"caption": CAPTION, "steps": steps, "auto_caption": False, **edit})
        cache = engine.extractor_cache
        hits, misses = cache.hits, cache.misses
        sync(device)
        start = time.perf_counter()
        result = engine.upscale(lr, settings)
        sync(device)
        diffusion = ("text_encoder", "connector", "vae_encode", "unet", "vae_decode")
        out[label] = {
            "seconds": round(time.perf_counter() - start, 5),
            "diffusion_seconds": round(sum(result.timings.get(k, 0.0) for k in diffusion), 5),
            "extractor_cache_hits": cache.hits - hits,
            "extractors_run": cache.misses - misses,
        }
    return out


# -- how cost grows --------------------------------------------------------------------------------


def bench_scaling(pipe, args, steps: int, first: dict) -> dict:
    """UNet step and VAE time against output size; UNet step against condition length; connector against M."""
    import torch

    from .tiling import resolve_tile, vae_tiling

    device, dtype = pipe._execution_device, pipe.unet.dtype
    c, dim = pipe.unet.config.out_channels, pipe.connector.config.dim
    num_latents = pipe.connector.config.num_latents
    t = pipe.scheduler.timesteps[0] if len(pipe.scheduler.timesteps) else torch.tensor(999)
    fixed = sum(first["stages"].get(k, 0.0) for k in ("text_encoder", "tokenizer", "connector"))
    fixed += sum(v for k, v in first["stages"].items() if k.startswith("extract_"))

    def step_seconds(side: int, tokens: int, tile: int | None) -> float:
        x = torch.randn(2, 2 * c, side, side, device=device, dtype=dtype)
        cond = torch.randn(2, tokens, dim, device=device, dtype=dtype)
        return timed(lambda: pipe.predict_noise(x, t, cond, tile), device, args.warmup, args.runs)

    sizes = []
    for size in args.scaling_sizes:
        side = size // pipe.vae_scale_factor
        side += -side % pipe.unet_factor
        tile = resolve_tile(side, side, None, pipe.unet_factor)
        z = torch.randn(1, c, side, side, device=device, dtype=dtype)
        lr = torch.rand(1, 3, size // 4, size // 4, device=device)
        with vae_tiling(pipe.vae, size):
            decode = timed(partial(pipe.decode, z), device, args.warmup, args.runs)
            encode = timed(partial(pipe.encode_lr, lr), device, args.warmup, args.runs)
        step = step_seconds(side, num_latents, tile)
        row = {"size": size, "latent_tile": tile, "unet_step": step, "vae_encode": encode, "vae_decode": decode}
        row["projected_e2e"] = fixed + steps * step + encode + decode
        sizes.append({k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()})
    side = first["latent"][0]
    full_length = 3 * 256 + pipe.text_max_length
    tokens = {
        "size": first["size"],
        "connector_tokens": num_latents,
        "full_sequence_tokens": full_length,
        "unet_step_connector": round(step_seconds(side, num_latents, first["latent_tile"]), 5),
        "unet_step_full_sequence": round(step_seconds(side, full_length, first["latent_tile"]), 5),
    }
    connector = []
    for m in CONNECTOR_LENGTHS:
        seq = torch.randn(2, m, dim, device=device, dtype=dtype)
        groups = torch.arange(m, device=device) % 4
        connector.append(
            {
                "tokens": m,
                "seconds": round(timed(partial(pipe.connector, seq, groups), device, 1, max(5, args.runs)), 6),
            }
        )
    return {"steps": steps, "fixed_seconds": round(fixed, 5), "sizes": sizes, "tokens": tokens, "connector": connector}


# -- targets and the paper's reference times -----------------------------------------------------


def _measured(result: dict, field: str) -> float | None:
    if field == "peak_gpu_gb":
        mb = result["peak_memory"].get("gpu_allocated_peak_mb")
        return None if mb is None else mb / 1024
    return result["e2e"]["median"] if field == "e2e" else result[field]


def check_targets(meta: dict, results: list[dict]) -> list[dict]:
    """Each target with the measured value and ``ratio = measured / target`` where this run matches it."""
    from .presets import get_preset

    out = []
    for target in TARGETS:
        row = {**asdict(target), "measured": None, "ratio": None, "met": None}
        steps = target.steps or get_preset(target.preset).default_steps
        result = next((r for r in results if r["size"] == target.size), None)
        mismatch = [
            f"preset is {meta['preset']}" if meta["preset"] != target.preset else "",
            f"device is {meta['device_kind']}, target is for {target.device}"
            if meta["device_kind"] != target.device
            else "",
            f"steps are {meta['steps']}, target is for {steps}" if meta["steps"] != steps else "",
            f"size {target.size} not measured" if result is None else "",
        ]
        mismatch = [m for m in mismatch if m]
        if mismatch:
            row["note"] = "not comparable: " + "; ".join(mismatch)
        else:
            value = _measured(result, target.field)
            row["measured"] = None if value is None else round(value, 4)
            row["ratio"] = None if value is None else round(value / target.value, 3)
            row["met"] = None if value is None else value <= target.value
            row["note"] = "ratio = measured / target (<= 1 meets it)"
        out.append(row)
    return out


def paper_reference(meta: dict, results: list[dict]) -> list[dict]:
    """The paper's seconds per image next to a ``full`` 512 px end to end, compared only on the same device kind."""
    ours = next((r["e2e"]["median"] for r in results if r["size"] == 512), None) if meta["preset"] == "full" else None
    rows = []
    for method, seconds, kind in PAPER_SECONDS:
        row = {"method": method, "paper_seconds": seconds, "paper_device": kind.replace("cuda", "GPU").upper()}
        if ours is not None and kind == meta["device_kind"]:
            row["ratio"] = round(ours / seconds, 3)
            row["note"] = "this run's 512 px e2e / paper (a GPU of the paper's choice; not necessarily this card)"
        else:
            row["ratio"] = None
            why = "no full-preset 512 px run" if ours is None else f"paper ran on a {row['paper_device']}"
            row["note"] = f"not comparable: {why}; this run: {meta['preset']} on {meta['device_kind']}"
        rows.append(row)
    return rows


# -- output --------------------------------------------------------------------------------------

STAGE_ORDER = (
    "extract_caption", "extract_depth", "extract_seg", "extract_edges", "text_encoder", "tokenizer", "connector",
    "stage1", "vae_encode", "unet", "unet_step", "vae_decode", "pipeline", "e2e_offline", "e2e",
)  # fmt: skip
STAGE_LABELS = {
    "stage1": "stage 1 (Real-ESRGAN x4plus)",
    "unet": "UNet, all steps",
    "unet_step": "UNet step (mean)",
    "pipeline": "pipeline total",
    "e2e_offline": "end to end, offline extractors",
    "e2e": "end to end, all extractors",
}


def _format_size(r: dict, info: dict) -> list[str]:
    tiling = f"latent tiles {r['latent_tile']}" if r["latent_tile"] else "untiled"
    lines = [
        f"\n{r['size']} px (LR {r['lr_size']}, latent {r['latent'][0]}x{r['latent'][1]}, {tiling}, "
        f"VAE {'tiled' if r['vae_tiling'] else 'untiled'})",
        f"  {'stage':34s} {'median s':>10s}",
    ]
    for key in STAGE_ORDER:
        if key not in r["stages"]:
            continue
        name = key.removeprefix("extract_")
        note = f"  ({info[name]['weights']} weights)" if key.startswith("extract_") else ""
        lines.append(f"  {STAGE_LABELS.get(key, key):34s} {r['stages'][key]:10.4f}{note}")
    s = r["unet_step"]
    lines.append(f"  UNet step median / min / max: {s['median']:.4f} / {s['min']:.4f} / {s['max']:.4f} s")
    lines.append(f"  e2e runs: {', '.join(f'{x:.3f}' for x in r['e2e']['runs'])} s")
    mem = r["peak_memory"]
    gpu = f"GPU allocated {mem['gpu_allocated_peak_mb']:.0f} MB" if "gpu_allocated_peak_mb" in mem else "GPU n/a"
    lines.append(f"  peak memory: {gpu}; CPU RSS {mem['cpu_rss_peak_mb']:.0f} MB (process peak so far)")
    metrics = [f"{k} {v['seconds']:.3f} s" for k, v in r["metrics"].items() if v["available"]]
    missing = [k for k, v in r["metrics"].items() if not v["available"]]
    lines.append(f"  metrics: {', '.join(metrics) or 'none'}; unavailable: {', '.join(missing) or 'none'}")
    return lines


def _format_scaling(sc: dict) -> list[str]:
    lines = [
        f"\ncost against output size (projected e2e = fixed {sc['fixed_seconds']:.3f} s + {sc['steps']} steps + VAE)"
    ]
    lines.append(f"  {'size':>6s} {'tile':>6s} {'UNet step':>10s} {'VAE enc':>9s} {'VAE dec':>9s} {'projected':>10s}")
    for r in sc["sizes"]:
        tile = str(r["latent_tile"] or "-")
        lines.append(
            f"  {r['size']:6d} {tile:>6s} {r['unet_step']:10.4f} {r['vae_encode']:9.4f} "
            f"{r['vae_decode']:9.4f} {r['projected_e2e']:10.3f}"
        )
    t = sc["tokens"]
    lines.append(
        f"UNet step at {t['size']} px: {t['connector_tokens']} connector tokens {t['unet_step_connector']:.4f} s vs "
        f"{t['full_sequence_tokens']}-token sequence {t['unet_step_full_sequence']:.4f} s "
        f"(x{t['unet_step_full_sequence'] / t['unet_step_connector']:.2f} without the connector)"
    )
    lines.append("connector time against sequence length M: " + ", ".join(
        f"{c['tokens']}: {c['seconds'] * 1000:.2f} ms" for c in sc["connector"]))  # fmt: skip
    return lines


def format_report(report: dict) -> str:
    m = report["meta"]
    weights = "random weights" if m["random_weights"] or m["preset"] == "tiny-random" else "trained weights"
    lines = [
        f"MMSR bench: preset {m['preset']} ({weights}), {m['device']} [{m['device_name']}], {m['dtype']}, "
        f"torch {m['torch']}, {m['torch_threads']} threads / {m['cpu_count']} CPUs, load {m['load_average']}",
        f"{m['steps']} steps, {m['cfg_mode']}, guidance {m['guidance']}, warm-up {m['warmup']}, "
        f"median of {m['runs']} runs, compile {'on' if m['compile'] else 'off'}",
        "extractors: " + "; ".join(
            f"{k} {v['model'] + ' (' + v['weights'] + ' weights)' if v['weights'] else 'unavailable: ' + v['unavailable']}"
            for k, v in report["extractors"].items()
        ),
    ]  # fmt: skip
    for r in report["results"]:
        lines += _format_size(r, report["extractors"])
    if report["engine_rerun"]:
        rr = report["engine_rerun"]
        lines.append(f"\nEngine at {rr['size']} px (extractor and token caches):")
        for label, v in rr.items():
            if label != "size":
                lines.append(
                    f"  {label:20s} {v['seconds']:8.3f} s  (diffusion {v['diffusion_seconds']:.3f} s, "
                    f"extractors run {v['extractors_run']}, cache hits {v['extractor_cache_hits']})"
                )
    if report["scaling"]:
        lines += _format_scaling(report["scaling"])
    lines.append("\ntargets (ratio = measured / target; <= 1 meets it):")
    for t in report["targets"]:
        measured = "-" if t["measured"] is None else f"{t['measured']:.3f} {t['unit']}"
        ratio = "-" if t["ratio"] is None else f"{t['ratio']:.2f}"
        lines.append(f"  {t['what']:58s} {t['value']:6.1f} {t['unit']:2s} {measured:>12s} {ratio:>6s}  {t['note']}")
    lines.append("paper's reported times (per image):")
    for p in report["paper_reference"]:
        ratio = "" if p["ratio"] is None else f" ratio {p['ratio']:.2f}"
        lines.append(f"  {p['method']:6s} {p['paper_seconds']:6.2f} s ({p['paper_device']}){ratio}  {p['note']}")
    return "\n".join(lines)


def plot_scaling(scaling: dict, path: str) -> None:
    """Three panels: latency against output size, UNet step against condition length, connector against M."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4.2))
    sizes = [r["size"] for r in scaling["sizes"]]
    for key, label in (
        ("projected_e2e", "projected end to end"),
        ("unet_step", "one UNet step"),
        ("vae_decode", "VAE decode"),
    ):
        a.plot(sizes, [r[key] for r in scaling["sizes"]], marker="o", label=label)
    a.set(xscale="log", yscale="log", xlabel="output side (px)", ylabel="seconds", title="cost against output size")
    a.set_xticks(sizes, [str(s) for s in sizes])
    a.minorticks_off()
    a.legend()
    t = scaling["tokens"]
    labels = [f"{t['connector_tokens']} (connector)", f"{t['full_sequence_tokens']} (no connector)"]
    b.bar(labels, [t["unet_step_connector"], t["unet_step_full_sequence"]], color=["tab:green", "tab:red"])
    b.set(ylabel="seconds", title=f"UNet step at {t['size']} px against condition tokens")
    lengths = [r["tokens"] for r in scaling["connector"]]
    c.plot(lengths, [r["seconds"] * 1000 for r in scaling["connector"]], marker="o")
    c.set(xlabel="condition sequence length M", ylabel="ms", title="connector time against M (O(M N))")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
