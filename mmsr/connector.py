"""Multimodal latent connector (MMLC, paper sec. 3.2): a Perceiver resampler with per-modality temperature.

N learned latents cross-attend to the ``(M, D)`` condition sequence, then pass through self-attention
blocks; the ``(N, D)`` output is the UNet's ``encoder_hidden_states``. Cost is O(M * N), so the UNet's
cross-attention cost no longer depends on how many modality tokens there are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from einops import rearrange
from torch import nn

from .constants import TAU_RANGE


def check_temperatures(temperatures: torch.Tensor) -> torch.Tensor:
    lo, hi = TAU_RANGE
    if not torch.all((temperatures >= lo) & (temperatures <= hi)):
        raise ValueError(f"modality temperatures must lie in [{lo}, {hi}], got {temperatures.tolist()}")
    return temperatures


def feed_forward(dim: int, mult: int) -> nn.Sequential:
    return nn.Sequential(
        nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(), nn.Linear(dim * mult, dim, bias=False)
    )


class Attention(nn.Module):
    """Multi-head attention whose keys can be scaled one by one (eq. 5)."""

    def __init__(self, *, dim: int, heads: int, dim_head: int, norm_context: bool):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim) if norm_context else None
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, key_scale: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x``: ``(B, N, D)``; ``context``: ``(B, M, D)`` (self-attention when ``None``); ``key_scale``: ``(B, M)``.

        Scaling key ``j`` by ``1 / tau_j`` turns its logit into ``q k_j^T / (tau_j sqrt(d_k))``, exactly
        eq. (5), and lets the fused SDPA kernel do the rest.
        """
        x = self.norm(x)
        context = x if context is None else (self.norm_context(context) if self.norm_context else context)
        q = self.to_q(x)
        k, v = self.to_kv(context).chunk(2, dim=-1)
        if key_scale is not None:
            k = k * key_scale.unsqueeze(-1).to(k.dtype)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class MMLConnector(ModelMixin, ConfigMixin):
    """Perceiver resampler: ``(B, M, D)`` sequence -> ``(B, N, D)`` latents.

    One cross-attention block (latents attend to the sequence, with per-group temperature), then
    ``depth`` self-attention blocks, then a final ``LayerNorm``.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        dim: int,
        num_latents: int = 128,
        depth: int = 4,
        heads: int = 16,
        dim_head: int = 64,
        ff_mult: int = 4,
        num_groups: int = 4,
    ):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, dim) * 0.02)
        self.cross_attn = Attention(dim=dim, heads=heads, dim_head=dim_head, norm_context=True)
        self.cross_ff = feed_forward(dim, ff_mult)
        self.blocks = nn.ModuleList(
            nn.ModuleList(
                [Attention(dim=dim, heads=heads, dim_head=dim_head, norm_context=False), feed_forward(dim, ff_mult)]
            )
            for _ in range(depth)
        )
        self.norm_out = nn.LayerNorm(dim)
        self.gradient_checkpointing = False

    def forward(
        self, sequence: torch.Tensor, key_groups: torch.Tensor, temperatures: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Args:
        sequence: ``(B, M, D)`` condition sequence.
        key_groups: ``(M,)`` group id of each key (0..num_groups-1).
        temperatures: ``(B, num_groups)`` or ``(num_groups,)`` tau per group, each in [0.4, 10]
            (checked once, by the pipeline's inputs check; :func:`check_temperatures` for direct
            callers); ``None`` means 1 everywhere (standard attention).
        """
        b = sequence.shape[0]
        key_scale = None
        if temperatures is not None:
            temperatures = temperatures.to(sequence.device, torch.float32).expand(b, self.config.num_groups)
            key_scale = (1.0 / temperatures)[:, key_groups]
        x = self.latents.unsqueeze(0).expand(b, -1, -1).to(sequence.dtype)
        x = self.cross_attn(x, sequence, key_scale) + x
        x = self.cross_ff(x) + x
        for attn, ff in self.blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = self._gradient_checkpointing_func(lambda h, a=attn: a(h) + h, x)
            else:
                x = attn(x) + x
            x = ff(x) + x
        return self.norm_out(x)
