"""Each stage of the Real-ESRGAN degradation does what it claims; the pipeline is seeded."""

import math
import time

import numpy as np
import pytest
import torch
from PIL import Image

from mmsr.degradation import (
    Degradation,
    DegradationConfig,
    OrderConfig,
    bicubic_degrade,
    blur,
    blur_kernels,
    gaussian_noise,
    jpeg,
    poisson_noise,
    random_blur_kernels,
    resize,
    sinc_kernel,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _kernel(sigma=(2.0, 2.0), theta=0.0, beta=1.0, plateau=False, size=21) -> torch.Tensor:
    """One ``(21, 21)`` kernel from scalar parameters."""
    return blur_kernels(
        torch.tensor([size]),
        torch.tensor([sigma]),
        torch.tensor([theta]),
        torch.tensor([beta]),
        torch.tensor([plateau]),
    )[0]


def _high_freq_energy(x: torch.Tensor) -> torch.Tensor:
    """Spectral energy above a quarter of the sampling rate, per image."""
    spectrum = torch.fft.fft2(x - x.mean(dim=(-2, -1), keepdim=True)).abs().square()
    fy = torch.fft.fftfreq(x.shape[-2]).abs().view(-1, 1)
    fx = torch.fft.fftfreq(x.shape[-1]).abs().view(1, -1)
    return (spectrum * (torch.hypot(fy, fx) > 0.25)).sum(dim=(1, 2, 3))


def test_random_kernels_sum_to_one_and_vary():
    kernels = random_blur_kernels(64, OrderConfig(), _gen())
    assert kernels.shape == (64, 21, 21)
    torch.testing.assert_close(kernels.sum(dim=(1, 2)), torch.ones(64))
    assert torch.isfinite(kernels).all()
    assert (kernels[1:] - kernels[:1]).abs().amax(dim=(1, 2)).min() > 0


@pytest.mark.parametrize(("beta", "plateau"), [(1.0, False), (0.6, False), (3.0, False), (1.5, True)])
def test_isotropic_kernel_is_rotation_symmetric(beta, plateau):
    k = _kernel(sigma=(2.0, 2.0), theta=0.7, beta=beta, plateau=plateau)
    torch.testing.assert_close(k.sum(), torch.tensor(1.0))
    torch.testing.assert_close(k, k.rot90(1, (0, 1)))
    torch.testing.assert_close(k, k.T)
    c = 10  # (3, 4) and (5, 0) lie at the same radius
    torch.testing.assert_close(k[c + 3, c + 4], k[c + 5, c])


def test_anisotropic_kernel_is_elongated_along_theta():
    k = _kernel(sigma=(3.0, 0.8), theta=0.0)
    c = 10
    assert k[c, c + 3] > 10 * k[c + 3, c]  # wide along x, narrow along y
    assert (k - k.rot90(1, (0, 1))).abs().max() > 0.01
    rotated = _kernel(sigma=(3.0, 0.8), theta=math.pi / 2)
    torch.testing.assert_close(rotated, k.T)


def test_kernel_size_limits_support():
    k = _kernel(sigma=(3.0, 3.0), size=7)
    assert k[7:14, 7:14].sum() == pytest.approx(1.0)
    assert (k[7:14, 7:14] > 0).all()


def test_blur_reduces_high_frequency_energy():
    x = torch.rand(2, 3, 64, 64, generator=_gen())
    kernels = torch.stack([_kernel(sigma=(1.5, 1.5)), _kernel(sigma=(3.0, 0.5), theta=1.0)])
    out = blur(x, kernels)
    assert out.shape == x.shape
    assert (_high_freq_energy(out) < 0.2 * _high_freq_energy(x)).all()
    torch.testing.assert_close(out.mean(), x.mean(), atol=5e-3, rtol=0)


def test_blur_with_delta_kernel_is_identity():
    x = torch.rand(2, 3, 16, 16, generator=_gen())
    delta = torch.zeros(2, 21, 21)
    delta[:, 10, 10] = 1
    torch.testing.assert_close(blur(x, delta), x)


def test_gaussian_noise_has_requested_std_and_gray_is_shared():
    x = torch.full((3, 3, 96, 96), 0.5)
    sigma = torch.tensor([5.0, 10.0, 20.0])
    gray = torch.tensor([False, True, False])
    noise = (gaussian_noise(x, sigma, gray, _gen()) - x) * 255
    torch.testing.assert_close(noise.std(dim=(1, 2, 3)), sigma, rtol=0.05, atol=0)
    torch.testing.assert_close(noise[1, 0], noise[1, 1])
    torch.testing.assert_close(noise[1, 0], noise[1, 2])
    assert (noise[0, 0] - noise[0, 1]).abs().mean() > 1.0


def test_poisson_noise_variance_grows_with_signal():
    ramp = torch.linspace(0, 1, 256).expand(2, 3, 128, 256)  # 256 levels: 256 photons per unit
    scale = torch.tensor([1.0, 2.0])
    noise = poisson_noise(ramp, scale, torch.tensor([False, True]), _gen()) - ramp
    dark, bright = noise[..., 26:51], noise[..., 154:179]  # signal ~0.15 and ~0.65
    for i, s in enumerate(scale.tolist()):
        var_dark, var_bright = dark[i].var().item(), bright[i].var().item()
        assert var_bright > 3 * var_dark
        assert var_bright == pytest.approx(s**2 * 0.65 / 256, rel=0.15)
    assert noise[..., 26:179].mean().abs() < 2e-3
    torch.testing.assert_close(noise[1, 0], noise[1, 2])


def _textured_image() -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    smooth = torch.stack([xx, yy, (xx + yy) / 2])
    detail = 0.1 * torch.sin(2 * math.pi * 9 * xx) * torch.sin(2 * math.pi * 7 * yy)
    return ((0.8 * smooth + 0.1 + detail).clamp(0, 1) * 255).round()[None] / 255


def test_jpeg_low_quality_changes_image_and_quality_100_barely():
    x = _textured_image().expand(2, 3, 64, 64)
    out = jpeg(x, torch.tensor([100.0, 20.0]))
    assert out.shape == x.shape
    err = (out - x).abs().mean(dim=(1, 2, 3))
    assert err[0] < 2 / 255
    assert err[1] > 3 * err[0]
    assert err[1] > 2 / 255


def test_sinc_filter_is_low_pass():
    cutoff = torch.tensor([math.pi / 3, math.pi / 2, 2.5])
    kernels = sinc_kernel(cutoff, torch.tensor([21, 13, 7]))
    torch.testing.assert_close(kernels.sum(dim=(1, 2)), torch.ones(3))
    i = torch.arange(64)
    checker = ((i[:, None] + i[None, :]) % 2).float().expand(3, 3, 64, 64)
    slow = (0.5 + 0.4 * torch.sin(2 * math.pi * i / 32)).expand(3, 3, 64, 64)
    assert (blur(checker, kernels).std(dim=(1, 2, 3)) < 0.1 * checker.std()).all()
    kept = blur(slow, kernels).std(dim=(1, 2, 3)) / slow.std()
    assert (kept > 0.9).all()


def test_resize_sizes_and_modes():
    x = torch.rand(2, 3, 40, 30, generator=_gen())
    for mode in ("area", "bilinear", "bicubic"):
        assert resize(x, (13, 50), mode).shape == (2, 3, 13, 50)
    with pytest.raises(ValueError, match="resize mode"):
        resize(x, (10, 10), "lanczos")


def test_bicubic_degrade_matches_pil():
    rgb = (torch.rand(3, 64, 48, generator=_gen()) * 255).round().to(torch.uint8)
    pil = Image.fromarray(rgb.permute(1, 2, 0).numpy()).resize((12, 16), Image.Resampling.BICUBIC)
    expected = torch.from_numpy(np.array(pil)).permute(2, 0, 1).float() / 255
    out = bicubic_degrade(rgb[None].float() / 255, scale=4)[0]
    assert out.shape == (3, 16, 12)
    assert (out - expected).abs().mean() < 1 / 255


def test_pipeline_shape_range_and_8bit():
    hr = torch.rand(4, 3, 128, 96, generator=_gen(1))
    lr = Degradation()(hr, _gen())
    assert lr.shape == (4, 3, 32, 24)
    assert lr.min() >= 0 and lr.max() <= 1
    torch.testing.assert_close(lr * 255, (lr * 255).round())


def test_pipeline_is_seeded():
    hr = torch.rand(4, 3, 64, 64, generator=_gen(1))
    degrade = Degradation()
    a, b, c = degrade(hr, _gen(3)), degrade(hr, _gen(3)), degrade(hr, _gen(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_pipeline_does_not_touch_global_rng():
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    Degradation()(torch.rand(2, 3, 32, 32, generator=_gen()), _gen())
    assert torch.equal(torch.rand(1), before)


def test_pipeline_is_fast_on_a_small_batch():
    hr = torch.rand(4, 3, 128, 128, generator=_gen())
    degrade = Degradation()
    seconds = []
    for seed in range(3):
        start = time.perf_counter()
        degrade(hr, _gen(seed))
        seconds.append(time.perf_counter() - start)
    assert min(seconds) < 1.0


def test_invalid_inputs_raise():
    degrade = Degradation()
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        degrade(torch.rand(1, 1, 32, 32), _gen())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        degrade(torch.rand(1, 3, 32, 32) * 2, _gen())
    with pytest.raises(TypeError, match="Generator"):
        degrade(torch.rand(1, 3, 32, 32), 0)
    with pytest.raises(ValueError, match="resize_probs"):
        OrderConfig(resize_probs=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="final_sinc_sizes"):
        DegradationConfig(final_sinc_sizes=(8,))
    assert DegradationConfig(final_sinc_sizes=(25,)).kernel_pad == 25
