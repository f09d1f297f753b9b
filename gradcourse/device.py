"""Which device training runs on: CUDA when there is a GPU, then Apple MPS, else CPU."""
from __future__ import annotations

import ctypes
import os
import sys

import torch

from ._validate import ConfigError

DEVICE_ENV = "GRADCOURSE_DEVICE"


def pick_device(preference: str | torch.device | None = None) -> torch.device:
    """Return the device to train on.

    ``preference`` (or the ``GRADCOURSE_DEVICE`` environment variable) overrides the
    automatic choice: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``. Asking for a device
    that is not available raises a :class:`ConfigError` (a ``ValueError``) that says what is.
    """
    if isinstance(preference, torch.device):
        preference = str(preference)
    preference = preference or os.environ.get(DEVICE_ENV) or None
    if preference is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(preference)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device = {preference!r} is not a device name; use 'cpu', 'cuda', 'cuda:N' or 'mps'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device = {preference!r} was asked for, but no CUDA GPU is available here; "
                         f"available: {', '.join(available_devices())}")
    if device.type == "mps" and not _mps_available():
        raise ConfigError(f"device = {preference!r} was asked for, but Apple MPS is not available here; "
                         f"available: {', '.join(available_devices())}")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device = {preference!r} is not supported; use 'cpu', 'cuda', 'cuda:N' or 'mps'")
    return device


def available_devices() -> list[str]:
    """Names of the devices this machine can train on, best first."""
    names = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    if _mps_available():
        names.append("mps")
    return names + ["cpu"]


def describe_device(device: torch.device) -> str:
    """A human-readable name: the GPU model for CUDA, else the device type."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_allocator_tuned: bool | None = None


def keep_freed_memory(limit_mb: int = 32) -> bool:
    """Let this process reuse the memory of freed tensors instead of handing it back to the
    kernel (Linux with glibc only; elsewhere a no-op). Returns whether the setting is in force.

    PyTorch on a CPU allocates every step's activations and gradients afresh with ``malloc``.
    glibc serves a block above its mmap threshold (at first 128 KB) with ``mmap``, and trims
    the top of the heap once more than its trim threshold is free: either way the next step's
    tensors of the same size come back as new pages, and every page costs a page fault and
    a zero-fill by the operating system before the computation that asked for it can start.
    A sweep of 8 models side by side, whose activations are 2 MB each, pays this at every
    step (BENCHMARKS.md has the counts).
    This sets the mmap threshold to ``limit_mb`` MB (1 to 32, glibc's maximum on a 64-bit
    system) and the trim threshold to four times that (``mallopt``), so blocks up to that
    size stay in the process for the next step. The process's peak memory does not change,
    but up to ``4 * limit_mb`` MB freed after a peak stay with the process while it runs.
    Process-wide; the first call decides. :func:`gradcourse.train` and
    :func:`gradcourse.vectorized.train_many` call it; BENCHMARKS.md has what it saves."""
    global _allocator_tuned
    if isinstance(limit_mb, bool) or not isinstance(limit_mb, int) or not 1 <= limit_mb <= 32:
        raise ConfigError(f"keep_freed_memory(limit_mb={limit_mb!r}): limit_mb must be a whole number of "
                          f"megabytes from 1 to 32 (glibc's largest mmap threshold on a 64-bit system)")
    if _allocator_tuned is None:
        _allocator_tuned = False
        if sys.platform.startswith("linux"):
            try:
                mallopt = ctypes.CDLL(None).mallopt
            except (OSError, AttributeError):   # a C library without mallopt
                return False
            mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
            limit = limit_mb << 20
            _allocator_tuned = bool(mallopt(_M_MMAP_THRESHOLD, limit)) and bool(mallopt(_M_TRIM_THRESHOLD, 4 * limit))
    return _allocator_tuned
