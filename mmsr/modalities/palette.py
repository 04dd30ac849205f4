"""Label spaces for segmentation maps: class names, a fixed palette, and name mapping.

The ``lite`` preset's label space is PASCAL VOC (21 classes, the training maps in
``shared/data/seg`` are VOC ids), drawn with the standard VOC bit-interleaving colour map.
``render_label_map`` is what training uses too, so training and inference maps look the same.
A segmentation model's own classes are mapped into a label space *by name* (``label_lookup``), so
any checkpoint whose ``config.id2label`` uses COCO, ADE20K or VOC names works.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .base import MAP_SIZE

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train",
    "tv/monitor",
)  # fmt: skip

# The 20 COCO(-panoptic) thing names that are VOC classes, as in the ``id2label`` of
# facebook/mask2former-swin-*-coco-panoptic (COCO's 133 panoptic classes); other names -> background.
COCO_TO_VOC = {
    "airplane": 1, "bicycle": 2, "bird": 3, "boat": 4, "bottle": 5, "bus": 6, "car": 7, "cat": 8,
    "chair": 9, "cow": 10, "dining table": 11, "dog": 12, "horse": 13, "motorcycle": 14, "person": 15,
    "potted plant": 16, "sheep": 17, "couch": 18, "train": 19, "tv": 20,
}  # fmt: skip

VOID_ID = 255  # VOC's "ignore" border; drawn as background
UNMAPPED_TOLERANCE = 0.05  # share of a user map that may fall outside the label space


def voc_colormap(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map: bits of the class id interleaved into R, G, B; ``(n, 3)`` uint8."""
    ids = np.arange(n)
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for shift in range(8):
        for channel in range(3):
            bit = (ids >> (3 * shift + channel)) & 1
            cmap[:, channel] |= (bit << (7 - shift)).astype(np.uint8)
    return cmap


def _key(name: str) -> str:
    return re.sub(r"[^a-z]", "", name.lower())


@dataclass(frozen=True)
class LabelSpace:
    """Class names (id = position, 0 = background), their palette, and source-name aliases."""

    name: str
    classes: tuple[str, ...]
    palette: np.ndarray
    aliases: dict[str, int]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_id(self, label: str) -> int:
        """Id of a model's label name (``"tv"``, ``"person;individual"``...); 0 when not in the space."""
        for synonym in re.split(r"[;,]", label):
            if (found := self.aliases.get(_key(synonym))) is not None:
                return found
        return 0


def _voc() -> LabelSpace:
    aliases = {_key(n): i for i, n in enumerate(VOC_CLASSES) if i}
    aliases |= {_key(n): i for n, i in COCO_TO_VOC.items()}
    aliases["television"] = 20  # ADE20K's "television receiver;television;..."
    return LabelSpace("voc", VOC_CLASSES, voc_colormap(len(VOC_CLASSES)), aliases)


LABEL_SPACES = {"voc": _voc()}


def get_label_space(name: str) -> LabelSpace:
    if name not in LABEL_SPACES:
        raise ValueError(f"unknown label space {name!r}; choose one of {sorted(LABEL_SPACES)}")
    return LABEL_SPACES[name]


def label_lookup(id2label: dict[int, str], space: LabelSpace) -> np.ndarray:
    """``lut[model_id] = label-space id`` for a model's ``config.id2label``.

    Raises ``ValueError`` when none of the model's classes is in the label space (wrong checkpoint).
    """
    lut = np.zeros(max(int(k) for k in id2label) + 1, dtype=np.uint8)
    for model_id, label in id2label.items():
        lut[int(model_id)] = space.class_id(label)
    if not lut.any():
        raise ValueError(f"none of the model's {len(id2label)} classes maps to the {space.name} label space")
    return lut


def label_colours(ids: np.ndarray, label_space: str = "voc") -> np.ndarray:
    """``(H, W)`` class ids -> ``(H, W, 3)`` uint8 palette colours at the same size; ids outside the
    space (VOC's 255 border) are background."""
    space = get_label_space(label_space)
    ids = np.asarray(ids)
    return space.palette[np.where((ids >= 0) & (ids < space.num_classes), ids, 0).astype(np.int64)]


def render_label_map(ids: np.ndarray, label_space: str = "voc", size: tuple[int, int] | None = None) -> Image.Image:
    """A label map (``(H, W)`` class ids) drawn with the space's palette at ``size`` ``(width,
    height)`` (default ``MAP_SIZE`` square), nearest.

    Ids outside the space (VOC's 255 border) are drawn as background.
    """
    ids = np.asarray(ids)
    if ids.ndim != 2 or ids.size == 0:
        raise ValueError(f"expected an HxW map of class ids, got shape {ids.shape}")
    width, height = size or (MAP_SIZE, MAP_SIZE)
    rows = ((np.arange(height) + 0.5) * ids.shape[0] / height).astype(np.int64)
    cols = ((np.arange(width) + 0.5) * ids.shape[1] / width).astype(np.int64)
    return Image.fromarray(label_colours(ids[np.ix_(rows, cols)], label_space))


def colors_to_ids(rgb: np.ndarray, space: LabelSpace, tolerance: float = 40.0) -> np.ndarray:
    """Map an RGB image drawn in the space's palette back to class ids (nearest palette colour).

    The tolerance (RGB distance) absorbs JPEG noise; VOC palette colours are at least 64 apart.
    Raises ``ValueError`` when more than ``UNMAPPED_TOLERANCE`` of the pixels match no colour.
    """
    colors = np.concatenate([space.palette, voc_colormap()[VOID_ID:]]).astype(np.float32)
    ids_of = np.concatenate([np.arange(space.num_classes), [0]])
    packed = rgb[..., :3].astype(np.int64) @ np.array([1 << 16, 1 << 8, 1])
    unique, inverse = np.unique(packed, return_inverse=True)
    unique_rgb = np.stack([(unique >> 16) & 255, (unique >> 8) & 255, unique & 255], axis=1).astype(np.float32)
    dist = np.linalg.norm(unique_rgb[:, None, :] - colors[None, :, :], axis=2)
    nearest = dist.argmin(axis=1)
    matched = dist[np.arange(len(unique)), nearest] <= tolerance
    unmatched = float((~matched[inverse]).mean())
    if unmatched > UNMAPPED_TOLERANCE:
        raise ValueError(f"{unmatched:.0%} of the pixels are not {space.name} palette colours: not a label map")
    return np.where(matched, ids_of[nearest], 0)[inverse].reshape(rgb.shape[:2]).astype(np.uint8)


def user_label_ids(user_map: Image.Image | np.ndarray, space: LabelSpace) -> np.ndarray:
    """A user's label map as class ids: single-channel ids, palette (``P``) indices, or palette RGB.

    A grey RGB image (R = G = B) is read as ids. Raises ``ValueError`` for maps that are not label
    maps of ``space``.
    """
    if isinstance(user_map, Image.Image):
        single = user_map.mode in ("P", "L", "I", "I;16")
        user_map = np.asarray(user_map if single else user_map.convert("RGB"))
    arr = np.asarray(user_map)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        rgb = arr[..., :3]
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])):
            return colors_to_ids(rgb, space)
        arr = rgb[..., 0]
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"expected a label map (HxW ids or HxWx3 palette colours), got shape {arr.shape}")
    return _checked_ids(arr.astype(np.int64), space)


def _checked_ids(ids: np.ndarray, space: LabelSpace) -> np.ndarray:
    outside = (ids < 0) | ((ids >= space.num_classes) & (ids != VOID_ID))
    if outside.mean() > UNMAPPED_TOLERANCE:
        raise ValueError(
            f"label map values reach {int(ids.max())}: expected {space.name} class ids 0..{space.num_classes - 1}"
        )
    return np.where(outside | (ids == VOID_ID), 0, ids).astype(np.uint8)
