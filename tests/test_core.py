"""Core method: tokenizer, m_0, connector, temperature, guidance, pipeline (tiny-random, CPU)."""

import json
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mmsr import MODALITIES, ConditionEmbedding, MMLConnector, MMSRPipeline
from mmsr.guidance import combine, negative_branch


def run(pipe, lr, seed=0, **kw):
    kw.setdefault("num_inference_steps", 2)
    return pipe(lr, "a photo of a cat", generator=torch.Generator().manual_seed(seed), **kw)


def test_tokenizer_gives_256_discrete_tokens_padded_to_text_width(tiny_pipe):
    tok = tiny_pipe.modality_tokenizer
    tokens = tok(torch.rand(2, 3, 256, 256) * 2 - 1)
    assert tokens.shape == (2, 256, tiny_pipe.condition_embedding.config.dim)
    assert torch.all(tokens[..., tok.token_dim :] == 0)
    codebook = tok.vq.quantize.embedding.weight
    flat = tokens[..., : tok.token_dim].reshape(-1, tok.token_dim)
    assert torch.cdist(flat, codebook).min(dim=1).values.max() < 1e-4  # every token is a codebook entry


def test_tokenizer_rejects_wrong_map_size(tiny_pipe):
    with pytest.raises(ValueError, match="256x256"):
        tiny_pipe.modality_tokenizer(torch.zeros(1, 3, 128, 128))


def test_null_token_substitution_and_sequence_layout():
    emb = ConditionEmbedding(dim=16)
    text = torch.randn(2, 7, 16)
    real = torch.randn(2, 256, 16)
    seq, groups = emb([real, None, None], text)
    assert seq.shape == (2, 3 * 256 + 7, 16)
    assert groups.tolist() == [0] * 256 + [1] * 256 + [2] * 256 + [3] * 7
    seg = seq[:, 256:512] - emb.pos_embedding - emb.type_embedding[1]
    assert torch.allclose(seg, emb.null_token.expand_as(seg))
    seq_cfg, groups_cfg = emb([real, None, None], text, include_modalities=False)
    assert seq_cfg.shape == (2, 7, 16) and groups_cfg.tolist() == [3] * 7


def test_connector_output_shape():
    conn = MMLConnector(dim=32, num_latents=8, depth=2, heads=2, dim_head=16)
    out = conn(torch.randn(3, 100, 32), torch.zeros(100, dtype=torch.long))
    assert out.shape == (3, 8, 32)


def cross_attention_flops(conn, m):
    seq = torch.randn(1, m, 32)
    with FlopCounterMode(display=False) as counter:
        conn.cross_attn(conn.latents[None], seq)
    return counter.get_total_flops()


def test_connector_cross_attention_cost_is_linear_in_sequence_length():
    conn = MMLConnector(dim=32, num_latents=8, depth=1, heads=2, dim_head=16)
    ratio = cross_attention_flops(conn, 1600) / cross_attention_flops(conn, 800)
    assert 1.9 < ratio < 2.1  # doubles, does not quadruple


def spied_attention_mass(conn, seq, groups, taus, monkeypatch):
    """Attention probability the latents put on group 0, read from the ``q`` and ``k`` that the
    connector's cross-attention hands to ``scaled_dot_product_attention`` (not recomputed here)."""
    import mmsr.connector

    seen = []
    real = mmsr.connector.F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        seen.append((q, k))
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(mmsr.connector.F, "scaled_dot_product_attention", spy)
    conn(seq, groups, taus)
    monkeypatch.undo()
    q, k = next((q, k) for q, k in seen if k.shape[-2] == seq.shape[1])  # the cross-attention call
    probs = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1)
    return probs[..., groups == 0].sum(-1).mean().item()


def test_lower_temperature_shifts_attention_toward_modality(monkeypatch):
    """Eq. (5): logits ``q k^T / (tau sqrt(d))``, so a lower tau draws more attention (fails if inverted)."""
    torch.manual_seed(0)
    conn = MMLConnector(dim=32, num_latents=8, depth=1, heads=1, dim_head=32)
    seq = torch.randn(1, 64, 32) * 3
    groups = torch.tensor([0] * 16 + [1] * 16 + [2] * 16 + [3] * 16)
    masses = [
        spied_attention_mass(conn, seq, groups, torch.tensor([tau, 1.0, 1.0, 1.0]), monkeypatch)
        for tau in (10.0, 1.0, 0.4)
    ]
    assert masses[0] < masses[1] < masses[2]


def test_temperature_changes_connector_output():
    torch.manual_seed(0)
    conn = MMLConnector(dim=32, num_latents=4, depth=1, heads=2, dim_head=16)
    seq, groups = torch.randn(1, 20, 32), torch.tensor([0] * 10 + [3] * 10)
    base = conn(seq, groups, torch.ones(4))
    assert torch.allclose(base, conn(seq, groups))
    assert not torch.allclose(base, conn(seq, groups, torch.tensor([0.4, 1, 1, 1])))


@pytest.mark.parametrize("tau", [0.1, 10.5, float("nan")])
def test_pipeline_checks_temperatures_once_before_any_step(tiny_pipe, tau):
    # the pipeline's inputs check is the one range check below the settings (the connector trusts it)
    steps = []
    with pytest.raises(ValueError, match=r"\[0.4, 10"):
        tiny_pipe(torch.rand(1, 3, 16, 16), "", num_inference_steps=2, temperatures={"seg": tau},
                  callback=lambda i, n: steps.append(i))  # fmt: skip
    assert steps == []


def test_combine_algebra():
    pos, neg = torch.randn(4, 4), torch.randn(4, 4)
    assert torch.equal(combine(pos, neg, 0.0), pos)
    assert torch.allclose(combine(pos, neg, 4.0), 5 * pos - 4 * neg)
    assert torch.allclose(combine(pos, pos, 7.0), pos)


def test_cfg_modes_build_the_right_negative_sequences(tiny_pipe):
    text, _ = tiny_pipe.encode_prompt(["neg"])
    tokens = tiny_pipe.encode_modalities({"depth": torch.rand(1, 3, 256, 256)})
    emb = tiny_pipe.condition_embedding
    seqs = {}
    for mode in ("m-cfg", "m0-cfg", "cfg"):
        kw = negative_branch(mode)
        used = [None] * 3 if kw["null_modalities"] else tokens
        seqs[mode], _ = emb(used, text, kw["include_modalities"])
    assert seqs["m-cfg"].shape[1] == seqs["m0-cfg"].shape[1] == 3 * 256 + text.shape[1]
    assert seqs["cfg"].shape[1] == text.shape[1]
    depth = slice(0, 256)
    assert not torch.allclose(seqs["m-cfg"][:, depth], seqs["m0-cfg"][:, depth])
    assert torch.allclose(seqs["m-cfg"][:, 256:], seqs["m0-cfg"][:, 256:])
    with pytest.raises(ValueError, match="cfg mode"):
        negative_branch("nope")


def test_guidance_zero_skips_negative_branch(tiny_pipe):
    calls = []
    hook = tiny_pipe.unet.register_forward_hook(
        lambda m, args, kw, out: calls.append(args[0].shape[0]), with_kwargs=True
    )
    try:
        run(tiny_pipe, torch.rand(1, 3, 16, 16), guidance_scale=0.0)
        assert calls == [1, 1]
        calls.clear()
        run(tiny_pipe, torch.rand(1, 3, 16, 16), guidance_scale=4.0)
        assert calls == [2, 2]  # positive and negative in one batched call
    finally:
        hook.remove()


@pytest.mark.parametrize("size", [(16, 16), (13, 21), (5, 40)])
def test_output_is_exactly_4x_for_any_size(tiny_pipe, size):
    lr = torch.rand(1, 3, *size)
    out = run(tiny_pipe, lr, maps={"edges": torch.rand(1, 3, 256, 256)})
    assert out.images.shape == (1, 3, 4 * size[0], 4 * size[1])
    assert 0 <= out.images.min() and out.images.max() <= 1


def test_determinism_and_seed_sensitivity(tiny_pipe):
    lr = torch.rand(1, 3, 16, 16)
    a, b, c = run(tiny_pipe, lr, 1).images, run(tiny_pipe, lr, 1).images, run(tiny_pipe, lr, 2).images
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_modalities_change_the_output(tiny_pipe):
    lr = torch.rand(1, 3, 16, 16)
    with_map = run(tiny_pipe, lr, maps={"depth": torch.rand(1, 3, 256, 256)}).images
    without = run(tiny_pipe, lr).images
    assert not torch.allclose(with_map, without)


def test_save_load_round_trip_in_safetensors(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path)
    assert list(tmp_path.rglob("*.safetensors")) and not list(tmp_path.rglob("*.bin"))
    loaded = MMSRPipeline.from_pretrained(tmp_path, use_safetensors=True)
    lr = torch.rand(1, 3, 16, 16)
    assert torch.equal(run(tiny_pipe, lr).images, run(loaded, lr).images)


def test_long_caption_is_truncated_with_warning(tiny_pipe):
    _, warnings = tiny_pipe.encode_prompt(["word " * 300])
    assert warnings and "cut" in warnings[0]


def test_modality_order_constant():
    assert MODALITIES == ("depth", "seg", "edges")


def test_full_preset_without_checkpoint_says_what_to_do():
    from mmsr import PresetUnavailable, load_pipeline

    with pytest.raises(PresetUnavailable, match="train"):
        load_pipeline("full")


def test_cli_upscale_end_to_end(tmp_path, astronaut_lr):
    src = tmp_path / "lr.png"
    astronaut_lr.save(src)
    out = tmp_path / "sr.png"
    cmd = [
        sys.executable,
        "-m",
        "mmsr",
        "upscale",
        str(src),
        "-o",
        str(out),
        "--preset",
        "tiny-random",
        "--caption",
        "a photo of an astronaut",
        "--temperature",
        "depth=0.5,edges=2",
        "--json",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    from PIL import Image

    assert Image.open(out).size == (128, 128)
    assert report["modalities"]["edges"].startswith("canny")
    assert "unet" in report["timings"] and report["settings"]["temperatures"]["depth"] == 0.5
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "--overwrite" in again.stderr and "Traceback" not in again.stderr


def test_overlong_caption_cut_is_reported_to_the_user(tiny_pipe, astronaut_lr):
    from mmsr.engine import Engine
    from mmsr.settings import MAX_CAPTION_CHARS, UpscaleSettings

    engine = Engine(tiny_pipe, "tiny-random")
    settings = UpscaleSettings(caption="a cat " * 1000, steps=1, modalities=dict.fromkeys(MODALITIES, False))
    result = engine.upscale(astronaut_lr, settings)
    assert len(result.caption) <= MAX_CAPTION_CHARS
    assert any(f"kept the first {MAX_CAPTION_CHARS}" in w for w in result.warnings)


def test_pipeline_checks_what_the_model_can_run_not_the_products_ranges(tiny_pipe):
    lr = torch.rand(1, 3, 16, 16)
    length = tiny_pipe.scheduler.config.num_train_timesteps
    tiny_pipe.check_inputs(lr, 40.0, length, 1.0)  # beyond the app's guidance range, still a valid call
    for guidance, steps, match in ((-1.0, 2, "guidance"), (float("nan"), 2, "guidance"), (1.0, length + 1, "length")):
        with pytest.raises(ValueError, match=match):
            tiny_pipe.check_inputs(lr, guidance, steps, 1.0)


@pytest.mark.parametrize("guidance", [0.0, 4.0])
def test_num_samples_averages_samples_from_independent_noise(tiny_pipe, guidance):
    """num_samples=K is the mean of the K samples that a batch of K copies of the LR draws (same noise)."""
    lr = torch.rand(1, 3, 16, 16)
    kw = dict(prompt="a photo", guidance_scale=guidance, num_inference_steps=2)
    batch = tiny_pipe(lr.repeat(3, 1, 1, 1), generator=torch.Generator().manual_seed(0), **kw).images
    mean = tiny_pipe(lr, num_samples=3, generator=torch.Generator().manual_seed(0), **kw).images
    single = tiny_pipe(lr, generator=torch.Generator().manual_seed(0), **kw).images
    assert mean.shape == single.shape == (1, 3, 64, 64)
    assert torch.allclose(mean, batch.mean(0, keepdim=True), atol=1e-5)
    assert torch.allclose(single, batch[:1], atol=1e-5) and not torch.allclose(mean, single, atol=1e-3)
    with pytest.raises(ValueError, match="num_samples"):
        tiny_pipe(lr, num_samples=0, **kw)
