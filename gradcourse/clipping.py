"""Gradient clipping: by global norm, by value, and adaptive unit-wise clipping (AGC).

Norm and value clipping are PyTorch's own ``clip_grad_norm_`` and ``clip_grad_value_``.
AGC (Brock et al., 2021) is not in PyTorch, so it is written here: each output unit's
gradient is rescaled so that ``||G_i|| <= clip_factor * max(||W_i||, eps)``.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

CLIP_MODES = ("none", "norm", "value", "agc")


def total_grad_norm(parameters: Iterable[nn.Parameter]) -> torch.Tensor:
    """The L2 norm of all gradients together, as a 0-d tensor (0 when there are none)."""
    parameters = list(parameters)
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros((), device=parameters[0].device if parameters else None)
    return torch.nn.utils.get_total_norm(grads, norm_type=2.0)


def unitwise_norm(tensor: torch.Tensor) -> torch.Tensor:
    """Norm of each output unit (row of a matrix, filter of a conv), broadcastable to ``tensor``.

    Vectors and scalars (biases, gains) count as one unit each element, as in Brock et al.
    """
    if tensor.ndim <= 1:
        return tensor.abs()
    return torch.linalg.vector_norm(tensor, dim=tuple(range(1, tensor.ndim)), keepdim=True)


def adaptive_clip_grad_(parameters: Iterable[nn.Parameter], clip_factor: float, eps: float = 1e-3) -> torch.Tensor:
    """Adaptive gradient clipping, in place. Returns whether any unit was clipped (0-d bool tensor).

    For every unit ``i`` of every parameter: if ``||G_i|| > clip_factor * max(||W_i||, eps)``,
    ``G_i`` is scaled down to exactly that bound. Brock et al. leave the final classifier
    unclipped; pass only the parameters you want clipped.
    """
    parameters = list(parameters)
    fired = torch.zeros((), dtype=torch.bool, device=parameters[0].device if parameters else None)
    for p in parameters:
        if p.grad is None:
            continue
        max_norm = unitwise_norm(p.detach()).clamp_min(eps) * clip_factor
        grad_norm = unitwise_norm(p.grad.detach())
        too_big = grad_norm > max_norm
        scale = torch.where(too_big, max_norm / grad_norm.clamp_min(1e-12), torch.ones_like(grad_norm))
        p.grad.detach().mul_(scale)
        fired = fired | too_big.any()
    return fired


def clip_gradients(parameters: list[nn.Parameter], mode: str, threshold: float,
                   agc_parameters: list[nn.Parameter] | None = None):
    """Clip gradients in place by ``mode``; return ``(norm_before, norm_after, fired)`` as tensors.

    ``mode``: ``none``, ``norm`` (``clip_grad_norm_`` to total norm ``threshold``),
    ``value`` (``clip_grad_value_`` to ``[-threshold, threshold]``) or ``agc``
    (:func:`adaptive_clip_grad_` with ``clip_factor=threshold`` on ``agc_parameters``).
    """
    if mode not in CLIP_MODES:
        raise ValueError(f"clip mode = {mode!r} is not allowed; choose one of: {', '.join(CLIP_MODES)}")
    if mode == "norm":
        before = torch.nn.utils.clip_grad_norm_(parameters, threshold)
        fired = before > threshold
    else:
        before = total_grad_norm(parameters)
        if mode == "none":
            return before, before, torch.zeros((), dtype=torch.bool, device=before.device)
        if mode == "value":
            fired = torch.stack([p.grad.abs().max() for p in parameters if p.grad is not None]).max() > threshold
            torch.nn.utils.clip_grad_value_(parameters, threshold)
        else:
            fired = adaptive_clip_grad_(agc_parameters if agc_parameters is not None else parameters, threshold)
    return before, total_grad_norm(parameters), fired


@torch.no_grad()
def clip_rows_(rows: torch.Tensor, norms: torch.Tensor, mode: str, thresholds: torch.Tensor) -> torch.Tensor:
    """:func:`clip_gradients`' rule for K models at once, in place: row ``i`` of ``rows``
    holds all of model ``i``'s gradient entries, ``norms[i]`` their total norm and
    ``thresholds[i]`` its threshold. ``norm`` scales a row by ``clip_grad_norm_``'s factor
    ``min(1, threshold / (norm + 1e-6))``; ``value`` clamps it as ``clip_grad_value_`` does.
    Returns which rows clipping changed."""
    k = len(rows)
    if mode == "norm":
        scale = (thresholds / (norms + 1e-6)).clamp(max=1.0)
        rows.mul_(scale.view(k, 1))
        return norms > thresholds
    if mode == "value":
        limit = thresholds.view(k, 1)
        fired = (rows.abs() > limit).any(1)
        rows.clamp_(-limit, limit)
        return fired
    if mode == "none":
        return torch.zeros(k, dtype=torch.bool, device=rows.device)
    raise ValueError(f"clip mode = {mode!r} is not supported for rows; choose one of: none, norm, value")
