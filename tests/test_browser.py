"""The demo in a real browser: headless Chromium uploads an image, clicks Run, finds both outputs and the scores.

Chromium is driven through chromedriver's W3C WebDriver HTTP API with the standard library, so no
browser-automation package is needed. Needs the Debian packages ``chromium`` and ``chromium-driver``;
skipped when they are missing. The screenshot lands in ``test-artifacts/browser.png``.
"""

import base64
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

import app
from baselines import get_baseline
from mmsr.engine import Engine
from mmsr.metrics import Scorer

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
CHROMEDRIVER = shutil.which("chromedriver")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C key of an element reference
CAPTION = "a tabby cat with green eyes lying on a wooden floor"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER),
        reason="Chromium not installed: apt-get install -y chromium chromium-driver",
    ),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Browser:
    """A headless Chromium session through chromedriver (W3C WebDriver over HTTP)."""

    def __init__(self, width: int = 1400, height: int = 3300):
        self.port = free_port()
        self.driver = subprocess.Popen(
            [CHROMEDRIVER, f"--port={self.port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.base = f"http://127.0.0.1:{self.port}"
        wait_for(self._ready, 30, "chromedriver")
        args = ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"]
        options = {"binary": CHROMIUM, "args": [*args, f"--window-size={width},{height}"]}
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options}}}
        self.session = self.call("POST", "/session", caps)["sessionId"]

    def _ready(self) -> bool:
        try:
            return self.call("GET", "/status")["ready"]
        except (OSError, urllib.error.URLError):
            return False

    def call(self, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return json.loads(response.read())["value"]
        except urllib.error.HTTPError as e:
            raise AssertionError(f"WebDriver {method} {path}: {e.read().decode()[:500]}") from e

    def cmd(self, method: str, path: str, body: dict | None = None):
        return self.call(method, f"/session/{self.session}{path}", body)

    def open(self, url: str) -> None:
        self.cmd("POST", "/url", {"url": url})

    def js(self, script: str, *args):
        return self.cmd("POST", "/execute/sync", {"script": script, "args": list(args)})

    def find(self, css: str) -> str:
        return self.cmd("POST", "/element", {"using": "css selector", "value": css})[ELEMENT]

    def type(self, element: str, text: str) -> None:
        self.cmd("POST", f"/element/{element}/value", {"text": text})

    def click(self, element: str) -> None:
        self.cmd("POST", f"/element/{element}/click", {})

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.cmd("GET", "/screenshot")))

    def quit(self) -> None:
        try:
            self.cmd("DELETE", "")
        finally:
            self.driver.terminate()
            self.driver.wait(timeout=30)


@pytest.fixture(scope="module")
def url(tiny_pipe):
    engine = Engine(tiny_pipe, "tiny-random")
    scorer = Scorer(["lr_psnr", "piqe", "niqe", "psnr", "musiq"])
    demo = app.build_demo(engine, scorer, {"bicubic": get_baseline("bicubic")})
    demo.queue(default_concurrency_limit=1, max_size=app.QUEUE_SIZE)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                            quiet=True, **app.launch_options())  # fmt: skip
    yield url
    demo.close()


@pytest.fixture()
def browser():
    b = Browser()
    yield b
    b.quit()


def count(browser: Browser, css: str) -> int:
    return browser.js("return document.querySelectorAll(arguments[0]).length", css)


def page_text(browser: Browser) -> str:
    return browser.js("return document.body.innerText")


def test_upload_run_and_see_both_outputs_and_scores(url, browser, tmp_path):
    lr = tmp_path / "cat.png"
    Image.open(app.EXAMPLES / "chelsea.png").convert("RGB").resize((64, 43), Image.BICUBIC).save(lr)
    browser.open(url)
    wait_for(lambda: count(browser, "#lr-input input[type=file]"), 60, "the upload field")
    browser.type(browser.find("#lr-input input[type=file]"), str(lr))
    # the upload runs `prepare` (context maps) and `auto_caption` (offline: a warning, empty caption)
    wait_for(lambda: "source: canny" in page_text(browser), 120, "the edge map card")
    caption_done = "return document.body.innerText.includes('No automatic caption') || arguments[0].value"
    wait_for(lambda: browser.js(caption_done, {ELEMENT: browser.find("#caption textarea")}), 60, "the captioner")
    browser.type(browser.find("#caption textarea"), CAPTION)
    browser.click(browser.find("#run-btn"))

    images = "#result-slider img[src]"
    wait_for(lambda: count(browser, images) >= 2, 300, "both SR outputs in the slider")
    wait_for(lambda: "LR-consistency (dB)" in page_text(browser), 60, "the scores table")
    assert count(browser, "#result-gallery img[src]") >= 4
    text = page_text(browser)
    assert "PIQE" in text and "↓" in text and "no HR reference" in text
    sizes = browser.js(
        "return [...document.querySelectorAll(arguments[0])].map(i => [i.naturalWidth, i.naturalHeight])", images
    )
    assert [256, 172] in sizes
    browser.js("window.scrollTo(0, 0)")
    browser.screenshot(ARTIFACTS / "browser.png")
    assert "Error" not in browser.js("return [...document.querySelectorAll('.toast-title')].map(t => t.innerText)")
