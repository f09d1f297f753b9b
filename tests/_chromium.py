"""A headless Chromium for the browser tests, driven by selenium over Debian's chromedriver.

The browser starts as a reader with no network: every host name but localhost fails to
resolve, so a page that needs a CDN shows it.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
BOOK_HTML = Path(__file__).resolve().parent.parent / "_build" / "html"
WIDTH, HEIGHT = 1280, 1000


def require_chromium() -> None:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if not missing:
        return
    message = (f"headless Chromium is needed and {', '.join(missing)} is missing; install it with: "
               f"apt-get install -y chromium chromium-driver (selenium is in requirements.txt)")
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


class Browser:
    """One headless Chromium window of WIDTH x HEIGHT, offline."""

    def __init__(self, profile_dir: Path, width: int = WIDTH, height: int = HEIGHT):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                    "--hide-scrollbars", f"--window-size={width},{height}", f"--user-data-dir={profile_dir}",
                    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost"):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        self.driver.set_page_load_timeout(60)

    def open(self, path: Path) -> None:
        self.driver.get(path.resolve().as_uri())

    def find_all(self, css: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def press(self, element, keys: str) -> None:
        element.send_keys(keys)

    def script(self, source: str, *args):
        return self.driver.execute_script(source, *args)

    def wait_for(self, source: str, timeout: float = 30.0, *args):
        """Run ``source`` (a function body returning a value or a promise) until it resolves."""
        self.driver.set_script_timeout(timeout)
        result = self.driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            f"Promise.resolve((function () {{ {source} }})())"
            ".then(value => done({value}), error => done({error: String(error)}));", *args)
        if "error" in result:
            raise RuntimeError(f"script failed in the page: {result['error']}")
        return result["value"]

    def console_errors(self) -> list[str]:
        return [entry["message"] for entry in self.driver.get_log("browser") if entry["level"] == "SEVERE"]

    def screenshot(self, path: Path) -> None:
        self.driver.save_screenshot(str(path))

    def close(self) -> None:
        self.driver.quit()


def screenshot_pages(pages, out_dir: Path, chunk: int = 3000) -> list[Path]:
    """Full-page screenshots at 1280 px wide, cut into ``chunk``-pixel-high PNGs (for a
    person to look at the built book as a reader would)."""
    import tempfile

    out_dir.mkdir(parents=True, exist_ok=True)
    browser = Browser(Path(tempfile.mkdtemp()), WIDTH, chunk)
    shots = []
    try:
        for page in pages:
            browser.open(page)
            browser.wait_for("return window.MathJax && MathJax.startup ? MathJax.startup.promise : null;", 60)
            height = browser.script("return document.documentElement.scrollHeight")
            for index, top in enumerate(range(0, height, chunk)):
                browser.script(f"window.scrollTo(0, {top});")
                path = out_dir / f"{page.stem}-{index:02d}.png"
                browser.screenshot(path)
                shots.append(path)
    finally:
        browser.close()
    return shots


if __name__ == "__main__":  # python tests/_chromium.py OUT_DIR [page.html ...]
    import sys

    targets = [Path(p) for p in sys.argv[2:]] or sorted((BOOK_HTML / "notebooks").glob("*.html"))
    for shot in screenshot_pages(targets, Path(sys.argv[1])):
        print(shot)
