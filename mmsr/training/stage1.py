"""Stage-1 cache: every training photo's LR versions and their frozen restoration, computed once.

The ``lite`` UNet generates the residual over a frozen restoration stage (Real-ESRGAN x4plus,
DiffBIR's two-stage design). That stage costs about a second per 64x64 LR on a CPU core, far too
much to run inside the training loop, so it runs once per photo and LR version, before training,
and its output is kept on disk: one safetensors file per photo (``uint8`` HR, LR and stage-1
arrays), written atomically, so an interrupted build resumes where it stopped and several
processes can share it (``--shard I/N``)::

    python -m mmsr.training.stage1 --data ../shared/data --out runs/stage1 --shard 0/2 --threads 1

LR versions: ``lr_variants - 1`` Real-ESRGAN-style second-order degradations (seeded per photo,
so shards and reruns agree), then plain bicubic x4.

``--crop-side S`` keeps one seeded window of at most S x S per photo instead of the whole photo
(its ``origin`` is stored), so photos need not be downscaled to afford stage 1: a photo shrunk 3x
to fit 256 px is far sharper per pixel than the native-resolution images SR is evaluated and used
on, and a model trained on it adds detail those images do not have.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.numpy import load_file, save_file

from ..constants import SCALE
from ..degradation import Degradation, bicubic_degrade
from .data import ImageBank, to_tensor

MULTIPLE = 32  # HR sides are cropped to this: the f8 latent then fits a 2-level-down UNet and 16x16 map tokens


def photo_file(folder: Path, key: str) -> Path:
    return folder / (key.replace("/", "__") + ".safetensors")


def photo_seed(key: str, seed: int) -> int:
    return int.from_bytes(hashlib.sha1(f"{seed}:{key}".encode()).digest()[:4], "little")


def crop_to_multiple(image: np.ndarray, multiple: int = MULTIPLE) -> np.ndarray:
    h, w = (s - s % multiple for s in image.shape[:2])
    return image[:h, :w]


def crop_window(shape: tuple[int, ...], side: int, seed: int) -> tuple[int, int, int, int]:
    """A seeded ``(y, x, h, w)`` window of at most ``side`` x ``side``, sides multiples of ``MULTIPLE``."""
    h, w = (min(side, s) // MULTIPLE * MULTIPLE for s in shape[:2])
    rng = np.random.default_rng(seed)
    return int(rng.integers(0, shape[0] - h + 1)), int(rng.integers(0, shape[1] - w + 1)), h, w


def photo_window(image: np.ndarray, key: str, crop_side: int, seed: int) -> tuple[tuple[int, int], np.ndarray]:
    """``((y, x), hr)``: the photo's seeded window of at most ``crop_side`` (0: the whole photo, cut to
    ``MULTIPLE``), the HR every stage-1 file of ``key`` stores."""
    if not crop_side:
        return (0, 0), crop_to_multiple(image)
    y, x, h, w = crop_window(image.shape, crop_side, photo_seed(key, seed + 1))
    return (y, x), np.ascontiguousarray(image[y : y + h, x : x + w])


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """``(1, 3, H, W)`` in [0, 1] -> ``(H, W, 3)`` uint8, rounded as a saved PNG would be."""
    return (x[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def lr_versions(hr: np.ndarray, lr_variants: int, seed: int) -> list[np.ndarray]:
    """``lr_variants - 1`` second-order degradations, then bicubic x4, as uint8 (what a user's file holds)."""
    x = to_tensor([hr])
    gen = torch.Generator().manual_seed(seed)
    degrade = Degradation()
    return [to_uint8(degrade(x, gen)) for _ in range(lr_variants - 1)] + [to_uint8(bicubic_degrade(x, SCALE))]


def build(
    bank: ImageBank, folder: Path, restorer, lr_variants: int = 2, seed: int = 0, shard=(0, 1), crop_side: int = 0
) -> int:
    """Write the missing photo files of this shard; returns how many were written.

    ``crop_side``: keep one seeded window of at most this side per photo (0: the whole photo).
    """
    folder.mkdir(parents=True, exist_ok=True)
    index, count = shard
    written = 0
    for i, sample in enumerate(bank.samples):
        path = photo_file(folder, sample.key)
        if i % count != index or path.is_file():
            continue
        (y, x), hr = photo_window(sample.image, sample.key, crop_side, seed)
        lrs = lr_versions(hr, lr_variants, photo_seed(sample.key, seed))
        restored = [np.asarray(restorer(Image.fromarray(lr))) for lr in lrs]
        tmp = path.with_suffix(".tmp")
        origin = np.array([y, x], dtype=np.int32)
        save_file({"hr": hr, "lr": np.stack(lrs), "stage1": np.stack(restored), "origin": origin}, str(tmp))
        tmp.replace(path)
        written += 1
        print(f"stage1 {i + 1}/{len(bank)} {sample.key}", flush=True)
    return written


def load(folder: Path, key: str) -> dict[str, np.ndarray]:
    return load_file(str(photo_file(folder, key)))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m mmsr.training.stage1", description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("../shared/data"))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--max-side", type=int, default=256)
    p.add_argument("--min-side", type=int, default=128)
    p.add_argument("--lr-variants", type=int, default=2)
    p.add_argument("--crop-side", type=int, default=0, help="one seeded window of at most this side per photo (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard", default="0/1", help="I/N: this process builds photos I, I+N, ...")
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from baselines import get_baseline

    index, count = (int(v) for v in args.shard.split("/"))
    bank = ImageBank(args.data, min_side=args.min_side, max_side=args.max_side)
    n = build(bank, args.out, get_baseline("realesrgan"), args.lr_variants, args.seed, (index, count), args.crop_side)
    print(f"stage1: {n} photos written to {args.out}")


if __name__ == "__main__":
    main()
