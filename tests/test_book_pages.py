"""The built book as a reader sees it: headless Chromium at 1280x1000, with no network.

For every page of ``_build/html`` the test waits for MathJax, then measures what a reader
would meet: formulas left as raw TeX, code cells that scroll sideways, printed outputs and
tables wider than the text column, figures shrunk below 60 % of their size, figures
without alt text, stderr boxes, numpy scalar reprs. It prints one row per page, so that a
regression is visible, and asserts the thresholds. Run it after ``make book``.
"""
from __future__ import annotations

import re

import pytest
from _chromium import BOOK_HTML, Browser, require_chromium

pytestmark = pytest.mark.browser

MAX_SCROLLING_CODE_SHARE = 0.05
MIN_FIGURE_SCALE = 0.60

MEASURE = r"""
const column = document.querySelector('article.bd-article') || document.body;
const style = getComputedStyle(column);
const width = column.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
const visible = e => e.offsetParent !== null;
const scrolls = e => e.scrollWidth > e.clientWidth + 1;
const math = [...document.querySelectorAll('.math')];
const code = [...document.querySelectorAll('div.cell_input pre')].filter(visible);
const outputs = [...document.querySelectorAll('div.cell_output pre')].filter(visible);
const blocks = [...document.querySelectorAll('article div.highlight pre')].filter(
  p => visible(p) && !p.closest('div.cell'));   // code blocks in the text, not cells
const displays = [...document.querySelectorAll('article mjx-container[display="true"]')].filter(visible);
const tables = [...document.querySelectorAll('table')].filter(visible);
const images = [...document.querySelectorAll('div.cell_output img')].filter(visible);
await Promise.all(images.map(i => i.complete ? null : new Promise(r => { i.onload = i.onerror = r; })));
const fileName = /^\s*$|\.(png|svg|jpe?g)$|^(\.\.\/|_build|\/)/i;
const small = images.filter(i => i.naturalWidth && i.clientWidth / i.naturalWidth < MIN_SCALE);
return {
  column: Math.round(width),
  math: math.length,
  raw_math: math.filter(m => !m.querySelector('mjx-container')).map(m => m.textContent.slice(0, 60)),
  code: code.length,
  scrolling_code: code.filter(scrolls).map(p => p.textContent.split('\n').find(l => l.length > 80) || ''),
  wide_outputs: outputs.concat(blocks).filter(scrolls).map(p => p.textContent.slice(0, 60)),
  wide_math: displays.filter(m => m.getBoundingClientRect().width > width + 1
                                  || m.getBoundingClientRect().right > column.getBoundingClientRect().right + 1
                                  || scrolls(m)).map(m => m.textContent.slice(0, 40)),
  wide_tables: tables.filter(t => t.getBoundingClientRect().width > width + 1
                                  || scrolls(t.parentElement)).map(t => t.textContent.trim().slice(0, 40)),
  figures: images.length,
  small_figures: small.map(i => `${i.alt.slice(0, 40)} at ${Math.round(100 * i.clientWidth / i.naturalWidth)}%`),
  no_alt: images.filter(i => fileName.test(i.alt)).map(i => i.src.split('/').pop().slice(0, 40)),
  stderr: document.querySelectorAll('div.output.stderr').length,
  numpy_reprs: outputs.filter(p => /np\.(float|int)\d+\(/.test(p.textContent)).length,
};
"""


def book_pages():
    if not BOOK_HTML.is_dir():
        return []
    pages = sorted((BOOK_HTML / "notebooks").glob("*.html")) + sorted((BOOK_HTML / "book").glob("*.html"))
    return [page for page in pages if page.name != "genindex.html"]


@pytest.fixture(scope="module")
def measurements(tmp_path_factory):
    pages = book_pages()
    if not pages:
        pytest.skip("no built book in _build/html; run `make book` first")
    require_chromium()
    browser = Browser(tmp_path_factory.mktemp("profile"))
    try:
        results = {}
        for page in pages:
            browser.open(page)
            browser.wait_for("return new Promise(r => document.readyState === 'complete' ? r() : "
                             "window.addEventListener('load', () => r()));")
            source = MEASURE.replace("MIN_SCALE", str(MIN_FIGURE_SCALE))
            results[page.stem] = browser.wait_for("return (async () => {" + source + "})();", 60)
            results[page.stem]["console_errors"] = [e for e in browser.console_errors() if "file://" in e]
    finally:
        browser.close()
    print(f"\n{'page':45s} {'math':>5s} {'raw':>4s} {'code':>5s} {'scroll':>6s} {'figs':>5s} "
          f"{'small':>5s} {'no alt':>6s} {'wide':>5s} {'stderr':>6s}")
    for name, m in results.items():
        wide = len(m["wide_outputs"]) + len(m["wide_tables"]) + len(m["wide_math"])
        print(f"{name:45s} {m['math']:5d} {len(m['raw_math']):4d} {m['code']:5d} {len(m['scrolling_code']):6d} "
              f"{m['figures']:5d} {len(m['small_figures']):5d} {len(m['no_alt']):6d} {wide:5d} {m['stderr']:6d}")
    return results


def _offenders(measurements, key):
    return {name: m[key] for name, m in measurements.items() if m[key]}


def test_every_formula_is_typeset_offline(measurements):
    assert sum(m["math"] for m in measurements.values()) > 100, "the book should hold formulas"
    assert not _offenders(measurements, "raw_math")


def test_few_code_cells_scroll_sideways(measurements):
    code = sum(m["code"] for m in measurements.values())
    scrolling = _offenders(measurements, "scrolling_code")
    share = sum(map(len, scrolling.values())) / code
    assert share <= MAX_SCROLLING_CODE_SHARE, (
        f"{share:.0%} of {code} code cells scroll sideways; per page: "
        + "; ".join(f"{name}: {len(lines)}" for name, lines in scrolling.items()))


def test_no_output_code_block_table_or_formula_is_wider_than_the_column(measurements):
    assert not _offenders(measurements, "wide_outputs")
    assert not _offenders(measurements, "wide_tables")
    assert not _offenders(measurements, "wide_math")


def test_no_figure_is_shown_below_sixty_percent(measurements):
    assert not _offenders(measurements, "small_figures")


def test_every_figure_has_alt_text(measurements):
    assert not _offenders(measurements, "no_alt")


def test_no_stderr_box_or_numpy_repr_on_any_page(measurements):
    assert not _offenders(measurements, "stderr")
    assert not _offenders(measurements, "numpy_reprs")


def test_the_books_own_pages_log_no_console_errors(measurements):
    errors = _offenders(measurements, "console_errors")
    assert not errors, re.sub(r"\s+", " ", str(errors))[:2000]
