"""Running out of memory is a user-facing condition: say what to change, keep serving."""

from __future__ import annotations

import gc

import torch


class ResourceError(RuntimeError):
    """The run needs more (GPU) memory than is free; the message suggests what to change."""


def is_out_of_memory(error: BaseException) -> bool:
    """``torch.OutOfMemoryError`` or a backend ``RuntimeError`` that reports running out of memory."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(
        phrase in text for phrase in ("out of memory", "failed to allocate", "can't allocate memory")
    )


def release_memory() -> None:
    """Give cached blocks back after a failed run, so the next (smaller) run can succeed."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def resource_error(error: BaseException, width: int, height: int, steps: int) -> ResourceError:
    """A :class:`ResourceError` for an out-of-memory ``error`` during a ``width`` x ``height`` x4 run."""
    return ResourceError(
        f"{type(error).__name__}: out of memory super-resolving a {width}x{height} input ({4 * width}x{4 * height} output, "
        f"{steps} steps): try a smaller input, fewer steps, or denoising in smaller latent tiles (latent_tile)"
    )
