"""Token-wise modality encoding (paper sec. 3.1): a frozen VQ model turns each map into tokens.

Two tokenizers share one interface (``encode(x).latents``, ``quantize(h) -> (quantized, loss,
(_, _, indices))``, ``quantize.vq_embed_dim``, ``quantize.embedding``): diffusers' ``VQModel``
(the paper's VQGAN, ``full``), and :class:`PatchCodebook`, a closed-form k-means codebook over
patch features (``lite``): a ``VQModel`` trained for minutes on a CPU kept 37 of 256 codes and
could not reconstruct its maps, while k-means uses its whole codebook and is fitted in seconds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import VQModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vq_model import VQEncoderOutput
from diffusers.models.modeling_utils import ModelMixin
from einops import rearrange
from torch import nn

from .constants import MAP_SIZE


class NearestCodebook(nn.Module):
    """Nearest-neighbour quantizer with the call signature of diffusers' ``VectorQuantizer``."""

    def __init__(self, num_codes: int, dim: int):
        super().__init__()
        self.vq_embed_dim = dim
        self.embedding = nn.Embedding(num_codes, dim)

    def indices(self, flat: torch.Tensor) -> torch.Tensor:
        """``(N, C)`` features -> ``(N,)`` index of the nearest code (squared L2)."""
        codes = self.embedding.weight
        distance = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codes.T + codes.pow(2).sum(1)
        return distance.argmin(1)

    def forward(self, h: torch.Tensor):
        b, _, height, width = h.shape
        idx = self.indices(rearrange(h, "b c h w -> (b h w) c"))
        quantized = rearrange(self.embedding(idx), "(b h w) c -> b c h w", b=b, h=height, w=width)
        return quantized, h.new_zeros(()), (None, None, idx)


class PatchCodebook(ModelMixin, ConfigMixin):
    """k-means tokenizer: ``(B, 3, 256, 256)`` maps in [-1, 1] -> ``(B, 3 * pool**2, 16, 16)`` features.

    A token's feature is its ``patch_size`` square of the map, area-averaged to ``pool x pool``
    (16 -> 8: a 2-pixel edge line survives as a 50 % grey line); :meth:`fit` places the codes by
    k-means over features of training maps, and :meth:`decode` draws a map back from its codes.
    """

    @register_to_config
    def __init__(self, num_vq_embeddings: int = 1024, patch_size: int = 16, pool: int = 8, in_channels: int = 3):
        super().__init__()
        self.quantize = NearestCodebook(num_vq_embeddings, in_channels * pool * pool)

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        c = self.config
        h = F.pixel_unshuffle(F.avg_pool2d(x, c.patch_size // c.pool), c.pool)
        return VQEncoderOutput(latents=h) if return_dict else (h,)

    def decode(self, quantized: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` code vectors -> ``(B, 3, 16h, 16w)`` map (each pooled cell drawn as a block)."""
        c = self.config
        return F.interpolate(F.pixel_shuffle(quantized, c.pool), scale_factor=c.patch_size // c.pool, mode="nearest")

    @torch.no_grad()
    def fit(self, features: torch.Tensor, iterations: int = 25, seed: int = 0, chunk: int = 65536) -> dict:
        """Lloyd's k-means on ``(N, C)`` features; empty clusters restart on the worst-fitted points.

        Returns ``{"codes_used": ..., "mse": ...}`` of the final assignment.
        """
        codes = self.quantize.embedding.weight
        gen = torch.Generator().manual_seed(seed)
        features = features.float()
        codes.copy_(features[torch.randperm(len(features), generator=gen)[: len(codes)]])
        for _ in range(iterations):
            idx = torch.cat([self.quantize.indices(f) for f in features.split(chunk)])
            counts = torch.bincount(idx, minlength=len(codes))
            sums = torch.zeros_like(codes).index_add_(0, idx, features)
            alive = counts > 0
            codes[alive] = sums[alive] / counts[alive, None]
            dead = (~alive).nonzero().flatten()
            if len(dead):
                error = (features - codes[idx]).pow(2).sum(1)
                codes[dead] = features[error.topk(len(dead)).indices]
        idx = torch.cat([self.quantize.indices(f) for f in features.split(chunk)])
        mse = (features - codes[idx]).pow(2).mean()
        return {"codes_used": int(torch.bincount(idx, minlength=len(codes)).gt(0).sum()), "mse": float(mse)}


class ModalityTokenizer:
    """Frozen VQ encoder + quantizer: ``(B, 3, 256, 256)`` maps in [-1, 1] -> ``(B, 256, D)`` tokens.

    Each 256x256 map becomes a 16x16 grid of **quantized** codebook vectors (f16 VQ model), flattened
    row-major to 256 tokens and zero-padded from the codebook width to the text width ``D`` so they
    can be concatenated with the text embedding.
    """

    def __init__(self, vq: VQModel | PatchCodebook, text_dim: int):
        if vq.quantize.vq_embed_dim > text_dim:
            raise ValueError(f"VQ token width {vq.quantize.vq_embed_dim} exceeds the text width {text_dim}")
        self.vq = vq.requires_grad_(False).eval()
        self.text_dim = text_dim

    @property
    def token_dim(self) -> int:
        return self.vq.quantize.vq_embed_dim

    @torch.no_grad()
    def __call__(self, maps: torch.Tensor) -> torch.Tensor:
        if maps.shape[-2:] != (MAP_SIZE, MAP_SIZE):
            raise ValueError(f"modality maps must be {MAP_SIZE}x{MAP_SIZE}, got {tuple(maps.shape[-2:])}")
        h = self.vq.encode(maps.to(self.vq.dtype)).latents
        quantized, _, _ = self.vq.quantize(h)
        tokens = rearrange(quantized, "b c h w -> b (h w) c")
        return F.pad(tokens, (0, self.text_dim - tokens.shape[-1]))
