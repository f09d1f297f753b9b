# Two commands do everything, each with its own setup:
#   make book   build the HTML book, executing every notebook  -> _build/html/index.html
#   make test   unit tests + nbval on every notebook
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NOTEBOOK_CACHE := _build/.jupyter_cache
export GRADCOURSE_PROGRESS ?= 0
# One torch thread per process: the book runs one notebook per core, and a run's numbers do
# not depend on the machine's core count (a kernel's threads change the order of its sums).
export OMP_NUM_THREADS ?= 1
export GRADCOURSE_CACHE ?= $(CURDIR)/.cache/gradcourse
# MathJax is served from the built book itself (no CDN): npm's package, copied where
# _config.yml's html_static_path picks it up.
MATHJAX_VERSION := 3.2.2
MATHJAX := .cache/mathjax/mathjax/tex-chtml.js

.PHONY: book test bench clean env mathjax

env: $(STAMP)

# Reinstall only when the pins or the package metadata change.
$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	@touch $@

mathjax: $(MATHJAX)

$(MATHJAX):
	@command -v npm >/dev/null || { echo "make book needs npm (apt-get install -y nodejs npm) to install MathJax"; exit 1; }
	rm -rf .cache/npm .cache/mathjax && mkdir -p .cache/npm .cache/mathjax
	npm install --silent --no-audit --no-fund --prefix .cache/npm mathjax@$(MATHJAX_VERSION)
	cp -r .cache/npm/node_modules/mathjax/es5 .cache/mathjax/mathjax
	@test -f $@

# Notebooks built into the static book show precomputed sliders, not kernel-bound widgets.
book: export GRADCOURSE_STATIC_BUILD = 1
book: $(STAMP) $(MATHJAX)
	@# Run every notebook afresh, one per core (jupyter-cache's parallel executor), then build:
	@# the book reads the outputs from that cache and reruns any notebook that failed there.
	rm -rf $(NOTEBOOK_CACHE) && mkdir -p $(NOTEBOOK_CACHE)
	@# Largest notebooks first (they run longest), so that no core waits alone at the end.
	$(BIN)/jcache notebook -p $(NOTEBOOK_CACHE) add $$(ls -S notebooks/*.ipynb)
	$(BIN)/jcache project -p $(NOTEBOOK_CACHE) execute --executor local-parallel --timeout 900
	$(BIN)/jupyter-book build --all -W -n --keep-going .
	@echo "Book: $(CURDIR)/_build/html/index.html"

# One pytest worker per core (pytest-xdist); a notebook's cells stay together on one worker.
# The largest notebooks start first and the many short unit-test files fill in at the end,
# so that both workers stay busy to the end.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist loadfile $$(ls -S notebooks/*.ipynb) tests --nbval-lax $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m gradcourse.bench $(BENCH_ARGS)

clean:
	rm -rf _build .cache
