"""Semantic segmentation: Mask2Former (transformers), or the user's own label map.

The model's classes are mapped by name into the active preset's label space (``label_space``,
PASCAL VOC for ``lite``) and drawn with that space's fixed palette (``render_label_map``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image

from .base import MAP_SIZE, ModalityResult
from .hub import HubExtractor
from .palette import get_label_space, label_lookup, render_label_map, user_label_ids

DEFAULT_SEG_MODEL = "facebook/mask2former-swin-small-coco-panoptic"
# The label map is computed at most this large (memory: classes x H x W floats).
MAX_RAW_SIDE = 2 * MAP_SIZE


def semantic_ids(outputs: Any, pixel_mask: Any, size: tuple[int, int]) -> np.ndarray:
    """Per-pixel argmax class of Mask2Former outputs, ``(H, W)`` at ``size = (H, W)``.

    Class scores are ``sum_q p(class | q) * mask_q`` (Mask2Former's semantic inference). Unlike the
    processor's post-processing, the padding added by the processor is cropped off first, so the map
    lines up with the image for any aspect ratio.
    """
    import torch
    import torch.nn.functional as F

    # (Q, C) class probabilities without "no object"; (Q, h, w) masks over the padded input
    classes = outputs.class_queries_logits[0].float().softmax(-1)[:, :-1]
    masks = outputs.masks_queries_logits[0].float().sigmoid()
    if pixel_mask is not None:
        valid = pixel_mask[0]
        (pad_h, pad_w), (h, w) = valid.shape, masks.shape[-2:]
        keep_h = math.ceil(int(valid.any(1).sum()) * h / pad_h)
        keep_w = math.ceil(int(valid.any(0).sum()) * w / pad_w)
        masks = masks[:, :keep_h, :keep_w]
    scores = torch.einsum("qc,qhw->chw", classes, masks)
    scores = F.interpolate(scores[None], size=size, mode="bilinear", align_corners=False)[0]
    return scores.argmax(0).cpu().numpy()


def _raw_size(image: Image.Image) -> tuple[int, int]:
    scale = min(1.0, MAX_RAW_SIDE / max(image.size))
    return max(1, round(image.height * scale)), max(1, round(image.width * scale))


class SegmentationExtractor(HubExtractor):
    """Mask2Former semantic segmentation in a preset's label space; the user's map first when given.

    Args:
        model_id: hub id or local folder of a ``Mask2FormerForUniversalSegmentation`` checkpoint
            (default ``DEFAULT_SEG_MODEL``); its ``config.id2label`` names are mapped into
            ``label_space``.
        label_space: ``"voc"`` (the ``lite`` preset) or another entry of ``LABEL_SPACES``.
        model, processor: an already built model and image processor (tests, custom weights).
    """

    name = "seg"
    source = "mask2former"
    model_class = "Mask2FormerForUniversalSegmentation"
    default_model_id = DEFAULT_SEG_MODEL
    what = "Mask2Former"

    def __init__(
        self,
        device: Any = "cpu",
        dtype: Any = None,
        model_id: str | None = None,
        label_space: str = "voc",
        model: Any = None,
        processor: Any = None,
    ):
        super().__init__(device, dtype, model_id, model, processor)
        self.label_space = get_label_space(label_space)
        self._lut: np.ndarray | None = None

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "label_space": self.label_space.name}

    def from_user(self, user_map: Image.Image | np.ndarray) -> ModalityResult:
        return self._result(user_label_ids(user_map, self.label_space))

    def from_image(self, image: Image.Image, upscaled: bool) -> ModalityResult:
        return self._result(self.predict(image))

    def _result(self, ids: np.ndarray) -> ModalityResult:
        present = [self.label_space.classes[i] for i in np.unique(ids)]
        extras = {"classes": present, "label_space": self.label_space.name}
        return ModalityResult(
            name=self.name,
            map=render_label_map(ids, self.label_space.name),
            raw=ids,
            extras=extras,
        )

    def predict(self, image: Image.Image) -> np.ndarray:
        """Label-space class ids of ``image``, ``(H, W)`` uint8, at most ``MAX_RAW_SIDE`` on a side."""
        import torch

        model, processor = self.model.get()
        if self._lut is None:
            self._lut = label_lookup(model.config.id2label, self.label_space)
        inputs = processor(images=image, return_tensors="pt").to(device=self.device, dtype=model.dtype)
        pixel_mask = inputs.get("pixel_mask")
        with torch.inference_mode():
            outputs = model(pixel_values=inputs["pixel_values"], pixel_mask=pixel_mask)
        return self._lut[semantic_ids(outputs, pixel_mask, _raw_size(image))]
