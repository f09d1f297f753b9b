"""The course's scaffolding: clean notebooks, one repository address, a complete table of
contents, a light ``import gradcourse``, and a book build and a notebook test that fail
when a notebook fails."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
VENV_BIN = Path(sys.executable).parent


def notebook_id(path: Path) -> str:
    return path.name


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def code_cells(notebook: dict) -> list[dict]:
    return [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds the chapters"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=notebook_id)
def test_notebook_is_stored_without_outputs_or_execution_counts(path):
    for index, cell in enumerate(code_cells(load(path))):
        assert cell.get("outputs") == [], f"cell {index} has outputs"
        assert cell.get("execution_count") is None, f"cell {index} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=notebook_id)
def test_first_code_cell_installs_gradcourse_from_the_configured_repository(path):
    source = "".join(code_cells(load(path))[0]["source"])
    assert "pip" in source and "install" in source
    assert 'find_spec("gradcourse")' in source, "install only where gradcourse is missing"
    urls = re.findall(r"git\+(https://[^\s\"'@]+)", source)
    assert urls == [CONFIG["repository"]["url"]]


def toc_files(node) -> list[str]:
    """Every ``file:`` and ``root:`` entry of a jupyter-book _toc.yml, at any depth."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("file", "root") and isinstance(value, str):
                found.append(value)
            else:
                found.extend(toc_files(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(toc_files(item))
    return found


TOC = toc_files(yaml.safe_load((ROOT / "_toc.yml").read_text()))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=notebook_id)
def test_every_notebook_is_in_the_table_of_contents(path):
    assert f"notebooks/{path.stem}" in TOC


@pytest.mark.parametrize("entry", TOC)
def test_every_table_of_contents_entry_exists(entry):
    candidates = [ROOT / entry] + [ROOT / f"{entry}{suffix}" for suffix in (".md", ".ipynb", ".rst")]
    assert any(c.is_file() for c in candidates), entry


def test_import_gradcourse_loads_no_heavy_optional_library():
    code = ("import sys, gradcourse; "
            "print([m for m in ('torchvision', 'sklearn', 'matplotlib', 'ipywidgets') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_book_build_is_configured_to_fail_on_errors():
    execute = CONFIG["execute"]
    assert execute["execute_notebooks"] in ("force", "cache")
    assert execute.get("allow_errors", False) is False
    assert CONFIG.get("only_build_toc_files") is True
    makefile = (ROOT / "Makefile").read_text()
    build = [line for line in makefile.splitlines() if "jupyter-book build" in line]
    # --all: Sphinx would otherwise skip unchanged notebooks, whose outputs then reflect old code
    # (and a rebuild after a failed build would "succeed" without executing anything).
    assert build and all(all(flag in line.split() for flag in ("--all", "-W", "-n", "--keep-going")) for line in build)


# -- the failure path, for real -----------------------------------------------------------

def notebook(*cells: str) -> dict:
    return {
        "cells": [{"cell_type": "code", "execution_count": None, "id": f"cell-{index}", "metadata": {},
                   "outputs": [], "source": source} for index, source in enumerate(cells)],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                     "language_info": {"name": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }


def tiny_book(folder: Path, cell: str) -> Path:
    """A one-notebook book with the repository's own _config.yml and bibliography."""
    folder.mkdir()
    shutil.copy(ROOT / "_config.yml", folder / "_config.yml")
    for bib in CONFIG.get("bibtex_bibfiles", []):
        (folder / bib).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / bib, folder / bib)
    # The book's own Sphinx extension and style sheet (the MathJax copy is made by `make book`).
    sphinx = CONFIG["sphinx"]
    for path in [*sphinx.get("local_extensions", {}).values(), *sphinx["config"].get("html_static_path", [])]:
        if not path.startswith(".cache"):
            shutil.copytree(ROOT / path, folder / path, dirs_exist_ok=True)
    (folder / "_toc.yml").write_text("format: jb-book\nroot: notebooks/chapter\n")
    (folder / "notebooks").mkdir()
    (folder / "notebooks" / "chapter.ipynb").write_text(json.dumps(notebook("# A chapter\nx = 1", cell)))
    return folder


def build_book(folder: Path) -> subprocess.CompletedProcess:
    """``make book`` in ``folder`` with the repository's own Makefile and virtual environment."""
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(["make", "-s", "-f", str(ROOT / "Makefile"), "-o", ".venv/.installed", f"BIN={VENV_BIN}",
                           "book"], cwd=folder, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_book_build_fails_when_a_notebook_assert_fails(tmp_path):
    book = tiny_book(tmp_path / "failing", "assert 1 == 2")
    result = build_book(book)
    assert result.returncode != 0
    assert "mystnb.exec" in result.stderr  # failed because the notebook raised...
    assert "AssertionError" in (book / "_build/html/reports/notebooks/chapter.err.log").read_text()  # ...this


@pytest.mark.slow
def test_a_second_build_of_a_failing_book_fails_again(tmp_path):
    book = tiny_book(tmp_path / "failing", "assert 1 == 2")
    assert build_book(book).returncode != 0
    again = build_book(book)  # neither Sphinx's saved environment nor the notebook cache may hide it
    assert again.returncode != 0
    assert "mystnb.exec" in again.stderr


@pytest.mark.slow
def test_book_build_succeeds_when_every_notebook_runs(tmp_path):
    """The control for the tests above: the same book with a passing cell builds."""
    result = build_book(tiny_book(tmp_path / "passing", "assert 1 == 1"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "passing" / "_build" / "html" / "notebooks" / "chapter.html").is_file()


@pytest.mark.slow
def test_every_book_build_runs_the_notebooks_again(tmp_path):
    """The notebook's code is unchanged, but what it runs (here a file it reads; in the course,
    gradcourse) changed: the next build must execute it again, not reuse the cached outputs."""
    book = tiny_book(tmp_path / "book", "from pathlib import Path\nassert Path('value.txt').read_text() == '1'")
    (book / "notebooks" / "value.txt").write_text("1")
    first = build_book(book)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    (book / "notebooks" / "value.txt").write_text("2")
    assert build_book(book).returncode != 0


@pytest.mark.slow
def test_nbval_fails_a_notebook_whose_assert_fails_and_passes_one_that_runs(tmp_path):
    (tmp_path / "failing.ipynb").write_text(json.dumps(notebook("x = 1", "assert 1 == 2")))
    (tmp_path / "passing.ipynb").write_text(json.dumps(notebook("x = 1", "assert x == 1")))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "-rA",
         "failing.ipynb", "passing.ipynb"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "1 failed, 3 passed" in output, output
    assert re.search(r"FAILED failing\.ipynb::Cell 1", output), output
