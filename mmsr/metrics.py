"""Image-quality scores for super-resolution: a table of metric facts and one scorer over it.

Scores agree with ``../shared/tools/sr_eval.py``: PSNR on RGB uint8 values, SSIM as pyiqa's
``"ssim"`` (Y channel), NIQE and PIQE from pyiqa, and LR-consistency as the PSNR between the SR
image downsampled with PIL bicubic and the LR input. Learned metrics come from pyiqa too, but only
when their parameter files are already on disk: nothing here downloads. A metric whose files are
missing, or that fails at run time, is reported unavailable with a reason, never faked.

Weight files are looked up under ``torch.hub.get_dir()`` (``$TORCH_HOME/hub``), where pyiqa keeps
its own files in ``pyiqa/``, torchvision its backbones in ``checkpoints/`` and CLIP in ``clip/``;
an entry ``"hf:<repo>/<file>"`` is looked up in the Hugging Face hub cache instead.
"""

from __future__ import annotations

import importlib.util
import math
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BUNDLED_WEIGHTS = {"pyiqa/niqe_modelparameters.mat": ASSETS / "niqe_modelparameters.mat"}
HEATMAP_MAX = 64.0
HEATMAP_CMAP = "inferno"
_HF_PREFIX = "hf:"
# pyiqa archs whose `pretrained_model_path` loads exactly like their default download; passing the
# path makes them read the file we checked, whatever TORCH_HOME was when pyiqa was imported.
_PATH_OPTION = ("niqe", "musiq", "lpips", "dists")


@dataclass(frozen=True)
class MetricInfo:
    """Facts about one metric.

    Attributes:
        name: key in :data:`METRICS`.
        label: name for display.
        lower_better: whether a smaller value means better quality (NIQE, PIQE, LPIPS, DISTS).
        needs_reference: whether the metric compares against an HR reference.
        range: nominal ``(low, high)`` of the values (open-ended for PSNR).
        pyiqa_name: the pyiqa metric that computes it; ``None`` when computed in this module.
        weight_files: files the metric needs, relative to ``torch.hub.get_dir()`` or
            ``"hf:<repo>/<file>"`` for the Hugging Face cache.
    """

    name: str
    label: str
    lower_better: bool
    needs_reference: bool
    range: tuple[float, float]
    pyiqa_name: str | None
    weight_files: tuple[str, ...] = ()


_UNIT, _OPEN = (0.0, 1.0), (0.0, math.inf)
_WEIGHT_FILES = {
    "lpips": (
        "pyiqa/LPIPS_v0.1_alex-df73285e.pth",
        "checkpoints/alexnet-owt-7be5be79.pth",
    ),
    "dists": ("pyiqa/DISTS_weights-f5e65c96.pth", "checkpoints/vgg16-397923af.pth"),
    "musiq": ("pyiqa/musiq_koniq_ckpt-e95806b9.pth",),
    "niqe": ("pyiqa/niqe_modelparameters.mat",),
    "clipiqa": ("clip/RN50.pt",),
    "maniqa": (
        "pyiqa/ckpt_koniq10k.pt",
        "hf:timm/vit_base_patch8_224.augreg2_in21k_ft_in1k/model.safetensors",
    ),
}
METRICS: dict[str, MetricInfo] = {
    row[0]: MetricInfo(*row, weight_files=_WEIGHT_FILES.get(row[0], ()))
    for row in (
        # name, label, lower_better, needs_reference, range, pyiqa_name
        ("psnr", "PSNR (dB)", False, True, _OPEN, None),
        ("ssim", "SSIM", False, True, _UNIT, None),
        ("lpips", "LPIPS", True, True, _UNIT, "lpips"),
        ("dists", "DISTS", True, True, _UNIT, "dists"),
        ("musiq", "MUSIQ", False, False, (0.0, 100.0), "musiq"),
        ("niqe", "NIQE", True, False, (0.0, 100.0), "niqe"),
        ("clipiqa", "CLIP-IQA", False, False, _UNIT, "clipiqa"),
        ("maniqa", "MANIQA", False, False, _UNIT, "maniqa"),
        ("piqe", "PIQE", True, False, (0.0, 100.0), "piqe"),
        ("lr_psnr", "LR-consistency (dB)", False, False, _OPEN, None),
    )
}


def hub_dir() -> Path:
    """``torch.hub.get_dir()`` (``$TORCH_HOME/hub``), read now so a changed TORCH_HOME counts."""
    return Path(torch.hub.get_dir())


def _locate(entry: str) -> tuple[Path | None, str]:
    """Where a weight-file entry lives on disk (``None`` if absent) and how to name it."""
    if not entry.startswith(_HF_PREFIX):
        path = hub_dir() / entry
        return (path if path.is_file() else None), str(path)
    repo, filename = entry[len(_HF_PREFIX) :].rsplit("/", 1)
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename)
    where = f"{filename} of {repo} in the Hugging Face cache"
    return (Path(found) if isinstance(found, str) else None), where


def install_bundled_weights(names: Iterable[str] | None = None) -> list[Path]:
    """Copy parameter files shipped in ``assets/`` (NIQE's) into the hub dir where missing.

    Only files the metrics ``names`` need (all metrics' by default). Never overwrites an existing
    file. Returns the paths it created.
    """
    needed = {f for n in (METRICS if names is None else names) for f in _info(n).weight_files}
    installed = []
    for entry in needed & BUNDLED_WEIGHTS.keys():
        target, source = hub_dir() / entry, BUNDLED_WEIGHTS[entry]
        if target.exists() or not source.is_file():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        installed.append(target)
    return installed


def metric_available(name: str) -> tuple[bool, str]:
    """Whether ``name`` can be computed offline, and if not why; checks files, loads nothing."""
    info = _info(name)
    if info.pyiqa_name is not None and importlib.util.find_spec("pyiqa") is None:
        return False, "pyiqa is not installed"
    missing = [where for path, where in map(_locate, info.weight_files) if path is None]
    if missing:
        return False, "missing weight file(s): " + ", ".join(missing)
    return True, ""


def _info(name: str) -> MetricInfo:
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")
    return METRICS[name]


def _rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")


def _to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB image -> ``(1, 3, H, W)`` float32 in [0, 1], as sr_eval.py feeds pyiqa."""
    return torch.from_numpy(np.asarray(img, np.float32) / 255).permute(2, 0, 1)[None]


def psnr(a: Image.Image, b: Image.Image) -> float:
    """PSNR in dB between two same-size images on RGB uint8 values (peak 255); inf if equal."""
    x, y = np.asarray(_rgb(a), np.float32), np.asarray(_rgb(b), np.float32)
    if x.shape != y.shape:
        raise ValueError(f"PSNR needs images of one size, got {a.size} and {b.size}")
    mse = np.mean((x - y) ** 2)
    return math.inf if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def _gaussian_blur_valid(x: np.ndarray) -> np.ndarray:
    """11-tap, sigma 1.5 Gaussian over the last two axes, 'valid' borders, as two 1-D passes."""
    from scipy.ndimage import correlate1d

    g = np.exp(-(np.arange(-5.0, 6.0) ** 2) / (2 * 1.5**2))
    g /= g.sum()
    # each pass keeps only outputs whose whole window lies inside, so the padding mode is moot
    x = correlate1d(x, g, axis=-1)[..., 5:-5]
    return correlate1d(x, g, axis=-2)[..., 5:-5, :]


def ssim(a: Image.Image, b: Image.Image) -> float:
    """SSIM on the Y channel, as pyiqa's ``"ssim"`` (and sr_eval.py) computes it.

    Same colour conversion (pyiqa's ``preprocess_rgb``: YIQ luma, range 255, rounded), window,
    constants and clamp of the contrast-structure term; the 11x11 Gaussian runs as two 1-D
    float64 passes, several times faster on CPU than pyiqa's 2-D float64 convolution, and agrees
    with it to 1e-6.
    """
    from pyiqa.archs.func_util import preprocess_rgb

    if a.size != b.size:
        raise ValueError(f"SSIM needs images of one size, got {a.size} and {b.size}")
    x, y = (preprocess_rgb(_to_tensor(_rgb(i)), True, 255, "yiq")[0, 0].double().numpy() for i in (a, b))
    mu_x, mu_y, xx, yy, xy = _gaussian_blur_valid(np.stack([x, y, x * x, y * y, x * y]))
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    contrast_structure = np.maximum((2 * cov + c2) / (var_x + var_y + c2), 0.0)
    luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    return float((luminance * contrast_structure).mean())


def abs_difference(a: Image.Image, b: Image.Image) -> np.ndarray:
    """``|a - b|`` of two same-size images, averaged over RGB: ``(h, w)`` float32, grey levels (0-255)."""
    return np.abs(np.asarray(_rgb(a), np.float32) - np.asarray(_rgb(b), np.float32)).mean(axis=2)


def lr_consistency(sr: Image.Image, lr: Image.Image) -> tuple[float, np.ndarray]:
    """Fidelity of an SR image to its LR input, sr_eval.py's LR-consistency.

    The SR image is downsampled to the LR size with PIL bicubic (``Image.BICUBIC``: Keys cubic,
    a = -0.5, kernel support widened by the scale factor, i.e. antialiased) and compared with the
    LR. Content that does not downsample back to the LR was invented.

    Returns:
        ``(psnr_db, residual)``: PSNR on RGB uint8 values, and ``|down(SR) - LR|`` averaged over
        the channels, a float32 array of shape ``(lr.height, lr.width)`` in grey levels.
    """
    sr, lr = _rgb(sr), _rgb(lr)
    if sr.width < lr.width or sr.height < lr.height:
        raise ValueError(f"SR {sr.size} is smaller than its LR {lr.size}")
    down = sr.resize(lr.size, Image.BICUBIC)
    return psnr(down, lr), abs_difference(down, lr)


def residual_heatmap(residual: np.ndarray, size: tuple[int, int], *, vmax: float = HEATMAP_MAX) -> Image.Image:
    """Colour-map an ``(h, w)`` residual on a fixed 0..``vmax`` grey-level scale, upsampled to
    ``size`` (width, height) with nearest neighbour; a fixed scale keeps heatmaps comparable."""
    from matplotlib import colormaps

    residual = np.asarray(residual, np.float32)
    if residual.ndim != 2:
        raise ValueError(f"residual must be a 2-D array, got shape {residual.shape}")
    rgba = colormaps[HEATMAP_CMAP](np.clip(residual / vmax, 0.0, 1.0))
    heat = Image.fromarray(np.round(rgba[..., :3] * 255).astype(np.uint8))
    return heat.resize(tuple(size), Image.NEAREST)


@dataclass
class Score:
    """One metric's result for one image; ``value`` is ``None`` when unavailable (see reason)."""

    name: str
    value: float | None
    lower_better: bool
    available: bool
    reason: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class _Inputs:
    """One image to score, with what it is compared against."""

    sr: Image.Image
    lr: Image.Image | None
    hr: Image.Image | None
    hr_reason: str


_LOCAL: dict[str, Callable[[_Inputs], float]] = {
    "psnr": lambda x: psnr(x.sr, x.hr),
    "ssim": lambda x: ssim(x.sr, x.hr),
    "lr_psnr": lambda x: lr_consistency(x.sr, x.lr)[0],
}


def _create_metric(info: MetricInfo, device: str | torch.device) -> Any:
    import pyiqa  # heavy: imported on first use

    options = {}
    if info.name in _PATH_OPTION:
        options["pretrained_model_path"] = str(hub_dir() / info.weight_files[0])
    return pyiqa.create_metric(info.pyiqa_name, device=device, **options)


def _reference(sr: Image.Image, hr: Image.Image | None) -> tuple[Image.Image | None, str]:
    """HR cropped to the SR size from the top left, as sr_eval.py does, or why there is none."""
    if hr is None:
        return None, "no HR reference"
    if hr.width < sr.width or hr.height < sr.height:
        return (
            None,
            f"HR {hr.width}x{hr.height} is smaller than SR {sr.width}x{sr.height}",
        )
    return _rgb(hr).crop((0, 0, *sr.size)), ""


class Scorer:
    """Scores SR images with the metrics of :data:`METRICS` that work here.

    pyiqa metrics are created on first use and reused. Files shipped with the repo that the
    chosen metrics need (NIQE's parameters) are installed into the hub dir when missing.

    Args:
        names: metrics to compute, keys of :data:`METRICS`; all of them by default.
        device: where pyiqa metrics run.
    """

    def __init__(self, names: Sequence[str] | None = None, device: str | torch.device = "cpu"):
        self.names = list(METRICS) if names is None else [_info(n).name for n in names]
        self.device = device
        self._metrics: dict[str, Any] = {}
        self._failed: dict[str, str] = {}
        try:
            install_bundled_weights(self.names)
        except OSError as exc:  # NIQE then reports its file missing
            warnings.warn(f"could not install bundled metric weights: {exc}", stacklevel=2)

    def availability(self) -> dict[str, tuple[bool, str]]:
        """``{name: (available, reason)}`` for this scorer's metrics, without loading models."""
        return {n: (False, self._failed[n]) if n in self._failed else metric_available(n) for n in self.names}

    def score(
        self,
        sr: Image.Image,
        *,
        lr: Image.Image | None = None,
        hr: Image.Image | None = None,
    ) -> dict[str, Score]:
        """Score ``sr``; ``lr`` enables LR-consistency, ``hr`` the full-reference metrics.

        Never raises for a metric: one that cannot run is returned unavailable with a reason.
        """
        sr = _rgb(sr)
        inputs = _Inputs(sr, None if lr is None else _rgb(lr), *_reference(sr, hr))
        return {n: self._score_one(METRICS[n], inputs) for n in self.names}

    def _score_one(self, info: MetricInfo, inputs: _Inputs) -> Score:
        reason = self._blocker(info, inputs)
        if reason:
            return Score(info.name, None, info.lower_better, False, reason)
        start = time.perf_counter()
        try:
            value = self._compute(info, inputs)
        except Exception as exc:  # noqa: BLE001 - a broken metric must not stop the others
            reason = self._failed.get(info.name) or f"{type(exc).__name__}: {exc}"
            return Score(info.name, None, info.lower_better, False, reason, _since(start))
        return Score(info.name, value, info.lower_better, True, "", _since(start))

    def _blocker(self, info: MetricInfo, inputs: _Inputs) -> str:
        """Why ``info`` cannot be computed for these inputs ("" if it can)."""
        if info.needs_reference and inputs.hr_reason:
            return inputs.hr_reason
        if info.name == "lr_psnr" and inputs.lr is None:
            return "no LR input"
        if info.name in self._failed:
            return self._failed[info.name]
        if info.pyiqa_name is None or info.name in self._metrics:
            return ""
        return metric_available(info.name)[1]

    def _compute(self, info: MetricInfo, inputs: _Inputs) -> float:
        if info.pyiqa_name is None:
            return _LOCAL[info.name](inputs)
        images = (inputs.sr, inputs.hr) if info.needs_reference else (inputs.sr,)
        return float(self._metric(info)(*map(_to_tensor, images)).item())

    def _metric(self, info: MetricInfo) -> Any:
        if info.name not in self._metrics:
            try:
                self._metrics[info.name] = _create_metric(info, self.device)
            except Exception as exc:
                self._failed[info.name] = f"could not load: {type(exc).__name__}: {exc}"
                raise
        return self._metrics[info.name]


def _since(start: float) -> float:
    return time.perf_counter() - start
