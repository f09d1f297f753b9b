"""Per-layer statistics of a training run, a few floats per layer per step.

:class:`LayerMonitor` works on any PyTorch model: give it named layers (and, optionally,
named activation modules) and it reports, per layer, the gradient norm, the weight norm
and the update-to-weight ratio, and per activation module the mean, standard deviation,
fraction of units in the flat (small-derivative) region and fraction of channels that
are flat for the whole batch. Activations are read by forward hooks that the monitor
removes when its ``with`` block ends; nothing is kept but the statistics.
"""
from __future__ import annotations

import copy
import math
import warnings

from collections import OrderedDict
from contextlib import ExitStack
from typing import Callable, Mapping

import torch
from torch import nn

from .hooks import forward_hooks

ACTIVATION_STATS = ("mean", "std", "saturated", "dead")
HIST_BINS = 32
_MEMBERSHIP_LIMIT = 4_000_000  # parameters x layers up to which per-layer sums are one matrix product
HIST_SAMPLE = 4096  # activation values counted per histogram, at most (whole examples)

# Where each activation's derivative is (nearly) zero, judged from its output y:
# (test on y, per-channel test on (min, max) of y that says "flat for the whole batch").
_FLAT_REGION = {
    nn.Sigmoid: (lambda y: (y < 0.01) | (y > 0.99),                 # sigmoid' = y(1-y) < 0.0099
                 lambda low, high: (high < 0.01) | (low > 0.99)),
    nn.Tanh: (lambda y: (y < -0.99) | (y > 0.99),                     # tanh' = 1 - y^2 < 0.0199
              lambda low, high: (high < -0.99) | (low > 0.99)),
    nn.ReLU: (lambda y: y <= 0, lambda low, high: high <= 0),         # derivative 0 (LeakyReLU: its slope)
    nn.LeakyReLU: (lambda y: y <= 0, lambda low, high: high <= 0),
    nn.GELU: (lambda y: y <= 0, lambda low, high: high <= 0),
}


def flat_tests(module: nn.Module):
    """``(test on y, per-channel test on (min, max) of y)`` for an activation module: where its
    derivative is (nearly) zero. Modules not listed are judged as ReLU is (flat where y <= 0)."""
    return _FLAT_REGION.get(type(module), _FLAT_REGION[nn.ReLU])


# -- The statistics, as a textbook defines them ------------------------------------------
# LayerMonitor computes exactly these for every layer at every step, fast (a few kernel
# calls for all layers at once, in float64 where float32 squares would underflow); the
# tests check it against these definitions.

def layer_grad_norm(layer: nn.Module) -> float:
    """A layer's gradient norm: the square root of the sum of the squares of the gradient
    entries of all its parameters (weights and biases together)."""
    return math.sqrt(sum(float(p.grad.double().square().sum()) for p in layer.parameters() if p.grad is not None))


def update_to_weight_ratio(before: list[torch.Tensor], after: list[torch.Tensor]) -> float:
    """``||W_after - W_before|| / ||W_before||`` over a layer's parameters: the share of its
    weights one optimizer step changed."""
    change = math.sqrt(sum(float((a.double() - b.double()).square().sum()) for b, a in zip(before, after)))
    return change / math.sqrt(sum(float(b.double().square().sum()) for b in before))


def activation_statistics(output: torch.Tensor, module: nn.Module) -> dict[str, float]:
    """One activation module's output over a batch: its mean and (population) standard
    deviation; the fraction of units in the flat region, where the derivative is (nearly)
    zero (``flat_tests``); and the fraction of channels flat for every unit of the batch
    (dead)."""
    y = output.detach().double()
    flat_region, flat_channel = flat_tests(module)
    per_channel = y.transpose(0, 1).reshape(y.shape[1], -1)
    dead = flat_channel(per_channel.amin(dim=1), per_channel.amax(dim=1))
    return {"mean": float(y.mean()), "std": float(y.std(unbiased=False)),
            "saturated": float(flat_region(y).double().mean()), "dead": float(dead.double().mean())}


# Squared norms summed in float32 are exact to rounding while every layer's sum lies in this
# range: squares small enough to underflow then change a sum by less than 1e-5 of itself, and
# nothing overflows.
FLOAT32_EXACT = (1e-28, 1e36)


def float64_where_needed(sums: torch.Tensor, resum: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``sums``, a ``(rows, layers)`` tensor of sums of squares taken in float32, as float64,
    with every row that has a sum outside :data:`FLOAT32_EXACT` (a vanishing layer, an
    exploding one, or exactly zero) replaced by ``resum(outside)``: those rows summed again
    in float64. Row by row, so a row's sums never depend on the other rows. On Apple's MPS,
    which has no float64, the sums stay float32."""
    if sums.device.type == "mps":
        return sums
    sums = sums.to(torch.float64)
    low, high = FLOAT32_EXACT
    outside = ~((sums >= low) & (sums <= high)).all(1)
    if bool(outside.any()):
        sums[outside] = resum(outside)
    return sums


def pad_to_slots(parts: list[torch.Tensor], layer_of_part: list[int], slot: int,
                 zeros: torch.Tensor) -> list[torch.Tensor]:
    """``parts`` (each layer's tensors in a row, flat along the last dimension) with zeros after
    each layer's last part, so every layer fills ``slot`` entries: ``torch.cat(..., dim=-1)``
    of the result is a row of equal slots, whose per-layer norms are one reduction.
    ``zeros`` is a zero tensor at least ``slot`` wide, sliced along its last dimension."""
    padded, filled = [], 0
    for index, (part, layer) in enumerate(zip(parts, layer_of_part)):
        padded.append(part)
        filled += part.shape[-1]
        if index + 1 == len(parts) or layer_of_part[index + 1] != layer:
            if filled < slot:
                padded.append(zeros[..., :slot - filled])
            filled = 0
    return padded


def default_layers(model: nn.Module) -> "OrderedDict[str, nn.Module]":
    """The layers to monitor: ``model.layers()`` when the model has it (gradcourse's CNN),
    otherwise every convolution and linear module, named by its path in the model."""
    if hasattr(model, "layers"):
        return OrderedDict(model.layers())
    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
    return OrderedDict((name, m) for name, m in model.named_modules() if isinstance(m, kinds))


def default_activations(model: nn.Module) -> "OrderedDict[str, nn.Module]":
    """The activation modules to watch: ``model.activation_modules()`` when present, otherwise
    every sigmoid/tanh/ReLU/LeakyReLU/GELU module, named by its path."""
    if hasattr(model, "activation_modules"):
        return OrderedDict(model.activation_modules())
    return OrderedDict((name, m) for name, m in model.named_modules() if type(m) in _FLAT_REGION)


def backward_signal(model: nn.Module, x: torch.Tensor, y: torch.Tensor, modules=None):
    """``||dloss/d(output)||`` of each module in ``modules``, from one forward and backward
    pass of the cross-entropy loss on ``(x, y)``: how much gradient signal reaches each point
    of the network on its way back (the gradient with respect to the module's *output*, not
    its weights).

    ``modules`` defaults to the layers :class:`LayerMonitor` watches (``model.layers()`` for
    a gradcourse CNN, otherwise every convolution and linear module); the norms
    come in forward order (input side first) and are taken in float64. The model's parameter
    gradients are accumulated as by any backward pass; forward hooks read the outputs and
    are removed before returning. Returns a NumPy array.
    """
    import numpy as np
    import torch.nn.functional as F

    modules = list((modules if modules is not None else default_layers(model)).values()
                   if isinstance(modules, Mapping) or modules is None else modules)
    outputs: list[torch.Tensor] = []

    def keep(_, output):
        output.retain_grad()
        outputs.append(output)

    with forward_hooks(dict(enumerate(modules)), keep):
        F.cross_entropy(model(x), y).backward()
    return np.array([float(torch.linalg.vector_norm(out.grad, dtype=torch.float64)) for out in outputs])


class LayerMonitor:
    """Collects per-layer statistics from a model while it trains.

    Use it as a context manager around the training loop::

        with LayerMonitor(model) as monitor:
            for x, y in batches:
                loss = loss_fn(model(x), y)   # hooks read activation statistics
                loss.backward()
                grads = monitor.grad_norms()  # per-layer gradient norms
                monitor.snapshot_weights()    # before the step
                optimizer.step()
                # per layer: ||W||, and ||delta W|| / ||W||
                norms, ratios = monitor.update_ratios()

    Per layer means all parameters of that named module (a conv block's convolution
    weight and bias, plus its normalization's parameters). The statistics are those of
    :func:`~gradcourse.monitor.layer_grad_norm`,
    :func:`~gradcourse.monitor.update_to_weight_ratio` and
    :func:`~gradcourse.monitor.activation_statistics`, computed for all layers at once.
    """

    def __init__(self, model: nn.Module, layers: Mapping[str, nn.Module] | None = None,
                 activations: Mapping[str, nn.Module] | None = None):
        self.model = model
        self.layers = OrderedDict(layers if layers is not None else default_layers(model))
        self.activations = OrderedDict(activations if activations is not None else default_activations(model))
        self.layer_names = list(self.layers)
        self.activation_names = list(self.activations)
        self.params: list[nn.Parameter] = []
        owner: list[int] = []
        for index, layer in enumerate(self.layers.values()):
            for p in layer.parameters():
                self.params.append(p)
                owner.append(index)
        device = self.params[0].device if self.params else torch.device("cpu")
        sizes = torch.tensor([p.numel() for p in self.params], dtype=torch.long)
        owner_t = torch.tensor(owner, dtype=torch.long)
        # Parameters of one layer are contiguous in the flat vectors (layers in order).
        self._lengths = torch.zeros(len(self.layers), dtype=torch.long).index_add_(0, owner_t, sizes).to(device)
        self._element_owner = torch.repeat_interleave(owner_t, sizes)
        self._length_list = self._lengths.tolist()
        # The per-step rows (begin_step/end_step) give every layer a slot of the largest
        # layer's size, zero-padded, when that at most doubles them: then all per-layer norms
        # are one reduction over the last dimension. Otherwise the rows are packed.
        n_layers = len(self._length_list)
        self._slot = max(self._length_list, default=0)
        self._padded = (n_layers > 0 and min(self._length_list) > 0
                        and n_layers * self._slot <= 2 * sum(self._length_list))
        self._param_layer = owner
        self._rows: torch.Tensor | None = None  # flat gradients, weights, update (begin_step/end_step)
        self._row_views: tuple[torch.Tensor, ...] = ()
        self._zeros: torch.Tensor | None = None
        self._weight_parts: tuple[list, list[torch.Tensor]] | None = None  # (views, padded views)
        self._views: list[torch.Tensor] | None = None
        self._membership: dict = {}
        self._stepping = False
        # Norms are taken in float64: in float32 the squares of gradients below ~1e-19 underflow
        # to 0, and a deep sigmoid network's first layers have gradients far smaller than that.
        # (Apple's MPS has no float64; there the norms stay float32.)
        self.norm_dtype = torch.float32 if device.type == "mps" else torch.float64
        self._previous: list[torch.Tensor] | None = None
        self._hooks: ExitStack | None = None
        self.collect_activations = True
        self.collect_histograms = False
        n_act = len(self.activations)
        # Per activation module, the raw sums of the last collected pass: shift, sum and sum of
        # squares of (y - shift), flat units, flat channels; and the number of units and
        # channels. The hooks store only these (few kernel calls each); activation_stats
        # turns them into statistics for all modules at once.
        self._raw = torch.zeros(n_act, 5, device=device, dtype=self.norm_dtype)
        self._sizes = [(1, 1)] * n_act
        self.histograms = torch.zeros(n_act, HIST_BINS, device=device)
        self.histogram_ranges = torch.zeros(n_act, 2, device=device)

    # -- hooks -------------------------------------------------------------------------
    def __enter__(self) -> "LayerMonitor":
        readers = [self._make_hook(index, module) for index, module in enumerate(self.activations.values())]
        self._hooks = ExitStack()
        self._hooks.enter_context(forward_hooks(dict(enumerate(self.activations.values())),
                                                lambda index, output: readers[index](output)))
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove the forward hooks (called automatically at the end of a ``with`` block)."""
        if self._hooks is not None:
            self._hooks.close()
            self._hooks = None

    def _make_hook(self, index: int, module: nn.Module):
        flat_region, flat_channel = flat_tests(module)

        def hook(output):
            if not (self.collect_activations and torch.is_grad_enabled()):
                return
            with torch.inference_mode():
                read(output.detach())

        def read(y):
            # A few single passes: std_mean costs ten times more on a CPU, and summing a
            # boolean tensor first converts it to int64 (count_nonzero does not). Values are
            # shifted by an estimate of the mean, so the variance of a layer stuck near 0.5
            # with a tiny spread does not cancel away in float32.
            flat = y.reshape(-1)
            shift = flat[:256].mean()
            centred = flat - shift
            channel_dims = tuple(d for d in range(y.ndim) if d != 1) if y.ndim > 1 else (0,)
            low, high = y.amin(dim=channel_dims), y.amax(dim=channel_dims)
            self._raw[index] = torch.stack([shift, centred.sum(), torch.dot(centred, centred),
                                            torch.count_nonzero(flat_region(y)),
                                            torch.count_nonzero(flat_channel(low, high))])
            self._sizes[index] = (flat.numel(), low.numel())
            if self.collect_histograms:
                # The range is fitted to the values this layer produced at this step (not
                # fixed, e.g. for ReLU), so a sigmoid layer stuck near 0.5 is still resolved.
                lo = low.min()
                hi = torch.maximum(high.max(), lo + 1e-6)
                # Counted on the first examples of the batch (HIST_SAMPLE values at most):
                # the figure shows fractions, and the full batch costs 4x more per step.
                per_example = max(1, flat.numel() // max(1, len(y)))
                sample = y[:max(1, HIST_SAMPLE // per_example)] if y.ndim else y
                self.histograms[index] = _histogram(sample, lo, hi)
                self.histogram_ranges[index] = torch.stack([lo, hi])

        return hook

    @property
    def activation_stats(self) -> torch.Tensor:
        """``(activation modules, 4)``: mean, standard deviation, fraction of units in the flat
        region and fraction of channels flat for the whole batch, at the last forward pass
        the hooks read (zeros for a module not read yet)."""
        raw = self._raw
        # (modules, 2); (0, 2) for a model whose activations are functions in forward()
        # (torch.relu), which no module hook can see.
        sizes = torch.tensor(self._sizes, dtype=raw.dtype, device=raw.device).reshape(-1, 2)
        offset = raw[:, 1] / sizes[:, 0]
        var = (raw[:, 2] / sizes[:, 0] - offset * offset).clamp_min(0.0)
        return torch.stack([raw[:, 0] + offset, var.sqrt(), raw[:, 3] / sizes[:, 0], raw[:, 4] / sizes[:, 1]],
                           dim=1).float()

    # -- gradients and weights ---------------------------------------------------------
    # A model has a few tensors per layer, most of them small, so the cost of per-layer
    # norms is the number of kernel calls, not the arithmetic. The methods below therefore
    # copy the tensors into one flat row (``torch.cat``), square the rows and sum them per
    # layer: a handful of calls instead of several per tensor. The per-step rows of
    # begin_step/end_step go further: with a zero-padded slot per layer, the norms of all
    # layers of all three rows are one ``vector_norm`` over the last dimension, accumulated
    # in float64 (no underflow check needed).
    def _flat(self, tensors, out: torch.Tensor | None = None) -> torch.Tensor:
        return torch.cat([t.detach().reshape(-1) for t in tensors], out=out)

    def _grads(self) -> list[torch.Tensor]:
        return [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]

    def _weight_views(self) -> list[torch.Tensor]:
        """Flat views of the parameters, made once: optimizers update parameters in place, so
        the views stay valid (checked by address; a parameter replaced or moved is re-viewed)."""
        views = self._views
        if views is None or any(v.data_ptr() != p.data_ptr() for v, p in zip(views, self.params)):
            views = [p.detach().view(-1) if p.is_contiguous() else p.detach() for p in self.params]
            self._views = views if all(v.ndim == 1 for v in views) else None
        return views if self._views is not None else [v.reshape(-1) for v in views]

    def _layer_norms(self, rows: torch.Tensor) -> torch.Tensor:
        """Per-layer L2 norms of each row of ``rows`` (``(k, n_params)`` flat vectors), as norm_dtype.

        Float32 rows are summed in float32, and a row with any layer outside the range where
        that is exact is summed again in float64 (:func:`float64_where_needed`), so tiny
        gradients are never reported as 0."""
        if rows.dtype != torch.float32 or self.norm_dtype != torch.float64:
            return self._layer_sums(rows.to(self.norm_dtype).square_()).sqrt_()
        return float64_where_needed(self._layer_sums(rows * rows),
                                    lambda outside: self._layer_sums(rows[outside].to(torch.float64).square_())).sqrt_()

    def _layer_sums(self, squares: torch.Tensor) -> torch.Tensor:
        """Per-layer sums of each row: one product with a 0/1 layer-membership matrix when that
        matrix is small (one kernel call, whatever the depth), else a segmented reduction."""
        k, n = squares.shape
        if n * len(self.layers) <= _MEMBERSHIP_LIMIT:
            member = self._membership.get(squares.dtype)
            if member is None or member.device != squares.device:
                member = torch.zeros(n, len(self.layers), dtype=squares.dtype, device=squares.device)
                member[torch.arange(n, device=squares.device), self._element_owner.to(squares.device)] = 1
                self._membership[squares.dtype] = member
            return squares @ member
        if squares.device.type == "mps":  # no segment_reduce there
            owner = self._element_owner.to(squares.device)
            sums = torch.zeros(k, len(self.layers), dtype=squares.dtype, device=squares.device)
            return sums.index_add_(1, owner, squares)
        lengths = self._lengths.to(squares.device).expand(k, -1)
        return torch.segment_reduce(squares, "sum", lengths=lengths, axis=1)

    def grad_norms(self) -> torch.Tensor:
        """Per-layer L2 norm of the current gradients (0 where a layer has no gradient)."""
        return self._layer_norms(self._flat(self._grads())[None])[0]

    def weight_norms(self) -> torch.Tensor:
        """Per-layer L2 norm of the parameters."""
        return self._layer_norms(self._flat(self.params)[None])[0]

    def snapshot_weights(self) -> None:
        """Remember the parameters, so :meth:`update_ratios` can measure the next update."""
        self._previous = self._flat(self.params)

    def update_ratios(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per layer ``(||W_before||, ||W_after - W_before|| / ||W_before||)`` since :meth:`snapshot_weights`."""
        if self._previous is None:
            raise RuntimeError("call snapshot_weights() before the optimizer step, then update_ratios() after it")
        before = self._previous
        self._previous = None
        norms = self._layer_norms(torch.stack([before, self._flat(self.params).sub_(before)]))
        return norms[0], norms[1] / norms[0].clamp_min(1e-12)

    # Inference mode: these run every step, and skipping autograd's bookkeeping for their
    # handful of small kernels is a measurable share of the monitor's cost.
    @torch.inference_mode()
    def begin_step(self) -> None:
        """Call after ``backward()`` and before the optimizer step (and before any gradient
        clipping, to see the raw gradients): copies the gradients and the weights."""
        first = self.params[0]
        if self._rows is None or self._rows.device != first.device:
            width = len(self._length_list) * self._slot if self._padded else int(self._lengths.sum())
            self._rows = torch.empty(3, width, dtype=first.dtype, device=first.device)
            self._row_views = self._rows.unbind(0)
            self._zeros = torch.zeros(self._slot, dtype=first.dtype, device=first.device)
            self._weight_parts = None
        torch.cat(self._row_parts([g.reshape(-1) for g in self._grads()]), out=self._row_views[0])
        torch.cat(self._weight_row_parts(), out=self._row_views[1])
        self._stepping = True

    def _row_parts(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """``views`` as laid out in the per-step rows (padded to slots, or packed as they are)."""
        return pad_to_slots(views, self._param_layer, self._slot, self._zeros) if self._padded else views

    def _weight_row_parts(self) -> list[torch.Tensor]:
        """:meth:`_row_parts` of the weight views, remade only when the views are."""
        views = self._weight_views()
        if self._weight_parts is None or self._weight_parts[0] is not views:
            self._weight_parts = (views, self._row_parts(views))
        return self._weight_parts[1]

    @torch.inference_mode()
    def end_step(self) -> torch.Tensor:
        """Call after the optimizer step: a ``(3, n_layers)`` tensor of per-layer norms of the
        gradient, of the weights before the step and of the update ``W_after - W_before``,
        from one reduction (the update ratio is row 2 / row 1). This is what
        :func:`gradcourse.train` records every step; it equals :meth:`grad_norms`,
        :meth:`snapshot_weights` and :meth:`update_ratios` called in turn (computed in
        ``torch.inference_mode()``: the result is an inference tensor)."""
        if not self._stepping:
            raise RuntimeError("call begin_step() after backward(), then end_step() after the optimizer step")
        self._stepping = False
        _, before, update = self._row_views
        torch.cat(self._weight_row_parts(), out=update).sub_(before)
        if self._padded:  # (3, layers, slot): one reduction, accumulated in norm_dtype
            rows = self._rows.view(3, len(self._length_list), self._slot)
            return torch.linalg.vector_norm(rows, dim=2, dtype=self.norm_dtype)
        return self._layer_norms(self._rows)

    def grad_norms_dict(self) -> "OrderedDict[str, float]":
        """Per-layer gradient norms as ``{layer name: float}``, handy for logging."""
        return OrderedDict(zip(self.layer_names, self.grad_norms().tolist()))


def _histogram(y: torch.Tensor, lo, hi) -> torch.Tensor:
    """Counts of ``y`` in ``HIST_BINS`` equal bins over ``[lo, hi]`` (values outside go to the
    end bins), the same counts as ``torch.histc`` on the clamped values at half its cost on a
    CPU: one scaled copy and a ``bincount``."""
    index = (y.detach().float() - lo).mul_(HIST_BINS).div_(hi - lo).clamp_(0, HIST_BINS - 1)
    return torch.bincount(index.to(torch.int64).view(-1), minlength=HIST_BINS).to(torch.float32)


def jacobian_singular_values(model: nn.Module, image: torch.Tensor):
    """Singular values, largest first, of the Jacobian of a gradcourse CNN's feature maps
    (``model.features``, before pooling) with respect to one input ``image`` (C, H, W), in
    float64 and in eval mode (batch norm uses its running statistics).

    Their spread is what dynamical isometry is about (Saxe et al. 2014; Pennington et al.
    2017): the average gain can be 1 while a few directions explode and most vanish.
    Returns a NumPy array.
    """
    was_training = model.training
    model.eval()
    try:
        double = copy.deepcopy(model).double()
        x = image.detach().to(next(double.parameters()).device, torch.float64).unsqueeze(0)
        with warnings.catch_warnings():
            # Forward-mode AD loads torch's own decompositions with torch.jit.script, which
            # warns that it is deprecated: torch's internals, nothing a caller can change.
            warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=DeprecationWarning)
            # Forward mode: one pass per input pixel (64 for the digits), not per output value.
            jacobian = torch.func.jacfwd(lambda inp: double.features(inp).reshape(-1))(x)
        values = torch.linalg.svdvals(jacobian.detach().reshape(jacobian.shape[0], -1))
    finally:
        model.train(was_training)
    return values.cpu().numpy()

