"""lite v2: lossless latent space, k-means tokenizer, stage 1 + residual diffusion, trained modalities."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, UNet2DConditionModel
from PIL import Image

from mmsr import MODALITIES, MMSRPipeline
from mmsr.autoencoder import PixelShuffleAutoencoder
from mmsr.presets import FEW_STEP_SCHEDULER_CONFIG, PRESETS, _unet_config, build_components, load_pipeline
from mmsr.tokenizer import ModalityTokenizer, PatchCodebook


def test_pixel_shuffle_autoencoder_is_lossless_and_orthonormal():
    vae = PixelShuffleAutoencoder(patch_size=8)
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    z = vae.encode(x).latent_dist.mode()
    assert z.shape == (2, 192, 4, 6)
    assert torch.equal(vae.decode(z).sample, x)
    assert torch.isclose(z.pow(2).sum(), x.pow(2).sum())  # an MSE in latents is an MSE in pixels


def test_patch_codebook_fits_uses_its_codes_and_reconstructs_its_maps():
    gen = torch.Generator().manual_seed(0)
    # 4 distinct map patterns: k-means with 4 codes must recover each one exactly
    patterns = torch.rand(4, 3, 16, 16, generator=gen).round() * 2 - 1
    grid = patterns[torch.randint(0, 4, (2, 16, 16), generator=gen)]  # (2, 16, 16, 3, 16, 16)
    maps = grid.permute(0, 3, 1, 4, 2, 5).reshape(2, 3, 256, 256)
    codebook = PatchCodebook(num_vq_embeddings=4, patch_size=16, pool=16)
    features = codebook.encode(maps).latents
    assert features.shape == (2, 768, 16, 16)
    report = codebook.fit(features.flatten(2).transpose(1, 2).reshape(-1, 768), seed=0)
    assert report["codes_used"] == 4 and report["mse"] < 1e-10
    quantized, _, (_, _, idx) = codebook.quantize(features)
    assert idx.shape == (2 * 256,)
    assert torch.allclose(codebook.decode(quantized), maps)
    tokens = ModalityTokenizer(codebook, text_dim=1024)(maps)
    assert tokens.shape == (2, 256, 1024) and torch.all(tokens[..., 768:] == 0)


def test_few_step_schedule_ends_on_the_clean_sample():
    scheduler = DDIMScheduler(**FEW_STEP_SCHEDULER_CONFIG)
    scheduler.set_timesteps(4)
    assert scheduler.timesteps.tolist() == [999, 749, 499, 249]
    assert scheduler.alphas_cumprod[-1] < 1e-6  # zero terminal SNR: the chain starts from pure noise


def residual_pipe(**config):
    """tiny-random with lite's parts: a lossless f2 pixel-unshuffle (12 channels) and the few-step schedule."""
    parts = build_components("tiny-random")
    parts["vae"] = PixelShuffleAutoencoder(patch_size=2)
    parts["unet"] = UNet2DConditionModel(
        **_unet_config((16, 32), cross_dim=32, head_dim=4, groups=8, layers=1, latent=12)
    )
    parts["scheduler"] = DDIMScheduler(**FEW_STEP_SCHEDULER_CONFIG)
    torch.nn.init.zeros_(parts["unet"].conv_out.weight)
    torch.nn.init.zeros_(parts["unet"].conv_out.bias)
    pipe = MMSRPipeline(**parts, **config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_an_untrained_residual_model_returns_the_stage1_image_exactly():
    pipe = residual_pipe(stage1="realesrgan-x4plus", residual=True)
    lr = torch.rand(1, 3, 12, 20)
    stage1 = (torch.rand(1, 3, 48, 80) * 255).round() / 255
    out = pipe(lr, "a cat", stage1=stage1, num_inference_steps=4, generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (1, 3, 48, 80)
    assert (out.images - stage1).abs().max() < 1e-6
    assert "stage1" not in out.timings  # a precomputed stage 1 is not run again


def test_residual_scale_moves_the_output_linearly_from_stage1_to_the_model(tmp_path):
    """``stage 1 + s * residual``: s = 0 is stage 1, s = 1 the model; the checkpoint carries its default."""
    pipe = residual_pipe(stage1="realesrgan-x4plus", residual=True)
    torch.nn.init.normal_(pipe.unet.conv_out.weight, std=0.02)  # a model that predicts a residual
    lr = torch.rand(1, 3, 12, 20)
    stage1 = torch.full((1, 3, 48, 80), 0.5)

    def run(pipe, **kw):
        gen = torch.Generator().manual_seed(0)
        return pipe(lr, "a cat", stage1=stage1, num_inference_steps=2, generator=gen, **kw).images

    full, half, none = run(pipe), run(pipe, residual_scale=0.5), run(pipe, residual_scale=0.0)
    assert torch.equal(none, stage1)
    assert (full - stage1).abs().mean() > 1e-3
    assert torch.allclose(half - stage1, (full - stage1) / 2, atol=1e-5)  # no clipping near 0.5 grey
    pipe.register_to_config(residual_scale=0.5)
    pipe.save_pretrained(tmp_path)
    again = MMSRPipeline.from_pretrained(tmp_path, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    assert again.config.residual_scale == 0.5
    assert torch.allclose(run(again), half, atol=1e-5)  # its default
    with pytest.raises(ValueError, match="residual_scale must be"):
        run(pipe, residual_scale=float("nan"))
    with pytest.raises(ValueError, match="needs a residual pipeline"):
        residual_pipe()(lr, "a cat", num_inference_steps=1, residual_scale=0.5)


def test_engine_records_the_residual_scale_it_ran_with():
    from mmsr.engine import Engine
    from mmsr.settings import UpscaleSettings

    pipe = residual_pipe(stage1="realesrgan-x4plus", residual=True, residual_scale=0.8)
    engine = Engine(pipe, "tiny-random")
    lr = Image.new("RGB", (8, 8), (10, 200, 30))
    engine.remember_stage1(lr, Image.new("RGB", (32, 32), (1, 2, 3)))
    settings = UpscaleSettings(steps=1, auto_caption=False)
    assert engine.upscale(lr, settings).settings.residual_scale == 0.8  # the checkpoint's, so a record replays it
    own = UpscaleSettings(steps=1, auto_caption=False, residual_scale=0)
    assert engine.upscale(lr, own).settings.residual_scale == 0
    with pytest.raises(ValueError, match=r"residual scale must lie in \[0, 1\]"):
        UpscaleSettings(residual_scale=1.5)


def test_pipeline_config_round_trips_and_lite_declares_it(tmp_path):
    pipe = residual_pipe(stage1="realesrgan-x4plus", residual=True, trained_modalities=["edges"])
    pipe.save_pretrained(tmp_path)
    again = MMSRPipeline.from_pretrained(tmp_path, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    assert again.config.stage1 == "realesrgan-x4plus" and again.config.residual
    assert list(again.config.trained_modalities) == ["edges"]
    assert PRESETS["lite"].pipeline["stage1"] == "realesrgan-x4plus"
    assert PRESETS["full"].pipeline == {}  # full keeps the paper's bicubic LR condition
    with pytest.raises(ValueError, match="unknown stage1"):
        residual_pipe(stage1="waifu2x")


def test_untrained_modalities_are_m0_in_the_pipeline():
    pipe = residual_pipe(trained_modalities=["edges"])
    lr = torch.rand(1, 3, 16, 16)
    maps = {name: torch.rand(1, 3, 256, 256) for name in MODALITIES}
    kw = dict(num_inference_steps=2, guidance_scale=0)
    gen = torch.Generator

    with_depth = pipe(lr, "x", maps=maps, generator=gen().manual_seed(0), **kw).images
    without = pipe(lr, "x", maps={"edges": maps["edges"]}, generator=gen().manual_seed(0), **kw).images
    assert torch.equal(with_depth, without)


def test_engine_says_when_the_checkpoint_never_learned_a_modality():
    from mmsr.engine import Engine
    from mmsr.settings import UpscaleSettings

    pipe = load_pipeline("tiny-random")
    pipe.register_to_config(trained_modalities=["edges"])
    try:
        engine = Engine(pipe, "tiny-random")
        lr = Image.fromarray((np.random.default_rng(0).random((24, 24, 3)) * 255).astype(np.uint8))
        depth = Image.fromarray(np.full((24, 24, 3), 128, np.uint8))
        result = engine.upscale(lr, UpscaleSettings(steps=1, auto_caption=False), user_maps={"depth": depth})
        assert not result.modalities["depth"].available
        assert "not trained with depth" in result.modalities["depth"].reason
        assert any("not trained with depth" in w for w in result.warnings)
        assert result.modalities["edges"].available
    finally:
        pipe.register_to_config(trained_modalities=list(MODALITIES))


def test_engine_caches_stage1_and_it_doubles_as_the_realesrgan_column():
    from mmsr.engine import Engine

    pipe = residual_pipe(stage1="realesrgan-x4plus", residual=True)
    engine = Engine(pipe, "tiny-random")
    lr = Image.new("RGB", (8, 8), (10, 200, 30))
    known = Image.new("RGB", (32, 32), (1, 2, 3))
    engine.remember_stage1(lr, known)
    assert engine.stage1(lr) is engine.stage1(lr)
    assert np.array_equal(np.asarray(engine.baseline_from_stage1("realesrgan", lr)), np.asarray(known))
    assert engine.baseline_from_stage1("bicubic", lr) is None


def test_evaluate_samples_sets_the_engines_sample_count(tmp_path, monkeypatch):
    """``train --evaluate --samples K`` reaches the engine the scores come from; K < 1 is refused."""
    import argparse

    from mmsr.engine import Engine
    from mmsr.training import evaluate

    monkeypatch.setattr(Engine, "load", classmethod(lambda cls, preset, **kw: argparse.Namespace(num_samples=8)))
    (tmp_path / "captions.json").write_text("{}")
    assert evaluate.Runner(tmp_path, tmp_path, samples=3)._engine("lite").num_samples == 3
    assert evaluate.Runner(tmp_path, tmp_path)._engine("lite").num_samples == 8
    args = argparse.Namespace(contact_sheet=None, out=tmp_path, methods="mmsr", sets="", samples=0, data=tmp_path)
    with pytest.raises(ValueError, match="--samples must be at least 1"):
        evaluate.main(args)
    with pytest.raises(ValueError, match="--guidance must be >= 0"):
        evaluate.main(argparse.Namespace(**{**vars(args), "samples": 2, "guidance": -1.0}))
    seen = []
    monkeypatch.setattr(evaluate, "contact_sheet", lambda runner, path: seen.append(runner.samples))
    evaluate.main(argparse.Namespace(**{**vars(args), "samples": 2, "contact_sheet": tmp_path / "sheet.png"}))
    assert seen == [2]  # the contact sheet is made at the same count as the tables

    class Recorder:  # stands in for the engine: keeps the settings each method ran under
        num_samples, runs = 8, []

        def remember_stage1(self, lr, image):
            pass

        def text_only(self, lr, settings):
            self.runs.append(settings)
            return argparse.Namespace(image=lr)

        upscale = text_only

    monkeypatch.setattr(Engine, "load", classmethod(lambda cls, preset, **kw: Recorder()))
    lr = Image.new("RGB", (8, 8))
    evaluate.Runner(tmp_path, tmp_path, guidance=0.0)("mmsr_m0", lr, "set14", "x")
    evaluate.Runner(tmp_path, tmp_path)("twin", lr, "set14", "x")
    assert [s.guidance for s in Recorder.runs] == [0.0, None]  # --guidance reaches the run; None: the preset's


def test_evaluate_processes_splitting_sets_or_methods_write_separate_tables(tmp_path, monkeypatch):
    import argparse

    from mmsr.training import evaluate

    monkeypatch.setattr(
        evaluate,
        "run",
        lambda data, out, ckpt, sets, methods, *a: {s: {"x4": {m: {"psnr": (20.0, 1)} for m in methods}} for s in sets},
    )
    base = dict(contact_sheet=None, out=tmp_path, samples=None, guidance=None, data=tmp_path, limit=None)
    for sets, methods in (("bsd68", "realesrgan,mmsr"), ("set14,realset65", "realesrgan,mmsr"), ("set14", "")):
        evaluate.main(argparse.Namespace(**base, sets=sets, methods=methods))
    written = sorted(p.name for p in tmp_path.glob("*.json"))
    assert written == [
        "results-realesrgan-mmsr-bsd68.json",
        "results-realesrgan-mmsr-set14-realset65.json",
        "results-set14.json",
    ]
    merged = evaluate.merge([tmp_path / n for n in written])
    assert set(merged) == {"bsd68", "set14", "realset65"}
