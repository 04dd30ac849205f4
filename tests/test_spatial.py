"""Spatial modality codes (``mmsr.spatial``): the maps laid on the latent grid next to the LR latent.

What matters most is that training and inference agree: the codes the training cache stores for a
crop are exactly the codes the pipeline computes from the same map at inference.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, UNet2DConditionModel
from PIL import Image

from mmsr import MMSRPipeline
from mmsr.autoencoder import PixelShuffleAutoencoder
from mmsr.presets import FEW_STEP_SCHEDULER_CONFIG, _unet_config, build_components
from mmsr.spatial import add_spatial_inputs, code_channels, lookup_codes, spatial_codes, widen_conv_in
from mmsr.tokenizer import PatchCodebook
from mmsr.training.diffusion import code_indices, map_features


def fitted_codebook(pool: int = 4, codes: int = 16) -> PatchCodebook:
    """A k-means codebook fitted on the patches of random binary (edge-like) maps."""
    gen = torch.Generator().manual_seed(0)
    vq = PatchCodebook(num_vq_embeddings=codes, patch_size=16, pool=pool)
    maps = (torch.rand(4, 3, 128, 128, generator=gen) > 0.8).float() * 2 - 1
    features = vq.encode(maps).latents
    vq.fit(features.flatten(2).transpose(1, 2).reshape(-1, features.shape[1]), seed=0)
    return vq


def edge_map(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    binary = np.where(rng.random((h, w)) > 0.85, 255, 0).astype(np.uint8)
    return np.repeat(binary[..., None], 3, axis=2)


def test_training_codes_are_the_codes_inference_computes():
    vq = fitted_codebook()
    hr_h, hr_w, factor = 48, 64, 8  # an HR crop and the f8 latent it covers (6 x 8)
    rgb = edge_map(hr_h, hr_w)
    # training: the cache's code indices of the map drawn at 2 map pixels per HR pixel, then a lookup
    pipe = SimpleNamespace(vqmodel=vq)
    idx = code_indices(pipe, map_features(pipe, rgb, map_scale=2))
    assert idx.shape == (hr_h // factor, hr_w // factor)
    trained = lookup_codes(vq.quantize.embedding.weight, idx[None], torch.tensor([True]))
    # inference: the pipeline's codes of the same map, handed over at the output size
    as_tensor = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    inferred = spatial_codes(
        vq, {"edges": as_tensor}, ["edges"], (hr_h // factor, hr_w // factor), (hr_h, hr_w), factor
    )
    assert inferred.shape == trained.shape == (1, code_channels(vq), hr_h // factor, hr_w // factor)
    assert torch.equal(inferred, trained)


def test_absent_maps_are_zero_and_temperature_scales_the_codes_not_the_flag():
    vq = fitted_codebook()
    m = torch.from_numpy(edge_map(32, 32)).permute(2, 0, 1)[None].float() / 255
    names = ["seg", "edges"]
    plain = spatial_codes(vq, {"edges": m}, names, (4, 4), (32, 32), 8, batch_size=1)
    c = code_channels(vq)
    assert plain.shape == (1, 2 * c, 4, 4)
    assert torch.count_nonzero(plain[:, :c]) == 0  # seg absent: m_0 is all zeros, flag included
    assert torch.all(plain[:, 2 * c - 1] == 1)  # edges present
    strong = spatial_codes(vq, {"edges": m}, names, (4, 4), (32, 32), 8, temperatures={"edges": 0.5})
    assert torch.allclose(strong[:, c : 2 * c - 1], 2 * plain[:, c : 2 * c - 1])
    assert torch.equal(strong[:, 2 * c - 1], plain[:, 2 * c - 1])
    dropped = lookup_codes(vq.quantize.embedding.weight, torch.zeros(2, 4, 4, dtype=torch.long), torch.tensor([1, 0]))
    assert torch.count_nonzero(dropped[1]) == 0 and torch.all(dropped[0, -1] == 1)


def test_a_widened_conv_in_computes_what_it_did_with_zero_codes():
    conv = torch.nn.Conv2d(6, 5, 3, padding=1)
    wide = torch.nn.Conv2d(10, 5, 3, padding=1)
    wide.weight.data = widen_conv_in(conv.weight.data, 10)
    wide.bias.data = conv.bias.data
    x = torch.randn(2, 6, 8, 8)
    assert torch.allclose(wide(torch.cat([x, torch.randn(2, 4, 8, 8) * 0], 1)), conv(x))
    with pytest.raises(ValueError, match="narrow"):
        widen_conv_in(conv.weight.data, 4)


def spatial_pipe(names=("seg", "edges"), trained=("seg", "edges")):
    """tiny-random with lite's parts (f4 pixel-unshuffle, 48 channels) and spatial codes of ``names``."""
    parts = build_components("tiny-random")
    parts["vae"] = PixelShuffleAutoencoder(patch_size=4)
    parts["vqmodel"] = fitted_codebook(pool=2)  # 12-wide codes: tokens must fit the 32-wide text
    parts["unet"] = UNet2DConditionModel(
        **_unet_config((16, 32), cross_dim=32, head_dim=4, groups=8, layers=1, latent=48)
    )
    parts["scheduler"] = DDIMScheduler(**FEW_STEP_SCHEDULER_CONFIG)
    parts = add_spatial_inputs(parts, names)
    torch.nn.init.normal_(parts["unet"].conv_in.weight, std=0.05)  # as if trained: the codes count
    pipe = MMSRPipeline(**parts, trained_modalities=list(trained))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_pipeline_reads_spatial_maps_and_keeps_untrained_ones_m0():
    with pytest.raises(ValueError, match="input channels"):
        MMSRPipeline(
            **{**build_components("tiny-random"), "vqmodel": fitted_codebook(pool=2)}, spatial_modalities=["edges"]
        )
    with pytest.raises(ValueError, match="unknown spatial"):
        MMSRPipeline(**build_components("tiny-random"), spatial_modalities=["sketch"])
    pipe = spatial_pipe(names=("depth", "edges"), trained=("edges",))
    lr = torch.rand(1, 3, 8, 12)
    edges = torch.from_numpy(edge_map(32, 48)).permute(2, 0, 1)[None].float() / 255
    other = torch.from_numpy(edge_map(32, 48, seed=1)).permute(2, 0, 1)[None].float() / 255

    def run(spatial, mode="m-cfg"):
        gen = torch.Generator().manual_seed(0)
        return pipe(lr, "x", num_inference_steps=1, generator=gen, spatial_maps=spatial, cfg_mode=mode).images

    base = run({"edges": edges})
    assert base.shape == (1, 3, 32, 48)
    assert torch.equal(base, run({"edges": edges, "depth": edges}))  # depth untrained: m_0
    assert not torch.allclose(base, run({"edges": other}))  # the edge codes reach the UNet
    assert not torch.allclose(base, run({}))
    assert torch.isfinite(run({"edges": edges}, mode="cfg")).all()


def test_engine_hands_output_size_maps_to_a_spatial_pipeline():
    from mmsr.engine import Engine
    from mmsr.settings import UpscaleSettings

    engine = Engine(spatial_pipe(), "tiny-random")
    lr = Image.fromarray((np.random.default_rng(0).random((10, 14, 3)) * 255).astype(np.uint8))
    result = engine.upscale(lr, UpscaleSettings(steps=1, auto_caption=False))
    maps = engine.spatial_maps(result.modalities, lr.size)
    assert maps["edges"].shape == (1, 3, 40, 56)  # the Canny map of the bicubic upsample, at output size
    assert maps["seg"] is None or maps["seg"].shape == (1, 3, 40, 56)
    assert result.image.size == (56, 40)
