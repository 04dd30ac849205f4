"""Token-wise modality encoding (paper sec. 3.1): a frozen VQ model turns each map into tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import VQModel
from einops import rearrange

MAP_SIZE = 256


class ModalityTokenizer:
    """Frozen VQ encoder + quantizer: ``(B, 3, 256, 256)`` maps in [-1, 1] -> ``(B, 256, D)`` tokens.

    Each 256x256 map becomes a 16x16 grid of **quantized** codebook vectors (f16 VQ model), flattened
    row-major to 256 tokens and zero-padded from the codebook width to the text width ``D`` so they
    can be concatenated with the text embedding.
    """

    def __init__(self, vq: VQModel, text_dim: int):
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
