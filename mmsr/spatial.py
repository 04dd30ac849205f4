"""Spatial modality codes: each map's VQ tokens laid on the latent grid (``lite``).

The paper's route from a map to the UNet is 16x16 tokens per map, squeezed with the caption
through the connector's ``N`` latents and read by cross-attention. ``lite`` cross-attends only at
its two coarsest levels, to 32 latents, and that route alone left the map's *content* unused:
another image's maps cost it nothing (``checkpoints/README.md``, "Context"). So a pipeline with
``spatial_modalities`` (opt-in: ``python -m mmsr train --spatial-modalities seg,edges``; the shipped
``lite`` does not use it) also lays the same codebook's codes on the latent grid and concatenates
them with the UNet input, next to the stage-1 latent, as the LR condition already is:

* the map is drawn at ``patch_size`` map pixels per latent pixel (``PatchCodebook``: 16 map
  pixels, 2 per output pixel: training draws its 128 px crops' maps exactly so), so code
  ``(i, j)`` describes the 8x8 output pixels under latent ``(i, j)``;
* each code is quantized by the tokenizer the connector's tokens come from, and scaled by
  ``1 / tau`` of its modality (eq. 5's temperature: a small tau strengthens the modality);
* one more channel per modality says whether the map is there: an absent, switched-off or
  untrained modality (``m_0``) is all zeros.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def code_channels(vq) -> int:
    """UNet input channels one spatial modality takes: its code vector and the presence flag."""
    return vq.quantize.vq_embed_dim + 1


@torch.no_grad()
def spatial_codes(
    vq,
    maps: dict[str, torch.Tensor | None],
    names: Sequence[str],
    latent_hw: Sequence[int],
    out_hw: Sequence[int],
    vae_factor: int,
    temperatures: dict[str, float] | None = None,
    batch_size: int = 1,
) -> torch.Tensor:
    """``(B, len(names) * code_channels, h, w)``: the codes of ``maps`` on a ``latent_hw`` grid.

    Args:
        maps: name -> ``(B, 3, H, W)`` in [0, 1], any size of the output's aspect (drawn at
            ``out_hw`` with nearest), or ``None`` (``m_0``).
        latent_hw: the (padded) latent the UNet denoises; ``out_hw`` the unpadded output it covers.
        vae_factor: output pixels per latent pixel.
    """
    h, w = latent_hw
    width = code_channels(vq)
    patch = vq.config.patch_size
    planes = []
    for name in names:
        m = maps.get(name)
        if m is None:
            planes.append(torch.zeros(batch_size, width, h, w, device=vq.device, dtype=vq.dtype))
            continue
        m = F.interpolate(m.to(vq.device, vq.dtype), size=tuple(out_hw), mode="nearest")
        ph, pw = h * vae_factor - m.shape[-2], w * vae_factor - m.shape[-1]
        if ph or pw:  # the LR was padded (pipeline.pad_lr): pad the map the same way
            m = F.pad(m, (0, pw, 0, ph), mode="replicate")
        m = F.interpolate(m, scale_factor=patch // vae_factor, mode="nearest")
        codes, _, _ = vq.quantize(vq.encode(m * 2 - 1).latents)
        tau = float((temperatures or {}).get(name, 1.0))
        planes.append(torch.cat([codes / tau, torch.ones_like(codes[:, :1])], dim=1))
    return torch.cat(planes, dim=1)


def lookup_codes(codebook: torch.Tensor, indices: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Training's :func:`spatial_codes`: ``(B, h, w)`` cached code indices -> ``(B, C + 1, h, w)``;
    a sample whose ``present`` is False (modality dropout, no map) is ``m_0`` (zeros)."""
    codes = codebook[indices.long()].permute(0, 3, 1, 2)
    plane = torch.cat([codes, torch.ones_like(codes[:, :1])], dim=1)
    return plane * present.to(plane.dtype).reshape(-1, 1, 1, 1)


def add_spatial_inputs(components: dict, names: Sequence[str]) -> dict:
    """``components`` (of :func:`mmsr.presets.build_components`) whose UNet also reads the codes of
    ``names`` on its latent grid: ``conv_in`` gets :func:`code_channels` more inputs per modality, with
    zero weights, so the UNet computes exactly what it did until training moves them
    (``python -m mmsr train --spatial-modalities seg,edges``)."""
    unet = components["unet"]
    old = unet.conv_in
    wide = torch.nn.Conv2d(
        old.in_channels + len(names) * code_channels(components["vqmodel"]),
        old.out_channels,
        old.kernel_size,
        padding=old.padding,
    )
    with torch.no_grad():
        wide.weight.copy_(widen_conv_in(old.weight, wide.in_channels))
        wide.bias.copy_(old.bias)
    unet.conv_in = wide
    unet.register_to_config(in_channels=wide.in_channels)
    return {**components, "spatial_modalities": tuple(names)}


def widen_conv_in(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """A ``conv_in`` weight ``(out, in, k, k)`` with ``in_channels`` inputs, the new ones zero: a warm
    start from a UNet without spatial codes computes exactly what it did (ControlNet's zero convolution)."""
    extra = in_channels - weight.shape[1]
    if extra < 0:
        raise ValueError(f"cannot narrow conv_in from {weight.shape[1]} to {in_channels} inputs")
    return torch.cat([weight, weight.new_zeros(weight.shape[0], extra, *weight.shape[2:])], dim=1)
