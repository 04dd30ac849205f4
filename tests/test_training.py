"""Training on tiny-random components and a tiny temporary dataset (skimage photos; no shared data)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmsr.training.cli import build_parser
from mmsr.training.data import ImageBank
from mmsr.training.loop import LoopConfig, read_log, train

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """Three photos (one with a VOC label map) and a captions.json, laid out like ../shared/data."""
    from skimage import data

    root = tmp_path_factory.mktemp("data")
    (root / "train" / "set").mkdir(parents=True)
    (root / "seg" / "train" / "set").mkdir(parents=True)
    captions = {}
    for name, image in (("astronaut", data.astronaut()), ("coffee", data.coffee()), ("chelsea", data.chelsea())):
        Image.fromarray(image).resize((96, 80), Image.BICUBIC).save(root / "train" / "set" / f"{name}.png")
        captions[f"train/set/{name}.png"] = f"a photo of {name}"
    seg = np.zeros((80, 96), np.uint8)
    seg[20:60, 30:70] = 15  # person
    Image.fromarray(seg).save(root / "seg" / "train" / "set" / "astronaut.png")
    (root / "captions.json").write_text(json.dumps(captions))
    return root


def _args(tiny_data: Path, out: Path, *extra: str):
    return build_parser().parse_args(
        [
            "--preset",
            "tiny-random",
            "--data",
            str(tiny_data),
            "--out",
            str(out),
            "--crop",
            "64",
            "--batch-size",
            "4",
            "--val-photos",
            "1",
            *extra,
        ]
    )


def _stage(tiny_data, out, *extra):
    from mmsr.training.cli import build_stage

    return build_stage(_args(tiny_data, out, *extra))


def test_image_bank_keeps_photos_labels_and_captions(tiny_data):
    bank = ImageBank(tiny_data, min_side=64)
    assert len(bank) == 3
    by_key = {s.key: s for s in bank.samples}
    assert by_key["train/set/astronaut.png"].seg.shape == (80, 96)
    assert by_key["train/set/coffee.png"].seg is None
    assert by_key["train/set/coffee.png"].caption == "a photo of coffee"


def test_unet_batch_shapes_and_dropout_rates(tiny_data, tmp_path):
    from accelerate import Accelerator

    stage = _stage(tiny_data, tmp_path, "--stage", "unet", "--lr-variants", "2")
    stage.prepare(Accelerator(cpu=True), tmp_path)
    rng = np.random.default_rng(0)
    batch = stage.next_batch(2000, rng)
    latent = stage.window
    assert batch["hr"].shape == batch["lr"].shape == (2000, 4, latent, latent)
    dim = stage.model.condition_embedding.config.dim
    assert batch["tokens"][0] is None and batch["tokens"][2].shape == (2000, 256, dim)
    keep = batch["keep"]
    assert not keep[:, 0].any()  # depth: no offline source, always m_0
    assert abs(1 - keep[:, 2].float().mean().item() - 0.1) < 0.03  # edges dropout 0.1
    empty = stage.empty_caption
    assert abs((batch["caption"] == empty).float().mean().item() - 0.1) < 0.03  # caption dropout 0.1
    twin = _stage(tiny_data, tmp_path, "--stage", "unet", "--text-only", "--cache", str(tmp_path / "cache.pt"))
    twin.prepare(Accelerator(cpu=True), tmp_path)
    tb = twin.next_batch(64, rng)
    assert tb["tokens"] == [None, None, None] and not tb["keep"].any()


def test_sampler_weight_puts_that_fraction_of_timesteps_on_the_sampler_steps(tiny_data, tmp_path):
    stage = _stage(tiny_data, tmp_path, "--stage", "unet", "--sampler-weight", "0.5")
    own = set(stage.sampler_timesteps.tolist())  # tiny-random: its default steps and strength
    assert own and len(own) < stage.noise_scheduler.config.num_train_timesteps
    t = stage.timesteps(20000, torch.Generator().manual_seed(0), "cpu")
    share = np.isin(t.numpy(), list(own)).mean()
    uniform = len(own) / stage.noise_scheduler.config.num_train_timesteps
    assert abs(share - (0.5 + 0.5 * uniform)) < 0.02
    plain = _stage(tiny_data, tmp_path, "--stage", "unet", "--sampler-weight", "0")
    share = np.isin(plain.timesteps(20000, torch.Generator().manual_seed(0), "cpu").numpy(), list(own)).mean()
    assert abs(share - uniform) < 0.01
    with pytest.raises(ValueError, match="sampler_weight"):
        _stage(tiny_data, tmp_path, "--stage", "unet", "--sampler-weight", "1.5")


def test_one_step_changes_weights_with_finite_loss(tiny_data, tmp_path):
    stage = _stage(tiny_data, tmp_path, "--stage", "unet")
    before = {k: v.clone() for k, v in stage.model.state_dict().items()}
    summary = train(stage, LoopConfig(out=tmp_path, batch_size=4, max_steps=1, log_every=1, warmup_steps=1))
    assert summary["steps"] == 1
    assert np.isfinite(read_log(tmp_path / "log.jsonl")[-1]["mse"])
    after = stage.model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any("null_token" in k for k in changed) and any("unet" in k for k in changed)
    assert (tmp_path / "loss.png").is_file()


def test_validation_holds_photos_out_and_keeps_the_best_snapshot(tiny_data, tmp_path):
    from accelerate import Accelerator

    stage = _stage(tiny_data, tmp_path, "--stage", "unet")
    stage.prepare(Accelerator(cpu=True), tmp_path)
    assert len(stage.val_ids) == 1 and len(stage.train_ids) == 2
    held = stage.photos[int(stage.val_ids[0])].hr.float()
    w, (h, wd) = stage.window, held.shape[-2:]
    windows = [held[:, y : y + w, x : x + w] for y in range(h - w + 1) for x in range(wd - w + 1)]
    batch = stage.next_batch(64, np.random.default_rng(0))
    assert not any(torch.equal(crop, win) for crop in batch["hr"] for win in windows)  # never trained on
    scores = stage.validate(stage.model)
    assert set(scores) == {"val", "val_nocap", "val_no_maps", "val_wrong_maps"}
    assert all(np.isfinite(v) for v in scores.values())
    assert stage.validate(stage.model) == scores  # fixed crops, noise and timesteps
    assert scores["val_wrong_maps"] == scores["val"]  # one held-out photo: "another photo" is itself

    train(stage, LoopConfig(out=tmp_path, batch_size=2, max_steps=1))
    best = json.loads((tmp_path / "best.json").read_text())
    weights = tmp_path / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors"
    saved = weights.read_bytes()
    (tmp_path / "best.json").write_text(json.dumps({**best, "val": -1.0}))  # pretend an unbeatable snapshot
    train(stage, LoopConfig(out=tmp_path, batch_size=2, max_steps=3, resume=True, keep_snapshots=True))
    assert weights.read_bytes() == saved  # a worse snapshot never replaces the best
    kept = tmp_path / "snapshots" / "step-000003" / "pipeline"  # ... but --keep-snapshots keeps it aside
    assert (kept / "unet" / weights.name).read_bytes() != saved
    assert json.loads((kept / "training.json").read_text())["text_only"] is False
    validations = [
        json.loads(line)["validation"]
        for line in (tmp_path / "log.jsonl").read_text().splitlines()
        if "validation" in line
    ]
    assert [v["step"] for v in validations] == [1, 3]
    with pytest.raises(ValueError, match="val-photos"):
        stage.split(3)


def test_stage1_cache_keeps_a_seeded_native_window_and_its_maps_line_up(tiny_data, tmp_path):
    from mmsr.modalities.palette import get_label_space
    from mmsr.training import stage1

    bank = ImageBank(tiny_data, min_side=64)
    upsample = lambda lr: lr.resize((lr.width * 4, lr.height * 4), Image.BICUBIC)  # noqa: E731
    assert stage1.build(bank, tmp_path, upsample, crop_side=64) == 3
    assert stage1.build(bank, tmp_path, upsample, crop_side=64) == 0  # resumes: nothing missing
    key = "train/set/astronaut.png"
    stored = stage1.load(tmp_path, key)
    y, x = stored["origin"].tolist()
    photo = next(s for s in bank.samples if s.key == key)
    assert stored["hr"].shape == (64, 64, 3) and stored["stage1"].shape == (2, 64, 64, 3)
    assert np.array_equal(stored["hr"], photo.image[y : y + 64, x : x + 64])
    assert (y, x) == stage1.crop_window(photo.image.shape, 64, stage1.photo_seed(key, 1))[:2]

    stage = _stage(tiny_data, tmp_path, "--stage", "unet", "--stage1-dir", str(tmp_path))
    stage.pipe.register_to_config(stage1="realesrgan-x4plus")
    maps = stage.photo_maps(photo, caption=0, map_seed=0)
    palette = get_label_space("voc").palette
    assert np.array_equal(maps.seg, palette[photo.seg[y : y + 64, x : x + 64]])  # the window's own labels
    other = dataclasses.replace(photo, image=photo.image[::-1])  # not the photo the cache was built from
    with pytest.raises(ValueError, match="does not match"):
        stage.photo_maps(other, caption=0, map_seed=0)


def test_resume_continues_the_step_count(tiny_data, tmp_path):
    cfg = LoopConfig(out=tmp_path, batch_size=2, max_steps=2, log_every=1)
    train(_stage(tiny_data, tmp_path, "--stage", "vq"), cfg)
    cfg.max_steps, cfg.resume = 3, True
    summary = train(_stage(tiny_data, tmp_path, "--stage", "vq"), cfg)
    assert summary["steps"] == 3
    assert [r["step"] for r in read_log(tmp_path / "log.jsonl")] == [1, 2, 3]


def test_vae_stage_with_discriminator_saves_scaled_vae(tiny_data, tmp_path):
    from diffusers import AutoencoderKL

    stage = _stage(tiny_data, tmp_path, "--stage", "vae", "--adv-start", "1")
    train(stage, LoopConfig(out=tmp_path, batch_size=2, max_steps=2, log_every=1))
    assert "d_loss" in read_log(tmp_path / "log.jsonl")[-1]
    vae = AutoencoderKL.from_pretrained(tmp_path / "vae")
    assert vae.config.scaling_factor != 0.18215 and np.isfinite(vae.config.scaling_factor)


def test_saved_pipeline_loads_and_upscales(tiny_data, tmp_path):
    from mmsr.pipeline import MMSRPipeline
    from mmsr.text import tiny_text_encoder

    stage = _stage(tiny_data, tmp_path, "--stage", "unet", "--fp16-weights")
    train(stage, LoopConfig(out=tmp_path, batch_size=2, max_steps=1))
    saved = tmp_path / "pipeline"
    assert not (saved / "text_encoder").exists()
    text_encoder, tokenizer = tiny_text_encoder(32)
    pipe = MMSRPipeline.from_pretrained(
        saved, text_encoder=text_encoder, tokenizer=tokenizer, torch_dtype=torch.float32
    )
    assert pipe.unet.dtype == torch.float32
    out = pipe(
        torch.rand(1, 3, 16, 16), prompt="a cat", num_inference_steps=2, generator=torch.Generator().manual_seed(0)
    )
    assert out.images.shape == (1, 3, 64, 64) and torch.isfinite(out.images).all()


def test_lite_loader_takes_shared_parts_from_the_base(tmp_path, monkeypatch):
    from mmsr import presets
    from mmsr.training.diffusion import link_shared

    base, twin = tmp_path / "lite", tmp_path / "lite-text-only"
    parts = presets.build_components("tiny-random")
    parts.update(text_encoder=None, tokenizer=None)
    for folder in (base, twin):
        presets.MMSRPipeline(**parts).save_pretrained(folder, safe_serialization=True)
    link_shared(twin, base)
    assert not (twin / "vae").exists()
    monkeypatch.setattr("mmsr.text.load_minilm", _tiny_text)
    pipe = presets.load_pipeline("lite", checkpoint=twin)
    assert Path(pipe.vae.config["_name_or_path"]).parent == base
    expected = parts["vae"].state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in pipe.vae.state_dict().items())


def _tiny_text():
    from mmsr.text import tiny_text_encoder

    return tiny_text_encoder(32)


@pytest.mark.slow
def test_two_process_gloo_run(tiny_data, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "2",
        "--cpu",
        "-m",
        "mmsr",
        "train",
        "--preset",
        "tiny-random",
        "--stage",
        "unet",
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--crop",
        "64",
        "--data",
        str(tiny_data),
        "--out",
        str(out),
        "--val-photos",
        "1",
    ]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2
    assert (out / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_calibration_scores_the_photos_training_held_out(tiny_data, tmp_path, tiny_pipe, monkeypatch):
    """``mmsr.training.calibrate`` uses the photos and windows ``--val-photos`` kept out of training."""
    import argparse

    from accelerate import Accelerator

    from mmsr.engine import Engine
    from mmsr.pipeline import MMSRPipeline
    from mmsr.presets import build_components
    from mmsr.training import calibrate, stage1

    stage = _stage(tiny_data, tmp_path, "--stage", "unet")
    stage.prepare(Accelerator(cpu=True), tmp_path)
    inputs = list(calibrate.held_out_inputs(tiny_data, val_photos=1, crop_side=64, min_side=64))
    held = stage.bank.samples[int(stage.val_ids[0])]
    assert [(key, kind) for key, kind, *_ in inputs] == [(held.key, "degraded"), (held.key, "bicubic")]
    y, x, h, w = stage1.crop_window(held.image.shape, 64, stage1.photo_seed(held.key, 1))
    hr, lr = inputs[1][2], inputs[1][3]
    assert np.array_equal(np.asarray(hr), held.image[y : y + h, x : x + w]) and lr.size == (w // 4, h // 4)
    assert inputs[0][5] == held.caption
    whole = next(calibrate.held_out_inputs(tiny_data, val_photos=1, crop_side=0, min_side=64))[2]
    assert np.array_equal(np.asarray(whole), stage1.crop_to_multiple(held.image))  # --crop-side 0: the photo

    same = {"psnr": [20.0], "ssim": [0.5], "lr_psnr": [30.0], "niqe": [5.0]}
    assert calibrate.margins(same, same) == pytest.approx({"psnr": 0.2, "ssim": 0.01, "lr_psnr": 0.0, "niqe": 0.2})
    worse = {**same, "niqe": [5.3]}
    assert calibrate.worst(calibrate.margins(worse, same)) == pytest.approx(-0.5)  # 0.1 past a 0.2 gate

    monkeypatch.setattr(Engine, "load", classmethod(lambda cls, preset, **kw: Engine(tiny_pipe, "tiny-random")))
    monkeypatch.setattr(calibrate, "held_out_inputs", lambda *a, **k: iter(inputs))
    args = argparse.Namespace(
        checkpoint=None, data=tiny_data, val_photos=1, seed=0, samples=[1, 2], guidance=[1.0, 3.0], crop_side=64
    )
    args.residual_scale = [0.0, 1.0]
    with pytest.raises(ValueError, match="needs a checkpoint with a stage 1"):
        calibrate.run(args)  # tiny-random has no stage 1 to scale towards
    over_stage1 = MMSRPipeline(**build_components("tiny-random"), stage1="realesrgan-x4plus", residual=True)
    over_stage1.set_progress_bar_config(disable=True)
    monkeypatch.setattr(Engine, "load", classmethod(lambda cls, preset, **kw: Engine(over_stage1, "tiny-random")))
    table = calibrate.run(args)
    assert len(table) == 2 * 2 * 2 * 2  # LR kinds x sample counts x guidance weights x residual scales
    for row in table.values():  # NIQE needs more than these 64 px crops
        assert np.isfinite([row[m] for m in ("psnr", "ssim", "lr_psnr")]).all()
        if row["residual_scale"] == 0:  # s = 0 is the stage-1 image itself: every margin is its tolerance
            assert [row[m] for m in ("psnr", "ssim", "lr_psnr")] == pytest.approx([0.2, 0.01, 0.0])
    assert table["degraded K=2 w=3.0 s=1.0"]["psnr"] != pytest.approx(0.2)
    assert "| degraded | 2 | 3 | 1 |" in calibrate.markdown(table)


@pytest.fixture
def spatial_preset(monkeypatch):
    """tiny-random with lite's parts at toy size (f4 pixel-unshuffle, a k-means codebook); returns the
    channels one spatial modality takes (``train --spatial-modalities`` adds them)."""
    from mmsr import presets
    from mmsr.presets import _unet_config

    tiny = presets.PRESETS["tiny-random"]
    lite_like = dataclasses.replace(
        tiny,
        vae=dict(_class="PixelShuffleAutoencoder", patch_size=4),
        vq=dict(_class="PatchCodebook", num_vq_embeddings=16, patch_size=16, pool=2),
        unet=_unet_config((16, 32), cross_dim=32, head_dim=4, groups=8, layers=1, latent=48),
        pipeline=dict(trained_modalities=("seg", "edges")),
    )
    monkeypatch.setitem(presets.PRESETS, "tiny-random", lite_like)
    return 3 * 2**2 + 1  # pool 2: 12 code values and the presence flag


def test_spatial_codes_follow_the_batch_dropout_and_train_the_new_inputs(tiny_data, tmp_path, spatial_preset):
    from accelerate import Accelerator

    from mmsr.pipeline import MMSRPipeline
    from mmsr.text import tiny_text_encoder

    stage = _stage(tiny_data, tmp_path, "--stage", "unet", "--spatial-modalities", "seg,edges")
    stage.prepare(Accelerator(cpu=True), tmp_path)
    batch = stage.next_batch(64, np.random.default_rng(0))
    code = spatial_preset
    assert batch["spatial"].shape == (64, 2 * code, stage.window, stage.window)
    flags = batch["spatial"][:, [code - 1, 2 * code - 1]].amax(dim=(2, 3))
    assert torch.equal(flags.bool(), batch["keep"][:, 1:])  # a dropped or missing map is m_0 (zeros)
    assert batch["keep"][:, 1].any() and not batch["keep"][:, 1].all()  # only astronaut has a seg map
    with pytest.raises(ValueError, match="one token per latent pixel"):
        _stage(tiny_data, tmp_path, "--stage", "unet", "--crop", "32", "--spatial-modalities", "edges")

    before = stage.model.unet.conv_in.weight.detach().clone()
    train(stage, LoopConfig(out=tmp_path, batch_size=4, max_steps=2, log_every=1, warmup_steps=1))
    after = stage.model.unet.conv_in.weight.detach()
    assert not torch.equal(before[:, 96:], after[:, 96:])  # the code inputs learn (96 = noisy + LR latent)
    record = json.loads((tmp_path / "pipeline" / "training.json").read_text())
    assert record["spatial_modalities"] == ["seg", "edges"]
    text_encoder, tokenizer = tiny_text_encoder(32)
    pipe = MMSRPipeline.from_pretrained(tmp_path / "pipeline", text_encoder=text_encoder, tokenizer=tokenizer)
    assert list(pipe.config.spatial_modalities) == ["seg", "edges"]
    out = pipe(torch.rand(1, 3, 16, 16), "a cat", num_inference_steps=1, generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (1, 3, 64, 64) and torch.isfinite(out.images).all()


def test_fft_weight_adds_a_texture_term_to_the_x0_loss(tiny_data, tmp_path, spatial_preset, monkeypatch):
    from accelerate import Accelerator

    from mmsr import presets
    from mmsr.training.diffusion import fft_amplitude_loss

    with pytest.raises(ValueError, match="needs x0-prediction"):  # tiny-random predicts eps
        _stage(tiny_data, tmp_path, "--stage", "unet", "--fft-weight", "0.5")
    few_step = dataclasses.replace(presets.PRESETS["tiny-random"], scheduler=presets.FEW_STEP_SCHEDULER_CONFIG)
    monkeypatch.setitem(presets.PRESETS, "tiny-random", few_step)
    plain = _stage(tiny_data, tmp_path, "--stage", "unet")
    textured = _stage(tiny_data, tmp_path, "--stage", "unet", "--fft-weight", "0.5")
    plain.prepare(Accelerator(cpu=True), tmp_path)
    textured.prepare(Accelerator(cpu=True), tmp_path)
    batch = plain.next_batch(4, np.random.default_rng(0)) | {"noise_seed": 0}
    textured.model.load_state_dict(plain.model.state_dict())
    _, logs, _ = plain.loss(plain.model, batch, 0)
    total, both, _ = textured.loss(textured.model, batch, 0)
    assert set(logs) == {"mse"} and set(both) == {"mse", "fft"}
    assert both["mse"] == pytest.approx(logs["mse"]) and both["fft"] > 0
    assert total.item() == pytest.approx(both["mse"] + 0.5 * both["fft"], rel=1e-5)
    x = torch.rand(2, 3, 16, 16)
    assert fft_amplitude_loss(x, x.roll(5, dims=-1)) < 1e-5 < fft_amplitude_loss(x, x.mean() + 0 * x)  # phase-blind


def test_warm_start_widens_conv_in_for_the_spatial_codes(tiny_data, tmp_path, spatial_preset):
    stage = _stage(tiny_data, tmp_path / "old", "--stage", "unet")
    assert list(stage.pipe.config.spatial_modalities) == []  # the shipped design: no spatial codes
    train(stage, LoopConfig(out=tmp_path / "old", batch_size=2, max_steps=1))
    old = stage.model.unet.conv_in.weight.detach().clone()
    pipeline = str(tmp_path / "old" / "pipeline")
    warm = _stage(
        tiny_data, tmp_path / "new", "--stage", "unet", "--init", pipeline, "--spatial-modalities", "seg,edges"
    )
    new = warm.model.unet.conv_in.weight.detach()
    assert new.shape[1] == old.shape[1] + 2 * spatial_preset
    assert torch.equal(new[:, : old.shape[1]], old) and torch.count_nonzero(new[:, old.shape[1] :]) == 0


def test_hr_edge_fraction_trains_on_edge_codes_of_the_hr_photo(tiny_data, tmp_path, spatial_preset):
    from accelerate import Accelerator

    from mmsr.modalities.edges import canny_edges
    from mmsr.training.diffusion import code_indices, map_features

    with pytest.raises(ValueError, match="hr_edge_fraction"):
        _stage(tiny_data, tmp_path, "--stage", "unet", "--hr-edge-fraction", "1.5")
    lr_only = _stage(tiny_data, tmp_path, "--stage", "unet")
    lr_only.prepare(Accelerator(cpu=True), tmp_path)
    assert lr_only.hr_edges == [] and not (tmp_path / "cache.hr_edges.pt").exists()
    stage = _stage(tiny_data, tmp_path, "--stage", "unet", "--hr-edge-fraction", "1")
    stage.prepare(Accelerator(cpu=True), tmp_path)  # builds cache.hr_edges.pt next to the cache
    assert (tmp_path / "cache.hr_edges.pt").is_file() and len(stage.hr_edges) == len(stage.photos)
    sample = stage.bank.samples[0]
    hr = stage.photo_maps(sample, 0, stage.seed).hr
    map_scale = 256 // (stage.window * stage.pipe.vae_scale_factor)
    expected = code_indices(
        stage.pipe, map_features(stage.pipe, np.repeat(canny_edges(hr)[..., None], 3, 2), map_scale)
    )
    assert torch.equal(stage.hr_edges[0], expected)
    assert not all(torch.equal(stage.hr_edges[0], e) for e in stage.photos[0].edges)  # HR edges differ from the LR's

    # a crop told to read the HR codes differs from the same crop with the LR's (validation's)
    crop = (stage.photos[0], 0, 0, 0, 0, (True, True))
    hr_batch = stage.collate([(*crop, (stage.photos[0].seg, stage.hr_edges[0], 0, 0))], noise_seed=0)
    lr_batch = stage.collate([crop], noise_seed=0)
    assert not torch.equal(hr_batch["tokens"][2], lr_batch["tokens"][2])
    scores = stage.validate(stage.model)
    assert scores["val_hr_edges"] != scores["val"]  # validation also scores the HR photo's edges
    assert "val_hr_edges" not in lr_only.validate(lr_only.model)
    again = _stage(tiny_data, tmp_path, "--stage", "unet", "--hr-edge-fraction", "0.5")
    again.prepare(Accelerator(cpu=True), tmp_path)  # loads the file it built
    assert all(torch.equal(a, b) for a, b in zip(again.hr_edges, stage.hr_edges, strict=True))


def test_validation_scores_a_model_with_no_maps_and_with_another_photos_maps(tiny_data, tmp_path):
    from accelerate import Accelerator

    stage = _stage(tiny_data, tmp_path, "--stage", "unet", "--val-photos", "2")
    stage.prepare(Accelerator(cpu=True), tmp_path)
    scores = stage.validate(stage.model)
    assert scores["val_no_maps"] != scores["val"] and scores["val_wrong_maps"] != scores["val"]
    a, b = (stage.photos[int(i)] for i in stage.val_ids)
    centre = ((b.hr.shape[-2] - stage.window) // 2, (b.hr.shape[-1] - stage.window) // 2)
    own = stage.collate([(a, 0, 0, 0, 0, (True, True))], noise_seed=0)
    wrong = stage.collate([(a, 0, 0, 0, 0, (True, True), (b.seg, b.edges[0], *centre))], noise_seed=0)
    assert torch.equal(own["hr"], wrong["hr"]) and not torch.equal(own["tokens"][2], wrong["tokens"][2])
    (tmp_path / "twin").mkdir()
    twin = _stage(tiny_data, tmp_path / "twin", "--stage", "unet", "--val-photos", "2", "--text-only")
    twin.prepare(Accelerator(cpu=True), tmp_path / "twin")
    assert set(twin.validate(twin.model)) == {"val", "val_nocap"}  # the twin has no maps to swap


def test_adv_weight_adds_a_patchgan_term_and_trains_the_discriminator(tiny_data, tmp_path, spatial_preset, monkeypatch):
    import torch.nn.functional as F
    from accelerate import Accelerator

    from mmsr import presets

    with pytest.raises(ValueError, match="needs x0-prediction"):  # tiny-random predicts eps
        _stage(tiny_data, tmp_path, "--stage", "unet", "--adv-weight", "0.02")
    tiny = presets.PRESETS["tiny-random"]
    residual = dict(tiny.pipeline, residual=True)  # x0 of the residual over the (here bicubic) condition
    few_step = dataclasses.replace(tiny, scheduler=presets.FEW_STEP_SCHEDULER_CONFIG, pipeline=residual)
    monkeypatch.setitem(presets.PRESETS, "tiny-random", few_step)
    with pytest.raises(ValueError, match="adv_weight"):
        _stage(tiny_data, tmp_path, "--stage", "unet", "--adv-weight", "-1")
    plain = _stage(tiny_data, tmp_path, "--stage", "unet")
    assert plain.discriminator is None
    stage = _stage(tiny_data, tmp_path, "--stage", "unet", "--adv-weight", "0.5")
    plain.prepare(Accelerator(cpu=True), tmp_path)
    stage.prepare(Accelerator(cpu=True), tmp_path)
    stage.model.load_state_dict(plain.model.state_dict())
    batch = plain.next_batch(4, np.random.default_rng(0)) | {"noise_seed": 0}
    _, logs, extra = plain.loss(plain.model, batch, 0)
    total, both, (real, fake) = stage.loss(stage.model, batch, 0)
    assert extra is None and set(both) == {"mse", "g_adv"} and both["mse"] == pytest.approx(logs["mse"])
    assert total.item() == pytest.approx(both["mse"] + 0.5 * both["g_adv"], rel=1e-5)
    # the discriminator sees each image beside its stage-1 condition, the real one is the HR crop
    factor = stage.pipe.vae.downsample_factor
    assert real.shape[1] == 6 and torch.equal(real[:, :3], fake[:, :3])
    hr = F.pixel_shuffle(batch["hr"].float(), factor)  # seen through a random 0-7 pixel shift, one less block
    assert real.shape[-2:] == (hr.shape[-2] - factor, hr.shape[-1] - factor)
    shifts = [(dy, dx) for dy in range(factor) for dx in range(factor)]
    assert any(
        torch.allclose(real[:, 3:], hr[..., dy : dy + real.shape[-2], dx : dx + real.shape[-1]]) for dy, dx in shifts
    )
    offsets = {
        tuple(stage.loss(stage.model, batch | {"noise_seed": k}, 0)[2][0][0, 3, :2, :2].flatten().tolist())
        for k in range(6)
    }
    assert len(offsets) > 1  # the shift changes from batch to batch
    assert not fake.requires_grad
    d_loss, d_logs = stage.disc_loss(stage.discriminator, (real, fake), 0)
    assert d_loss.requires_grad and set(d_logs) == {"d_loss"}
    assert plain.disc_loss(None, None, 0) == (None, {})

    before = [p.detach().clone() for p in stage.discriminator.parameters()]
    train(stage, LoopConfig(out=tmp_path / "adv", batch_size=2, max_steps=2, log_every=1, warmup_steps=1))
    assert any(not torch.equal(a, b) for a, b in zip(before, stage.discriminator.parameters(), strict=True))
    logged = read_log(tmp_path / "adv" / "log.jsonl")[-1]
    assert {"g_adv", "d_loss"} <= set(logged)
