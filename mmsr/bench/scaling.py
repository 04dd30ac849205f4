"""How cost grows: UNet step and VAE against output size, UNet step against condition length, connector against M.

These time the pipeline's own components on random inputs shaped by its own padding
(:meth:`MMSRPipeline.pad_lr`, :meth:`MMSRPipeline.latent_size`) and tiling rules (:mod:`mmsr.tiling`).
"""

from __future__ import annotations

from functools import partial

import torch

from ..constants import SCALE
from ..tiling import resolve_tile, vae_tiling
from .measure import timed

SCALING_SIZES = (256, 512, 1024, 2048)
CONNECTOR_LENGTHS = (77, 333, 589, 845, 1690, 3380)
# Stages whose cost does not grow with the output size (with the extractors).
FIXED_STAGES = ("text_encoder", "tokenizer", "connector")


def bench_scaling(pipe, args, steps: int, first: dict) -> dict:
    """The scaling tables; ``first`` is the first measured size (its fixed stages and latent)."""
    stages = first["stages"]
    fixed = sum(stages.get(k, 0.0) for k in FIXED_STAGES)
    fixed += sum(v for k, v in stages.items() if k.startswith("extract_"))
    return {
        "steps": steps,
        "fixed_seconds": round(fixed, 5),
        "sizes": [size_row(pipe, size, steps, fixed, args) for size in args.scaling_sizes],
        "tokens": token_row(pipe, first, args),
        "connector": connector_rows(pipe, args),
    }


def step_seconds(pipe, latent: list[int], tokens: int, tile: int | None, args) -> float:
    """Median seconds of one UNet call on both CFG branches: a ``latent``-sized input, ``tokens`` condition tokens."""
    device, dtype = pipe._execution_device, pipe.unet.dtype
    t = pipe.scheduler.timesteps[0] if len(pipe.scheduler.timesteps) else torch.tensor(999)
    x = torch.randn(2, 2 * pipe.unet.config.out_channels, *latent, device=device, dtype=dtype)
    cond = torch.randn(2, tokens, pipe.connector.config.dim, device=device, dtype=dtype)
    return timed(partial(pipe.predict_noise, x, t, cond, tile), device, args.warmup, args.runs)


def size_row(pipe, size: int, steps: int, fixed: float, args) -> dict:
    """One output size: UNet step (auto-tiled), VAE encode and decode, and the end to end they project."""
    device, dtype = pipe._execution_device, pipe.unet.dtype
    lr, _ = pipe.pad_lr(torch.rand(1, 3, size // SCALE, size // SCALE, device=device))
    latent = pipe.latent_size(lr)
    tile = resolve_tile(*latent, None, pipe.unet_factor)
    with vae_tiling(pipe.vae, SCALE * max(lr.shape[-2:])):
        encode = timed(partial(pipe.encode_lr, lr), device, args.warmup, args.runs)
        lr_latent = pipe.encode_lr(lr).to(dtype)
        decode = timed(partial(pipe.decode, torch.randn_like(lr_latent), lr_latent), device, args.warmup, args.runs)
    step = step_seconds(pipe, latent, pipe.connector.config.num_latents, tile, args)
    row = {"size": size, "latent_tile": tile, "unet_step": step, "vae_encode": encode, "vae_decode": decode}
    row["projected_e2e"] = fixed + steps * step + encode + decode
    return {k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()}


def token_row(pipe, first: dict, args) -> dict:
    """UNet step at the first size with the connector's tokens against the whole condition sequence."""
    num_latents = pipe.connector.config.num_latents
    embedding = pipe.condition_embedding.config
    full = embedding.num_modalities * embedding.tokens_per_modality + pipe.text_max_length
    step = partial(step_seconds, pipe, first["latent"], tile=first["latent_tile"], args=args)
    return {
        "size": first["size"],
        "connector_tokens": num_latents,
        "full_sequence_tokens": full,
        "unet_step_connector": round(step(tokens=num_latents), 5),
        "unet_step_full_sequence": round(step(tokens=full), 5),
    }


def connector_rows(pipe, args) -> list[dict]:
    """Connector seconds against condition sequence length M (its cost is O(M N))."""
    device, dtype = pipe._execution_device, pipe.unet.dtype
    dim, groups = pipe.connector.config.dim, pipe.condition_embedding.config.num_modalities + 1  # + text
    rows = []
    for m in CONNECTOR_LENGTHS:
        seq = torch.randn(2, m, dim, device=device, dtype=dtype)
        segment = torch.arange(m, device=device) % groups
        seconds = timed(partial(pipe.connector, seq, segment), device, 1, max(5, args.runs))
        rows.append({"tokens": m, "seconds": round(seconds, 6)})
    return rows
