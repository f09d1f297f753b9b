"""A disk cache of run records, keyed by configuration and code version.

Precomputed sweeps (the static sliders in the book) and repeated chapter runs read
their records from here, so rebuilding the book with nothing changed retrains nothing.
The key covers the three configs, the device type and a hash of gradcourse's own source,
so editing the package invalidates every entry.
"""
from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

CACHE_ENV = "GRADCOURSE_CACHE"


def cache_dir() -> Path:
    """``$GRADCOURSE_CACHE``, or ``~/.cache/gradcourse/runs``."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "gradcourse" / "runs"
    return Path(root).expanduser()


@lru_cache(maxsize=1)
def code_version() -> str:
    """A short hash of every ``.py`` file of the package: any code change makes new keys."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def run_key(*parts) -> str:
    """A stable key from configs (frozen dataclasses print all their fields) and other values."""
    text = "|".join(repr(part) for part in parts) + "|" + code_version()
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def cache_path(key: str) -> Path:
    return cache_dir() / f"{key}.pkl"
