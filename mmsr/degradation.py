"""Real-ESRGAN second-order degradation, seeded and vectorised over the batch.

Wang et al., "Real-ESRGAN: Training Real-World Blind Super-Resolution with Pure Synthetic Data"
(ICCVW 2021): blur (sec. 3.1), random resize, Gaussian or Poisson noise, JPEG, applied twice
(sec. 3.2), and a final sinc filter against ringing and overshoot (sec. 3.3). Written here because
``basicsr`` no longer imports with current torchvision.

Every stage is a pure function of a batch ``(B, C, H, W)`` in ``[0, 1]`` and per-sample parameters
of shape ``(B, ...)``. :class:`Degradation` draws those parameters from one ``torch.Generator``:
the same generator state gives the same LR batch. Random tensors are drawn on the generator's
device and then moved to the image's, so a CPU generator gives the same result on any device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.io import decode_jpeg, encode_jpeg

KERNEL_TYPES = (
    "iso",
    "aniso",
    "generalized_iso",
    "generalized_aniso",
    "plateau_iso",
    "plateau_aniso",
)
RESIZE_MODES = ("area", "bilinear", "bicubic")
KERNEL_SIZES = (7, 9, 11, 13, 15, 17, 19, 21)
_LUMA = (0.299, 0.587, 0.114)


@dataclass
class OrderConfig:
    """Random ranges of one degradation order; defaults are Real-ESRGAN's first order.

    Noise sigma is in 0..255 units; ``kernel_probs`` follows :data:`KERNEL_TYPES`;
    ``resize_probs`` is (up, down, keep).
    """

    kernel_sizes: tuple[int, ...] = KERNEL_SIZES
    kernel_probs: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sinc_prob: float = 0.1
    blur_sigma: tuple[float, float] = (0.2, 3.0)
    betag_range: tuple[float, float] = (0.5, 4.0)
    betap_range: tuple[float, float] = (1.0, 2.0)
    resize_probs: tuple[float, float, float] = (0.2, 0.7, 0.1)
    resize_range: tuple[float, float] = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5
    noise_range: tuple[float, float] = (1.0, 30.0)
    poisson_scale_range: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_range: tuple[float, float] = (30.0, 95.0)

    def __post_init__(self) -> None:
        if not self.kernel_sizes or any(k < 1 or k % 2 == 0 for k in self.kernel_sizes):
            raise ValueError(f"kernel_sizes must be odd, got {self.kernel_sizes}")
        for name, n in (("kernel_probs", len(KERNEL_TYPES)), ("resize_probs", 3)):
            probs = getattr(self, name)
            if len(probs) != n or min(probs) < 0 or abs(sum(probs) - 1) > 1e-6:
                raise ValueError(f"{name} must be {n} probabilities summing to 1")
        _check_probs(self, "sinc_prob", "gaussian_noise_prob", "gray_noise_prob")
        _check_ranges(self, "blur_sigma", "betag_range", "betap_range", "resize_range")
        _check_ranges(self, "noise_range", "poisson_scale_range", "jpeg_range")
        if self.jpeg_range[1] > 100:
            raise ValueError(f"jpeg_range must lie in [1, 100], got {self.jpeg_range}")


def _second_order() -> OrderConfig:
    return OrderConfig(
        blur_sigma=(0.2, 1.5),
        resize_probs=(0.3, 0.4, 0.3),
        resize_range=(0.3, 1.2),
        noise_range=(1.0, 25.0),
        poisson_scale_range=(0.05, 2.5),
    )


@dataclass
class DegradationConfig:
    """Settings of :class:`Degradation`; the defaults are Real-ESRGAN's x4 training settings."""

    scale: int = 4
    first: OrderConfig = field(default_factory=OrderConfig)
    second: OrderConfig = field(default_factory=_second_order)
    second_blur_prob: float = 0.8
    final_sinc_prob: float = 0.8
    final_sinc_sizes: tuple[int, ...] = KERNEL_SIZES

    def __post_init__(self) -> None:
        if self.scale < 1:
            raise ValueError(f"scale must be a positive integer, got {self.scale}")
        _check_probs(self, "second_blur_prob", "final_sinc_prob")
        if not self.final_sinc_sizes or any(k % 2 == 0 for k in self.final_sinc_sizes):
            raise ValueError(f"final_sinc_sizes must be odd, got {self.final_sinc_sizes}")

    @property
    def kernel_pad(self) -> int:
        """Side every kernel is zero-padded to, so one batch of kernels shares a shape."""
        return max(self.first.kernel_sizes + self.second.kernel_sizes + self.final_sinc_sizes)


def _check_probs(config: object, *names: str) -> None:
    for name in names:
        if not 0 <= getattr(config, name) <= 1:
            raise ValueError(f"{name} must lie in [0, 1], got {getattr(config, name)}")


def _check_ranges(config: object, *names: str) -> None:
    for name in names:
        low, high = getattr(config, name)
        if not 0 < low <= high:
            raise ValueError(f"{name} must satisfy 0 < low <= high, got {(low, high)}")


def _uniform(low: float | Tensor, high: float | Tensor, shape, generator) -> Tensor:
    u = torch.rand(shape, generator=generator, device=generator.device)
    return low + (high - low) * u


def _bernoulli(p: float, n: int, generator: torch.Generator) -> Tensor:
    return torch.rand(n, generator=generator, device=generator.device) < p


def _choice(probs: tuple[float, ...], n: int, generator: torch.Generator) -> Tensor:
    weights = torch.tensor(probs, device=generator.device)
    return torch.multinomial(weights, n, replacement=True, generator=generator)


def _randint(high: int, n: int, generator: torch.Generator) -> Tensor:
    return torch.randint(high, (n,), generator=generator, device=generator.device)


def _pick(values: tuple[int, ...], n: int, generator: torch.Generator) -> Tensor:
    index = _randint(len(values), n, generator)
    return torch.tensor(values, device=generator.device)[index]


def _random_mode(generator: torch.Generator) -> str:
    return RESIZE_MODES[int(_randint(len(RESIZE_MODES), 1, generator))]


def _randn(shape: tuple[int, ...], generator: torch.Generator, like: Tensor) -> Tensor:
    noise = torch.randn(shape, generator=generator, device=generator.device)
    return noise.to(like)


def _grid(pad_to: int, device: torch.device) -> tuple[Tensor, Tensor]:
    r = torch.arange(pad_to, device=device, dtype=torch.float32) - pad_to // 2
    return torch.meshgrid(r, r, indexing="ij")


def _normalize(kernels: Tensor, kernel_size: Tensor) -> Tensor:
    """Zero each ``(P, P)`` kernel outside its central ``k x k`` window, then make it sum to 1."""
    y, x = _grid(kernels.shape[-1], kernels.device)
    half = (kernel_size // 2).view(-1, 1, 1)
    kernels = kernels * ((y.abs() <= half) & (x.abs() <= half))
    return kernels / kernels.sum(dim=(-2, -1), keepdim=True)


def blur_kernels(
    kernel_size: Tensor,
    sigma: Tensor,
    theta: Tensor,
    beta: Tensor,
    plateau: Tensor,
    pad_to: int = 21,
) -> Tensor:
    """Generalised Gaussian or plateau kernels ``(B, pad_to, pad_to)`` summing to 1, sec. 3.1.

    ``k(C) ∝ exp(-0.5 (C^T Σ^-1 C)^β)``, or ``1 / (1 + (C^T Σ^-1 C)^β)`` where ``plateau`` ``(B,)``
    is true, with ``Σ = R(θ) diag(σx², σy²) R(θ)^T``; β = 1 gives the ordinary Gaussian.
    ``kernel_size`` ``(B,)`` odd support sizes; ``sigma`` ``(B, 2)`` (σx, σy) in pixels, equal
    for isotropic kernels; ``theta`` ``(B,)`` radians; ``beta`` ``(B,)``.
    """
    y, x = _grid(pad_to, sigma.device)
    cos, sin = theta.cos().view(-1, 1, 1), theta.sin().view(-1, 1, 1)
    u = (cos * x + sin * y) / sigma[:, 0].view(-1, 1, 1)
    v = (cos * y - sin * x) / sigma[:, 1].view(-1, 1, 1)
    q = (u.square() + v.square()) ** beta.view(-1, 1, 1)
    kernels = torch.where(plateau.view(-1, 1, 1), 1 / (1 + q), torch.exp(-0.5 * q))
    return _normalize(kernels, kernel_size)


def sinc_kernel(cutoff: Tensor, kernel_size: Tensor, pad_to: int = 21) -> Tensor:
    """Circular low-pass (2-D sinc) kernels ``(B, pad_to, pad_to)`` summing to 1, sec. 3.3.

    ``k(r) ∝ ω J1(ω r) / (2π r)`` (``ω²/(4π)`` at r = 0), ``cutoff`` ω ``(B,)`` in radians per
    pixel, in ``(0, π]``; ``kernel_size`` ``(B,)`` odd support sizes.
    """
    y, x = _grid(pad_to, cutoff.device)
    r = torch.hypot(x, y)
    r_safe = torch.where(r > 0, r, torch.ones_like(r))
    w = cutoff.view(-1, 1, 1)
    kernels = w * torch.special.bessel_j1(w * r_safe) / (2 * math.pi * r_safe)
    kernels = torch.where(r > 0, kernels, w.square() / (4 * math.pi))
    return _normalize(kernels, kernel_size)


def _keep_or_identity(kernels: Tensor, keep: Tensor) -> Tensor:
    """Replace ``kernels[i]`` ``(B, P, P)`` by a unit impulse where ``keep[i]`` is false."""
    identity = torch.zeros_like(kernels)
    identity[:, kernels.shape[-1] // 2, kernels.shape[-1] // 2] = 1
    return torch.where(keep.view(-1, 1, 1), kernels, identity)


def _random_beta(r: tuple[float, float], n: int, generator: torch.Generator) -> Tensor:
    # Real-ESRGAN draws half of the exponents below 1 and half above.
    low = _uniform(r[0], 1.0, n, generator)
    high = _uniform(1.0, r[1], n, generator)
    return torch.where(_bernoulli(0.5, n, generator), low, high)


def random_blur_kernels(batch: int, order: OrderConfig, generator: torch.Generator, pad_to: int = 21) -> Tensor:
    """Draw one blur kernel per image: a :data:`KERNEL_TYPES` kernel, or a sinc with ``sinc_prob``.

    Returns:
        ``(batch, pad_to, pad_to)`` kernels on the generator's device, each summing to 1.
    """
    size = _pick(order.kernel_sizes, batch, generator)
    kind = _choice(order.kernel_probs, batch, generator)
    aniso = kind % 2 == 1
    sigma = _uniform(*order.blur_sigma, (batch, 2), generator)
    sigma[:, 1] = torch.where(aniso, sigma[:, 1], sigma[:, 0])
    theta = _uniform(-math.pi, math.pi, batch, generator) * aniso
    plateau = kind >= 4
    generalized = (kind == 2) | (kind == 3)
    beta = torch.where(generalized, _random_beta(order.betag_range, batch, generator), 1.0)
    beta = torch.where(plateau, _random_beta(order.betap_range, batch, generator), beta)
    kernels = blur_kernels(size, sigma, theta, beta, plateau, pad_to)
    # Large sinc kernels get a lower cutoff range, as in Real-ESRGAN.
    low = torch.where(size < 13, math.pi / 3, math.pi / 5)
    sinc = sinc_kernel(_uniform(low, math.pi, batch, generator), size, pad_to)
    use_sinc = _bernoulli(order.sinc_prob, batch, generator)
    return torch.where(use_sinc.view(-1, 1, 1), sinc, kernels)


def blur(x: Tensor, kernels: Tensor) -> Tensor:
    """Filter image ``i`` with ``kernels[i]``: ``(B, C, H, W)``, ``(B, k, k)`` odd k -> ``(B, C, H, W)``."""
    b, c, h, w = x.shape
    pad = kernels.shape[-1] // 2
    # Reflect padding needs pad < size; tiny second-order images fall back to replicate.
    mode = "reflect" if pad < min(h, w) else "replicate"
    padded = F.pad(x.reshape(1, b * c, h, w), (pad, pad, pad, pad), mode=mode)
    weight = kernels.to(x).repeat_interleave(c, dim=0).unsqueeze(1)
    return F.conv2d(padded, weight, groups=b * c).view(b, c, h, w)


def resize(x: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    """Resize ``(B, C, H, W)`` to ``(B, C, *size)`` with one of :data:`RESIZE_MODES`, no antialias."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    align = False if mode != "area" else None
    return F.interpolate(x, size=size, mode=mode, align_corners=align)


def gaussian_noise(x: Tensor, sigma: Tensor, gray: Tensor, generator: torch.Generator) -> Tensor:
    """Add Gaussian noise to ``x`` ``(B, C, H, W)`` and clip to ``[0, 1]``.

    ``sigma`` ``(B,)`` in 0..255 units; where ``gray`` ``(B,)`` is true all channels share one map.
    """
    b, c, h, w = x.shape
    color = _randn((b, c, h, w), generator, x)
    mono = _randn((b, 1, h, w), generator, x)
    noise = torch.where(gray.to(x.device).view(b, 1, 1, 1), mono, color)
    return (x + noise * sigma.to(x).view(b, 1, 1, 1) / 255).clamp(0, 1)


def _poisson_residual(x: Tensor, generator: torch.Generator) -> Tensor:
    """Poisson sample minus signal, on the 8-bit grid of ``x`` ``(B, C, H, W)``.

    As in Real-ESRGAN the photon count per unit signal is the number of distinct 8-bit levels of
    the image, rounded up to a power of two.
    """
    b = x.shape[0]
    levels = (x.clamp(0, 1) * 255).round()
    present = torch.zeros(b, 256, device=x.device).scatter_(1, levels.long().flatten(1), 1.0)
    photons = (2 ** present.sum(1).log2().ceil()).view(b, 1, 1, 1)
    signal = levels / 255
    counts = torch.poisson((signal * photons).to(generator.device), generator=generator)
    return counts.to(x.device) / photons - signal


def poisson_noise(x: Tensor, scale: Tensor, gray: Tensor, generator: torch.Generator) -> Tensor:
    """Add signal-dependent Poisson noise to RGB ``x`` ``(B, 3, H, W)``, clip to ``[0, 1]``.

    ``scale`` ``(B,)`` multiplies the noise; where ``gray`` ``(B,)`` is true all channels share
    the noise of the luma.
    """
    b = x.shape[0]
    luma = (x * x.new_tensor(_LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
    color = _poisson_residual(x, generator)
    mono = _poisson_residual(luma, generator)
    noise = torch.where(gray.to(x.device).view(b, 1, 1, 1), mono, color)
    return (x + noise * scale.to(x).view(b, 1, 1, 1)).clamp(0, 1)


def jpeg(x: Tensor, quality: Tensor) -> Tensor:
    """JPEG-compress each image of ``(B, 3, H, W)`` at ``quality[i]`` (``(B,)``, 1..100).

    Uses libjpeg through torchvision, one image at a time on the CPU; not differentiable.
    """
    q = quality.round().int().tolist()
    if min(q, default=100) < 1 or max(q, default=1) > 100:
        raise ValueError(f"JPEG quality must lie in [1, 100], got {q}")
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    decoded = [decode_jpeg(encode_jpeg(img, quality=qi)) for img, qi in zip(images, q)]
    if not decoded:
        return x
    return torch.stack(decoded).to(x) / 255


def bicubic_degrade(hr: Tensor, scale: int = 4) -> Tensor:
    """Antialiased bicubic downscale (matches PIL's BICUBIC): ``(B, C, H, W) -> (B, C, H//s, W//s)``."""
    h, w = hr.shape[-2:]
    size = (h // scale, w // scale)
    lr = F.interpolate(hr, size=size, mode="bicubic", antialias=True, align_corners=False)
    return lr.clamp(0, 1)


class Degradation:
    """Real-ESRGAN second-order degradation, sec. 3.2 and 3.3.

    Example:
        >>> degrade = Degradation()
        >>> lr = degrade(torch.rand(4, 3, 128, 128), torch.Generator().manual_seed(0))
        >>> lr.shape
        torch.Size([4, 3, 32, 32])
    """

    def __init__(self, config: DegradationConfig | None = None) -> None:
        self.config = config or DegradationConfig()

    @torch.no_grad()
    def __call__(self, hr: Tensor, generator: torch.Generator) -> Tensor:
        """Degrade ``hr`` ``(B, 3, H, W)`` in ``[0, 1]`` to ``(B, 3, H//scale, W//scale)``.

        The result lies on the 8-bit grid. Kernels, noise and JPEG quality are drawn per image;
        resize factors and modes per batch, since the batch must keep one size.
        """
        cfg = self.config
        self.check_inputs(hr, generator)
        b, _, h, w = hr.shape
        lr_size = (h // cfg.scale, w // cfg.scale)
        # 1. First order: blur, random resize, noise, JPEG.
        x = blur(hr, random_blur_kernels(b, cfg.first, generator, cfg.kernel_pad))
        x = self._random_resize(x, cfg.first, (h, w), generator)
        x = self._random_noise(x, cfg.first, generator)
        x = jpeg(x, _uniform(*cfg.first.jpeg_range, b, generator))
        # 2. Second order: blur (with probability second_blur_prob), random resize, noise.
        kernels = random_blur_kernels(b, cfg.second, generator, cfg.kernel_pad)
        kernels = _keep_or_identity(kernels, _bernoulli(cfg.second_blur_prob, b, generator))
        x = blur(x, kernels)
        x = self._random_resize(x, cfg.second, lr_size, generator)
        x = self._random_noise(x, cfg.second, generator)
        # 3. Resize to the LR size with the final sinc filter, and JPEG, in random order.
        x = self._final(x, lr_size, generator)
        # 4. Quantise to 8 bits, as a saved LR image would be.
        return (x.clamp(0, 1) * 255).round() / 255

    def check_inputs(self, hr: Tensor, generator: torch.Generator) -> None:
        """Raise unless ``hr`` is a float ``(B, 3, H, W)`` batch in ``[0, 1]``, H, W >= scale."""
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, not {type(generator)}")
        if not isinstance(hr, Tensor):
            raise TypeError(f"hr must be a torch.Tensor, not {type(hr)}")
        shape = tuple(hr.shape)
        if hr.ndim != 4 or shape[1] != 3 or not shape[0]:
            raise ValueError(f"hr must be a non-empty (B, 3, H, W) batch, got {shape}")
        if min(shape[2:]) < self.config.scale:
            raise ValueError(f"hr of shape {shape} is smaller than the scale")
        if not hr.is_floating_point() or hr.min() < 0 or hr.max() > 1:
            raise ValueError("hr must be a float tensor with values in [0, 1]")

    def _random_resize(
        self,
        x: Tensor,
        order: OrderConfig,
        ref: tuple[int, int],
        generator: torch.Generator,
    ) -> Tensor:
        """Resize to ``ref`` times a factor drawn as up, down or keep (one per batch)."""
        direction = int(_choice(order.resize_probs, 1, generator))
        lo, hi = order.resize_range
        low, high = ((1.0, hi), (lo, 1.0), (1.0, 1.0))[direction]
        factor = float(_uniform(low, high, 1, generator))
        size = (max(1, int(ref[0] * factor)), max(1, int(ref[1] * factor)))
        return resize(x, size, _random_mode(generator))

    def _random_noise(self, x: Tensor, order: OrderConfig, generator: torch.Generator) -> Tensor:
        """Gaussian noise with ``gaussian_noise_prob``, else Poisson noise, per image."""
        b = x.shape[0]
        gauss = _bernoulli(order.gaussian_noise_prob, b, generator)
        gray = _bernoulli(order.gray_noise_prob, b, generator)
        sigma = _uniform(*order.noise_range, b, generator)
        scale = _uniform(*order.poisson_scale_range, b, generator)
        # Each sub-batch gets only its own kind of noise.
        on_x = gauss.to(x.device)
        out = torch.empty_like(x)
        out[on_x] = gaussian_noise(x[on_x], sigma[gauss], gray[gauss], generator)
        out[~on_x] = poisson_noise(x[~on_x], scale[~gauss], gray[~gauss], generator)
        return out

    def _final(self, x: Tensor, lr_size: tuple[int, int], generator: torch.Generator) -> Tensor:
        """Resize to ``lr_size`` plus sinc filter (``final_sinc_prob``), and JPEG, in random order."""
        cfg = self.config
        b = x.shape[0]
        size = _pick(cfg.final_sinc_sizes, b, generator)
        cutoff = _uniform(math.pi / 3, math.pi, b, generator)
        keep = _bernoulli(cfg.final_sinc_prob, b, generator)
        kernels = _keep_or_identity(sinc_kernel(cutoff, size, cfg.kernel_pad), keep)
        quality = _uniform(*cfg.second.jpeg_range, b, generator)
        sinc_first = bool(_bernoulli(0.5, 1, generator))
        mode = _random_mode(generator)
        if sinc_first:
            return jpeg(blur(resize(x, lr_size, mode), kernels), quality)
        return blur(resize(jpeg(x, quality), lr_size, mode), kernels)
