"""The demo under load and its attack surface: app.py served on 127.0.0.1 with the tiny-random preset.

* 8 concurrent ``gradio_client`` jobs with distinct inputs all complete, each with its own result,
  while the queue runs at most one GPU job at a time;
* memory stays bounded over 50 sequential runs;
* only files the app created are served, uploads are size-limited, no path is open to the API.
"""

import gc
import json
import os
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

import app
from baselines import get_baseline
from mmsr.compare import pixel_sha256
from mmsr.conditioning import MODALITIES
from mmsr.engine import Engine

JOBS = 8
RUNS = 50
RSS_GROWTH_BOUND_MB = 100  # measured 15 MB for 50 runs (2-core CPU); caches are bounded (64 entries, 32 run folders)
COLOURS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180)]
COLOURS += [(70, 240, 240), (128, 128, 0)]
SIZE = (24, 16)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Counting:
    """Wraps ``engine.upscale`` and records the most calls that ever ran at once."""

    def __init__(self, upscale):
        self.upscale, self.active, self.most, self.calls = upscale, 0, 0, 0
        self.lock = threading.Lock()

    def __call__(self, *args, **kwargs):
        with self.lock:
            self.active += 1
            self.calls += 1
            self.most = max(self.most, self.active)
        try:
            return self.upscale(*args, **kwargs)
        finally:
            with self.lock:
                self.active -= 1


@pytest.fixture(scope="module")
def engine(tiny_pipe):
    engine = Engine(tiny_pipe, "tiny-random")
    engine.upscale = Counting(engine.upscale)
    return engine


@pytest.fixture(scope="module")
def demo(engine):
    return app.build_demo(engine, None, {"bicubic": get_baseline("bicubic")})


@pytest.fixture(scope="module")
def served(demo):
    """The demo launched the way ``app.main`` launches it (queue and launch options)."""
    demo.queue(default_concurrency_limit=1, max_size=app.QUEUE_SIZE)
    _, url, _ = demo.launch(
        server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True, **app.launch_options()
    )
    yield url.rstrip("/")
    demo.close()


def solid(path: Path, colour) -> str:
    Image.new("RGB", SIZE, colour).save(path)
    return str(path)


def mean_colour(path_or_image) -> np.ndarray:
    image = path_or_image if isinstance(path_or_image, Image.Image) else Image.open(path_or_image)
    return np.asarray(image.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(axis=0)


@pytest.mark.slow
def test_concurrent_jobs_complete_with_their_own_results_one_at_a_time(served, engine, tmp_path):
    from gradio_client import Client, handle_file

    inputs = [solid(tmp_path / f"in{i}.png", c) for i, c in enumerate(COLOURS)]
    captions = [f"job {i}: a flat patch of colour {c}" for i, c in enumerate(COLOURS)]
    before = engine.upscale.calls
    jobs = []
    for i in range(JOBS):  # one client (one session) per job, as with 8 visitors
        # Results are read where the server wrote them: downloading them through the client raced on
        # this test's flat inputs (jobs whose derived images are byte-identical share gradio's cached
        # file, and a concurrent rewrite cut one download short: "Too little data for Content-Length").
        client = Client(served, verbose=False, download_files=False)
        maps = dict.fromkeys((f"{k}_map" for k in MODALITIES), None)
        job = client.submit(
            image=handle_file(inputs[i]),
            caption=captions[i],
            baseline="bicubic",
            steps=1,
            seed=100 + i,
            hr=None,
            **maps,
            api_name="/run",
        )
        jobs.append(job)
    results = [job.result(timeout=600) for job in jobs]
    assert engine.upscale.calls - before == JOBS  # every job ran, none was dropped
    assert engine.upscale.most == 1  # the "gpu" concurrency group admits one job at a time
    for i, out in enumerate(results):
        mmsr_path, baseline_path = map(file_path, out[0])
        assert Image.open(mmsr_path).size == (4 * SIZE[0], 4 * SIZE[1])
        # Bicubic of a flat colour is that colour: this output belongs to this request's input.
        assert np.abs(mean_colour(baseline_path) - COLOURS[i]).max() < 1.5, i
        lr = file_path(out[1][0]["image"])
        assert np.abs(mean_colour(lr) - COLOURS[i]).max() < 0.5  # the LR (nearest) in the gallery
        assert out[app.RUN_OUTPUTS.index("caption")] == captions[i]
        record = json.loads(Path(file_path(out[app.RUN_OUTPUTS.index("dl_json")])).read_text())
        assert record["settings"]["caption"] == captions[i] and record["settings"]["seed"] == 100 + i
        assert record["input"]["sha256"] == pixel_sha256(Image.open(inputs[i]).convert("RGB"))
        assert record["output"]["sha256"] == pixel_sha256(Image.open(mmsr_path).convert("RGB"))


def file_path(value) -> str:
    """A file output as gradio_client returns it: a path, a file dict, or an update holding one."""
    while isinstance(value, dict):
        value = value.get("value", value.get("path"))
    return value


def test_the_queue_is_bounded(served, demo):
    assert demo._queue.max_size == app.QUEUE_SIZE
    gpu = [fn for fn in demo.fns.values() if fn.api_name in ("prepare", "auto_caption", "recaption", "run")]
    assert len(gpu) == 4 and {fn.concurrency_id for fn in gpu} == {"gpu"}
    assert {fn.concurrency_limit for fn in gpu} <= {1, "default"}
    assert demo._queue.default_concurrency_limit == 1


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


@pytest.mark.slow
def test_memory_stays_bounded_over_50_sequential_runs(demo, tmp_path):
    lab = demo.lab
    rng = np.random.default_rng(0)
    paths = []
    for i in range(RUNS + 3):
        path = tmp_path / f"noise{i}.png"
        Image.fromarray(rng.integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8)).save(path)
        paths.append(str(path))

    def run(i):
        return lab.run(paths[i], caption=f"run {i}", steps=1, seed=i, baseline="bicubic", progress=lambda *a: None)

    for i in range(3):  # warm-up: lazy imports, allocator pools
        run(i)
    gc.collect()
    start = rss_mb()
    for i in range(3, RUNS + 3):
        run(i)
    gc.collect()
    growth = rss_mb() - start
    print(f"RSS growth over {RUNS} sequential runs: {growth:.1f} MB (from {start:.0f} MB)")
    assert growth < RSS_GROWTH_BOUND_MB
    assert len(list(lab.workdir.iterdir())) <= 32  # run folders are rotated, not accumulated


# -- what the server exposes ----------------------------------------------------------------------------


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def upload(base: str, name: str, data: bytes) -> tuple[int, bytes]:
    boundary = "mmsr-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        f"{base}/gradio_api/upload", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_no_path_is_opened_to_the_api(demo, served):
    assert "allowed_paths" not in app.launch_options()
    assert not os.environ.get("GRADIO_ALLOWED_PATHS")
    assert demo.allowed_paths == []


@pytest.mark.parametrize(
    "target",
    [
        "/etc/passwd",
        "/etc/../etc/passwd",
        "{cache}/../../../../etc/passwd",
        "{workdir}/secret.txt",
        "{repo}/requirements.txt",
        "{repo}/app.py",
    ],
)
def test_only_files_the_app_created_are_served(demo, served, target):
    secret = demo.lab.workdir / "secret.txt"
    secret.write_text("root:x:0:0 not for visitors")
    status, body = upload(served, "ok.png", (app.EXAMPLES / "astronaut.png").read_bytes())
    assert status == 200, body
    uploaded = json.loads(body)[0]
    assert get(f"{served}/gradio_api/file={uploaded}")[0] == 200  # the route works for the app's own files
    path = target.format(cache=str(Path(uploaded).parent), workdir=demo.lab.workdir, repo=app.ROOT)
    status, body = get(f"{served}/gradio_api/file={path}")
    assert status in (403, 404), (path, status)
    assert b"root:" not in body


def test_uploads_over_the_limit_are_refused(served):
    config = json.loads(get(f"{served}/config")[1])
    assert config["max_file_size"] == 20 * 2**20
    status, body = upload(served, "big.png", b"\0" * (20 * 2**20 + 1024))
    assert status in (400, 413), status
    assert b"size" in body.lower() or b"exceeded" in body.lower()


def test_requirements_are_pinned():
    """Exact pins, so a release with a known advisory is never picked up silently (see SECURITY.md)."""
    lines = [line.split("#")[0].strip() for line in (app.ROOT / "requirements.txt").read_text().splitlines()]
    pins = [line for line in lines if line]
    loose = [p for p in pins if "==" not in p and not p.startswith("setuptools")]
    assert pins and loose == []
    versions = dict(p.split("==") for p in pins if "==" in p)
    floors = {"gradio": "6.16.0", "pillow": "12.3.0", "transformers": "5.5.0", "torch": "2.10.0"}
    for name, floor in floors.items():  # first releases without the advisories named in SECURITY.md
        have = tuple(int(x) for x in versions[name].split("."))
        assert have >= tuple(int(x) for x in floor.split(".")), (name, versions[name])
