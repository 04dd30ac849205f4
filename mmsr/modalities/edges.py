"""Edges: Canny on the bicubic-upsampled LR (OpenCV), always available.

Thresholds come from the image, not from constants: as in MATLAB's ``edge(I, "canny")``, the high
threshold is a percentile of the image's own gradient magnitude (``HIGH_PERCENTILE``) and the low one
a fixed ratio of it, after a light Gaussian smoothing (OpenCV's ``Canny`` has none). A floor keeps
the smooth gradients of a near-flat image from turning into edges. Measured on Set14, the 80th
percentile marks 7-20 % of the HR pixels and 5-11 % of the bicubic x4 of the degraded LR as edges.

``canny_edges`` and ``render_edges`` are what the training dataset uses too, so training and
inference maps are made the same way.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from PIL import Image

from .base import MAP_SIZE, ModalityExtractor, ModalityResult

SMOOTH_SIGMA = 1.0
HIGH_PERCENTILE = 80.0
LOW_RATIO = 0.4
# OpenCV's Sobel gradient is 8x the per-pixel slope: 16 = a slope of 2 grey levels a pixel.
MIN_HIGH_THRESHOLD = 16.0


def canny_thresholds(grey: np.ndarray) -> tuple[float, float]:
    """``(low, high)`` Canny thresholds from the gradient statistics of a smoothed grey image."""
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1)
    high = max(float(np.percentile(cv2.magnitude(gx, gy), HIGH_PERCENTILE)), MIN_HIGH_THRESHOLD)
    return LOW_RATIO * high, high


def canny_edges(image_rgb_uint8: np.ndarray) -> np.ndarray:
    """Binary edge map (``uint8`` 0/255, same ``H x W``) of an RGB (or grey) ``uint8`` image."""
    image = np.asarray(image_rgb_uint8)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"expected an HxW or HxWx3 uint8 image, got {image.dtype} {image.shape}")
    grey = image if image.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2GRAY)
    grey = cv2.GaussianBlur(grey, (0, 0), SMOOTH_SIGMA)
    low, high = canny_thresholds(grey)
    return cv2.Canny(grey, low, high, L2gradient=True)


def render_edges(edges: np.ndarray, size: tuple[int, int] | None = None) -> Image.Image:
    """White edges on black, RGB, ``size`` ``(width, height)`` (default ``MAP_SIZE`` square).

    ``INTER_AREA`` turns each output pixel into the edge *coverage* of its input cell; a one-pixel
    line crossing a cell of ``s x s`` input pixels covers ``1/s`` of it. Re-binarising at half that
    (``0.5/s``) keeps every thin line that crosses a cell, where a plain 0.5 threshold would erase
    most edges of a large image; when upsampling (``s <= 1``) it is an ordinary 0.5 threshold.
    """
    edges = np.asarray(edges)
    if edges.ndim != 2:
        raise ValueError(f"expected an HxW edge map, got shape {edges.shape}")
    width, height = size or (MAP_SIZE, MAP_SIZE)
    if (height, width) == edges.shape:
        binary = np.where(edges > 0, 255, 0).astype(np.uint8)
        return Image.fromarray(np.repeat(binary[..., None], 3, axis=2))
    coverage = cv2.resize((edges > 0).astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
    scale = max(edges.shape[0] / height, edges.shape[1] / width, 1.0)
    binary = np.where(coverage >= 0.5 / scale - 1e-6, 255, 0).astype(np.uint8)
    return Image.fromarray(np.repeat(binary[..., None], 3, axis=2))


def user_edges(user_map: Image.Image | np.ndarray) -> np.ndarray:
    """A user's edge map (any image, light edges on dark) as ``uint8`` 0/255."""
    grey = np.asarray(user_map.convert("L") if isinstance(user_map, Image.Image) else user_map)
    if grey.ndim == 3:
        grey = grey[..., :3].mean(axis=2)
    if grey.ndim != 2 or grey.size == 0:
        raise ValueError(f"expected an edge image, got shape {grey.shape}")
    return np.where(grey >= 128, 255, 0).astype(np.uint8)


class EdgeExtractor(ModalityExtractor):
    """Canny edges of the bicubic x``scale`` upsampled input (no upsampling when ``upscaled``).

    A user edge map (light edges on dark, any size) comes first when given.

    Args:
        scale: the super-resolution factor the LR is upsampled by before Canny.
    """

    name = "edges"
    source = "canny"

    def __init__(self, device: Any = "cpu", dtype: Any = None, scale: int = 4):
        super().__init__(device, dtype)
        if scale < 1:
            raise ValueError(f"scale must be >= 1, got {scale}")
        self.scale = scale

    def settings(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "percentile": HIGH_PERCENTILE,
            "sigma": SMOOTH_SIGMA,
        }

    def from_user(self, user_map: Image.Image | np.ndarray) -> ModalityResult:
        return self._result(user_edges(user_map))

    def _result(self, edges: np.ndarray) -> ModalityResult:
        extras = {"edge_fraction": float((edges > 0).mean())}
        return ModalityResult(name=self.name, map=render_edges(edges), raw=edges, extras=extras)

    def from_image(self, image: Image.Image, upscaled: bool) -> ModalityResult:
        if not upscaled and self.scale != 1:
            image = image.resize((image.width * self.scale, image.height * self.scale), Image.BICUBIC)
        return self._result(canny_edges(np.asarray(image)))
