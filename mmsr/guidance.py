"""Multimodal classifier-free guidance (paper eq. 3 and 4, Table 3).

The positive branch is always ``(positive text, modalities m)``. The three negative branches:

* ``m-cfg`` (default): ``(negative text, m)``: guidance sharpens the caption, the context stays.
* ``m0-cfg``: ``(negative text, m_0 for every modality)``: guidance also pushes towards the context.
* ``cfg``: ``(negative text only)``: the modality tokens are left out of the negative sequence.
"""

from __future__ import annotations

import torch

CFG_MODES = ("m-cfg", "m0-cfg", "cfg")


def combine(eps_pos: torch.Tensor, eps_neg: torch.Tensor, w: float) -> torch.Tensor:
    """Multimodal CFG, eq. (4): ``(1 + w) * eps_pos - w * eps_neg``."""
    return (1 + w) * eps_pos - w * eps_neg


def check_cfg_mode(mode: str) -> str:
    if mode not in CFG_MODES:
        raise ValueError(f"cfg mode must be one of {', '.join(CFG_MODES)}, not {mode!r}")
    return mode


def negative_branch(mode: str) -> dict:
    """How the negative sequence differs from the positive one, for :meth:`MMSRPipeline.encode_condition`.

    Returns keyword arguments: ``null_modalities`` (replace every modality by ``m_0``) and
    ``include_modalities`` (keep modality tokens in the sequence at all).
    """
    check_cfg_mode(mode)
    return {"null_modalities": mode == "m0-cfg", "include_modalities": mode != "cfg"}
