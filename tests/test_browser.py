"""The static explorer in a real browser: headless Chromium, driven by selenium.

Selenium talks to Debian's ``chromedriver`` (its path given, so selenium-manager never
downloads a driver). The tests press the arrow key on a slider, as a reader would, and
check that the image and the value label change.

Chromium missing: skipped on a developer machine, a failure in CI (``CI`` set), where
``.ci/run`` installs it with ``apt-get install -y chromium chromium-driver``.
"""
from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest

from gradcourse.static_sliders import static_explorer
from selenium.webdriver.common.keys import Keys  # noqa: E402
from _chromium import BOOK_HTML, Browser, require_chromium

pytestmark = pytest.mark.browser


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
    browser.press(lr_slider, Keys.ARROW_RIGHT)
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
    browser.press(clip_slider, Keys.ARROW_RIGHT)
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
    browser.press(browser.find_all(f"#{block} input[type=range]")[0], Keys.ARROW_RIGHT)
    after = browser.script(STATE, block)
    assert after["labels"] == ["0.03", "off"] and after["src"] != before["src"]


def built_pages_with_explorers() -> list[Path]:
    if not BOOK_HTML.is_dir():
        return []
    return sorted(path for path in BOOK_HTML.rglob("*.html")
                  if "_static" not in path.parts and 'class="gcx"' in path.read_text(errors="ignore"))


def test_every_slider_of_every_explorer_in_the_built_book_responds(browser):
    pages = built_pages_with_explorers()
    if not pages:
        pytest.skip("no page of the built book (_build/html) holds a static explorer; run `make book` first")
    for page in pages:
        browser.open(page)
        for block in block_ids(browser):
            sliders = browser.find_all(f"#{block} input[type=range]")
            assert not browser.script(STATE, block)["nojs"], f"{page.name}: the explorer's script did not run"
            for index, slider in enumerate(sliders):
                before = browser.script(STATE, block)
                browser.press(slider, Keys.ARROW_LEFT if slider.get_attribute("value") == slider.get_attribute(
                    "max") else Keys.ARROW_RIGHT)
                after = browser.script(STATE, block)
                where = f"{page.name}, explorer {block}, slider {index + 1}"
                assert after["labels"][index] != before["labels"][index], f"{where}: the label did not change"
                assert after["src"] != before["src"], f"{where}: the image did not change"
                assert after["alt"] != before["alt"], f"{where}: the alt text did not follow"
