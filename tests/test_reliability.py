"""Reliability of the CLI and the package: bad inputs, faults, and never losing a file.

The CLI runs in-process (``mmsr.cli.run``) with ``Engine.load`` patched to hand out one shared
tiny-random engine, so each case costs milliseconds unless it really runs the diffusion.
"""

import ast
import io
import os
import pickle
import resource
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from mmsr import cli
from mmsr.demo import DemoError
from mmsr.engine import Engine
from mmsr.errors import ResourceError, is_out_of_memory
from mmsr.imageio import ImageError, load_image, pil_to_tensor, save_atomic, tensor_to_pil, to_rgb
from mmsr.modalities import EXTRACTORS, ModalityExtractor
from mmsr.modalities.base import BackendUnavailable
from mmsr.presets import PresetUnavailable, load_pipeline
from mmsr.settings import MAX_CAPTION_CHARS, UpscaleSettings

ROOT = Path(__file__).resolve().parent.parent
HYPOTHESIS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def engine(tiny_pipe):
    return Engine(tiny_pipe, "tiny-random")


@pytest.fixture
def upscale(engine, monkeypatch, capsys, tmp_path):
    """``upscale(input, *flags) -> (exit code, stdout, stderr)`` through ``mmsr.cli.run`` on tiny-random."""
    monkeypatch.setattr(Engine, "load", classmethod(lambda cls, *a, **k: engine))

    def call(source, *flags, output=None):
        output = output or tmp_path / "out.png"
        argv = ["upscale", str(source), "-o", str(output), "--preset", "tiny-random", "--caption", "a cat"]
        code = cli.run([*argv, "--steps", "1", *flags])
        out, err = capsys.readouterr()
        return code, out, err

    return call


def noise(size=(24, 16), mode="RGB", seed=0) -> Image.Image:
    w, h = size
    image = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))
    return image.convert(mode)


def encoded(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming ``width`` x ``height`` RGB, with one tiny IDAT: 60 bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def assert_user_error(result, match: str):
    code, out, err = result
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert any(word in lines[0] for word in match.split("|")), lines[0]


# -- bad inputs through the CLI ---------------------------------------------------------------------


def _truncated(fmt: str) -> bytes:
    data = encoded(noise((64, 64)), fmt)
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    "name, data, match",
    [
        ("notes.txt", b"just some text, not a picture", "not an image"),
        ("script.png", b"#!/bin/sh\necho hi\n", "not an image"),
        ("empty.png", b"", "empty"),
        ("cut.png", _truncated("PNG"), "truncated|could not decode"),
        ("cut.jpg", _truncated("JPEG"), "truncated|could not decode"),
        ("one.png", encoded(Image.new("RGB", (1, 1))), "too small"),
        ("thin.png", encoded(Image.new("RGB", (64, 4))), "too small"),
        ("huge.png", png_header_only(20_000, 20_000), "pixel limit|decompression bomb"),
        ("wide.png", encoded(Image.new("RGB", (600, 100))), "at most 512 px"),
    ],
)
def test_bad_input_files_exit_2_with_one_line(upscale, tmp_path, name, data, match):
    path = tmp_path / name
    path.write_bytes(data)
    assert_user_error(upscale(path), match)
    assert not (tmp_path / "out.png").exists()


def test_missing_input_is_a_user_error(upscale, tmp_path):
    assert_user_error(upscale(tmp_path / "nope.png"), "no such file")


@pytest.mark.parametrize("build", ["ihdr", "mode1"])
def test_decompression_bomb_is_refused_fast_without_decoding(tmp_path, monkeypatch, build):
    path = tmp_path / "bomb.png"
    if build == "ihdr":
        path.write_bytes(png_header_only(20_000, 20_000))
    else:
        Image.new("1", (20_000, 20_000)).save(path)  # 400 Mpx in ~50 kB
    assert path.stat().st_size < 200_000
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size))
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.perf_counter()
    with pytest.raises(ImageError, match="pixel limit|decompression bomb"):
        load_image(path)
    assert time.perf_counter() - start < 2.0
    assert decoded == []  # never decoded, so the 400 MB (1 byte a pixel) was never allocated
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 100_000


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--guidance", "31"], "guidance must lie in"),
        (["--guidance", "-1"], "guidance must lie in"),
        (["--guidance", "nan"], "guidance must lie in"),
        (["--guidance", "inf"], "guidance must lie in"),
        (["--steps", "0"], "steps must lie in"),
        (["--steps", "-3"], "steps must lie in"),
        (["--steps", "1000000"], "steps must lie in"),
        (["--seed", "-1"], "seed must lie in"),
        (["--temperature", "depth=0.1"], "temperature of depth"),
        (["--temperature", "edges=11"], "temperature of edges"),
        (["--temperature", "seg=nan"], "temperature of seg"),
        (["--temperature", "depth"], "name=value"),
        (["--temperature", "depth=abc"], "not a number"),
        (["--temperature", "colour=1"], "unknown modality"),
    ],
)
def test_out_of_range_settings_exit_2_before_any_model_loads(upscale, tmp_path, monkeypatch, flags, match):
    def no_load(*a, **k):
        raise AssertionError("the model must not load for invalid settings")

    monkeypatch.setattr(Engine, "load", classmethod(no_load))
    path = tmp_path / "in.png"
    noise().save(path)
    assert_user_error(upscale(path, *flags), match)


def test_unparseable_numbers_are_refused_by_argparse(upscale, tmp_path, capsys):
    path = tmp_path / "in.png"
    noise().save(path)
    with pytest.raises(SystemExit) as exit_info:
        upscale(path, "--steps", "many")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid int value" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "map_data, match",
    [
        (b"this is a text file", "--depth-map: not an image"),
        (b"", "--depth-map: "),
        (encoded(Image.new("L", (64, 16))), "aspect ratio"),
    ],
)
def test_user_maps_of_the_wrong_type_or_shape_are_refused(upscale, tmp_path, map_data, match):
    source = tmp_path / "in.png"
    noise((24, 16)).save(source)
    depth = tmp_path / "depth.png"
    depth.write_bytes(map_data)
    assert_user_error(upscale(source, "--depth-map", str(depth)), match)


def test_a_user_map_at_another_scale_is_accepted(engine):
    lr = noise((24, 16))
    results = engine.extract(lr, {"depth": True}, {"depth": Image.new("L", (96, 64))})
    assert results["depth"].source == "user"


# -- odd but valid images ---------------------------------------------------------------------------


def test_transparency_is_composited_on_white_not_black():
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)  # black, fully transparent...
    rgba[:8, :, 3] = 128  # ...except the top half: black at half opacity
    image, _ = load_image(encoded(Image.fromarray(rgba, "RGBA")))
    arr = np.asarray(image)
    assert image.mode == "RGB"
    assert (arr[8:] == 255).all()  # transparent -> white
    assert np.abs(arr[:8].astype(int) - 127).max() <= 1  # half black over white -> mid grey
    la = Image.fromarray(rgba[..., [0, 3]], "LA")
    assert (np.asarray(load_image(encoded(la))[0])[8:] == 255).all()
    palette = Image.new("P", (16, 16), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0])
    palette.info["transparency"] = 0
    assert (np.asarray(load_image(encoded(palette, transparency=0))[0]) == 255).all()


def test_sixteen_bit_grey_is_scaled_not_clipped():
    arr = np.array([[0, 32768, 65535, 65535]] * 8, dtype=np.uint16)
    image, _ = load_image(encoded(Image.fromarray(arr)))
    assert image.mode == "RGB"
    assert np.asarray(image)[0, :, 0].tolist() == [0, 128, 255, 255]


@pytest.mark.parametrize("mode, fmt", [("CMYK", "JPEG"), ("CMYK", "TIFF"), ("L", "PNG"), ("P", "GIF"), ("1", "PNG")])
def test_other_modes_become_rgb_of_the_same_size(mode, fmt):
    image, notes = load_image(encoded(noise((24, 16), mode), fmt))
    assert image.mode == "RGB" and image.size == (24, 16) and notes == []
    if mode == "L":
        arr = np.asarray(image)
        assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()


def test_cmyk_white_stays_white():
    image, _ = load_image(encoded(Image.new("CMYK", (16, 16), (0, 0, 0, 0)), "JPEG", quality=100))
    assert np.asarray(image).min() >= 250


def exif_rotated_jpeg(size=(40, 20), orientation=6) -> bytes:
    image = noise(size)
    exif = image.getexif()
    exif[0x0112] = orientation  # 6: the camera was turned 90 degrees clockwise
    return encoded(image, "JPEG", exif=exif.tobytes())


def test_animated_gif_gives_the_first_frame_with_a_warning():
    frames = [Image.new("RGB", (24, 16), colour) for colour in ("red", "blue", "green")]
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    image, notes = load_image(data)
    assert np.abs(np.asarray(image).astype(int) - [255, 0, 0]).max() <= 2
    assert notes == ["animated image with 3 frames: using the first"]


def test_exif_rotated_photo_is_upright_end_to_end(upscale, tmp_path):
    """One real CLI run: EXIF orientation is honoured (the sides swap) and --overwrite replaces."""
    source = tmp_path / "photo.jpg"
    source.write_bytes(exif_rotated_jpeg((40, 20)))
    assert load_image(source)[0].size == (20, 40)
    out = tmp_path / "out.png"
    out.write_bytes(b"old")
    assert_user_error(upscale(source, output=out), "exists")
    assert out.read_bytes() == b"old"
    code, _, err = upscale(source, "--overwrite", output=out)
    assert code == 0, err
    assert Image.open(out).size == (80, 160)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


def test_long_caption_with_emoji_and_control_characters_runs(upscale, tmp_path):
    """One real CLI run: an animated GIF and a 5,000-character caption, reported as JSON."""
    import json

    frames = [noise((24, 16), seed=i) for i in range(2)]
    source = tmp_path / "anim.gif"
    frames[0].save(source, save_all=True, append_images=frames[1:])
    caption = ("A cat 🐱 on a mat\x00\x07\u202e\x1b[31m with a hat 🎩\n\t" * 200)[:5000]
    assert len(caption) == 5000
    code, out, err = upscale(source, "--json", "--caption", caption)
    assert code == 0, err
    assert "note: animated image with 2 frames" in err
    report = json.loads(out)
    kept = report["caption"]
    assert len(kept) <= MAX_CAPTION_CHARS and "🐱" in kept and "🎩" in kept
    assert not any(c in kept for c in "\x00\x07\u202e\x1b\n\t")
    assert report["size"]["sr"] == [96, 64]


def test_settings_clean_captions_without_the_cli():
    s = UpscaleSettings(caption="x\x00" * 3000, negative_prompt="\u200b\u202eblurry").validated()
    assert len(s.caption) <= MAX_CAPTION_CHARS and "\x00" not in s.caption
    assert s.negative_prompt == "blurry"


# -- never lose a file --------------------------------------------------------------------------------


def test_the_input_is_never_overwritten(upscale, tmp_path):
    source = tmp_path / "in.png"
    noise().save(source)
    before = source.read_bytes()
    assert_user_error(upscale(source, "--overwrite", output=source), "refusing to overwrite an input")
    link = tmp_path / "link.png"
    os.link(source, link)  # a second name for the same file
    assert_user_error(upscale(source, "--overwrite", output=link), "refusing to overwrite an input")
    assert source.read_bytes() == before


def test_an_unknown_output_format_fails_before_the_run(upscale, tmp_path, monkeypatch):
    monkeypatch.setattr(Engine, "load", classmethod(lambda *a, **k: pytest.fail("must fail before loading")))
    source = tmp_path / "in.png"
    noise().save(source)
    assert_user_error(upscale(source, output=tmp_path / "out.xyz"), "unknown output format")


class StubEngine:
    """Returns a grey 4x image at once: the CLI's file handling without the diffusion."""

    def __init__(self, fail: BaseException | None = None):
        self.fail = fail

    def upscale(self, lr, settings, user_maps=None):
        if self.fail is not None:
            raise self.fail
        return SimpleNamespace(image=Image.new("RGB", (4 * lr.width, 4 * lr.height), "grey"), warnings=[])


def test_a_failed_write_leaves_no_partial_file(upscale, tmp_path, monkeypatch):
    monkeypatch.setattr(Engine, "load", classmethod(lambda *a, **k: StubEngine()))

    def half_write(self, fp, format=None, **kw):
        fp.write(b"\x89PNG half of an image")
        raise OSError(28, "No space left on device")

    source = tmp_path / "in.png"
    source.write_bytes(encoded(noise()))
    monkeypatch.setattr(Image.Image, "save", half_write)
    assert_user_error(upscale(source), "could not write|No space left")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]


@pytest.mark.parametrize("fail, code", [(KeyboardInterrupt(), 130), (RuntimeError("CUDA error: out of memory"), 2)])
def test_an_interrupted_run_writes_nothing(upscale, tmp_path, monkeypatch, fail, code):
    if isinstance(fail, RuntimeError):
        fail = ResourceError(f"out of memory ({fail}): try a smaller input, fewer steps")
    monkeypatch.setattr(Engine, "load", classmethod(lambda *a, **k: StubEngine(fail)))
    source = tmp_path / "in.png"
    noise().save(source)
    assert upscale(source)[0] == code
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]


def test_save_atomic_never_replaces_without_overwrite_and_cleans_up(tmp_path, monkeypatch):
    path = tmp_path / "out.png"
    save_atomic(noise(), path)
    first = path.read_bytes()
    with pytest.raises(FileExistsError):
        save_atomic(noise(seed=1), path)
    assert path.read_bytes() == first

    def crash(self, fp, format=None, **kw):
        fp.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_atomic(noise(seed=2), path, overwrite=True)
    assert path.read_bytes() == first  # the old output survives a crash mid-write
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


@pytest.mark.slow
def test_the_real_command_prints_one_line_and_no_traceback(tmp_path):
    """The only subprocess: ``python -m mmsr`` as a user runs it."""
    source = tmp_path / "notes.txt"
    source.write_text("not an image")
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mmsr",
            "upscale",
            str(source),
            "-o",
            str(tmp_path / "o.png"),
            "--preset",
            "tiny-random",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in proc.stderr and proc.stdout == ""


# -- property-based: decoding and normalisation -----------------------------------------------------

MODES = ["1", "L", "P", "RGB", "RGBA", "LA", "PA", "I;16", "I", "F", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "La"]
FORMATS = ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"]


@st.composite
def pil_images(draw, modes=MODES):
    w, h = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    mode = draw(st.sampled_from(modes))
    seed = draw(st.integers(0, 2**16))
    rgba = np.random.default_rng(seed).integers(0, 256, (h, w, 4), dtype=np.uint8)
    base = Image.fromarray(rgba, "RGBA")
    if mode in ("I;16", "I"):
        scale = draw(st.sampled_from([1, 257]))
        return Image.fromarray(rgba[..., 0].astype(np.uint16) * scale).convert(mode)
    if mode == "F":
        values = draw(st.sampled_from([1.0, 1e-6, 1e30, -5.0]))
        return Image.fromarray(rgba[..., 0].astype(np.float32) * values, "F")
    return base.convert(mode) if mode in ("P", "1") else base.convert("RGB").convert(mode) if mode != "RGBA" else base


@HYPOTHESIS
@given(image=pil_images(), fmt=st.sampled_from(FORMATS), orientation=st.sampled_from([None, 1, 3, 6, 8]))
def test_load_image_gives_rgb_of_the_same_size_or_an_image_error(image, fmt, orientation):
    kw = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif.tobytes()
    try:
        data = encoded(image, fmt, **kw)
    except (OSError, ValueError, KeyError, TypeError):
        assume(False)  # Pillow cannot write this mode in this format: nothing to read back
    try:
        out, notes = load_image(data)
    except ImageError:
        return
    expected = image.size
    reread = Image.open(io.BytesIO(data))
    if reread.getexif().get(0x0112) in (5, 6, 7, 8):
        expected = expected[::-1]
    assert out.mode == "RGB" and out.size == expected
    assert isinstance(notes, list)


@HYPOTHESIS
@given(data=st.binary(max_size=300), keep=st.integers(0, 400))
def test_load_image_never_crashes_on_random_bytes(data, keep):
    png = encoded(noise((12, 9)))
    for blob in (data, png[:keep] + data):
        try:
            out, _ = load_image(blob)
        except ImageError:
            continue
        assert out.mode == "RGB"


@HYPOTHESIS
@given(image=pil_images())
def test_to_rgb_gives_8_bit_rgb(image):
    try:
        out = to_rgb(image)
    except ValueError:  # a conversion Pillow does not offer (e.g. LAB -> RGB in some builds)
        return
    arr = np.asarray(out)
    assert out.mode == "RGB" and out.size == image.size
    assert arr.dtype == np.uint8 and arr.shape == (image.height, image.width, 3)


@HYPOTHESIS
@given(h=st.integers(1, 32), w=st.integers(1, 32), seed=st.integers(0, 2**16))
def test_pil_tensor_round_trip_is_exact(h, w, seed):
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    x = pil_to_tensor(Image.fromarray(arr))
    assert x.shape == (1, 3, h, w) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert (np.asarray(tensor_to_pil(x)) == arr).all()
    assert (np.asarray(tensor_to_pil(x[0])) == arr).all()


# -- faults ---------------------------------------------------------------------------------------------


class BrokenDepth(ModalityExtractor):
    name, source = "depth", "broken-model"

    def from_image(self, image, upscaled):
        raise RuntimeError("model weights are corrupt")


def test_a_failing_extractor_becomes_m0_with_the_reason(tiny_pipe):
    extractors = {k: cls() for k, cls in EXTRACTORS.items()} | {"depth": BrokenDepth()}
    engine = Engine(tiny_pipe, "tiny-random", extractors=extractors)
    result = engine.upscale(noise(), UpscaleSettings(caption="a cat", steps=1))
    assert result.image.size == (96, 64)
    assert not result.modalities["depth"].available
    reason = "broken-model failed: RuntimeError: model weights are corrupt"
    assert reason in result.sources()["depth"]
    assert any(w.startswith("depth: using m_0") and reason in w for w in result.warnings)


@pytest.mark.parametrize(
    "error, oom",
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
        (RuntimeError("CUDA error: out of memory"), True),
        (RuntimeError("MPS backend out of memory"), True),
        (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"), True),
        (RuntimeError("shape mismatch"), False),
        (ValueError("out of memory"), False),
    ],
)
def test_out_of_memory_is_recognised(error, oom):
    assert is_out_of_memory(error) is oom


def _oom_once(unet):
    calls = []

    def hook(module, args):
        if not calls:
            calls.append(1)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    return unet.register_forward_pre_hook(hook)


def test_out_of_memory_is_answered_with_a_suggestion_and_the_engine_keeps_serving(engine):
    settings = UpscaleSettings(caption="a cat", steps=1)
    handle = _oom_once(engine.pipeline.unet)
    try:
        with pytest.raises(ResourceError, match="out of memory") as error:
            engine.upscale(noise(), settings)
        message = str(error.value)
        assert "smaller input" in message and "fewer steps" in message and "24x16" in message
        assert error.value.__context__ is None  # the failed run's tensors are not pinned by a traceback
        assert engine.upscale(noise(), settings).image.size == (96, 64)
    finally:
        handle.remove()


def test_out_of_memory_in_the_cli_is_one_line(upscale, engine, tmp_path):
    source = tmp_path / "in.png"
    noise().save(source)
    handle = _oom_once(engine.pipeline.unet)
    try:
        assert_user_error(upscale(source), "out of memory")
    finally:
        handle.remove()
    assert not (tmp_path / "out.png").exists()


@pytest.fixture(scope="module")
def saved_checkpoint(tiny_pipe, tmp_path_factory):
    """The tiny-random pipeline saved the way a ``lite`` checkpoint is (safetensors only)."""
    path = tmp_path_factory.mktemp("ckpt") / "lite"
    tiny_pipe.save_pretrained(path, safe_serialization=True)
    return path


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_a_saved_checkpoint_loads(saved_checkpoint):
    pipe = load_pipeline("lite", checkpoint=saved_checkpoint)
    assert pipe.unet.config.block_out_channels == (16, 32) or list(pipe.unet.config.block_out_channels) == [16, 32]


def test_a_missing_component_names_the_folder(saved_checkpoint, tmp_path):
    import shutil

    ckpt = _copy(saved_checkpoint, tmp_path / "lite")
    shutil.rmtree(ckpt / "unet")
    with pytest.raises(PresetUnavailable, match=r"unet is missing"):
        load_pipeline("lite", checkpoint=ckpt)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "delete"])
def test_a_corrupt_or_missing_weights_file_names_the_file(saved_checkpoint, tmp_path, damage):
    ckpt = _copy(saved_checkpoint, tmp_path / "lite")
    weights = next((ckpt / "unet").glob("*.safetensors"))
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    elif damage == "garbage":
        weights.write_bytes(b"\xff" * 64)
    else:
        weights.unlink()
    with pytest.raises(PresetUnavailable) as error:
        load_pipeline("lite", checkpoint=ckpt)
    assert weights.name in str(error.value) and "unet" in str(error.value)


class _Planted:
    """Unpickling this creates ``marker``: proof that a pickle was executed."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_pickle_is_never_loaded(saved_checkpoint, tmp_path):
    ckpt = _copy(saved_checkpoint, tmp_path / "lite")
    marker = tmp_path / "pickle-was-executed"
    for weights in (ckpt / "unet").glob("*.safetensors"):
        weights.unlink()
    (ckpt / "unet" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(_Planted(str(marker))))
    with pytest.raises(PresetUnavailable, match="safetensors"):
        load_pipeline("lite", checkpoint=ckpt)
    assert not marker.exists()


def _unsafe_loads(path: Path) -> list[str]:
    """``torch.load`` without ``weights_only=True``, and any ``pickle.load(s)``, in one file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
        name = f"{owner}.{node.func.attr}"
        safe = any(
            k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
            for k in node.keywords
        )
        if (name == "torch.load" and not safe) or name in ("pickle.load", "pickle.loads"):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
    return found


def test_no_pickle_is_ever_loaded_by_the_package():
    files = [p for folder in ("mmsr", "baselines") for p in (ROOT / folder).rglob("*.py")]
    assert files
    assert [hit for f in files for hit in _unsafe_loads(f)] == []


# -- API keys ----------------------------------------------------------------------------------------------


FAKE_KEY = "AIzaFAKE-test-key-0123456789abcdef"


@pytest.mark.parametrize("failure", ["url", "http", "json"])
def test_the_gemini_key_never_reaches_logs_or_errors(monkeypatch, caplog, failure):
    import logging
    import urllib.error
    import urllib.request

    from mmsr.modalities import gemini

    monkeypatch.setenv("GEMINI_API_KEY", FAKE_KEY)
    seen = []

    def fake_urlopen(request, timeout=None):
        seen.append(request)
        headers = dict(request.header_items())
        assert FAKE_KEY not in request.full_url  # in a header, never in the URL
        if failure == "url":
            raise urllib.error.URLError(f"connection refused for {request.full_url} with {headers}")
        if failure == "http":
            raise urllib.error.HTTPError(request.full_url, 403, f"API key {FAKE_KEY} invalid", {}, None)
        return io.BytesIO(f'{{"error": "bad key {FAKE_KEY}"}}'.encode())

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    with caplog.at_level(logging.DEBUG), pytest.raises(BackendUnavailable) as error:
        gemini.gemini_caption(noise(), "describe")
    assert seen and seen[0].get_header("X-goog-api-key") == FAKE_KEY
    texts = [str(error.value), repr(error.value), str(error.value.__context__), str(error.value.__cause__)]
    texts += [r.getMessage() for r in caplog.records]
    assert all(FAKE_KEY not in t for t in texts), texts


# -- the same bad inputs through the app's handlers (called directly) --------------------------------


@pytest.fixture(scope="module")
def lab(engine):
    import app
    from baselines import get_baseline

    return app.build_demo(engine, None, {"bicubic": get_baseline("bicubic")}).lab


def run_handler(lab, image, **kw):
    """``Lab.run`` with the UI's defaults, overridable by keyword."""
    args = dict(caption="a cat", negative="", cfg_mode="m-cfg", guidance=4.0, steps=1, seed=0, baseline="bicubic")
    for name in ("depth", "seg", "edges"):
        args |= {f"{name}_on": True, f"{name}_tau": 1.0, f"{name}_map": None}
    return lab.run(image, **(args | kw), progress=lambda *a: None)


@pytest.mark.parametrize(
    "name, data, match",
    [
        ("notes.png", b"just some text", "not an image"),
        ("empty.png", b"", "empty"),
        ("cut.png", _truncated("PNG"), "truncated|could not decode"),
        ("cut.jpg", _truncated("JPEG"), "truncated|could not decode"),
        ("one.png", encoded(Image.new("RGB", (1, 1))), "too small"),
        ("huge.png", png_header_only(20_000, 20_000), "pixel limit|decompression bomb"),
    ],
)
def test_app_refuses_bad_files_with_a_clear_error(lab, tmp_path, name, data, match):

    path = tmp_path / name
    path.write_bytes(data)
    start = time.perf_counter()
    with pytest.raises(DemoError, match=match) as caught:
        lab.load_lr(str(path))
    assert time.perf_counter() - start < 2.0
    assert str(tmp_path) not in str(caught.value)  # the upload's server folder never reaches the visitor


def test_app_reads_odd_images_like_the_cli(lab, tmp_path):
    rgba = np.zeros((16, 24, 4), dtype=np.uint8)
    (tmp_path / "clear.png").write_bytes(encoded(Image.fromarray(rgba, "RGBA")))
    assert (np.asarray(lab.load_lr(str(tmp_path / "clear.png"))[0]) == 255).all()  # white, not black
    (tmp_path / "photo.jpg").write_bytes(exif_rotated_jpeg((40, 20)))
    assert lab.load_lr(str(tmp_path / "photo.jpg"))[0].size == (20, 40)
    frames = [Image.new("RGB", (24, 16), c) for c in ("red", "blue")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    first, notes = lab.load_lr(str(tmp_path / "anim.gif"))
    assert notes == ["animated image with 2 frames: using the first"]
    assert first.getpixel((0, 0))[0] > 250 and first.getpixel((0, 0))[2] < 5  # red, the first frame


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"guidance": 31.0}, "guidance must lie in"),
        ({"guidance": float("nan")}, "guidance must lie in"),
        ({"steps": 0}, "steps must lie in"),
        ({"steps": 10**6}, "steps must lie in"),
        ({"depth_tau": 0.1}, "temperature of depth"),
        ({"edges_tau": 1e9}, "temperature of edges"),
        ({"seed": None}, "settings"),
    ],
)
def test_app_refuses_out_of_range_settings(lab, tmp_path, kw, match):

    source = tmp_path / "in.png"
    noise().save(source)
    with pytest.raises(DemoError, match=match):
        run_handler(lab, str(source), **kw)


def test_app_refuses_maps_of_the_wrong_type_or_shape(lab, tmp_path):

    source = tmp_path / "in.png"
    noise((24, 16)).save(source)
    text = tmp_path / "depth.png"
    text.write_bytes(b"not a map")
    with pytest.raises(DemoError, match="your depth map: not an image"):
        run_handler(lab, str(source), depth_map=str(text))
    stretched = tmp_path / "stretched.png"
    Image.new("L", (64, 16)).save(stretched)
    with pytest.raises(DemoError, match="aspect ratio"):
        run_handler(lab, str(source), depth_map=str(stretched))
    with pytest.raises(DemoError, match="aspect ratio"):
        lab.prepare(str(source), depth_map=str(stretched))


def test_app_runs_a_5000_character_caption(lab, tmp_path):
    source = tmp_path / "in.png"
    noise((24, 16)).save(source)
    caption = ("A cat 🐱\x00\x1b[31m on a mat\u202e\n" * 300)[:5000]
    out = run_handler(lab, str(source), caption=caption)
    assert "\n- " in out["run_status"]  # the text encoder's window is shorter: a note says so
    kept = out["caption"]
    assert len(kept) <= MAX_CAPTION_CHARS and "🐱" in kept and "\x00" not in kept and "\u202e" not in kept


def test_app_answers_out_of_memory_and_keeps_serving(lab, engine, tmp_path):

    source = tmp_path / "in.png"
    noise().save(source)
    handle = _oom_once(engine.pipeline.unet)
    try:
        with pytest.raises(DemoError, match="out of memory.*smaller input"):
            run_handler(lab, str(source))
    finally:
        handle.remove()
    assert run_handler(lab, str(source))["slider"][0].size == (96, 64)


# -- round 2: depth, formats, modes, devices, usage errors, records ----------------------------------


def _tiff(array: np.ndarray) -> bytes:
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "data, expected",
    [
        (encoded(Image.fromarray(np.full((16, 16), 200, np.uint16))), 1),  # 16-bit PNG under 256: dark
        (encoded(Image.fromarray(np.full((16, 16), 65535, np.uint16))), 255),
        (_tiff(np.full((16, 16), 2_000_000_000, np.int32)), 237),  # 32-bit signed TIFF: not clipped
        (_tiff(np.full((16, 16), 3_000_000_000, np.uint32)), 178),  # unsigned 32-bit: not wrapped
        (_tiff(np.full((16, 16), 16384, np.int16)), 128),
    ],
)
def test_integer_images_are_scaled_by_their_declared_depth(data, expected):
    image, _ = load_image(data)
    assert np.asarray(image).min() == np.asarray(image).max() == expected


@pytest.mark.parametrize("suffix", [".ico", ".gif", ".xbm", ".pdf", ".nope"])
def test_outputs_that_cannot_hold_the_image_are_refused_before_the_model(upscale, tmp_path, monkeypatch, suffix):
    monkeypatch.setattr(Engine, "load", classmethod(lambda cls, *a, **k: pytest.fail("the model ran")))
    source = tmp_path / "in.png"
    source.write_bytes(encoded(noise()))
    assert_user_error(upscale(source, output=tmp_path / f"out{suffix}"), "cannot hold|unknown output format")
    assert not (tmp_path / f"out{suffix}").exists()


def test_output_path_problems_are_refused_before_the_model(upscale, tmp_path, monkeypatch):
    monkeypatch.setattr(Engine, "load", classmethod(lambda cls, *a, **k: pytest.fail("the model ran")))
    source = tmp_path / "in.png"
    source.write_bytes(encoded(noise()))
    (tmp_path / "file.txt").write_text("a file, not a folder")
    assert_user_error(upscale(source, output=tmp_path / "file.txt" / "out.png"), "not a writable folder")
    (tmp_path / "folder").mkdir()
    assert_user_error(upscale(source, output=tmp_path / "folder"), "is a folder")


def test_outputs_get_the_users_umask(tmp_path):
    from mmsr.lab.results import write_csv

    old = os.umask(0o022)
    try:
        save_atomic(noise(), tmp_path / "out.png")
        write_csv(tmp_path / "rows.csv", [{"a": 1}], ["a"])
    finally:
        os.umask(old)
    assert (tmp_path / "out.png").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "rows.csv").stat().st_mode & 0o777 == 0o644


def test_folders_and_devices_are_named_as_such(tmp_path):
    with pytest.raises(ImageError, match="is a folder"):
        load_image(tmp_path)
    with pytest.raises(ImageError, match="not a regular file"):
        load_image("/dev/zero")
    with pytest.raises(ImageError, match="^your upload: the file is empty"):
        (tmp_path / "e.png").write_bytes(b"")
        load_image(tmp_path / "e.png", name="your upload")


def run_cli(argv: list[str]) -> int:
    """``mmsr.cli.run``, with argparse's exit (a usage error, printed already) as the exit code."""
    try:
        return cli.run(argv)
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("device", ["bogus", "cuda:99", "meta", *([] if torch.cuda.is_available() else ["cuda"])])
@pytest.mark.parametrize("command", ["upscale", "lab", "bench"])
def test_an_unusable_device_is_one_line(upscale, tmp_path, capsys, device, command):
    source = tmp_path / "in.png"
    source.write_bytes(encoded(noise()))
    argv = ["upscale", str(source), "-o", str(tmp_path / "o.png")]
    if command == "lab":
        argv = ["lab", "run", "--data", str(tmp_path), "--out", str(tmp_path / "o")]
    if command == "bench":
        argv = ["bench", "--preset", "tiny-random"]
    result = (run_cli([*argv, "--device", device]), *capsys.readouterr())
    assert_user_error(result, "device|GPU")
    assert "see `python -m mmsr" in result[2]


@pytest.mark.parametrize("device", ["bogus", "cuda:99"])
def test_engine_refuses_an_unusable_device_by_name(device):
    from mmsr.engine import pick_device

    with pytest.raises(ValueError, match=device):
        pick_device(device)


@pytest.mark.parametrize(
    "argv",
    [["upscale", "in.png"], ["upscale", "in.png", "-o", "o.png", "--steps", "abc"], ["nope"], ["lab", "run"], []],
)
def test_usage_errors_are_one_line_and_point_to_help(argv, capsys):
    assert_user_error((run_cli(argv), *capsys.readouterr()), "see `python -m mmsr")


@pytest.mark.slow
def test_ctrl_c_while_starting_exits_130_without_traceback(tmp_path):
    import signal

    source = tmp_path / "in.png"
    source.write_bytes(encoded(noise()))
    argv = [
        sys.executable,
        "-m",
        "mmsr",
        "upscale",
        str(source),
        "-o",
        str(tmp_path / "o.png"),
        "--preset",
        "tiny-random",
    ]
    # A shell starts background jobs with SIGINT ignored, and the child would inherit that (exit 0,
    # the run completed): the child gets the default disposition, as under an interactive Ctrl-C.
    proc = subprocess.Popen(argv, cwd=ROOT, env=os.environ | {"HF_HUB_OFFLINE": "1"}, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    time.sleep(1.0)  # importing torch and diffusers takes longer than this
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == "interrupted"


def test_run_records_name_no_server_path(tmp_path):
    from mmsr.compare import run_record

    image = noise()
    mmsr = SimpleNamespace(
        settings=UpscaleSettings(), caption="", lr=image, image=image, modalities={}, sources=lambda: {}
    )
    comparison = SimpleNamespace(mmsr=mmsr, baseline_name="bicubic")
    hashes = {"unet/model.safetensors": "ab" * 32}
    record = run_record(comparison, preset="lite", checkpoint=str(tmp_path / "checkpoints" / "lite"), hashes=hashes)
    assert str(tmp_path) not in repr(record) and record["checkpoint"]["sha256"] == hashes
    assert run_record(comparison, preset="full", checkpoint="owner/model")["checkpoint"]["repo"] == "owner/model"


@pytest.mark.parametrize(
    "body",
    [
        {"checkpoint": "a string"},
        {"input": ["a", "list"]},
        {"modalities": "abc"},
        {"baseline": {"a": 1}},
        {"settings": "abc"},
        {"settings": {"modalities": {"depth": "yes"}}},
        {"settings": {"refine": "../../etc/passwd"}},
    ],
)
def test_a_run_record_with_a_bad_body_is_a_value_error(body):
    from mmsr.compare import RECORD_FORMAT, settings_from_record

    with pytest.raises(ValueError):
        settings_from_record({"format": RECORD_FORMAT, **body})
