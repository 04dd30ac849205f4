"""Depth: Depth Anything V2 (transformers), or the user's own depth map.

Depth Anything predicts *relative inverse* depth (disparity): large values are near. Every map,
model or user, is normalised to [0, 1] per image and rendered as a 3-channel grey image, so
**near = bright, far = dark** throughout; a user map must follow the same convention.
``render_depth`` is what training uses too.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from .base import MAP_SIZE, ModalityResult
from .hub import HubExtractor

DEFAULT_DEPTH_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"


def normalise_depth(depth: np.ndarray) -> np.ndarray:
    """Min-max normalise to ``float32`` [0, 1]; a constant (or all-NaN) map becomes zeros."""
    d = np.nan_to_num(np.asarray(depth, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if d.ndim == 3:
        d = d[..., :3].mean(axis=2)
    if d.ndim != 2 or d.size == 0:
        raise ValueError(f"expected an HxW depth map, got shape {d.shape}")
    lo, hi = float(d.min()), float(d.max())
    return (d - lo) / (hi - lo) if hi > lo else np.zeros_like(d)


def render_depth(depth: np.ndarray, size: tuple[int, int] | None = None) -> Image.Image:
    """Depth (any range, near = large) as a grey RGB image of ``size`` ``(width, height)`` (default
    ``MAP_SIZE`` square), near = bright."""
    d = normalise_depth(depth)
    width, height = size or (MAP_SIZE, MAP_SIZE)
    shrink = d.shape[0] > height or d.shape[1] > width
    d = cv2.resize(
        d.astype(np.float32),
        (width, height),
        interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR,
    )
    grey = np.round(np.clip(d, 0.0, 1.0) * 255).astype(np.uint8)
    return Image.fromarray(np.repeat(grey[..., None], 3, axis=2))


def user_depth(user_map: Image.Image | np.ndarray) -> np.ndarray:
    """A user's depth map (any image or array, near = bright) as normalised ``float32``."""
    if isinstance(user_map, Image.Image):
        user_map = np.asarray(user_map if user_map.mode in ("I", "I;16", "F") else user_map.convert("L"))
    return normalise_depth(user_map)


class DepthExtractor(HubExtractor):
    """Depth Anything V2 relative depth; the user's map first when given.

    Args:
        model_id: hub id or local folder of a ``DepthAnythingForDepthEstimation`` checkpoint
            (default ``DEFAULT_DEPTH_MODEL``).
        model, processor: an already built model and image processor (tests, custom weights).
    """

    name = "depth"
    source = "depth-anything-v2"
    model_class = "DepthAnythingForDepthEstimation"
    default_model_id = DEFAULT_DEPTH_MODEL
    what = "Depth Anything V2"

    def from_user(self, user_map: Image.Image | np.ndarray) -> ModalityResult:
        return self._result(user_depth(user_map))

    def from_image(self, image: Image.Image, upscaled: bool) -> ModalityResult:
        return self._result(self.predict(image))

    def _result(self, depth: np.ndarray) -> ModalityResult:
        depth = normalise_depth(depth)
        return ModalityResult(name=self.name, map=render_depth(depth), raw=depth)

    def predict(self, image: Image.Image) -> np.ndarray:
        """Relative inverse depth of ``image``, ``(H, W)`` float32 at the image size."""
        import torch

        model, processor = self.model.get()
        inputs = processor(images=image, return_tensors="pt").to(device=self.device, dtype=model.dtype)
        with torch.inference_mode():
            outputs = model(**inputs)
        depth = processor.post_process_depth_estimation(outputs, target_sizes=[(image.height, image.width)])
        return depth[0]["predicted_depth"].float().cpu().numpy()
