"""Training data kept in RAM: HR photos, VOC label maps and captions, decoded once.

``ImageBank`` loads ``DATA/train/**`` (with ``DATA/seg/<path>.png`` and ``DATA/captions.json``);
``random_crops`` draws aligned HR/label crops; ``render_maps`` draws the modality maps exactly as
inference does (:func:`mmsr.modalities.edges.canny_edges` + ``render_edges``, ``render_label_map``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..constants import IMAGE_SUFFIXES
from ..modalities.depth import render_depth
from ..modalities.edges import canny_edges, render_edges
from ..modalities.palette import render_label_map


@dataclass
class Sample:
    """One training photo: ``image`` ``(H, W, 3)`` uint8, ``seg`` ``(H, W)`` VOC ids or ``None``."""

    key: str
    image: np.ndarray
    seg: np.ndarray | None
    caption: str


def _seg_path(root: Path, key: str) -> Path:
    return root / "seg" / Path(key).with_suffix(".png")


def _load_seg(path: Path, size: tuple[int, int]) -> np.ndarray | None:
    if not path.is_file():
        return None
    seg = Image.open(path)
    if seg.size != size:
        seg = seg.resize(size, Image.NEAREST)
    return np.asarray(seg, dtype=np.uint8)


class ImageBank:
    """All training photos of ``root/split`` decoded once (271 photos <= 512 px: about 150 MB).

    Photos with a side shorter than ``min_side`` are skipped (they cannot give a full crop).
    """

    def __init__(self, root: str | Path, split: str = "train", min_side: int = 128, max_side: int = 512):
        self.root = Path(root)
        folder = self.root / split
        if not folder.is_dir():
            raise ValueError(f"no training images: {folder} is not a directory")
        captions_file = self.root / "captions.json"
        captions = json.loads(captions_file.read_text()) if captions_file.is_file() else {}
        self.samples: list[Sample] = []
        for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            image = Image.open(path).convert("RGB")
            if max(image.size) > max_side:
                s = max_side / max(image.size)
                image = image.resize((round(image.width * s), round(image.height * s)), Image.BICUBIC)
            if min(image.size) < min_side:
                continue
            key = path.relative_to(self.root).as_posix()
            seg = _load_seg(_seg_path(self.root, key), image.size)
            self.samples.append(Sample(key, np.asarray(image), seg, captions.get(key, "")))
        if not self.samples:
            raise ValueError(f"no usable images (>= {min_side} px) under {folder}")

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def captions(self) -> list[str]:
        return [s.caption for s in self.samples]


def random_crops(
    bank: ImageBank, n: int, crop: int, rng: np.random.Generator
) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """``n`` random ``crop`` x ``crop`` (image, label) pairs with random horizontal flips."""
    out = []
    for i in rng.integers(0, len(bank), size=n):
        s = bank.samples[i]
        h, w = s.image.shape[:2]
        y, x = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
        image = s.image[y : y + crop, x : x + crop]
        seg = None if s.seg is None else s.seg[y : y + crop, x : x + crop]
        if rng.random() < 0.5:
            image = image[:, ::-1]
            seg = None if seg is None else seg[:, ::-1]
        out.append((np.ascontiguousarray(image), None if seg is None else np.ascontiguousarray(seg)))
    return out


def to_tensor(images: list[np.ndarray] | np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 images -> ``(B, 3, H, W)`` float in [0, 1]."""
    batch = np.stack([np.asarray(im) for im in images])
    return torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255


def edge_map(image: np.ndarray) -> Image.Image:
    return render_edges(canny_edges(image))


def seg_map(seg: np.ndarray) -> Image.Image:
    return render_label_map(seg)


def synthetic_depth(rng: np.random.Generator, size: int = 64) -> Image.Image:
    """A smooth depth-like map (tilted ground plane plus a few blobs), for training the VQ only."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    angle = rng.uniform(0, 2 * np.pi)
    depth = np.cos(angle) * yy + np.sin(angle) * xx
    for _ in range(rng.integers(0, 4)):
        cy, cx, r = rng.uniform(0, 1, 2).tolist() + [rng.uniform(0.05, 0.3)]
        depth = depth + rng.uniform(0.3, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    return render_depth(depth)


def pil_batch(maps: list[Image.Image]) -> torch.Tensor:
    return to_tensor([np.asarray(m.convert("RGB")) for m in maps])
