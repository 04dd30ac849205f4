"""``python -m mmsr train``: train one stage of a preset (``vae``, ``vq``, ``unet``) under accelerate.

Examples::

    python -m mmsr train --preset lite --stage vae --data ../shared/data --out runs/vae --minutes 12
    python -m mmsr train --preset lite --stage vq --data ../shared/data --out runs/vq --minutes 5
    python -m mmsr train --preset lite --stage unet --init runs/vae --init runs/vq --out runs/lite --minutes 30
    accelerate launch -m mmsr train --preset full --stage unet ...   # many GPUs, same command

``--evaluate`` scores checkpoints instead of training (see :mod:`mmsr.training.evaluate`).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

STAGES = ("vae", "vq", "unet")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="lite", choices=("tiny-random", "lite", "full"))
    p.add_argument("--stage", default="unet", choices=STAGES)
    p.add_argument("--text-only", action="store_true", help="unet stage: every modality is m_0 (the text-only twin)")
    p.add_argument("--data", type=Path, default=Path("../shared/data"), help="folder with train/, seg/, captions.json")
    p.add_argument("--out", type=Path, required=False, help="output folder (state/, log.jsonl, loss.png, weights)")
    p.add_argument("--init", type=Path, action="append", default=[], help="folder with vae/ or vqmodel/ of a stage")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, help="wall-clock budget of this invocation")
    budget.add_argument("--max-steps", type=int, help="total optimizer steps (counts resumed steps)")
    p.add_argument("--batch-size", type=int, default=16, help="per process")
    p.add_argument("--crop", type=int, default=128, help="HR crop side (pixels)")
    p.add_argument("--max-side", type=int, default=512, help="downscale training photos to this long side first")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/state")
    p.add_argument("--mixed-precision", default="no", choices=("no", "bf16", "fp16"))
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--adv-start", type=int, default=300, help="vae stage: step that switches the PatchGAN loss on")
    p.add_argument("--no-ema", action="store_true", help="unet stage: save the raw weights, not the EMA")
    p.add_argument("--cache", type=Path, help="unet stage: latent/token cache file (built when missing)")
    p.add_argument("--lr-variants", type=int, default=2, help="unet stage: degraded LR versions per photo in the cache")
    p.add_argument(
        "--stage1-dir",
        type=Path,
        default=Path("runs/stage1"),
        help="unet stage of a preset with a stage 1: the folder `python -m mmsr.training.stage1` wrote",
    )
    p.add_argument(
        "--sampler-weight",
        type=float,
        default=0.5,
        help="unet stage: fraction of each batch drawn at the timesteps the preset's default sampler visits",
    )
    p.add_argument(
        "--val-photos",
        type=int,
        default=32,
        help="unet stage: photos held out of training; every snapshot is scored on them and the best is kept",
    )
    p.add_argument("--save-every", type=float, default=10.0, help="minutes between snapshots (and validations)")
    p.add_argument(
        "--keep-snapshots",
        action="store_true",
        help="also keep every snapshot in OUT/snapshots/step-N (to choose one afterwards with mmsr.training.calibrate)",
    )
    p.add_argument("--caption-dropout", type=float, default=0.1, help="unet stage: fraction of empty captions")
    p.add_argument(
        "--adv-weight",
        type=float,
        default=0.0,
        help="unet stage (lite: x0-prediction of a residual on pixel-unshuffle latents): weight of a PatchGAN "
        "hinge loss on the predicted image next to its stage-1 condition, a texture term the MSE averages away",
    )
    p.add_argument(
        "--hr-edge-fraction",
        type=float,
        default=0.0,
        help="unet stage: fraction of training crops whose edge map comes from the HR photo (the same Canny "
        "extractor) instead of the LR, so edge maps carry more than the LR does; validation and inference use the LR's",
    )
    p.add_argument(
        "--fft-weight",
        type=float,
        default=0.0,
        help="unet stage (x0-prediction, pixel-unshuffle latents): weight of an L1 loss between the Fourier "
        "amplitudes of the predicted and the true residual, which keeps texture energy the MSE averages away",
    )
    p.add_argument(
        "--spatial-modalities",
        default="",
        help="unet stage: also lay these maps' codes on the latent grid (mmsr.spatial), e.g. seg,edges; "
        "not part of any shipped checkpoint (see checkpoints/README.md, 'lite v3')",
    )
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--fp16-weights", action="store_true", help="store the saved weights in float16 (smaller repo)")
    p.add_argument("--evaluate", action="store_true", help="score checkpoints instead (see mmsr.training.evaluate)")
    p.add_argument("--sets", default="set5,set14", help="--evaluate: comma-separated eval sets")
    p.add_argument("--limit", type=int, help="--evaluate: at most this many images per set")
    p.add_argument("--methods", default="", help="--evaluate: comma-separated subset of the methods")
    p.add_argument(
        "--samples",
        type=int,
        help="--evaluate: MMSR samples averaged per output (default: the preset's; use a fresh --out)",
    )
    p.add_argument(
        "--guidance", type=float, help="--evaluate: MMSR's guidance weight w (default: the preset's; use a fresh --out)"
    )
    p.add_argument(
        "--contact-sheet", type=Path, help="--evaluate: write a bicubic | Real-ESRGAN | twin | MMSR sheet here"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mmsr train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return parser


def build_stage(args: argparse.Namespace):
    """The stage object :func:`mmsr.training.loop.train` runs."""
    from ..presets import build_components, get_preset
    from .data import ImageBank

    components = build_components(args.preset, seed=args.seed)
    spatial = [m for m in args.spatial_modalities.split(",") if m]
    if spatial:
        from ..spatial import add_spatial_inputs

        components = add_spatial_inputs(components, spatial)
    load_init(components, args.init)
    bank = ImageBank(args.data, min_side=args.crop, max_side=args.max_side)
    if args.stage == "vae":
        from .autoencoder import VAEStage

        stage = VAEStage(components, bank, args.crop, adv_start=args.adv_start)
    elif args.stage == "vq":
        from .autoencoder import VQStage

        stage = VQStage(components, bank, args.crop)
    else:
        from .diffusion import UNetStage

        if args.preset == "full":
            from ..presets import init_full_unet

            components["unet"] = init_full_unet()
        stage = UNetStage(
            components,
            bank,
            crop=args.crop,
            text_only=args.text_only,
            cache=args.cache,
            lr_variants=args.lr_variants,
            seed=args.seed,
            ema=not args.no_ema,
            fp16_weights=args.fp16_weights,
            stage1_dir=args.stage1_dir,
            sampler_steps=get_preset(args.preset).default_steps,
            sampler_strength=get_preset(args.preset).default_strength,
            sampler_weight=args.sampler_weight,
            val_photos=args.val_photos,
            caption_dropout=args.caption_dropout,
            fft_weight=args.fft_weight,
            hr_edge_fraction=args.hr_edge_fraction,
            adv_weight=args.adv_weight,
        )
    if args.gradient_checkpointing:
        for module in stage.model.modules():
            if hasattr(module, "enable_gradient_checkpointing") and getattr(
                module, "_supports_gradient_checkpointing", False
            ):
                module.enable_gradient_checkpointing()
    return stage


def load_init(components: dict, folders: list[Path]) -> None:
    """Replace ``vae`` / ``vqmodel`` with trained ones from earlier stages' output folders."""
    from ..presets import autoencoder_class, tokenizer_class

    for folder in folders:
        if (folder / "vae").is_dir():
            components["vae"] = autoencoder_class(folder / "vae").from_pretrained(folder / "vae", dtype=_f32())
        if (folder / "vqmodel").is_dir():
            cls = tokenizer_class(folder / "vqmodel")
            components["vqmodel"] = cls.from_pretrained(folder / "vqmodel", dtype=_f32())
        if (folder / "unet").is_dir():
            warm_start(components, folder)
        if not any((folder / sub).is_dir() for sub in ("vae", "vqmodel", "unet")):
            raise ValueError(f"--init {folder}: no vae/, vqmodel/ or unet/ inside")


def warm_start(components: dict, folder: Path) -> None:
    """Start unet/connector/m_0 from a saved pipeline; UNet weights load where names and shapes match
    (e.g. a run whose UNet had attention at one more level)."""
    from diffusers import UNet2DConditionModel

    from ..conditioning import ConditionEmbedding
    from ..connector import MMLConnector
    from ..spatial import widen_conv_in

    target = components["unet"].state_dict()
    source = UNet2DConditionModel.from_pretrained(folder / "unet", dtype=_f32()).state_dict()
    old, new = source["conv_in.weight"].shape[1], target["conv_in.weight"].shape[1]
    if old < new:  # --spatial-modalities added code inputs: they start at zero, the rest computes as before
        source["conv_in.weight"] = widen_conv_in(source["conv_in.weight"], new)
        print(f"warm start: conv_in widened from {old} to {new} inputs (the new ones start at zero)")
    matched = {k: v for k, v in source.items() if k in target and v.shape == target[k].shape}
    components["unet"].load_state_dict(matched, strict=False)
    print(f"warm start: {len(matched)}/{len(target)} UNet tensors from {folder / 'unet'}")
    for name, cls in (("connector", MMLConnector), ("condition_embedding", ConditionEmbedding)):
        components[name] = cls.from_pretrained(folder / name, dtype=_f32())


def _f32():
    import torch

    return torch.float32


def main(args: argparse.Namespace) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from ..cli import UserError

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.evaluate:
        from .evaluate import main as evaluate_main

        try:
            evaluate_main(args)
        except ValueError as e:
            raise UserError(str(e)) from e
        return
    if args.out is None:
        raise UserError("--out is required for training")
    if args.minutes is None and args.max_steps is None:
        raise UserError("give a budget: --minutes M or --max-steps N")
    from .loop import LoopConfig, train

    try:
        stage = build_stage(args)
    except ValueError as e:
        raise UserError(str(e)) from e
    cfg = LoopConfig(
        out=args.out,
        batch_size=args.batch_size,
        lr=args.lr,
        max_steps=args.max_steps,
        minutes=args.minutes,
        seed=args.seed,
        mixed_precision=args.mixed_precision,
        grad_accum=args.grad_accum,
        resume=args.resume,
        save_every_minutes=args.save_every,
        keep_snapshots=args.keep_snapshots,
    )
    train(stage, cfg)
