"""Flat-image guard (paper supplement sec. 9): maps of featureless inputs are unreliable, use ``m_0``.

The paper replaced the maps of three flat DRealSR images by hand; here flatness is measured. The
grey image (0..255) is shrunk (INTER_AREA, never enlarged) to ``WORK_SIDE`` on its long side, so an
LR and its x4 SR result give the same verdict and sensor noise averages out, smoothed with a
Gaussian (sigma 1), and its Sobel gradient magnitude taken in grey levels per pixel (OpenCV's
kernel / 8). Two statistics: the mean magnitude and the fraction of pixels above ``EDGE_GRADIENT``.

Measured (mean magnitude, fraction > 8):
  real photos, full size: skimage astronaut 12.2, 0.47; camera 5.6, 0.19; coffee 8.1, 0.32;
      chelsea 7.1, 0.33; rocket 3.3, 0.10 (the least textured: sky); Set14 (14 images) 4.9-13.3,
      0.17-0.62 (face 4.9, 0.17; coastguard 5.3, 0.19)
  real LR, Set14 degraded x4 (blur, noise sigma 2-8, JPEG): 5.6-14.1, 0.22-0.67
  BSD68 + RealSet65 (133 images), least textured: BSD68 196073 (sand) 2.18, 0.05; 3096 (a plane
      in the sky) 3.39, 0.08 -- the mean alone would call the first flat, the fraction does not
  flat, 128 px: constant 0, 0; linear ramp 0..255 2.0, 0; Gaussian blob 0.7, 0;
      constant + noise sigma 2 0.36, 0; sigma 5 0.87, 0; sigma 8 1.45, 0; ramp + noise 5 2.1, 0
So a picture is flat when the mean is below 3 *and* under 1 % of its pixels change faster than 8
grey levels a pixel: flat images are far below both, the least textured real photo well above.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

WORK_SIDE = 128
SMOOTH_SIGMA = 1.0
EDGE_GRADIENT = 8.0  # grey levels per pixel
MAX_MEAN_GRADIENT = 3.0
MAX_EDGE_FRACTION = 0.01


def _grey(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("L"))
    arr = np.asarray(image)
    if arr.ndim == 3:
        arr = cv2.cvtColor(np.ascontiguousarray(arr[..., :3]).astype(np.uint8), cv2.COLOR_RGB2GRAY)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"expected an image, got shape {arr.shape}")
    return arr.astype(np.float32)


def flatness_stats(image: Image.Image | np.ndarray) -> dict[str, float]:
    """``mean_gradient`` (grey levels per pixel) and ``edge_fraction`` (share above ``EDGE_GRADIENT``)."""
    grey = _grey(image)
    scale = WORK_SIDE / max(grey.shape)
    if scale < 1:
        size = (
            max(1, round(grey.shape[1] * scale)),
            max(1, round(grey.shape[0] * scale)),
        )
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
    grey = cv2.GaussianBlur(grey, (0, 0), SMOOTH_SIGMA)
    magnitude = cv2.magnitude(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1)) / 8.0
    return {
        "mean_gradient": float(magnitude.mean()),
        "edge_fraction": float((magnitude > EDGE_GRADIENT).mean()),
    }


def is_flat(lr: Image.Image | np.ndarray) -> tuple[bool, dict[str, float]]:
    """Whether ``lr`` is too featureless for its spatial maps to be trusted, and the statistics."""
    stats = flatness_stats(lr)
    flat = stats["mean_gradient"] < MAX_MEAN_GRADIENT and stats["edge_fraction"] < MAX_EDGE_FRACTION
    return flat, stats
