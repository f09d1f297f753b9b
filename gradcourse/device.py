"""Which device training runs on: CUDA when there is a GPU, then Apple MPS, else CPU."""
from __future__ import annotations

import os

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
