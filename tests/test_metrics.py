"""Metrics: facts table, offline availability, agreement with pyiqa and sr_eval.py, LR-consistency."""

import math
import socket
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from skimage import data

from mmsr import metrics
from mmsr.metrics import (
    METRICS,
    Scorer,
    lr_consistency,
    metric_available,
    psnr,
    residual_heatmap,
    ssim,
)

FR = {"psnr", "ssim", "lpips", "dists"}
NR = {"musiq", "niqe", "clipiqa", "maniqa", "piqe", "lr_psnr"}
LOWER_BETTER = {"lpips", "dists", "niqe", "piqe"}


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty TORCH_HOME, so nothing depends on the user's cache."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


@pytest.fixture(scope="module")
def astronaut():
    return Image.fromarray(data.astronaut())


@pytest.fixture(scope="module")
def lr_sr(astronaut):
    lr = astronaut.resize((128, 128), Image.BICUBIC)
    return lr, lr.resize((512, 512), Image.BICUBIC)


def _noise(size, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_facts_table_directions():
    assert set(METRICS) == FR | NR
    assert {n for n, m in METRICS.items() if m.lower_better} == LOWER_BETTER
    assert {n for n, m in METRICS.items() if m.needs_reference} == FR
    for name, info in METRICS.items():
        assert info.name == name and info.range[0] < info.range[1]


def test_facts_agree_with_pyiqa():
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    for info in METRICS.values():
        cfg = DEFAULT_CONFIGS.get(info.pyiqa_name or info.name)
        if cfg is not None:
            assert cfg.get("lower_better", False) == info.lower_better, info.name
            assert (cfg["metric_mode"] == "FR") == info.needs_reference, info.name


def test_weight_file_names_match_their_sources():
    import torchvision.models as tvm
    from pyiqa.archs import (
        clip_model,
        dists_arch,
        lpips_arch,
        maniqa_arch,
        musiq_arch,
        niqe_arch,
    )

    def base(url):
        return url.rsplit("/", 1)[-1]

    sources = {
        "lpips": {
            base(lpips_arch.default_model_urls["0.1_alex"]),
            base(tvm.AlexNet_Weights.IMAGENET1K_V1.url),
        },
        "dists": {
            base(dists_arch.default_model_urls["url"]),
            base(tvm.VGG16_Weights.IMAGENET1K_V1.url),
        },
        "musiq": {base(musiq_arch.default_model_urls["koniq10k"])},
        "niqe": {base(niqe_arch.default_model_urls["niqe"])},
        "clipiqa": {base(clip_model._MODELS["RN50"])},
        "maniqa": {base(maniqa_arch.default_model_urls["koniq"]), "model.safetensors"},
    }
    for name, expected in sources.items():
        assert {f.rsplit("/", 1)[-1] for f in METRICS[name].weight_files} == expected, name


def test_missing_weight_file_is_named(torch_home):
    ok, reason = metric_available("musiq")
    assert not ok and "musiq_koniq_ckpt-e95806b9.pth" in reason
    ok, reason = metric_available("lpips")
    assert not ok and "alexnet-owt-7be5be79.pth" in reason
    assert metric_available("maniqa")[0] is False
    assert metric_available("clipiqa")[0] is False
    for name in ("psnr", "ssim", "piqe", "lr_psnr"):
        assert metric_available(name) == (True, "")
    with pytest.raises(ValueError, match="unknown metric"):
        metric_available("fid")


def test_niqe_available_once_installed(torch_home):
    ok, reason = metric_available("niqe")
    assert not ok and "niqe_modelparameters.mat" in reason
    assert metrics.install_bundled_weights() == [torch_home / "hub/pyiqa/niqe_modelparameters.mat"]
    assert metric_available("niqe") == (True, "")
    assert metrics.install_bundled_weights() == []


def test_install_never_overwrites(torch_home):
    target = torch_home / "hub/pyiqa/niqe_modelparameters.mat"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"user file")
    Scorer(["niqe"])
    assert target.read_bytes() == b"user file"


def test_niqe_values(torch_home, astronaut):
    import pyiqa

    scorer = Scorer(["niqe"])
    clean = scorer.score(astronaut)["niqe"]
    assert clean.available and clean.lower_better and 1.0 < clean.value < 8.0
    blurred = scorer.score(astronaut.filter(ImageFilter.GaussianBlur(3)))["niqe"].value
    noise = np.random.default_rng(0).normal(0, 25, (512, 512, 3))
    noisy = Image.fromarray(np.clip(np.asarray(astronaut) + noise, 0, 255).astype(np.uint8))
    assert blurred > clean.value + 1 and scorer.score(noisy)["niqe"].value > clean.value + 1
    path = torch_home / "hub/pyiqa/niqe_modelparameters.mat"
    direct = pyiqa.create_metric("niqe", device="cpu", pretrained_model_path=str(path))
    assert direct(metrics._to_tensor(astronaut)).item() == pytest.approx(clean.value, abs=1e-4)


def test_piqe_runs_and_is_created_once(torch_home, monkeypatch, astronaut):
    created = []

    def counted(info, device):
        created.append(info.name)
        return create(info, device)

    create = metrics._create_metric
    monkeypatch.setattr(metrics, "_create_metric", counted)
    scorer = Scorer(["piqe"])
    first, second = (scorer.score(astronaut)["piqe"] for _ in range(2))
    assert first.available and first.lower_better and 0.0 <= first.value <= 100.0
    assert second.value == first.value and created == ["piqe"]


def test_scorer_installs_only_what_it_needs(torch_home):
    Scorer(["psnr", "piqe"])
    assert not (torch_home / "hub").exists()


def test_psnr_like_sr_eval():
    a = Image.new("RGB", (8, 8), (100, 100, 100))
    assert psnr(a, a) == math.inf
    assert psnr(a, Image.new("RGB", (8, 8), (101, 101, 101))) == pytest.approx(48.1308, abs=1e-4)
    with pytest.raises(ValueError):
        psnr(a, Image.new("RGB", (4, 4)))


def test_ssim_agrees_with_pyiqa(astronaut):
    import pyiqa

    reference = pyiqa.create_metric("ssim", device="cpu")
    crop = astronaut.crop((0, 0, 96, 80))
    noisy = Image.blend(crop, _noise(crop.size), 0.2)
    for other in (noisy, crop.filter(ImageFilter.GaussianBlur(2))):
        expected = reference(metrics._to_tensor(other), metrics._to_tensor(crop)).item()
        assert ssim(other, crop) == pytest.approx(expected, abs=1e-6)
    assert ssim(crop, crop) == pytest.approx(1.0)


def test_lr_consistency_detects_invented_content(lr_sr):
    lr, sr = lr_sr
    faithful, residual = lr_consistency(sr, lr)
    assert faithful > 35.0
    assert residual.shape == (128, 128) and residual.dtype == np.float32
    pasted = sr.copy()
    pasted.paste(_noise((128, 128)), (192, 192))
    invented, residual = lr_consistency(pasted, lr)
    assert invented < faithful - 10.0
    inside, outside = residual[50:78, 50:78].mean(), residual[:40, :40].mean()
    assert inside > 10 * outside


def test_heatmap_size_mode_and_fixed_scale():
    residual = np.array([[0.0, 32.0], [64.0, 200.0]], np.float32)
    heat = residual_heatmap(residual, (64, 48))
    assert heat.size == (64, 48) and heat.mode == "RGB"
    px = np.asarray(heat)
    assert (px[0, 0] != px[0, 63]).any()
    np.testing.assert_array_equal(px[47, 0], px[47, 63])  # 64 and 200 clip to the top colour
    with pytest.raises(ValueError):
        residual_heatmap(np.zeros((2, 2, 3)), (4, 4))


def test_scorer_offline_without_reference(torch_home, monkeypatch, lr_sr):
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    lr, sr = lr_sr
    scorer = Scorer()
    scores = scorer.score(sr, lr=lr)
    assert not attempts
    for name in FR:
        assert not scores[name].available and scores[name].reason == "no HR reference"
    for name in ("niqe", "piqe", "lr_psnr"):
        assert scores[name].available and scores[name].value is not None, scores[name].reason
    for name in ("musiq", "clipiqa", "maniqa"):
        assert not scores[name].available and "missing weight file" in scores[name].reason
        assert scores[name].value is None
    assert scorer.availability()["musiq"] == (False, scores["musiq"].reason)


def test_scorer_reference_handling(torch_home, lr_sr, astronaut):
    _, sr = lr_sr
    scorer = Scorer(["psnr", "ssim", "lr_psnr"])
    big_hr = Image.new("RGB", (520, 530))
    big_hr.paste(astronaut)
    scores = scorer.score(sr, hr=big_hr)
    assert scores["psnr"].value == pytest.approx(psnr(sr, astronaut))
    assert scores["lr_psnr"].reason == "no LR input"
    small = scorer.score(sr, hr=astronaut.resize((256, 256)))
    assert not small["psnr"].available and "smaller than SR" in small["psnr"].reason
    with pytest.raises(ValueError, match="unknown metric"):
        Scorer(["psnr", "fid"])


def test_metrics_created_once_and_failures_reported(monkeypatch, torch_home, astronaut):
    created = []

    def broken(info, device):
        created.append(info.name)

        def run(*inputs):
            raise RuntimeError("model exploded")

        return run

    monkeypatch.setattr(metrics, "_create_metric", broken)
    scorer = Scorer(["piqe", "psnr"])
    for _ in range(2):
        scores = scorer.score(astronaut, hr=astronaut)
        assert not scores["piqe"].available and "model exploded" in scores["piqe"].reason
        assert scores["psnr"].value == math.inf
    assert created == ["piqe"]


def test_bundled_asset_present():
    assert metrics.BUNDLED_WEIGHTS["pyiqa/niqe_modelparameters.mat"].is_file()
