"""Tiled denoising and tiled VAE for large outputs: small pure functions.

The UNet runs on overlapping latent tiles; each step's noise predictions are blended with weights
that ramp linearly across the overlaps and are normalised by their sum, so neighbouring tiles fade
into each other and no seam appears (MultiDiffusion-style: one scheduler step on the blended eps).
A tile that covers the whole latent gives exactly the untiled result.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

# Preset-independent, in latent pixels (x8 = output pixels for the f8 autoencoders of every preset).
AUTO_TILE_ABOVE = 128  # tile the latent only when a side exceeds this (output above 1024 px)
AUTO_TILE = 128  # tile side when tiling automatically
OVERLAP_FRACTION = 0.25
VAE_TILE_ABOVE = 1024  # output pixels: larger outputs are encoded and decoded by the VAE in tiles
VAE_TILE = 512  # output pixels per VAE tile


def resolve_tile(height: int, width: int, latent_tile: int | None, align: int) -> int | None:
    """The latent tile side to use, or ``None`` for one untiled UNet call.

    ``latent_tile``: ``None`` = automatic (``AUTO_TILE`` when a side exceeds ``AUTO_TILE_ABOVE``),
    ``0`` = never, ``n > 0`` = tiles of ``n`` latent pixels, a multiple of ``align`` (the UNet's
    downsampling factor) so every tile fits every UNet level.
    """
    if latent_tile is None:
        latent_tile = AUTO_TILE if max(height, width) > AUTO_TILE_ABOVE else 0
    if isinstance(latent_tile, bool) or not isinstance(latent_tile, int) or latent_tile < 0:
        raise ValueError(f"latent_tile must be None, 0 or a positive integer, got {latent_tile!r}")
    if latent_tile % align:
        raise ValueError(f"latent_tile must be a multiple of {align} (the UNet's downsampling), got {latent_tile}")
    if latent_tile == 0 or latent_tile >= max(height, width):
        return None
    return latent_tile


def default_overlap(tile: int, align: int) -> int:
    """``OVERLAP_FRACTION`` of the tile rounded to ``align``, at least ``align``, at most half the tile."""
    return min(tile // 2, max(align, round(tile * OVERLAP_FRACTION / align) * align))


def tile_starts(length: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Start offsets of tiles of side ``tile`` covering ``[0, length)`` with at least ``overlap`` shared.

    The tiles are spread evenly (first at 0, last flush with the end) and starts are multiples of
    ``align``; one tile at 0 when ``tile >= length``.
    """
    if tile <= 0 or not 0 <= overlap < tile:
        raise ValueError(f"need tile > overlap >= 0, got tile={tile}, overlap={overlap}")
    if tile >= length:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    last = (length - tile) // align * align
    starts = [round(i * last / (count - 1) / align) * align for i in range(count)]
    return sorted(set(starts[:-1]) | {length - tile})


def tile_grid(height: int, width: int, tile: int, overlap: int, align: int = 1) -> list[tuple[slice, slice]]:
    """``(rows, cols)`` slices of every tile, row-major; tiles are at most ``tile`` on a side."""
    rows = [slice(s, min(s + tile, height)) for s in tile_starts(height, tile, overlap, align)]
    cols = [slice(s, min(s + tile, width)) for s in tile_starts(width, tile, overlap, align)]
    return [(r, c) for r in rows for c in cols]


def ramp(size: int, ramp_before: int, ramp_after: int, device=None) -> torch.Tensor:
    """1D weights ``(size,)``: linear rise over ``ramp_before``, 1 inside, linear fall over ``ramp_after``.

    Values are in (0, 1]; a side with a 0 ramp (the image border) stays at 1.
    """
    i = torch.arange(size, dtype=torch.float32, device=device) + 0.5
    ones = torch.ones(size, dtype=torch.float32, device=device)
    rise = (i / ramp_before).clamp(max=1) if ramp_before else ones
    fall = ((size - i) / ramp_after).clamp(max=1) if ramp_after else ones
    return torch.minimum(rise, fall)


def blend_weights(rows: slice, cols: slice, height: int, width: int, overlap: int, device=None) -> torch.Tensor:
    """``(h, w)`` float32 weights of one tile: ramps on sides shared with a neighbour, 1 at the image border."""
    wy = ramp(rows.stop - rows.start, overlap if rows.start > 0 else 0, overlap if rows.stop < height else 0, device)
    wx = ramp(cols.stop - cols.start, overlap if cols.start > 0 else 0, overlap if cols.stop < width else 0, device)
    return wy[:, None] * wx[None, :]


def tiled_apply(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    tile: int | None,
    overlap: int,
    align: int = 1,
) -> torch.Tensor:
    """``fn`` applied to overlapping tiles of ``x`` ``(B, C, H, W)``, outputs blended into ``(B, C', H, W)``.

    ``fn`` maps a ``(B, C, h, w)`` crop to a ``(B, C', h, w)`` result (the UNet's eps for one tile).
    ``tile=None`` or a tile covering ``x`` calls ``fn(x)`` once.
    """
    height, width = x.shape[-2:]
    grid = [(slice(0, height), slice(0, width))] if tile is None else tile_grid(height, width, tile, overlap, align)
    if len(grid) == 1:
        return fn(x)
    out = total = None
    for rows, cols in grid:
        y = fn(x[..., rows, cols])
        if out is None:
            out = torch.zeros((*y.shape[:-2], height, width), dtype=torch.float32, device=y.device)
            total = torch.zeros((height, width), dtype=torch.float32, device=y.device)
        w = blend_weights(rows, cols, height, width, overlap, y.device)
        out[..., rows, cols] += y.float() * w
        total[rows, cols] += w
    return (out / total).to(y.dtype)


@contextmanager
def vae_tiling(vae, output_side: int, tile: int | None = None) -> Iterator[bool]:
    """Within the block, ``vae`` codes in ``tile``-pixel tiles (default ``VAE_TILE``) if ``output_side > VAE_TILE_ABOVE``.

    Uses diffusers' own tiled encode/decode (``enable_tiling``: overlapping tiles, blended), with a
    tile size set here rather than the config's ``sample_size``; restores the VAE's state on exit.
    Yields whether tiling is on.
    """
    if not hasattr(vae, "enable_tiling"):
        # The lite PatchAutoencoder is local (a few patches of context) and its memory linear in pixels.
        yield False
        return
    tile = tile or VAE_TILE
    names = ("use_tiling", "tile_sample_min_size", "tile_latent_min_size")
    saved = {n: getattr(vae, n) for n in names}
    on = output_side > VAE_TILE_ABOVE or saved["use_tiling"]
    if on and not saved["use_tiling"]:
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        vae.enable_tiling()
        vae.tile_sample_min_size, vae.tile_latent_min_size = tile, tile // factor
    try:
        yield on
    finally:
        for n, v in saved.items():
            setattr(vae, n, v)
