"""The static explorer in a real browser: headless Chromium, driven over WebDriver.

The test talks to Debian's ``chromedriver`` with plain HTTP (the W3C WebDriver protocol),
so it needs no Python package beyond the standard library. It presses the arrow key on a
slider, as a reader would, and checks that the image and the value label change.

Chromium missing: skipped on a developer machine, a failure in CI (``CI`` set), where
``.ci/run`` installs it with ``apt-get install -y chromium chromium-driver``.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from gradcourse.static_explorer import static_explorer

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C key of an element reference
ARROW_RIGHT = "\ue014"
BOOK_HTML = Path(__file__).resolve().parent.parent / "_build" / "html"


def require_chromium() -> None:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if not missing:
        return
    message = (f"headless Chromium is needed and {', '.join(missing)} is missing; "
               f"install it with: apt-get install -y chromium chromium-driver")
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


class Browser:
    """A minimal WebDriver client: just what these tests use."""

    def __init__(self, profile_dir: Path):
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.driver = subprocess.Popen([CHROMEDRIVER, f"--port={port}"], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                if self._call("GET", "/status")["ready"]:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            if time.monotonic() > deadline:
                self.driver.kill()
                raise RuntimeError("chromedriver did not start within 20 s")
            time.sleep(0.1)
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1200,1600",
                f"--user-data-dir={profile_dir}"]
        options = {"binary": CHROMIUM, "args": args}
        capabilities = {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options}}
        session = self._call("POST", "/session", {"capabilities": capabilities})
        self.session = f"/session/{session['sessionId']}"

    def _call(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())["value"]
        except urllib.error.HTTPError as error:
            raise RuntimeError(f"WebDriver {method} {path} failed: {error.read().decode()[:500]}") from None

    def open(self, path: Path) -> None:
        self._call("POST", f"{self.session}/url", {"url": path.resolve().as_uri()})

    def find_all(self, css: str) -> list[str]:
        found = self._call("POST", f"{self.session}/elements", {"using": "css selector", "value": css})
        return [element[ELEMENT] for element in found]

    def press(self, element: str, keys: str) -> None:
        self._call("POST", f"{self.session}/element/{element}/value", {"text": keys})

    def script(self, source: str, *args):
        return self._call("POST", f"{self.session}/execute/sync", {"script": source, "args": list(args)})

    def close(self) -> None:
        try:
            self._call("DELETE", self.session)
        finally:
            self.driver.terminate()
            self.driver.wait(timeout=10)


@pytest.fixture
def browser(tmp_path):
    require_chromium()
    client = Browser(tmp_path / "profile")
    yield client
    client.close()


def solid_png(rgb: tuple[int, int, int]) -> bytes:
    """A 4x4 PNG of one colour (distinct frames without training anything)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def make_explorer(shade: int):
    lrs, thresholds = [0.01, 0.03, 0.1], [None, 1.0]
    frames = {(lr, c): solid_png((shade, 40 * i, 100 * j)) for i, lr in enumerate(lrs)
              for j, c in enumerate(thresholds)}
    return static_explorer(frames, {"lr": lrs, "clip_threshold": thresholds}, title=f"block {shade}")


STATE = """
const block = document.getElementById(arguments[0]);
return {src: block.querySelector('img').src, alt: block.querySelector('img').alt,
        labels: Array.from(block.querySelectorAll('output')).map(o => o.textContent),
        disabled: Array.from(block.querySelectorAll('input')).map(i => i.disabled),
        nojs: block.querySelector('.gcx-nojs') !== null};
"""


def block_ids(browser: Browser) -> list[str]:
    return browser.script("return Array.from(document.querySelectorAll('div.gcx')).map(d => d.id);")


def test_moving_a_slider_swaps_the_image_and_the_label(browser, tmp_path):
    page = tmp_path / "explorer.html"
    page.write_text(make_explorer(shade=200).to_page())
    browser.open(page)
    (block,) = block_ids(browser)
    before = browser.script(STATE, block)
    assert before["labels"] == ["0.01", "off"]
    assert before["disabled"] == [False, False] and not before["nojs"], "the script did not run"
    assert before["alt"].endswith("(learning rate = 0.01, clip threshold = off)")

    lr_slider = browser.find_all(f"#{block} input[type=range]")[0]
    browser.press(lr_slider, ARROW_RIGHT)
    after = browser.script(STATE, block)
    assert after["labels"] == ["0.03", "off"]
    assert after["src"] != before["src"]
    assert after["src"].startswith("data:image/png;base64,")
    assert base64.b64decode(after["src"].split(",", 1)[1]) == solid_png((200, 40, 0))
    assert "learning rate = 0.03" in after["alt"]


def test_two_blocks_on_one_page_move_independently(browser, tmp_path):
    first, second = make_explorer(shade=10), make_explorer(shade=250)
    page = tmp_path / "two.html"
    page.write_text(f"<!DOCTYPE html><html><body>{first.html}<p>text between</p>{second.html}</body></html>")
    browser.open(page)
    ids = block_ids(browser)
    assert len(ids) == 2 and ids[0] != ids[1]
    before = [browser.script(STATE, block) for block in ids]
    clip_slider = browser.find_all(f"#{ids[1]} input[type=range]")[1]
    browser.press(clip_slider, ARROW_RIGHT)
    after = [browser.script(STATE, block) for block in ids]
    assert after[0] == before[0], "moving the second block's slider changed the first block"
    assert after[1]["labels"] == ["0.01", "1"]
    assert after[1]["src"] != before[1]["src"]


# How JupyterLab shows trusted HTML output: set innerHTML on a detached node, replace every
# script by a fresh copy (so that it runs), then attach the node to the page.
JUPYTERLAB_LIKE = """<!DOCTYPE html><html><body><script>
var host = document.createElement("div");
host.innerHTML = {source};
Array.from(host.getElementsByTagName("script")).forEach(function (old) {{
  var copy = document.createElement("script");
  Array.from(old.attributes).forEach(function (a) {{ copy.setAttribute(a.name, a.value); }});
  copy.textContent = old.textContent;
  old.parentNode.replaceChild(copy, old);
}});
setTimeout(function () {{ document.body.appendChild(host); }}, 50);
</script></body></html>"""


def test_the_block_works_when_inserted_the_way_jupyterlab_does(browser, tmp_path):
    page = tmp_path / "lab.html"
    source = json.dumps(make_explorer(shade=120).html).replace("</", "<\\/")
    page.write_text(JUPYTERLAB_LIKE.format(source=source))
    browser.open(page)
    deadline = time.monotonic() + 10
    while not block_ids(browser) and time.monotonic() < deadline:
        time.sleep(0.05)
    (block,) = block_ids(browser)
    before = browser.script(STATE, block)
    assert before["disabled"] == [False, False] and not before["nojs"], "the script did not run"
    browser.press(browser.find_all(f"#{block} input[type=range]")[0], ARROW_RIGHT)
    after = browser.script(STATE, block)
    assert after["labels"] == ["0.03", "off"] and after["src"] != before["src"]


def built_pages_with_explorers() -> list[Path]:
    if not BOOK_HTML.is_dir():
        return []
    return sorted(path for path in BOOK_HTML.rglob("*.html")
                  if "_static" not in path.parts and 'class="gcx"' in path.read_text(errors="ignore"))


def test_explorer_in_the_built_book_responds(browser):
    pages = built_pages_with_explorers()
    if not pages:
        pytest.skip("no page of the built book (_build/html) holds a static explorer; run `make book` first")
    for page in pages:
        browser.open(page)
        for block in block_ids(browser):
            before = browser.script(STATE, block)
            assert not before["nojs"], f"{page.name}: the explorer's script did not run"
            slider = browser.find_all(f"#{block} input[type=range]")[0]
            browser.press(slider, ARROW_RIGHT)
            after = browser.script(STATE, block)
            assert after["labels"][0] != before["labels"][0], f"{page.name}: the label did not change"
            assert after["src"] != before["src"], f"{page.name}: the image did not change"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
