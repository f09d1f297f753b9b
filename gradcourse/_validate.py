"""Validation helpers shared by the configuration dataclasses.

Every message names the field, the bad value and what is allowed, so a typo in a
notebook reads as a sentence rather than as a traceback from inside torch.
"""
from __future__ import annotations

import math
from numbers import Integral, Real


class ConfigError(ValueError):
    """A configuration field has a value that is not allowed."""


def choice(owner: str, field: str, value, allowed) -> None:
    """Require ``value`` to be one of ``allowed``."""
    if not isinstance(value, (str, int, float, type(None))) or value not in allowed:
        options = ", ".join(repr(a) for a in allowed)
        raise ConfigError(f"{owner}.{field} = {value!r} is not allowed; choose one of: {options}")


def integer(owner: str, field: str, value, low: int | None = None, high: int | None = None) -> None:
    """Require an integer (not a bool) in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ConfigError(f"{owner}.{field} = {value!r} must be an integer{_allowed(low, high)}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(f"{owner}.{field} = {value!r} is out of range; allowed:{_allowed(low, high)}")


def number(owner: str, field: str, value, low: float | None = None, high: float | None = None,
           low_open: bool = False) -> None:
    """Require a finite real number in ``[low, high]`` (or ``(low, high]`` with ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ConfigError(f"{owner}.{field} = {value!r} must be a finite number{_allowed(low, high, low_open)}")
    too_low = low is not None and (value <= low if low_open else value < low)
    if too_low or (high is not None and value > high):
        raise ConfigError(f"{owner}.{field} = {value!r} is out of range; allowed:{_allowed(low, high, low_open)}")


def boolean(owner: str, field: str, value) -> None:
    """Require ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise ConfigError(f"{owner}.{field} = {value!r} must be True or False")


def _allowed(low, high, low_open: bool = False) -> str:
    parts = []
    if low is not None:
        parts.append(f"> {low}" if low_open else f">= {low}")
    if high is not None:
        parts.append(f"<= {high}")
    return f" {' and '.join(parts)}" if parts else ""
