"""The Gradio demo: handlers called directly on tiny-random, and the API through gradio_client."""

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import app
import page
from baselines import get_baseline
from mmsr.compare import TEXT_ONLY, checkpoint_digest, pixel_sha256
from mmsr.demo import Control, Demo, DemoError
from mmsr.demo.reports import EXAMPLE_NAME, lab_folders, open_report
from mmsr.demo.status import SAME_AS_TEXT_ONLY, schedule_text, steps_run
from mmsr.engine import Engine
from mmsr.metrics import Scorer
from mmsr.modalities import EXTRACTORS, BackendUnavailable, ModalityExtractor
from mmsr.settings import UpscaleSettings, spec

SIZE = (40, 28)  # small LR: tiny-random runs in seconds on two CPU cores
METRICS = ["lr_psnr", "piqe", "psnr", "musiq"]  # cheap, one needing an HR, one needing weights
CAPTION = "a tabby cat lying on a wooden floor"
PROBE = Image.open(app.EXAMPLES / "astronaut.png").convert("RGB")


@pytest.fixture(scope="module")
def engine(tiny_pipe):
    return Engine(tiny_pipe, "tiny-random")


@pytest.fixture(scope="module")
def demo(engine):
    return app.build_demo(engine, Scorer(METRICS), {"bicubic": get_baseline("bicubic")})


@pytest.fixture(scope="module")
def lab(demo):
    return demo.lab


@pytest.fixture(scope="module")
def lr_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("inputs") / "cat.png"
    Image.open(app.EXAMPLES / "chelsea.png").convert("RGB").resize(SIZE, Image.BICUBIC).save(path)
    return str(path)


def run(lab, image, **kw):
    """``Demo.run`` with a few fields set; the rest keep ``UpscaleSettings``' defaults."""
    return lab.run(image, **(dict(caption=CAPTION, steps=2, seed=7, baseline="bicubic") | kw))


@pytest.fixture(scope="module")
def result(lab, lr_path):
    return run(lab, lr_path)


def output(result, name):
    assert set(result) <= set(app.RUN_OUTPUTS)
    return result[name]


def test_examples_ship_with_captions():
    captions = json.loads((app.EXAMPLES / "examples.json").read_text())
    assert len(captions) >= 5
    for name, caption in captions.items():
        image = Image.open(app.EXAMPLES / name)
        assert max(image.size) == 128 and caption.strip()
        assert (app.EXAMPLES / name).stat().st_size < 64_000
    assert Image.open(app.EXAMPLES / "camera.png").mode == "L"  # an odd mode among the examples


def test_every_event_has_an_api_name(demo):
    events = {fn.api_name: fn for fn in demo.fns.values() if fn.fn is not None}
    assert {"prepare", "auto_caption", "recaption", "run", "stop", "random_seed", "import_settings"} <= set(events)
    assert "unnamed" not in events
    assert all(events[name].concurrency_id == "gpu" for name in ("prepare", "auto_caption", "recaption", "run"))
    assert events["stop"].concurrency_limit is None  # never queued behind the run it stops


def test_fields_name_every_component_once(demo):
    assert len(app.FIELDS) == len(set(app.FIELDS)) and set(demo.ui) == set(app.FIELDS)
    assert set(app.RUN_INPUTS) | set(app.RUN_OUTPUTS) <= set(app.FIELDS)


def test_widget_bounds_and_defaults_come_from_the_settings_table(demo):
    for name in ("guidance", "strength", "residual_scale"):
        widget, s = demo.ui[name], spec(name)
        assert (widget.minimum, widget.maximum, widget.step) == (s.min, s.max, s.step)
    assert demo.ui["steps"].maximum == spec("steps").max
    preset = demo.lab.engine.preset  # optional settings start at the preset's value
    assert demo.ui["guidance"].value == preset.default_guidance and demo.ui["steps"].value == preset.default_steps
    assert demo.ui["depth_tau"].minimum == spec("temperatures").min
    assert demo.ui["strength"].visible is (demo.lab.default_strength() < 1)
    assert demo.ui["residual_scale"].visible is demo.lab.has_stage1()  # only a model over a stage 1 has one
    assert demo.ui["residual_scale"].value == demo.lab.default_residual_scale()


def test_status_is_one_plain_line_per_modality_without_paths(lab):
    status = lab.status()
    assert "tiny-random" in status and "random weights" in status
    for label in ("Caption", "Depth", "Segmentation", "Edges"):
        assert sum(line.startswith(f"- **{label}**:") for line in status.splitlines()) == 1
    assert "Depth**: off here (needs the Depth Anything V2 download" in status and "upload your own map" in status
    assert "/root" not in status and "/.cache" not in status and "HF_HUB_OFFLINE" not in status
    assert "Text-only MMSR" in status and "Bicubic" in status
    assert "Scores not computed here" in status and "MUSIQ" in status  # collapsed into one line
    assert lab.baseline_choices()[0][1] == TEXT_ONLY


def test_checkpoint_hashes_are_computed_once_and_shown(engine, tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "vae.safetensors").write_bytes(b"other weights")
    (tmp_path / "notes.txt").write_text("not hashed")
    lab = Demo(engine, probe=PROBE, checkpoint=tmp_path)
    assert set(lab.hashes) == {"unet/model.safetensors", "vae.safetensors"}
    assert lab.hashes["vae.safetensors"] == hashlib.sha256(b"other weights").hexdigest()
    assert f"checkpoint `{checkpoint_digest(lab.hashes)[:12]}…` (2 files)" in lab.headline()


def test_a_cut_caption_is_reported_on_the_page(lab, lr_path, tmp_path):
    own = tmp_path / "flipped.png"  # its own input: the module's shared result must not hit this run's cache
    Image.open(lr_path).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(own)
    out = run(lab, str(own), caption="a tabby cat " * 500)
    assert "caption was 5999 characters; kept the first 2000" in out["run_status"]  # stripped, then cut


def test_visitors_outputs_are_removed_when_the_demo_goes(engine):
    lab = Demo(engine, probe=PROBE)
    workdir = lab._run_folder("run").parent
    assert workdir.is_dir()
    lab.close()  # what garbage collection or interpreter exit runs
    assert not workdir.exists()


def test_status_shows_the_fallback_notice(engine):
    lab = Demo(engine, probe=PROBE, notice="No lite checkpoint: running tiny-random")
    assert lab.status().startswith("⚠ **No lite checkpoint")


def _write(path: Path, data) -> str:
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        data.save(path)
    return str(path)


@pytest.mark.parametrize(
    "data, match",
    [
        (b"this is not an image", "not an image"),
        (b"", "empty"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not an image|could not decode"),
        (Image.new("RGB", (4, 4)), "too small"),
    ],
)
def test_bad_inputs_give_a_clear_error(lab, tmp_path, data, match):
    with pytest.raises(DemoError, match=match):
        lab.load_lr(_write(tmp_path / "bad.png", data))


def test_missing_input_gives_a_clear_error(lab):
    with pytest.raises(DemoError, match="Upload an image"):
        run(lab, None)


def test_large_inputs_are_downscaled_with_a_warning_or_refused(lab, tmp_path):
    path = _write(tmp_path / "big.png", Image.new("RGB", (lab.max_side * 3, lab.max_side)))
    lr, notes = lab.load_lr(path, downscale=True)
    assert max(lr.size) == lab.max_side and "downscaled from" in notes[0]
    assert "downscaled from" in lab.prepare(path)["info"]  # said once, on the size line
    with pytest.raises(DemoError, match="at most"):
        lab.load_lr(path, downscale=False)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "CMYK"])
def test_odd_modes_become_rgb(lab, tmp_path, mode):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8))
    image = image.convert(mode) if mode != "I;16" else image.convert("L").convert("I;16")
    fmt = "tiff" if mode == "CMYK" else "png"
    lr, _ = lab.load_lr(_write(tmp_path / f"odd.{fmt}", image))
    assert lr.mode == "RGB" and lr.size == (32, 24)


def test_prepare_fills_the_context_cards(lab, lr_path):
    out = lab.prepare(lr_path)
    assert out["edges_preview"].size == (256, 256) and "canny" in out["edges_source"]
    assert out["depth_preview"] is None and out["depth_source"].startswith("**m₀**: off here")
    assert out["info"] == f"input {SIZE[0]}x{SIZE[1]} → output {4 * SIZE[0]}x{4 * SIZE[1]}"
    assert out["edges_tau"] == Control(None)  # a working modality's temperature acts
    assert out["depth_tau"] == Control(1.0, enabled=False, note="Depth is m₀ here: its temperature has no effect")
    assert lab.prepare(None)["info"] == ""


def test_switch_off_shows_m0(lab, lr_path):
    out = lab.prepare(lr_path, edges_on=False)
    assert out["edges_source"] == "**m₀**: switched off" and not out["edges_tau"].enabled


def test_run_returns_both_outputs_scores_and_downloads(result):
    mmsr, baseline = output(result, "slider")
    assert mmsr.size == baseline.size == (4 * SIZE[0], 4 * SIZE[1])
    assert [c for _, c in output(result, "gallery")] == ["LR input (nearest)", "Bicubic", "Bicubic", "MMSR"]
    assert output(result, "heat_mmsr").size == mmsr.size
    scores = output(result, "scores")
    assert scores["headers"] == ["metric", "better", "MMSR", "bicubic"]
    rows = {r[0]: r for r in scores["data"]}
    assert float(rows["LR-consistency (dB)"][2]) > 0 and rows["LR-consistency (dB)"][1] == "↑"
    assert rows["PIQE"][1] == "↓" and float(rows["PIQE"][3]) >= 0
    assert set(rows) == {"LR-consistency (dB)", "PIQE"}  # no rows of "—"
    assert (
        output(result, "scores_note") == "Not scored: PSNR (dB): need an HR reference; MUSIQ: weights not downloaded."
    )
    timings = output(result, "timings")
    assert {"mmsr/unet", "baseline", "scores"} <= {row[0] for row in timings["data"]}
    assert Image.open(output(result, "dl_mmsr")).size == mmsr.size
    assert Image.open(output(result, "dl_base")).format == "PNG"


def test_exported_settings_hold_everything_needed(result, lab):
    record = json.loads(Path(output(result, "dl_json")).read_text())
    assert record["preset"] == "tiny-random" and record["checkpoint"]["sha256"] == lab.hashes
    assert record["settings"]["seed"] == 7 and record["settings"]["caption"] == CAPTION
    assert record["settings"]["steps"] == 2 and record["baseline"] == "bicubic"
    assert record["modalities"]["edges"] == "canny" and record["modalities"]["depth"].startswith("m_0")
    assert record["output"]["sha256"] == pixel_sha256(output(result, "slider")[0])


def test_import_then_run_reproduces_the_output(lab, lr_path, result):
    imported = lab.import_settings(output(result, "dl_json"), lr_path)
    assert imported["seed"] == 7 and imported["caption"] == CAPTION and "match" in imported.pop("import_note")
    assert set(imported) <= set(app.CONTROLS) | {"baseline"}
    again = run(lab, lr_path, **imported)
    assert pixel_sha256(output(again, "slider")[0]) == pixel_sha256(output(result, "slider")[0])


@pytest.mark.parametrize(
    "text, match",
    [("{not json", "could not import"), ('{"format": "other"}', "not an MMSR Lab run record")],
)
def test_import_rejects_other_files(lab, tmp_path, text, match):
    path = tmp_path / "run.json"
    path.write_text(text)
    with pytest.raises(DemoError, match=match):
        lab.import_settings(str(path))


def test_import_rejects_out_of_range_settings(lab, tmp_path, result):
    record = json.loads(Path(output(result, "dl_json")).read_text())
    record["settings"]["temperatures"]["depth"] = 50
    path = tmp_path / "run.json"
    path.write_text(json.dumps(record))
    with pytest.raises(DemoError, match="temperature of depth"):
        lab.import_settings(str(path))


def test_import_warns_about_another_preset_or_input(lab, tmp_path, result):
    record = json.loads(Path(output(result, "dl_json")).read_text()) | {"preset": "lite"}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(record))
    assert "preset 'lite'" in lab.import_settings(str(path))["import_note"]
    other = _write(tmp_path / "other.png", Image.new("RGB", SIZE, "red"))
    assert "input differs" in lab.import_settings(output(result, "dl_json"), other)["import_note"]
    record["settings"]["residual_scale"] = 0.6  # a lite record in an app whose model has no stage 1
    path.write_text(json.dumps(record))
    imported = lab.import_settings(str(path))
    assert (
        imported["residual_scale"] == 1 and "residual scale 0.6 needs a model over a stage 1" in imported["import_note"]
    )


def test_text_only_baseline_uses_the_same_seed_and_settings(lab, engine, lr_path):
    out = run(lab, lr_path, baseline=TEXT_ONLY, seed=3, guidance=2.0)
    settings = UpscaleSettings(caption=CAPTION, guidance=2.0, steps=2, seed=3)
    expected = engine.text_only(lab.load_lr(lr_path)[0], settings).image
    assert pixel_sha256(output(out, "slider")[1]) == pixel_sha256(expected)


def test_editing_the_caption_reruns_only_the_diffusion(lab, lr_path, result):
    out = run(lab, lr_path, caption="a cat on a floor", depth_tau=0.5)
    notes = {row[0]: row[2] for row in output(out, "timings")["data"]}
    assert notes["mmsr/extract_edges"] == "cache hit"
    assert "source: **canny**" in output(out, "edges_source") and "cached" in output(out, "edges_source")


def test_empty_caption_without_a_captioner_warns_and_runs(lab, lr_path):
    out = run(lab, lr_path, caption="")
    assert "no caption" in out["run_status"] and "caption" not in out and out["slider"][0] is not None


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"depth_tau": 20.0}, "temperature of depth"),
        ({"baseline": "nope"}, "unknown baseline"),
        ({"cfg_mode": "xx"}, "cfg mode"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_settings_give_a_clear_error(lab, lr_path, kw, match):
    with pytest.raises(DemoError, match=match):
        run(lab, lr_path, **kw)


class FailingDepth(ModalityExtractor):
    name = "depth"

    def backends(self, image, user_map, upscaled):
        def boom():
            raise RuntimeError("CUDA out of memory")

        def offline():
            raise BackendUnavailable("no depth model here")

        return [("broken-model", boom), ("other", offline)]


def test_a_failing_extractor_falls_back_to_m0_with_the_reason(tiny_pipe, lr_path):
    extractors = {k: cls() for k, cls in EXTRACTORS.items()} | {"depth": FailingDepth()}
    engine = Engine(tiny_pipe, "tiny-random", extractors=extractors)
    lab = Demo(engine, baselines={"bicubic": get_baseline("bicubic")}, probe=PROBE)
    assert "CUDA out of memory" in lab.status()
    out = run(lab, lr_path, baseline="bicubic")
    assert output(out, "depth_preview") is None
    assert "broken-model failed: RuntimeError: CUDA out of memory" in output(out, "depth_source")


def test_own_map_is_used_and_recorded(lab, lr_path, tmp_path):
    depth = Image.fromarray(np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (48, 1)))
    path = _write(tmp_path / "depth.png", depth)
    assert "source: **user**" in lab.prepare(lr_path, depth_map=path)["depth_source"]
    result = run(lab, lr_path, depth_map=path)
    record_path = output(result, "dl_json")
    assert json.loads(Path(record_path).read_text())["modalities"]["depth"] == "user"
    assert "upload them again" in lab.import_settings(record_path)["import_note"]


def test_stop_cancels_the_running_diffusion(lab, lr_path):
    def progress(*args):  # the Stop button pressed during the first step
        lab.stop("session-1")

    out = run(lab, lr_path, session="session-1", progress=progress)
    assert set(out) == {"run_status"} and out["run_status"].startswith("**Stopped** at step")  # no error
    assert output(run(lab, lr_path, session="session-1"), "slider")[0] is not None  # the next run is not stopped


def test_random_seed_is_in_range():
    assert all(0 <= Demo.random_seed() < 2**32 for _ in range(20))


def test_gpu_decorator_is_a_no_op_off_zerogpu():
    def work():
        return 1

    assert app.GPU(work) is work and app.GPU(duration=60)(work) is work


def test_preset_falls_back_to_tiny_random_without_a_lite_checkpoint(monkeypatch, tmp_path):
    monkeypatch.delenv("MMSR_PRESET", raising=False)
    monkeypatch.setenv("MMSR_CHECKPOINT", str(tmp_path / "missing"))
    preset, notice = app._preset_and_notice()
    assert preset == "tiny-random" and "No lite checkpoint" in notice
    monkeypatch.setenv("MMSR_PRESET", "tiny-random")
    assert app._preset_and_notice() == ("tiny-random", "")


def test_an_unusable_preset_falls_back_with_a_notice(monkeypatch, tmp_path):
    monkeypatch.setenv("MMSR_PRESET", "lite")
    monkeypatch.setenv("MMSR_CHECKPOINT", str(tmp_path / "missing"))
    engine, checkpoint, notice = app.load_engine()
    assert engine.preset.name == "tiny-random" and checkpoint is None
    assert "Preset 'lite' is unavailable" in notice and "lite checkpoint incomplete" in notice


def test_an_unusable_mmsr_device_is_a_notice_not_a_traceback(monkeypatch):
    monkeypatch.setenv("MMSR_PRESET", "tiny-random")
    monkeypatch.setenv("MMSR_DEVICE", "bogus")
    engine, _, notice = app.load_engine()
    assert engine.pipeline.device.type in ("cpu", "cuda") and "MMSR_DEVICE ignored" in notice and "bogus" in notice


@pytest.mark.slow
def test_python_app_py_starts_offline_and_serves(tmp_path):
    port = free_port()
    env = os.environ | {
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "HF_HUB_OFFLINE": "1",
        "MMSR_CHECKPOINT": str(tmp_path / "no-checkpoint"),
    }
    env.pop("MMSR_PRESET", None)
    log = tmp_path / "app.log"
    start = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=app.ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        config = None
        while config is None and time.monotonic() - start < 300 and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5) as response:
                    config = json.loads(response.read())
            except OSError:
                time.sleep(0.5)
        assert config is not None, log.read_text()[-3000:]  # under a minute on an idle 2-core machine
        assert config["max_file_size"] == 20 * 1024**2
        text = json.dumps(config)
        assert "No lite checkpoint" in text and "tiny-random" in text
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# -- the API through gradio_client, against the app served on 127.0.0.1 -----------------------------


def file_path(value) -> str:
    """A file output as gradio_client returns it: a path, a file dict, or an update holding one."""
    while isinstance(value, dict):
        value = value.get("value", value.get("path"))
    return value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(demo):
    demo.queue(default_concurrency_limit=1, max_size=8)
    _, url, _ = demo.launch(
        server_name="127.0.0.1",
        server_port=free_port(),
        prevent_thread_lock=True,
        quiet=True,
        **app.launch_options(),
    )
    yield url
    demo.close()


@pytest.mark.slow
def test_client_calls_the_run_endpoint(served, lr_path):
    from gradio_client import Client, handle_file

    client = Client(served, verbose=False)
    out = client.predict(
        image=handle_file(lr_path),
        caption=CAPTION,
        baseline="bicubic",
        steps=2,
        depth_map=None,
        seg_map=None,
        edges_map=None,
        hr=None,
        api_name="/run",
    )
    mmsr, baseline = out[0]
    assert Image.open(mmsr).size == Image.open(baseline).size == (4 * SIZE[0], 4 * SIZE[1])
    assert Image.open(mmsr).format == "PNG"  # lossless
    table = out[app.RUN_OUTPUTS.index("scores")]
    scores = {row[0]: row for row in table["data"]}
    assert table["headers"] == ["metric", "better", "MMSR", "bicubic"]
    assert float(scores["LR-consistency (dB)"][2]) > 0
    record = json.loads(Path(file_path(out[app.RUN_OUTPUTS.index("dl_json")])).read_text())
    assert record["settings"]["caption"] == CAPTION


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, data, match",
    [("garbage.png", b"not an image", "not an image file"), ("huge.png", None, "decompression bomb")],
)
def test_client_gets_a_clear_error_for_undecodable_uploads(served, lr_path, tmp_path, name, data, match):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    path = tmp_path / name
    if data is None:
        Image.new("1", (20_000, 20_000)).save(path)  # 400 Mpx in a 50 kB file
    else:
        path.write_bytes(data)
    client = Client(served, verbose=False)
    maps = {"depth_map": None, "seg_map": None, "edges_map": None}
    with pytest.raises(AppError, match=match):
        client.predict(image=handle_file(str(path)), **maps, api_name="/prepare")
    out = client.predict(image=handle_file(lr_path), **maps, api_name="/prepare")  # the app lives on
    assert out[-1].startswith("input 40x28")


@pytest.mark.slow
def test_a_payload_naming_a_server_file_gets_one_message_without_the_path(served):
    import httpx

    config = httpx.get(served.rstrip("/") + "/config").json()
    (prepare,) = [d for d in config["dependencies"] if d.get("api_name") == "prepare"]
    base = served.rstrip("/") + "/gradio_api/call/prepare"
    payload = {"path": str(Path(app.__file__).resolve()), "meta": {"_type": "gradio.FileData"}}
    data = [payload] + [None] * (len(prepare["inputs"]) - 1)
    event = httpx.post(base, json={"data": data}).json()["event_id"]
    stream = httpx.get(f"{base}/{event}", timeout=60).text
    assert "event: error" in stream and page.FOREIGN_FILE in stream
    assert str(Path(app.__file__).resolve().parent) not in stream and "Cannot move" not in stream


def test_lab_section_opens_only_result_folders_under_its_root(tmp_path):
    (tmp_path / "set5").mkdir()
    (tmp_path / "set5" / "results.csv").write_text("id\n")
    (tmp_path / "other").mkdir()
    assert list(lab_folders(tmp_path)) == [EXAMPLE_NAME, "set5"]
    for name in ("other", "../etc", "/etc"):
        with pytest.raises(ValueError, match="no lab results"):
            open_report(name, tmp_path)
    assert open_report("set5", tmp_path).startswith("#")  # an empty run still gets a report page


def test_lab_section_does_not_offer_a_symlink_out_of_its_root(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "results.csv").write_text("id\n")
    root = tmp_path / "runs"
    root.mkdir()
    (root / "escape").symlink_to(outside, target_is_directory=True)
    assert list(lab_folders(root)) == [EXAMPLE_NAME]
    with pytest.raises(ValueError, match="no lab results"):
        open_report("escape", root)
    assert sorted(p.name for p in outside.iterdir()) == ["results.csv"]  # nothing written outside


def test_the_shipped_lab_report_opens_first_with_its_plots_inline(demo):
    assert demo.ui["lab_folder"].value == EXAMPLE_NAME
    markdown = demo.ui["lab_report"].value
    assert markdown.startswith("# MMSR Lab report") and "](data:image/png;base64," in markdown
    assert "](plots/" not in markdown  # a relative link would 404 in the browser


def test_step_control_says_how_many_steps_run(tiny_pipe, lab):
    for steps, strength in ((20, 0.35), (20, 1.0), (7, 0.05), (1, 0.5), (200, 0.35)):
        assert steps_run(steps, strength) == len(tiny_pipe.get_timesteps(steps, strength, "cpu"))
    assert schedule_text(20, 0.35, None).startswith("20-step schedule, 7 steps run from strength 0.35")
    assert schedule_text(20, 1.0, 2.0) == "20-step schedule · about 40 s (a long run: fewer steps are faster)"
    assert lab.seconds_per_step is not None  # measured by the runs above
    off = dict.fromkeys(app.SWITCHES, False)
    assert SAME_AS_TEXT_ONLY in lab.settings_note(2, 1.0, TEXT_ONLY, **off)
    assert SAME_AS_TEXT_ONLY not in lab.settings_note(2, 1.0, "bicubic", **off)


def test_every_map_off_says_mmsr_is_the_text_only_baseline(lab, lr_path):
    out = run(lab, lr_path, baseline=TEXT_ONLY, **dict.fromkeys(app.SWITCHES, False))
    assert SAME_AS_TEXT_ONLY in out["run_status"]
    assert pixel_sha256(out["slider"][0]) == pixel_sha256(out["slider"][1])


def test_what_changed_between_two_runs(lab, lr_path, result):
    first = run(lab, lr_path)
    assert first["changes_heat"] is None or first["previous"]
    again = run(lab, lr_path, caption="a dog on a floor", guidance=2.0, previous=first["previous"])
    assert again["changes_heat"].size == again["slider"][0].size
    status = again["run_status"]
    assert "Since the last run: caption edited" in status or "caption 'a tabby" in status
    assert "guidance 4.0 → 2.0" in status and "mean change" in status


def test_a_typed_caption_is_never_erased_offline(lab, lr_path, tmp_path):
    assert lab.caption(lr_path) == {}  # no captioner: nothing to fill, the typed text stays
    assert lab.caption(_write(tmp_path / "bad.png", b"not an image")) == {}  # the upload check says why, once
    assert lab.captioner_reason.startswith("No captioner here")


def test_default_baseline_is_real_esrgan_when_it_runs(engine):
    class Stub:
        label, uses_caption = "Real-ESRGAN x4plus", False

        def available(self):
            return True, ""

    assert Demo(engine, baselines={"bicubic": get_baseline("bicubic")}, probe=PROBE).default_baseline() == TEXT_ONLY
    assert Demo(engine, baselines={"bicubic": get_baseline("bicubic"), "realesrgan": Stub()},
                probe=PROBE).default_baseline() == "realesrgan"  # fmt: skip


def test_downloads_are_disabled_until_a_result(demo):
    assert all(not demo.ui[name].interactive for name in app.DOWNLOADS)
    assert app._update("dl_mmsr", "/tmp/x.png")["interactive"] is True
