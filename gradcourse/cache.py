"""A disk cache of run records, keyed by configuration and code version.

Precomputed sweeps (the static sliders in the book) and repeated chapter runs read
their records from here, so rebuilding the book with nothing changed retrains nothing.
The key covers the three configs, the device type and a hash of gradcourse's own source,
so editing the training code invalidates every entry.
"""
from __future__ import annotations

import ast
import hashlib
import os
from functools import lru_cache
from pathlib import Path

CACHE_ENV = "GRADCOURSE_CACHE"


def cache_dir() -> Path:
    """``$GRADCOURSE_CACHE``, or ``~/.cache/gradcourse/runs``."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "gradcourse" / "runs"
    return Path(root).expanduser()


# The modules whose code decides what a training run records; editing plots or explorers
# leaves cached runs valid.
TRAINING_MODULES = ("_norms.py", "_validate.py", "clipping.py", "data.py", "device.py", "models.py", "monitor.py",
                    "record.py", "train.py", "vectorized.py")


@lru_cache(maxsize=1)
def code_version() -> str:
    """A short hash of the training modules' code: any change to what they run makes new
    keys; an edit to a docstring or a comment does not (the hash is of the syntax tree,
    docstrings left out)."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent / name for name in TRAINING_MODULES):
        digest.update(path.name.encode())
        digest.update(_code_without_docstrings(path.read_text()).encode())
    return digest.hexdigest()[:12]


def _code_without_docstrings(source: str) -> str:
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def run_key(*parts) -> str:
    """A stable key from configs (frozen dataclasses print all their fields) and other values."""
    text = "|".join(repr(part) for part in parts) + "|" + code_version()
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def cache_path(key: str) -> Path:
    return cache_dir() / f"{key}.pkl"


def load_run(key: str):
    """The cached :class:`~gradcourse.record.Run` under ``key``, or ``None``. A truncated or
    unreadable file is removed (the caller trains again and overwrites it)."""
    from .record import Run

    path = cache_path(key)
    if not path.exists():
        return None
    try:
        return Run.load(path)
    except Exception:
        path.unlink(missing_ok=True)
        return None


def save_run(key: str, run) -> None:
    run.save(cache_path(key))

