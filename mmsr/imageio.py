"""Reading user images safely: every odd file becomes an RGB image or a clear ``ImageError``."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .files import temp_beside

MAX_PIXELS = 40_000_000  # refuse decompression bombs before decoding (PIL checks the header)
MAX_FILE_BYTES = 64 * 2**20  # refuse before reading a huge file into memory
MIN_SIDE = 8
MAP_ASPECT_TOLERANCE = 0.1  # relative: a map at another scale, rounded or cropped by a few pixels, passes
# formats that store any 8-bit RGB image we make, and their largest side (ICO, GIF, XBM ... do not)
OUTPUT_FORMATS = {"PNG": 2**31 - 1, "JPEG": 65_535, "WEBP": 16_383, "TIFF": 2**31 - 1, "BMP": 2**31 - 1}
OUTPUT_SUFFIXES = (".png", ".jpg", ".webp", ".tif", ".bmp")


class ImageError(ValueError):
    """The input is not an image we can use; the message says why."""


def load_image(source, *, max_pixels: int = MAX_PIXELS, name: str | None = None) -> tuple[Image.Image, list[str]]:
    """Open a path, bytes or PIL image as RGB, honouring EXIF orientation.

    Alpha is composited on white (not dropped to black), palette/16-bit/CMYK/grey are converted, an
    animated file gives its first frame with a warning. Returns the image and warnings for the user.
    ``name`` stands for a path in messages (the app's uploads live under server paths).
    """
    notes: list[str] = []
    image = source if isinstance(source, Image.Image) else _open(source, max_pixels, name)
    if image.width * image.height > max_pixels:
        raise ImageError(f"image is {image.width}x{image.height}: over the {max_pixels:,}-pixel limit")
    if getattr(image, "n_frames", 1) > 1:
        notes.append(f"animated image with {image.n_frames} frames: using the first")
        image.seek(0)
    try:
        depth = integer_depth(image)  # read before the transpose, which drops a TIFF's tags
        image = ImageOps.exif_transpose(image)
        return to_rgb(image, depth), notes
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"could not decode the image: {e}") from e


def _open(source, max_pixels: int, name: str | None = None) -> Image.Image:
    data = source
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        data = _read(path, name or str(path))
    if not data:
        raise ImageError(f"{name}: the file is empty" if name else "the file is empty")
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


def _read(path: Path, name: str) -> bytes:
    if path.is_dir():
        raise ImageError(f"{name}: is a folder, not an image file")
    if not path.exists():
        raise ImageError(f"{name}: no such file")
    if not path.is_file():
        raise ImageError(f"{name}: not a regular file (a device or a pipe?)")
    size = path.stat().st_size
    if size == 0:
        raise ImageError(f"{name}: the file is empty")
    if size > MAX_FILE_BYTES:
        raise ImageError(f"{name}: the file is {size / 2**20:.0f} MiB; at most {MAX_FILE_BYTES // 2**20} MiB")
    try:
        return path.read_bytes()
    except OSError as e:
        raise ImageError(f"{name}: cannot read the file ({e.strerror or e})") from e


def integer_depth(image: Image.Image) -> tuple[int, bool] | None:
    """``(bits, signed)`` an integer-mode image declares, ``None`` for other modes.

    The depth comes from the mode and the file, never from the pixel values: a 16-bit image whose
    values stay under 256 is a dark image, not an 8-bit one. Mode ``I`` is 32-bit signed unless a
    TIFF's tags (``BitsPerSample``, ``SampleFormat``) or a 16-bit PGM/PPM say otherwise.
    """
    if image.mode.startswith("I;16"):
        return 16, False
    if image.mode != "I":
        return None
    tags = getattr(image, "tag_v2", None)
    if tags is not None and 258 in tags:
        bits = tags[258]
        return int(bits[0] if isinstance(bits, tuple) else bits), tags.get(339, (1,))[0] == 2
    if image.format == "PPM":
        return 16, False
    return 32, True


def to_rgb(image: Image.Image, depth: tuple[int, bool] | None = None) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; transparency composited over white.

    Integer modes are scaled by their declared ``depth`` (default :func:`integer_depth`); negative
    values of signed images become black.
    """
    depth = depth or integer_depth(image)
    if depth is not None:
        bits, signed = depth
        arr = np.asarray(image).astype(np.int64)
        if not signed:  # Pillow holds an unsigned 32-bit TIFF as int32: undo the wrap-around
            arr &= 2**bits - 1
        peak = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
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


def output_format(path: str | Path, size: tuple[int, int] | None = None) -> str:
    """The Pillow format for an output path's extension; ``ImageError`` for one that cannot hold the
    output faithfully (unknown, palette or icon formats) or, given ``size``, one it is too large for."""
    suffix = Path(path).suffix.lower()
    fmt = Image.registered_extensions().get(suffix)
    if fmt not in OUTPUT_FORMATS:
        what = f"{suffix!r} cannot hold the 4x image faithfully" if fmt else f"unknown output format {suffix!r}"
        raise ImageError(f"{what}; use {', '.join(OUTPUT_SUFFIXES)}")
    if size is not None and max(size) > OUTPUT_FORMATS[fmt]:
        raise ImageError(f"{suffix} holds at most {OUTPUT_FORMATS[fmt]} px a side; the output is {size[0]}x{size[1]}")
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
    fmt = output_format(path, image.size)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format=fmt)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
