"""Means with confidence intervals over images: percentile bootstrap, fixed seed (reproducible)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
RESAMPLES = 2000
CI_METHOD = (
    f"{LEVEL:.0%} percentile bootstrap over images ({RESAMPLES} resamples, seed 0; seeds averaged per image first)"
)


@dataclass(frozen=True)
class Estimate:
    mean: float
    low: float
    high: float
    n: int

    def text(self, digits: int = 4) -> str:  # 4 significant digits: 20.73 dB, 0.5253
        if self.n == 0:
            return "n/a"
        if self.n == 1:
            return f"{self.mean:.{digits}g} (n=1)"
        return f"{self.mean:.{digits}g} [{self.low:.{digits}g}, {self.high:.{digits}g}]"

    @property
    def excludes_zero(self) -> bool:
        return self.n >= 2 and (self.low > 0 or self.high < 0)


def bootstrap(
    values: Iterable[float],
    *,
    level: float = LEVEL,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> Estimate:
    """Mean of ``values`` with a percentile-bootstrap interval; one value gives an empty interval."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    if x.size == 1:
        return Estimate(float(x[0]), math.nan, math.nan, 1)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    tail = (1 - level) / 2
    return Estimate(
        float(x.mean()),
        float(np.quantile(means, tail)),
        float(np.quantile(means, 1 - tail)),
        int(x.size),
    )


def per_image(
    rows: list[dict],
    value: Callable[[dict], float | None],
    group: Callable[[dict], object],
) -> dict:
    """``{group: {image: mean over that image's rows (seeds)}}``, skipping missing values."""
    acc: dict = defaultdict(lambda: defaultdict(list))
    for row in rows:
        v = value(row)
        if v is not None and math.isfinite(v):
            acc[group(row)][row["image"]].append(v)
    return {g: {img: float(np.mean(vs)) for img, vs in images.items()} for g, images in acc.items()}


def paired_difference(a: dict[str, float], b: dict[str, float]) -> Estimate:
    """Bootstrap of the mean of ``a - b`` over the images both have."""
    return bootstrap(a[k] - b[k] for k in sorted(set(a) & set(b)))
