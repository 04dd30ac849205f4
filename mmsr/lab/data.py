"""The lab's inputs: images found in a folder, their captions, and the LR each method receives.

LR modes: ``bicubic`` (antialiased bicubic x4 of the HR), ``degraded`` (the training degradation,
seeded per image so every process and every rerun makes the same LR) and ``given`` (the file is
the LR; there is no ground truth).

User maps (``lab run --maps seg=DIR``): a map of image ``sub/x.png`` is ``DIR/sub/x.<any image
suffix>``, else the one file in ``DIR`` named ``x.*``. It is drawn for the image file (any size
with the image's aspect ratio) and gets the image's crop, so it stays aligned with the HR and LR.
"""

from __future__ import annotations

import glob
import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from ..constants import IMAGE_SUFFIXES, SCALE
from ..imageio import ImageError, check_map_shape, load_image, pil_to_tensor, tensor_to_pil

LR_MODES = ("bicubic", "degraded", "given")


@dataclass
class LabImage:
    """One input: ``id`` is its path relative to the data folder (POSIX), ``hr`` is ``None`` for given LR."""

    id: str
    lr: Image.Image
    hr: Image.Image | None
    maps: dict[str, Image.Image] = field(default_factory=dict)  # modality -> the user's map
    notes: list[str] = field(default_factory=list)


def find_images(
    data_dir: str | Path, limit: int | None = None, exclude: str | Path | None = None
) -> list[tuple[str, Path]]:
    """``(id, path)`` of every image under ``data_dir`` (recursively, hidden files skipped), sorted.

    ``exclude``: a folder to leave out, the results folder when it lies inside the data.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise ValueError(f"{root}: no such folder")
    skip = Path(exclude).resolve() if exclude else None
    found = sorted(
        (p.relative_to(root).as_posix(), p)
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not any(s.startswith(".") for s in p.relative_to(root).parts)
        and not (skip and p.resolve().is_relative_to(skip))
    )
    if not found:
        raise ValueError(f"{root}: no images found ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return found if limit is None else found[:limit]


def load_captions(data_dir: str | Path, captions_file: str | Path | None, ids: list[str]) -> dict[str, str]:
    """Captions for ``ids`` from ``captions_file`` or ``DATA/captions.json``; missing ones are absent.

    Keys may be the relative path, a longer path that ends with it (``eval/set5/baby.png`` for
    ``baby.png`` in ``eval/set5``) or the bare file name.
    """
    path = Path(captions_file) if captions_file else Path(data_dir) / "captions.json"
    if not path.is_file():
        if captions_file:
            raise ValueError(f"{path}: no such captions file")
        return {}
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a JSON file of {{image: caption}} ({e})") from e
    if not isinstance(table, dict):
        raise ValueError(f"{path}: expected a JSON object mapping image paths to captions")  # noqa: TRY004 - a user error
    out = {}
    for image_id in ids:
        caption = _lookup(table, image_id)
        if caption is not None:
            out[image_id] = str(caption)
    return out


def _lookup(table: dict, image_id: str):
    if image_id in table:
        return table[image_id]
    name = image_id.rsplit("/", 1)[-1]
    for matches in (
        lambda k: k.endswith("/" + image_id),
        lambda k: k.rsplit("/", 1)[-1] == name,
    ):
        keys = [k for k in table if matches(k)]
        if len(keys) == 1:
            return table[keys[0]]
    return None


def derangement(ids: list[str], seed: int | None = None) -> dict[str, str]:
    """Each id -> another id whose caption (or maps) it borrows; deterministic, no fixed point.

    ``seed=None``: the cyclic shift (the caption swap); else a seeded shuffle into one cycle
    (Sattolo's algorithm), so an image's partner is not just its neighbour in sorted order.
    """
    if len(ids) < 2:
        return {}
    if seed is None:
        return {a: ids[(i + 1) % len(ids)] for i, a in enumerate(ids)}
    order, rng = list(ids), random.Random(seed)
    for i in range(len(order) - 1, 0, -1):
        j = rng.randrange(i)  # j < i: the permutation stays one cycle
        order[i], order[j] = order[j], order[i]
    return {a: order[(i + 1) % len(order)] for i, a in enumerate(order)}


def lr_seed(image_id: str, seed: int) -> int:
    """A seed for the degradation that depends only on the image and the run's ``--lr-seed``."""
    return int(hashlib.sha1(f"{seed}:{image_id}".encode()).hexdigest()[:8], 16)


def find_map(folder: str | Path, image_id: str) -> Path | None:
    """The user's map of ``image_id`` in ``folder`` (see the module docstring), or ``None``."""
    root = Path(folder)
    stem = Path(image_id).with_suffix("")
    for candidate in sorted(root.glob(f"{glob.escape(stem.as_posix())}.*")):
        if candidate.suffix.lower() in IMAGE_SUFFIXES and candidate.is_file():
            return candidate
    matches = [p for p in root.rglob(f"{glob.escape(stem.name)}.*") if p.suffix.lower() in IMAGE_SUFFIXES]
    return matches[0] if len(matches) == 1 else None


def prepare(
    image_id: str,
    path: Path,
    mode: str,
    *,
    crop: int | None = None,
    seed: int = 0,
    maps: dict[str, Path] | None = None,
) -> LabImage:
    """Load one image and make its LR; ``crop`` = side of a central LR crop (HR: ``4 * crop``).

    ``maps``: modality -> folder of user maps; each found map gets the image's crop.
    """
    if mode not in LR_MODES:
        raise ValueError(f"--lr must be one of {', '.join(LR_MODES)}, not {mode!r}")
    image, _ = load_image(path)
    user_maps, notes = _load_maps(image_id, image, maps or {})
    side = crop if mode == "given" else crop * SCALE if crop else None

    def cut(im: Image.Image) -> Image.Image:
        im = _center_crop(im, side)
        return im if mode == "given" else im.crop((0, 0, im.width - im.width % SCALE, im.height - im.height % SCALE))

    user_maps = {k: cut(m) for k, m in user_maps.items()}
    if mode == "given":
        return LabImage(image_id, cut(image), None, user_maps, notes)
    hr = cut(image)
    if min(hr.size) < SCALE * 8:
        raise ValueError(f"{image_id}: the HR image is {hr.width}x{hr.height}, too small for x{SCALE}")
    if mode == "bicubic":
        from ..degradation import bicubic_degrade

        lr = bicubic_degrade(pil_to_tensor(hr), SCALE)
    else:
        from ..degradation import Degradation

        lr = Degradation()(pil_to_tensor(hr), torch.Generator().manual_seed(lr_seed(image_id, seed)))
    return LabImage(image_id, tensor_to_pil(lr), hr, user_maps, notes)


def _load_maps(image_id: str, image: Image.Image, folders: dict[str, Path]) -> tuple[dict, list[str]]:
    """The user maps of one image at the image's own size, and a note for each folder without one."""
    maps, notes = {}, []
    for name, folder in folders.items():
        path = find_map(folder, image_id)
        if path is None:
            notes.append(f"no {name} map for {image_id} in {folder}: {name} came from its extractor")
            continue
        user_map, _ = load_image(path)
        try:
            check_map_shape(user_map, image, name)
        except ImageError as e:
            raise ImageError(f"{path}: {e}") from e
        maps[name] = user_map.resize(image.size, Image.Resampling.NEAREST)
    return maps, notes


def _center_crop(image: Image.Image, side: int | None) -> Image.Image:
    if not side or (image.width <= side and image.height <= side):
        return image
    w, h = min(side, image.width), min(side, image.height)
    left, top = (image.width - w) // 2, (image.height - h) // 2
    return image.crop((left, top, left + w, top + h))
