"""The condition sequence ``[depth 256 | seg 256 | edges 256 | text L]`` and the null token ``m_0``.

Two choices the paper leaves open, made here:

* **Modality-type embedding**: one learned D-vector per segment (depth, seg, edges, text), added to
  every token of that segment, so the connector can tell the three token grids apart even when two
  maps quantize to the same codes.
* **Positional embedding**: one learned ``(256, D)`` table shared by the three spatial segments, added
  to the 16x16 token grid in row-major order; text keeps its encoder's own positions.

Both are added after ``m_0`` substitution, so a switched-off modality is 256 copies of ``m_0`` that
still carry their segment's type and position (the connector learns to ignore them).
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .constants import MODALITIES

TEXT_GROUP = len(MODALITIES)


class ConditionEmbedding(ModelMixin, ConfigMixin):
    """Learned ``m_0``, modality-type and positional embeddings; assembles the condition sequence."""

    @register_to_config
    def __init__(self, dim: int, tokens_per_modality: int = 256, num_modalities: int = len(MODALITIES)):
        super().__init__()
        self.null_token = nn.Parameter(torch.randn(dim) * 0.02)
        self.type_embedding = nn.Parameter(torch.zeros(num_modalities + 1, dim))
        self.pos_embedding = nn.Parameter(torch.randn(tokens_per_modality, dim) * 0.02)

    def null_tokens(self, batch_size: int) -> torch.Tensor:
        """256 copies of ``m_0``: ``(B, 256, D)``."""
        n, d = self.config.tokens_per_modality, self.config.dim
        return self.null_token.expand(batch_size, n, d)

    def forward(
        self,
        modality_tokens: list[torch.Tensor | None],
        text: torch.Tensor,
        include_modalities: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Build the sequence fed to the connector.

        Args:
            modality_tokens: one entry per modality in ``MODALITIES`` order, ``(B, 256, D)`` or
                ``None`` for a missing/disabled modality (then ``m_0``).
            text: ``(B, L, D)`` text-encoder hidden states.
            include_modalities: ``False`` leaves the spatial tokens out (the ``cfg`` negative branch).

        Returns:
            ``(B, M, D)`` sequence and ``(M,)`` long tensor with each key's group (0..2 modality, 3 text),
            which the connector uses for the per-modality temperature.
        """
        b = text.shape[0]
        segments, groups = [], []
        if include_modalities:
            for k, tokens in enumerate(modality_tokens):
                tokens = self.null_tokens(b) if tokens is None else tokens.to(text.dtype)
                segments.append(tokens + self.pos_embedding + self.type_embedding[k])
                groups.append(torch.full((tokens.shape[1],), k, dtype=torch.long))
        segments.append(text + self.type_embedding[TEXT_GROUP])
        groups.append(torch.full((text.shape[1],), TEXT_GROUP, dtype=torch.long))
        return torch.cat(segments, dim=1), torch.cat(groups).to(text.device)
