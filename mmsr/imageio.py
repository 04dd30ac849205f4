"""Reading user images safely: every odd file becomes an RGB image or a clear ``ImageError``."""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 40_000_000  # refuse decompression bombs before decoding (PIL checks the header)
MAX_FILE_BYTES = 64 * 2**20  # refuse before reading a huge file into memory
MIN_SIDE = 8
MAP_ASPECT_TOLERANCE = 0.1  # relative: a map at another scale, rounded or cropped by a few pixels, passes


class ImageError(ValueError):
    """The input is not an image we can use; the message says why."""


def load_image(source, *, max_pixels: int = MAX_PIXELS) -> tuple[Image.Image, list[str]]:
    """Open a path, bytes or PIL image as RGB, honouring EXIF orientation.

    Alpha is composited on white (not dropped to black), palette/16-bit/CMYK/grey are converted, an
    animated file gives its first frame with a warning. Returns the image and warnings for the user.
    """
    notes: list[str] = []
    image = source if isinstance(source, Image.Image) else _open(source, max_pixels)
    if image.width * image.height > max_pixels:
        raise ImageError(f"image is {image.width}x{image.height}: over the {max_pixels:,}-pixel limit")
    if getattr(image, "n_frames", 1) > 1:
        notes.append(f"animated image with {image.n_frames} frames: using the first")
        image.seek(0)
    try:
        image = ImageOps.exif_transpose(image)
        return to_rgb(image), notes
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"could not decode the image: {e}") from e


def _open(source, max_pixels: int) -> Image.Image:
    data = source
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"{path}: no such file")
        size = path.stat().st_size
        if size == 0:
            raise ImageError(f"{path}: the file is empty")
        if size > MAX_FILE_BYTES:
            raise ImageError(f"{path}: the file is {size / 2**20:.0f} MiB; at most {MAX_FILE_BYTES // 2**20} MiB")
        data = path.read_bytes()
    if not data:
        raise ImageError("the file is empty")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > max_pixels:
                raise ImageError(f"image is {image.width}x{image.height}: over the {max_pixels:,}-pixel limit")
            image.load()
        except ImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageError(f"image refused as a decompression bomb: {e}") from e
        except UnidentifiedImageError as e:
            raise ImageError("not an image file (or a format Pillow cannot read)") from e
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageError(f"could not decode the image (truncated or corrupt?): {e}") from e
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; transparency composited over white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if arr.max() > 255 else 255.0
        image = Image.fromarray(np.clip(arr / peak * 255 + 0.5, 0, 255).astype(np.uint8))
    elif image.mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        span = max(arr.max() - arr.min(), 1e-12)
        image = Image.fromarray(((arr - arr.min()) / span * 255).astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def check_size(image: Image.Image, max_side: int) -> None:
    w, h = image.size
    if min(w, h) < MIN_SIDE:
        raise ImageError(f"image is {w}x{h}: too small, the shorter side must be at least {MIN_SIDE} px")
    if max(w, h) > max_side:
        raise ImageError(
            f"image is {w}x{h}: the longer side may be at most {max_side} px for this preset "
            f"(output {4 * max_side} px); downscale it first"
        )


def check_map_shape(user_map, image: Image.Image, name: str) -> None:
    """A user's ``name`` map must have the aspect ratio of ``image``; ``ImageError`` says so otherwise."""
    if not isinstance(user_map, Image.Image):
        return
    (w, h), (mw, mh) = image.size, user_map.size
    if min(mw, mh) < 1 or abs((mw / mh) / (w / h) - 1) > MAP_ASPECT_TOLERANCE:
        raise ImageError(
            f"your {name} map is {mw}x{mh} but the input is {w}x{h}: a map must have the input's aspect ratio"
        )


def output_format(path: str | Path) -> str:
    """The Pillow format for an output path's extension; ``ImageError`` for an unknown one."""
    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    if fmt is None:
        raise ImageError(f"unknown output format {Path(path).suffix!r}; use .png, .jpg or .webp")
    return fmt


def downscale_to_fit(image: Image.Image, max_side: int) -> Image.Image:
    scale = max_side / max(image.size)
    if scale >= 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.BICUBIC)


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL -> ``(1, 3, H, W)`` float in [0, 1]."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]


def tensor_to_pil(x: torch.Tensor) -> Image.Image:
    """``(1, 3, H, W)`` or ``(3, H, W)`` in [0, 1] -> RGB PIL."""
    x = x[0] if x.ndim == 4 else x
    arr = (x.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    return Image.fromarray(arr)


def save_atomic(image: Image.Image, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write to a temporary file beside ``path`` then rename: a crash never leaves half a file."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    fmt = output_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format=fmt)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
