"""Per-layer norms of many tensors at once: the machinery behind :class:`LayerMonitor`.

The statistics themselves are defined plainly at the top of :mod:`gradcourse.monitor`.
This module computes the same numbers fast, for K models trained side by side (K = 1 for
:func:`gradcourse.train`). A network has a few tensors per layer, most of them small, so
the cost of per-layer norms is the number of kernel calls, not the arithmetic. The tensors
are therefore copied into one row per model (``torch.cat``) in which every layer has a
slot of the same size, zero-padded; then the norms of all layers of all rows are one
``vector_norm`` over the last dimension.

Norms are accumulated in float64: in float32 the gradient of a vanishing layer, around
1e-25, would square to 0. Large rows (K models' worth) are summed in float32 first, which
a CPU does much faster than converting them, and summed again in float64 only for a row
with a layer whose norm leaves the range where float32 is exact (BENCHMARKS.md has the
figures).
"""
from __future__ import annotations

from typing import Callable

import torch

# Norms taken in float32 are exact to rounding while every layer's norm lies in this range:
# squares small enough to underflow then change a sum by less than 1e-5 of itself, and
# nothing overflows.
FLOAT32_EXACT = (1e-14, 1e18)
_SMALL = 1 << 16  # entries up to which accumulating in float64 directly is the faster way
_MEMBERSHIP_LIMIT = 4_000_000  # entries x layers up to which packed sums are one matrix product


def accumulation_dtype(device) -> torch.dtype:
    """The dtype statistics are accumulated and kept in: float64, or float32 on Apple's MPS,
    which has no float64."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def float64_where_needed(norms: torch.Tensor, renorm: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``norms``, a ``(rows, layers)`` tensor of norms taken in float32, as float64, with
    every norm outside :data:`FLOAT32_EXACT` (a vanishing layer, an exploding one, or
    exactly zero) replaced by ``renorm(outside)``: given those entries' flat indices, their
    norms taken again in float64. On Apple's MPS, which has no float64, the norms stay
    float32."""
    if accumulation_dtype(norms.device) != torch.float64:
        return norms
    low, high = FLOAT32_EXACT
    smallest, largest = torch.aminmax(norms)   # the common case, every norm in range, in one look
    norms = norms.to(torch.float64)
    if low <= float(smallest) and float(largest) <= high:
        return norms
    flat = norms.view(-1)
    outside = torch.nonzero(~((flat >= low) & (flat <= high))).view(-1)
    flat[outside] = renorm(outside)
    return norms


def model_blocks(t: torch.Tensor, k: int) -> torch.Tensor:
    """``t`` as a ``(k, numel / k)`` view whose row ``i`` holds model ``i``'s entries (dim 0 is
    the model-major dimension of every parameter of a K-wide network). Works for
    channels-last tensors too: their dim 0 is still outermost in memory, so each model's
    block is one contiguous run (in another order, which sums and elementwise updates do
    not see)."""
    if t.is_contiguous():
        return t.view(k, -1)
    if k == 1:
        return t.reshape(1, -1)
    if not (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)):
        raise ValueError(f"a tensor of shape {tuple(t.shape)} and strides {t.stride()} has no per-model blocks")
    size = t.numel() // k
    return t.as_strided((k, size), (size, 1), t.storage_offset())


class LayerRows:
    """Rows of K models' per-layer tensors, and their per-layer norms from one reduction.

    ``layer_of_param[j]`` is the layer of parameter ``j`` (parameters of one layer are
    consecutive). :meth:`fill` copies one ``(K, n_j)`` block per parameter into a
    ``(K, width)`` row tensor; :meth:`norms` gives the ``(..., K, layers)`` norms of such
    rows. Every layer gets a slot of the largest layer's size when that at most doubles the
    row; otherwise the layers are packed and summed with a 0/1 layer-membership matrix (or a
    segmented sum for very large models).
    """

    def __init__(self, sizes: list[int], layer_of_param: list[int], n_layers: int, k: int = 1):
        self.k, self.n_layers, self.layer_of_param = k, n_layers, layer_of_param
        lengths = [0] * n_layers
        for size, layer in zip(sizes, layer_of_param):
            lengths[layer] += size
        self.lengths = lengths
        self.slot = max(lengths, default=0)
        self.padded = n_layers > 0 and min(lengths) > 0 and n_layers * self.slot <= 2 * sum(lengths)
        self.width = n_layers * self.slot if self.padded else sum(lengths)
        self.columns, filled = [], [0] * n_layers   # each parameter's columns in a row
        for size, layer in zip(sizes, layer_of_param):
            start = (layer * self.slot if self.padded else sum(lengths[:layer])) + filled[layer]
            self.columns.append(slice(start, start + size))
            filled[layer] += size
        self._plans: dict = {}
        self._membership: dict = {}

    def new(self, rows: int, like: torch.Tensor) -> torch.Tensor:
        """An empty ``(rows, K, width)`` tensor on ``like``'s device and dtype."""
        return torch.empty(rows, self.k, self.width, dtype=like.dtype, device=like.device)

    def parts(self, blocks: list[torch.Tensor]) -> list[torch.Tensor]:
        """``blocks`` (one ``(K, n)`` block per parameter) with zero padding after each
        layer's last block, ready for ``torch.cat(..., dim=1)``."""
        if not self.padded:
            return blocks
        key = (blocks[0].dtype, blocks[0].device)
        plan = self._plans.get(key)
        if plan is None:  # parameter indices, and zero tensors where a layer's slot needs padding
            zeros = torch.zeros(self.k, self.slot, dtype=key[0], device=key[1])
            plan, filled = [], 0
            for index, (block, layer) in enumerate(zip(blocks, self.layer_of_param)):
                plan.append(index)
                filled += block.shape[-1]
                if index + 1 == len(blocks) or self.layer_of_param[index + 1] != layer:
                    if filled < self.slot:
                        plan.append(zeros[:, :self.slot - filled])
                    filled = 0
            self._plans[key] = plan
        return [blocks[step] if type(step) is int else step for step in plan]

    def fill(self, blocks: list[torch.Tensor], out: torch.Tensor) -> torch.Tensor:
        """``out`` (``(K, width)``) filled with ``blocks``, each layer in its slot."""
        return torch.cat(self.parts(blocks), dim=1, out=out)

    def norms(self, rows: torch.Tensor) -> torch.Tensor:
        """Per-layer L2 norms of ``rows`` (``(..., K, width)``) as ``(..., K, layers)``,
        float64 (float32 on MPS)."""
        shape = rows.shape[:-1]
        flat = rows.reshape(-1, rows.shape[-1])
        if self.padded:  # all norms are one reduction over the slots
            slots = flat.view(len(flat), self.n_layers, self.slot)
            if flat.numel() <= _SMALL and accumulation_dtype(flat.device) == torch.float64:
                return torch.linalg.vector_norm(slots, dim=2, dtype=torch.float64).view(*shape, self.n_layers)
            norms = float64_where_needed(
                torch.linalg.vector_norm(slots, dim=2),
                lambda outside: torch.linalg.vector_norm(slots.reshape(-1, self.slot)[outside], dim=1,
                                                         dtype=torch.float64))
        else:
            norms = float64_where_needed(self._layer_sums(flat * flat).sqrt_(), self._float64_norms(flat))
        return norms.view(*shape, self.n_layers)

    def _float64_norms(self, flat: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """For :func:`float64_where_needed`: the norms at flat indices of a packed
        ``(rows, layers)`` result, each from its whole row summed again in float64."""
        def renorm(outside: torch.Tensor) -> torch.Tensor:
            rows = flat[outside // self.n_layers].double()
            norms = self._layer_sums(rows.square_()).sqrt_()
            return norms[torch.arange(len(outside), device=norms.device), outside % self.n_layers]
        return renorm

    def _layer_sums(self, squares: torch.Tensor) -> torch.Tensor:
        """Per-layer sums of each packed row: one product with a 0/1 membership matrix when
        that matrix is small, else a segmented reduction."""
        rows, n = squares.shape
        if n * self.n_layers <= _MEMBERSHIP_LIMIT:
            key = (squares.dtype, squares.device)
            member = self._membership.get(key)
            if member is None:
                owner = torch.repeat_interleave(torch.arange(self.n_layers), torch.tensor(self.lengths))
                member = torch.zeros(n, self.n_layers, dtype=key[0], device=key[1])
                member[torch.arange(n), owner.to(key[1])] = 1
                self._membership[key] = member
            return squares @ member
        lengths = torch.tensor(self.lengths, device=squares.device)
        if squares.device.type == "mps":  # no segment_reduce there
            owner = torch.repeat_interleave(torch.arange(self.n_layers, device=squares.device), lengths)
            return torch.zeros(rows, self.n_layers, dtype=squares.dtype,
                               device=squares.device).index_add_(1, owner, squares)
        return torch.segment_reduce(squares, "sum", lengths=lengths.expand(rows, -1), axis=1)
