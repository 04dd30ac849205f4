"""The demo as a visitor meets it, in headless Chromium at desktop (1400x900) and phone (400x850) size.

Chromium is driven through chromedriver's W3C WebDriver HTTP API with the standard library, so no
browser-automation package is needed. Needs the Debian packages ``chromium`` and ``chromium-driver``;
skipped when they are missing. Screenshots land in ``test-artifacts/`` (desktop, phone, after a run).
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

    def __init__(self, width: int = 1400, height: int = 900):
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
        self.size = (width, height)

    def fit_viewport(self) -> None:
        """Resize the window so the page's viewport (not the window) is ``width x height``."""
        width, height = self.size
        inner = self.js("return [window.innerWidth, window.innerHeight]")
        rect = self.cmd("GET", "/window/rect")
        self.cmd(
            "POST",
            "/window/rect",
            {"width": rect["width"] + width - inner[0], "height": rect["height"] + height - inner[1]},
        )

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

    def keys(self, *keys: str) -> None:
        actions = [a for k in keys for a in ({"type": "keyDown", "value": k}, {"type": "keyUp", "value": k})]
        self.cmd("POST", "/actions", {"actions": [{"type": "key", "id": "keyboard", "actions": actions}]})

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


TAB = "\ue004"
TOASTS = "return [...document.querySelectorAll('.toast-body')].map(t => t.innerText)"
# status trackers that show "Error" on a component (not the toasts)
BADGES = """return [...document.querySelectorAll('.error')].filter(e => !e.closest('.toast-body')
    && e.offsetParent !== null && /error/i.test(e.innerText)).length"""


@pytest.fixture()
def browser():
    b = Browser()
    yield b
    b.quit()


@pytest.fixture()
def phone():
    b = Browser(400, 850)
    yield b
    b.quit()


def count(browser: Browser, css: str) -> int:
    return browser.js("return document.querySelectorAll(arguments[0]).length", css)


def page_text(browser: Browser) -> str:
    return browser.js("return document.body.innerText")


def box(browser: Browser, css: str) -> dict:
    return browser.js("const r = document.querySelector(arguments[0]).getBoundingClientRect(); "
                      "return {top: r.top, bottom: r.bottom, width: r.width}", css)  # fmt: skip


def upload(browser: Browser, path: Path) -> None:
    browser.type(browser.find("#lr-input input[type=file]"), str(path))


def lr_file(tmp_path: Path, size=(64, 43)) -> Path:
    path = tmp_path / "cat.png"
    Image.open(app.EXAMPLES / "chelsea.png").convert("RGB").resize(size, Image.BICUBIC).save(path)
    return path


def open_page(browser: Browser, url: str) -> None:
    browser.open(url)
    browser.fit_viewport()
    wait_for(lambda: count(browser, "#lr-input input[type=file]"), 60, "the upload field")


def test_first_screen_on_a_desktop(url, browser):
    open_page(browser, url)
    height = browser.js("return window.innerHeight")
    assert box(browser, "#run-btn")["bottom"] <= height and box(browser, "#result-slider")["top"] < height - 200
    assert box(browser, "#lr-input")["bottom"] <= height and box(browser, "#caption")["bottom"] <= height
    browser.js("document.activeElement.blur()")
    for _ in range(10):  # Run within 10 Tab stops
        browser.keys(TAB)
        if browser.js("return document.activeElement.id") == "run-btn":
            break
    assert browser.js("return document.activeElement.id") == "run-btn", "Run not reached in 10 Tab stops"
    assert not browser.js("return document.querySelector('#recaption').disabled") or "No captioner" in page_text(
        browser
    )
    assert all(browser.js(f"return [...document.querySelectorAll('button')].filter(b => b.innerText.includes('{t}'))"
                          ".every(b => b.disabled)") for t in ("Download MMSR", "Export settings"))  # fmt: skip
    browser.screenshot(ARTIFACTS / "desktop.png")


def test_phone_shows_input_then_run_then_result(url, phone):
    open_page(phone, url)
    image, run, slider = (box(phone, c) for c in ("#lr-input", "#run-btn", "#result-slider"))
    assert image["bottom"] <= run["top"] < slider["top"]
    assert slider["width"] >= 0.8 * phone.js("return window.innerWidth")  # full width, less the margins
    assert phone.js("return document.documentElement.scrollWidth") <= 400  # nothing clipped sideways
    phone.screenshot(ARTIFACTS / "phone.png")


def test_typed_caption_survives_an_upload_offline(url, browser, tmp_path):
    open_page(browser, url)
    browser.type(browser.find("#caption textarea"), CAPTION)
    upload(browser, lr_file(tmp_path))
    wait_for(lambda: "input 64x43" in page_text(browser), 120, "the size line")
    time.sleep(2)  # the caption event has had its chance to erase it
    assert browser.js("return document.querySelector('#caption textarea').value") == CAPTION


def test_a_bad_upload_gives_one_message_and_no_badges(url, browser, tmp_path):
    open_page(browser, url)
    upload(browser, lr_file(tmp_path))
    wait_for(lambda: "input 64x43" in page_text(browser), 120, "the size line")
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is not an image")
    upload(browser, bad)
    toasts = wait_for(lambda: browser.js(TOASTS), 60, "the error message")
    time.sleep(3)  # any second message would have arrived by now
    toasts = browser.js(TOASTS)
    assert len(toasts) == 1 and "not an image" in toasts[0], toasts
    assert toasts[0].count("not an image") == 1, toasts  # gradio groups repeats into one toast: count messages
    assert browser.js(BADGES) == 0
    assert "input 64x43" not in page_text(browser)  # the stale size line is gone
    browser.screenshot(ARTIFACTS / "bad-upload.png")


def test_run_then_stop_and_see_both_outputs_and_scores(url, browser, tmp_path):
    open_page(browser, url)
    upload(browser, lr_file(tmp_path))
    wait_for(lambda: "input 64x43" in page_text(browser), 120, "the size line")
    browser.type(browser.find("#caption textarea"), CAPTION)
    browser.click(browser.find("#run-btn"))
    images = "#result-slider img[src]"
    wait_for(lambda: count(browser, images) >= 2, 300, "both SR outputs in the slider")
    wait_for(lambda: "Done." in page_text(browser), 60, "the run status")
    sizes = browser.js(
        "return [...document.querySelectorAll(arguments[0])].map(i => [i.naturalWidth, i.naturalHeight, i.alt])", images
    )
    assert [256, 172] in [s[:2] for s in sizes] and all(s[2] for s in sizes)  # alt text on the results
    assert not browser.js(
        "return [...document.querySelectorAll('button')].find(b => b.innerText.includes('Export')).disabled"
    )
    browser.screenshot(ARTIFACTS / "after-run.png")
    browser.click(browser.find("#run-btn"))
    browser.click(browser.find("#stop-btn"))
    wait_for(lambda: "Stopped" in page_text(browser) or "Done." in page_text(browser), 120, "the stopped run")
    time.sleep(1)
    assert browser.js(BADGES) == 0 and not [t for t in browser.js(TOASTS) if "rror" in t]


def test_the_example_lab_report_renders_with_its_plots(url, browser):
    open_page(browser, url)
    find_tab = (
        "return [...document.querySelectorAll('button[role=tab]')].find(b => b.innerText.trim() === 'Lab reports')"
    )
    tab = wait_for(lambda: browser.js(find_tab), 30, "the Lab tab")
    browser.js("arguments[0].click()", tab)  # gradio keeps a hidden copy of each tab button
    plots = "#lab-report img"
    wait_for(lambda: count(browser, plots), 60, "the report's plots")
    loaded = browser.js(
        "return [...document.querySelectorAll(arguments[0])].map(i => i.complete && i.naturalWidth)", plots
    )
    assert loaded and all(loaded)
    assert "MMSR Lab report" in page_text(browser)
    browser.js("document.querySelector('#lab-report').scrollIntoView()")
    browser.screenshot(ARTIFACTS / "lab.png")
