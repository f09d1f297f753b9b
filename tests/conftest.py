"""Shared setup for the test suite.

Every test here runs with its own empty run cache and data folder, so no test reads or
writes the user's ``~/.cache/gradcourse`` and no result depends on what happens to be
downloaded there; progress bars are off. The variables are set around each test in this
folder only (``make test`` runs the notebooks in the same pytest process, and they keep
the Makefile's cache). The models in the tests are tiny, so torch runs them single-threaded:
faster than two threads for models this small, and steady when other processes share the cores.
"""
from __future__ import annotations

import os
import tempfile

import pytest
import torch

import gradcourse as gc

_SESSION_DIR = tempfile.mkdtemp(prefix="gradcourse-tests-")
TEST_ENV = {
    "GRADCOURSE_PROGRESS": "0",
    "GRADCOURSE_CACHE": os.path.join(_SESSION_DIR, "cache"),
    "GRADCOURSE_DATA": os.path.join(_SESSION_DIR, "data"),
}
_ENV_PATCH = pytest.StashKey[pytest.MonkeyPatch]()
torch.set_num_threads(1)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Set the test environment before any fixture of a test in this folder runs."""
    patch = pytest.MonkeyPatch()
    for name, value in TEST_ENV.items():
        patch.setenv(name, value)
    patch.delenv("GRADCOURSE_DEVICE", raising=False)
    item.stash[_ENV_PATCH] = patch


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    try:
        return (yield)
    finally:
        patch = item.stash.get(_ENV_PATCH, None)
        if patch is not None:
            patch.undo()


@pytest.fixture(scope="session")
def digits() -> gc.ImageData:
    """scikit-learn's 8x8 digits, split and normalized by gradcourse (offline, real data)."""
    return gc.load_data("digits")


@pytest.fixture(scope="session")
def digits16() -> gc.ImageData:
    """The digits resized to 16x16."""
    return gc.load_data("digits", image_size=16)


@pytest.fixture(scope="session")
def small_digits() -> gc.ImageData:
    """64 training digits: one full batch of 64 is the whole training set."""
    return gc.load_data("digits", max_train=64)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """An empty run cache for one test."""
    path = tmp_path / "cache"
    monkeypatch.setenv("GRADCOURSE_CACHE", str(path))
    return path
