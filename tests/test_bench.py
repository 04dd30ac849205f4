"""``python -m mmsr bench`` on tiny-random (CPU, 1 warm-up + 1 run): report keys, targets, plot, errors."""

import json

import pytest

from mmsr import bench
from mmsr.cli import run as cli
from mmsr.presets import get_preset

STAGES = {
    "extract_depth", "extract_seg", "extract_edges", "text_encoder", "tokenizer", "connector",
    "vae_encode", "unet", "unet_step", "vae_decode", "pipeline", "e2e", "e2e_offline",
}  # fmt: skip


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    plot = tmp_path_factory.mktemp("bench") / "scaling.png"
    argv = ["bench", "--preset", "tiny-random", "--size", "64", "--runs", "1", "--warmup", "1", "--steps", "2"]
    argv += ["--scaling", "--scaling-sizes", "64", "128", "--plot", str(plot), "--json"]
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli(argv) == 0
    return json.loads(out.getvalue()), plot


def test_bench_json_has_stages_e2e_memory_and_targets(report):
    data, _ = report
    assert data["meta"]["preset"] == "tiny-random" and data["meta"]["runs"] == 1 and data["meta"]["steps"] == 2
    (result,) = data["results"]
    assert result["size"] == 64 and result["lr_size"] == 16
    assert STAGES <= set(result["stages"])
    assert all(v >= 0 for v in result["stages"].values())
    assert result["e2e"]["median"] >= result["stages"]["pipeline"] > 0 and len(result["e2e"]["runs"]) == 1
    assert result["unet_step"]["min"] <= result["unet_step"]["median"] <= result["unet_step"]["max"]
    assert result["peak_memory"]["cpu_rss_peak_mb"] > 0
    assert "gpu_allocated_peak_mb" not in result["peak_memory"]  # CPU run
    assert {"niqe", "piqe", "lr_psnr"} <= set(result["metrics"])
    assert data["extractors"]["caption"]["weights"] is None  # no captioner offline: reported unavailable
    assert data["extractors"]["depth"]["weights"] == "random" and data["extractors"]["edges"]["weights"] == "real"
    assert {t["key"] for t in data["targets"]} == {t.key for t in bench.TARGETS}
    assert all(t["ratio"] is None and t["note"].startswith("not comparable") for t in data["targets"])
    assert [p["method"] for p in data["paper_reference"]] == ["MMSR", "PASD", "SUPIR", "SeeSR"]


def test_engine_rerun_after_an_edit_hits_the_caches(report):
    rerun = report[0]["engine_rerun"]
    assert rerun["first run"]["extractors_run"] == 3
    for edit in ("caption edited", "temperature edited"):
        assert rerun[edit]["extractors_run"] == 0 and rerun[edit]["extractor_cache_hits"] == 3


def test_scaling_table_and_plot(report):
    data, plot = report
    scaling = data["scaling"]
    assert [r["size"] for r in scaling["sizes"]] == [64, 128]
    assert all(r["unet_step"] > 0 and r["projected_e2e"] > r["vae_decode"] for r in scaling["sizes"])
    tokens = scaling["tokens"]
    assert tokens["connector_tokens"] == 8 and tokens["full_sequence_tokens"] == 3 * 256 + 77
    assert [c["tokens"] for c in scaling["connector"]] == list(bench.CONNECTOR_LENGTHS)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_text_report_names_every_section(report):
    text = bench.format_report(report[0])
    for part in ("MMSR bench: preset tiny-random", "UNet step", "end to end", "peak memory", "targets", "PASD"):
        assert part in text


def test_targets_compare_only_matching_runs():
    meta = {"preset": "lite", "device_kind": "cpu", "steps": get_preset("lite").default_steps}
    result = {"size": 512, "e2e": {"median": 30.0}, "e2e_offline": 7.5, "peak_memory": {}}
    rows = {t["key"]: t for t in bench.check_targets(meta, [result])}
    lite = rows["lite_cpu_512_e2e"]
    assert lite["measured"] == 7.5 and lite["ratio"] == 0.5 and lite["met"] is True
    assert rows["full_512_e2e"]["ratio"] is None and "device is cpu" in rows["full_512_e2e"]["note"]
    gpu = {"preset": "full", "device_kind": "cuda", "steps": 50}
    result = {"size": 512, "e2e": {"median": 3.0}, "e2e_offline": 3.0, "peak_memory": {"gpu_allocated_peak_mb": 5120}}
    rows = {t["key"]: t for t in bench.check_targets(gpu, [result])}
    assert rows["full_512_e2e"]["ratio"] == 2.0 and rows["full_512_e2e"]["met"] is False
    assert rows["full_512_peak_gpu"]["measured"] == 5.0 and rows["full_512_peak_gpu"]["met"] is True
    assert rows["full_1024_e2e"]["ratio"] is None  # 1024 px not measured
    paper = bench.paper_reference(gpu, [result])
    assert paper[0]["ratio"] is None and paper[1]["ratio"] == round(3.0 / 5.60, 3)  # TPU never compared


@pytest.mark.parametrize("argv", [["--size", "130"], ["--size", "4096"], ["--runs", "0"], ["--latent-tile", "3"]])
def test_bad_arguments_exit_2_with_a_message(argv, capsys):
    assert cli(["bench", "--preset", "tiny-random", "--size", "64", "--no-rerun", "--runs", "1", *argv]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_bench_runs_through_the_engine(monkeypatch, capsys):
    """Every pipeline call of a timed run is inside ``Engine.upscale``, under ``UpscaleSettings``' defaults,
    and the reported stages are the engine's timings: the bench has no runner of its own."""
    from mmsr.engine import Engine
    from mmsr.pipeline import MMSRPipeline
    from mmsr.settings import UpscaleSettings

    upscale, pipeline_call = Engine.upscale, MMSRPipeline.__call__
    results, inside, pipeline_calls = [], [], []

    def spy_upscale(self, lr, settings, *args, **kwargs):
        inside.append(settings)
        try:
            results.append(upscale(self, lr, settings, *args, **kwargs))
        finally:
            inside.pop()
        return results[-1]

    def spy_pipeline(self, *args, **kwargs):
        assert inside, "the bench called the pipeline outside Engine.upscale"
        pipeline_calls.append(kwargs)
        return pipeline_call(self, *args, **kwargs)

    monkeypatch.setattr(Engine, "upscale", spy_upscale)
    monkeypatch.setattr(MMSRPipeline, "__call__", spy_pipeline)
    argv = ["bench", "--preset", "tiny-random", "--size", "64", "--runs", "1", "--warmup", "0", "--no-rerun", "--json"]
    assert cli(argv) == 0
    data = json.loads(capsys.readouterr().out)
    (result,) = results
    defaults = UpscaleSettings()
    assert len(pipeline_calls) == 1
    assert pipeline_calls[0]["cfg_mode"] == defaults.cfg_mode == data["meta"]["cfg_mode"]
    assert pipeline_calls[0]["guidance_scale"] == get_preset("tiny-random").default_guidance == data["meta"]["guidance"]
    assert data["meta"]["steps"] == get_preset("tiny-random").default_steps == pipeline_calls[0]["num_inference_steps"]
    stages = data["results"][0]["stages"]
    assert all(stages[k] == round(result.timings[k], 5) for k in ("text_encoder", "tokenizer", "unet", "vae_decode"))
