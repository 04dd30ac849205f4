"""Per-stage wall-clock timings that stay honest on GPUs (synchronise before reading the clock)."""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch


class StageTimer:
    """Accumulates seconds per stage name: ``with timer("unet"): ...``."""

    def __init__(self, device: torch.device | str | None = None):
        self.device = torch.device(device) if device is not None else None
        self.seconds: dict[str, float] = {}

    def _sync(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def __call__(self, stage: str):
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start
