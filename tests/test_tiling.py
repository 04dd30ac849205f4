"""Latent and VAE tiling: grids, blending weights, seam-free blending, and the pipeline paths (tiny-random, CPU)."""

import pytest
import torch

from mmsr import tiling
from mmsr.tiling import blend_weights, resolve_tile, tile_grid, tile_starts, tiled_apply, vae_tiling


@pytest.mark.parametrize(
    "length,tile,overlap,align", [(32, 8, 2, 2), (37, 8, 2, 1), (256, 128, 32, 8), (100, 24, 8, 4)]
)
def test_tile_starts_cover_with_overlap(length, tile, overlap, align):
    starts = tile_starts(length, tile, overlap, align)
    assert starts[0] == 0 and starts[-1] == length - tile
    assert all(s % align == 0 for s in starts[:-1])
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))  # neighbours share >= overlap
    covered = torch.zeros(length, dtype=torch.bool)
    for s in starts:
        covered[s : s + tile] = True
    assert covered.all()


def test_default_overlap_is_aligned_and_smaller_than_the_tile():
    assert tiling.default_overlap(128, 8) == 32 and tiling.default_overlap(8, 2) == 2
    assert all(0 < tiling.default_overlap(t, a) < t for t, a in [(2, 2), (4, 4), (8, 8), (16, 8)])


def test_one_tile_when_the_tile_covers_everything():
    assert tile_starts(16, 16, 4) == [0] and tile_starts(10, 16, 4) == [0]
    assert tile_grid(10, 12, 16, 4) == [(slice(0, 10), slice(0, 12))]


def test_blend_weights_ramp_only_towards_neighbours():
    w = blend_weights(slice(0, 8), slice(4, 12), 8, 12, overlap=4)
    assert w.shape == (8, 8) and (w > 0).all() and w.max() == 1
    assert torch.all(w[:, -1] == 1)  # right side is the image border
    assert torch.all(w[:, 0] < w[:, 1]) and torch.all(w[:, 1] < w[:, 2])  # ramp from the left neighbour


def test_resolve_tile_auto_forced_never_and_invalid():
    big, small = tiling.AUTO_TILE_ABOVE + 8, tiling.AUTO_TILE_ABOVE
    assert resolve_tile(small, small, None, 8) is None
    assert resolve_tile(big, 16, None, 8) == tiling.AUTO_TILE
    assert resolve_tile(big, big, 0, 8) is None
    assert resolve_tile(32, 32, 16, 8) == 16
    assert resolve_tile(32, 32, 64, 8) is None  # covers everything: one untiled call
    for bad in (12, -8, True, 8.0):
        with pytest.raises(ValueError, match="latent_tile"):
            resolve_tile(32, 32, bad, 8)


@pytest.mark.parametrize("height,width,tile", [(20, 28, 8), (17, 9, 4), (16, 16, 16)])
def test_tiled_apply_of_a_pointwise_function_equals_the_untiled_result(height, width, tile):
    x = torch.randn(2, 3, height, width)

    def fn(crop):
        return torch.tanh(2 * crop[:, :2]) + 1

    out = tiled_apply(fn, x, tile, overlap=tile // 4 or 1)
    assert out.shape == (2, 2, height, width)
    torch.testing.assert_close(out, fn(x), rtol=0, atol=1e-6)


def border_step_ratio(out, borders):
    """Largest column step at tile borders over the largest step elsewhere (1 = no seam)."""
    step = out.diff(dim=-1).abs().amax(dim=(0, 1, 2))  # step[c] is between columns c and c + 1
    at = torch.tensor([b - 1 for b in borders])
    elsewhere = torch.ones_like(step, dtype=torch.bool)
    elsewhere[at] = False
    return (step[at].max() / step[elsewhere].max()).item()


def test_blending_removes_the_seams_that_hard_tiles_make():
    # A context-dependent "model" (its output shifts with the tile mean, as a UNet's does) on a gradient.
    x = torch.linspace(0, 1, 64).expand(1, 1, 16, 64).contiguous()

    def fn(crop):
        return crop + 0.2 * crop.mean()

    starts = tile_starts(64, 16, 4)
    borders = sorted({s for s in starts if s} | {s + 16 for s in starts if s + 16 < 64})
    blended = border_step_ratio(tiled_apply(fn, x, 16, overlap=4), borders)
    hard_starts = tile_starts(64, 16, 0)
    hard = border_step_ratio(tiled_apply(fn, x, 16, overlap=0), [s for s in hard_starts if s])
    assert hard > 2.5  # the measurement sees seams ...
    assert blended < 1.5  # ... and blending removes them
    assert blended < hard / 2


def pipeline_border_ratio(images, borders, factor=8):
    """Column/row step at tile borders over the step at other latent-cell boundaries (same VAE phase)."""
    ratios = []
    for dim in (-1, -2):
        step = images.diff(dim=dim).abs().mean(dim=(0, 1, -1 if dim == -2 else -2))
        phase = list(range(factor - 1, step.numel(), factor))
        at = [b * factor - 1 for b in borders]
        other = [c for c in phase if c not in at]
        ratios.append((step[at].max() / step[other].max()).item())
    return max(ratios)


@pytest.mark.parametrize("kind", ["constant", "gradient"])
def test_tiled_pipeline_output_has_no_seams(tiny_pipe, kind):
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    lr = torch.full((1, 3, 64, 64), 0.4) if kind == "constant" else torch.stack([xx, yy, (xx + yy) / 2])[None]
    tile, factor = 8, tiny_pipe.unet_factor
    out = tiny_pipe(lr, "a photo", num_inference_steps=2, generator=torch.Generator().manual_seed(0), latent_tile=tile)
    images = out.images
    side = images.shape[-1] // tiny_pipe.vae_scale_factor
    starts = tile_starts(side, tile, tiling.default_overlap(tile, factor), factor)
    borders = sorted({s for s in starts if s} | {s + tile for s in starts if s + tile < side})
    assert torch.isfinite(images).all()
    assert pipeline_border_ratio(images, borders) < 1.25


def test_tile_covering_the_latent_gives_the_untiled_output(tiny_pipe):
    lr = torch.rand(1, 3, 16, 24, generator=torch.Generator().manual_seed(1))

    def run(tile):
        gen = torch.Generator().manual_seed(0)
        return tiny_pipe(lr, "a cat", num_inference_steps=2, generator=gen, latent_tile=tile).images

    assert torch.equal(run(0), run(12))  # latent is 8x12: one tile covers it


@pytest.mark.parametrize("h,w,tile", [(13, 21, 4), (18, 10, 2)])
def test_tiled_output_shape_for_sizes_that_are_not_tile_multiples(tiny_pipe, h, w, tile):
    lr = torch.rand(1, 3, h, w)
    out = tiny_pipe(lr, "x", num_inference_steps=1, generator=torch.Generator().manual_seed(0), latent_tile=tile)
    assert out.images.shape == (1, 3, 4 * h, 4 * w)
    assert torch.isfinite(out.images).all()


def test_auto_tiling_and_vae_tiling_engage_for_large_outputs(tiny_pipe, monkeypatch):
    monkeypatch.setattr(tiling, "AUTO_TILE_ABOVE", 4)
    monkeypatch.setattr(tiling, "AUTO_TILE", 4)
    monkeypatch.setattr(tiling, "VAE_TILE_ABOVE", 32)
    monkeypatch.setattr(tiling, "VAE_TILE", 32)
    calls = {"unet": 0, "decoder": 0}
    hooks = [
        tiny_pipe.unet.register_forward_hook(lambda *a: calls.__setitem__("unet", calls["unet"] + 1)),
        tiny_pipe.vae.decoder.register_forward_hook(lambda *a: calls.__setitem__("decoder", calls["decoder"] + 1)),
    ]
    try:
        out = tiny_pipe(torch.rand(1, 3, 16, 16), "x", num_inference_steps=1, latent_tile=None)
    finally:
        for h in hooks:
            h.remove()
    assert out.images.shape == (1, 3, 64, 64)
    assert calls["unet"] > 1 and calls["decoder"] > 1
    assert not tiny_pipe.vae.use_tiling  # restored


def test_vae_tiling_context_restores_state(tiny_pipe):
    vae = tiny_pipe.vae
    with vae_tiling(vae, tiling.VAE_TILE_ABOVE) as on:
        assert not on and not vae.use_tiling
    before = vae.tile_sample_min_size
    with vae_tiling(vae, tiling.VAE_TILE_ABOVE + 4) as on:
        assert on and vae.use_tiling and vae.tile_sample_min_size == tiling.VAE_TILE
    assert not vae.use_tiling and vae.tile_sample_min_size == before
