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
from typing import Mapping

import torch
from torch import nn

from ._norms import LayerRows, accumulation_dtype, model_blocks
from .hooks import forward_hooks

ACTIVATION_STATS = ("mean", "std", "saturated", "dead")
HIST_BINS = 32
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


def weight_layers(model: nn.Module) -> "OrderedDict[str, nn.Module]":
    """Every convolution and linear module of ``model`` in registration order, named by its
    path: the layers that hold weights (and the ones an initialization scheme sets)."""
    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
    return OrderedDict((name, m) for name, m in model.named_modules() if isinstance(m, kinds))


def default_layers(model: nn.Module) -> "OrderedDict[str, nn.Module]":
    """The layers to monitor: ``model.layers()`` when the model has it (gradcourse's CNN),
    otherwise :func:`weight_layers`."""
    return OrderedDict(model.layers()) if hasattr(model, "layers") else weight_layers(model)


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


class LayerStats:
    """One step's per-layer statistics, from :meth:`gradcourse.LayerMonitor.end_step`.

    ``grad_norm`` (before any clipping), ``weight_norm`` (before the step), ``update_norm``
    (``||W_after - W_before||``) and ``update_ratio`` are tensors with one entry per layer,
    in the order of ``layer_names`` (``(models, layers)`` for a monitor of several models).
    ``as_dict()`` gives plain floats by layer name, ready to log.
    """

    def __init__(self, layer_names: list[str], norms: torch.Tensor):
        self.layer_names = layer_names
        self.norms = norms  # (3, models, layers): gradient, weights before the step, update

    def _row(self, index: int) -> torch.Tensor:
        row = self.norms[index]
        return row[0] if len(row) == 1 else row

    @property
    def grad_norm(self) -> torch.Tensor:
        return self._row(0)

    @property
    def weight_norm(self) -> torch.Tensor:
        return self._row(1)

    @property
    def update_norm(self) -> torch.Tensor:
        return self._row(2)

    @property
    def update_ratio(self) -> torch.Tensor:
        return self.update_norm / self.weight_norm.clamp_min(1e-12)

    def as_dict(self) -> dict[str, dict[str, float]]:
        """``{"grad_norm": {layer: float}, "weight_norm": ..., "update_ratio": ...}``."""
        if self.norms.shape[1] != 1:
            raise ValueError("as_dict() is for a monitor of one model")
        return {stat: dict(zip(self.layer_names, getattr(self, stat).tolist()))
                for stat in ("grad_norm", "weight_norm", "update_ratio")}


class LayerMonitor:
    """Collects per-layer statistics from a model while it trains.

    Use it as a context manager around the training loop::

        with LayerMonitor(model) as monitor:  # hooks read activations
            for x, y in batches:
                loss = loss_fn(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                monitor.begin_step()        # copies gradients, weights
                optimizer.step()
                stats = monitor.end_step()  # a LayerStats
                log(stats.as_dict())
            monitor.activation_stats        # (modules, 4)

    Per layer means all parameters of that named module (a conv block's convolution
    weight and bias, plus its normalization's parameters). The statistics are exactly
    those of :func:`~gradcourse.monitor.layer_grad_norm`, :func:`~gradcourse.monitor.update_to_weight_ratio` and
    :func:`~gradcourse.monitor.activation_statistics` above, computed for all layers at once by
    ``gradcourse._norms``.

    ``models`` > 1 watches K models trained side by side in one K-wide network
    (:func:`gradcourse.vectorized.train_many`): every parameter and activation holds the K models'
    entries model-major along dim 0 (parameters) or dim 1 (activations), and every
    statistic gets a leading ``models`` dimension.
    """

    def __init__(self, model: nn.Module, layers: Mapping[str, nn.Module] | None = None,
                 activations: Mapping[str, nn.Module] | None = None, models: int = 1):
        self.model, self.models = model, models
        self.layers = OrderedDict(layers if layers is not None else default_layers(model))
        self.activations = OrderedDict(activations if activations is not None else default_activations(model))
        self.layer_names = list(self.layers)
        self.activation_names = list(self.activations)
        self.params = [p for layer in self.layers.values() for p in layer.parameters()]
        layer_of_param = [index for index, layer in enumerate(self.layers.values()) for _ in layer.parameters()]
        self._rows = LayerRows([p.numel() // models for p in self.params], layer_of_param, len(self.layers), models)
        self._buffer: torch.Tensor | None = None  # (3, models, width): gradients, weights, update
        self._weight_views: list[torch.Tensor] = []
        self._weight_addresses: list[int] | None = None
        self._stepping = False
        self._hooks: ExitStack | None = None
        self._inside = False
        self._collect = True
        self.collect_histograms = False
        device = self.params[0].device if self.params else torch.device("cpu")
        # Per activation module and model, the sums of the last pass the hooks read: the
        # shift, the sum and the sum of squares of (y - shift), the flat units, the flat
        # channels; and the number of units and of channels per model.
        n_act = len(self.activations)
        self._modules = list(self.activations.values())
        self._raw = torch.zeros(n_act, models, 5, device=device, dtype=accumulation_dtype(device))
        self._sizes = [(1, 1)] * n_act
        self.histograms = torch.zeros(n_act, HIST_BINS, device=device)
        self.histogram_ranges = torch.zeros(n_act, 2, device=device)

    # -- hooks -------------------------------------------------------------------------
    def __enter__(self) -> "LayerMonitor":
        self._inside = True
        self._attach()
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove the forward hooks (called automatically at the end of a ``with`` block)."""
        self._inside = False
        self._detach()

    @property
    def collect_activations(self) -> bool:
        """Whether the forward passes read activation statistics (default True). The hooks
        are attached only while it is True: a module with a hook runs a slower call path
        even when the hook does nothing."""
        return self._collect

    @collect_activations.setter
    def collect_activations(self, on: bool) -> None:
        self._collect = bool(on)
        if self._inside and on:
            self._attach()
        elif not on:
            self._detach()

    def _attach(self) -> None:
        if self._hooks is None and self._collect:
            self._hooks = ExitStack()
            self._hooks.enter_context(forward_hooks(dict(enumerate(self._modules)), self._read))

    def _detach(self) -> None:
        if self._hooks is not None:
            self._hooks.close()
            self._hooks = None

    def _read(self, index: int, output: torch.Tensor) -> None:
        if not torch.is_grad_enabled():
            return
        with torch.inference_mode():
            y = output.detach()
            y = y if y.ndim >= 2 else y.reshape(-1, 1)
            self._raw[index] = _activation_sums(y, self._modules[index], self.models)
            self._sizes[index] = (y.numel() // self.models, y.shape[1] // self.models)
            if self.collect_histograms and self.models == 1:
                self._histogram(index, y)

    def _histogram(self, index: int, y: torch.Tensor) -> None:
        # Counted on the first examples of the batch (HIST_SAMPLE values at most): the
        # figure shows fractions, which a sample of whole examples gives as well as the
        # batch does, at a fraction of the cost of counting every value. The range is
        # fitted to the values counted (not fixed, e.g. for ReLU), so a sigmoid layer stuck
        # near 0.5 is still resolved; torch.histc takes it as two numbers.
        per_example = max(1, y.numel() // max(1, len(y)))
        sample = y[:max(1, HIST_SAMPLE // per_example)].float()
        lo, hi = (float(bound) for bound in torch.aminmax(sample))
        hi = max(hi, lo + 1e-6)
        self.histograms[index] = torch.histc(sample, HIST_BINS, lo, hi)
        self.histogram_ranges[index, 0], self.histogram_ranges[index, 1] = lo, hi

    @property
    def activation_stats(self) -> torch.Tensor:
        """``(activation modules, 4)`` (``(models, modules, 4)`` for several models): mean,
        standard deviation, fraction of units in the flat region and fraction of channels
        flat for the whole batch, at the last forward pass the hooks read (zeros for a
        module not read yet)."""
        table = self.activation_table()
        return table[0] if self.models == 1 else table

    def activation_table(self) -> torch.Tensor:
        """:attr:`activation_stats` with the ``models`` dimension first, always."""
        raw = self._raw.transpose(0, 1)  # (models, modules, 5)
        sizes = torch.tensor(self._sizes, dtype=raw.dtype, device=raw.device).reshape(-1, 2)  # (modules, 2)
        offset = raw[..., 1] / sizes[:, 0]
        var = (raw[..., 2] / sizes[:, 0] - offset * offset).clamp_min(0.0)
        return torch.stack([raw[..., 0] + offset, var.sqrt(), raw[..., 3] / sizes[:, 0], raw[..., 4] / sizes[:, 1]],
                           dim=-1).float()

    # -- gradients and weights ---------------------------------------------------------
    # Inference mode: these run every step, and skipping autograd's bookkeeping for their
    # handful of small kernels is a measurable share of the monitor's cost.
    @torch.inference_mode()
    def begin_step(self) -> None:
        """Call after ``backward()`` and before the optimizer step (and before any gradient
        clipping, to see the raw gradients): copies the gradients and the weights."""
        first = self.params[0]
        if self._buffer is None or self._buffer.device != first.device:
            self._buffer = self._rows.new(3, first)
        k = self.models
        grads = [model_blocks(p.grad, k) if p.grad is not None else torch.zeros(k, p.numel() // k, device=p.device)
                 for p in self.params]
        self._rows.fill(grads, out=self._buffer[0])
        self._rows.fill(self._weight_blocks(), out=self._buffer[1])
        self._stepping = True

    def total_grad_norm(self) -> torch.Tensor:
        """The norm of all gradients :meth:`begin_step` copied, together, as ``(models,)``
        (summed in float32, as ``clip_grad_norm_`` sums it): a loop that watches every
        parameter and does not clip reports this instead of summing the gradients again."""
        if not self._stepping:
            raise RuntimeError("call begin_step() after backward() first")
        return torch.linalg.vector_norm(self._buffer[0], dim=1)

    @torch.inference_mode()
    def end_step(self) -> LayerStats:
        """Call after the optimizer step: the step's :class:`~gradcourse.monitor.LayerStats`, all layers' norms
        of the gradient, of the weights before the step and of the update from one
        reduction (computed in ``torch.inference_mode()``: inference tensors)."""
        if not self._stepping:
            raise RuntimeError("call begin_step() after backward(), then end_step() after the optimizer step")
        self._stepping = False
        _, before, update = self._buffer.unbind(0)
        self._rows.fill(self._weight_blocks(), out=update).sub_(before)
        return LayerStats(self.layer_names, self._rows.norms(self._buffer))

    def _weight_blocks(self) -> list[torch.Tensor]:
        """``(models, n)`` views of the parameters, made once: optimizers update parameters
        in place, so the views stay valid (checked by address: a parameter replaced or moved
        is viewed again)."""
        addresses = [p.data_ptr() for p in self.params]
        if addresses != self._weight_addresses:
            self._weight_views = [model_blocks(p.detach(), self.models) if p.is_contiguous()
                                  or p.is_contiguous(memory_format=torch.channels_last)
                                  else p.detach().reshape(self.models, -1) for p in self.params]
            contiguous = all(v.data_ptr() == a for v, a in zip(self._weight_views, addresses))
            self._weight_addresses = addresses if contiguous else None
        return self._weight_views


def _activation_sums(y: torch.Tensor, module: nn.Module, k: int) -> torch.Tensor:
    """``(k, 5)`` sums over one activation module's output ``y`` (batch, channels, ...), per
    model when the channels hold ``k`` models side by side: the shift (the model's first
    value), the sum and the sum of squares of ``y - shift``, the units in the flat region,
    and the channels flat for the whole batch. Subtracting a value of the layer first keeps
    the variance of a layer stuck near 0.5 with a tiny spread from cancelling away in
    float32."""
    if k > 1:
        return _wide_activation_sums(y, module, k)
    units = y.reshape(-1)  # whole-tensor sums: one contiguous pass each
    shift = units[0]
    centred = units - shift
    flat = _count_flat(units.view(1, -1), module)[0]
    per_channel = [0] + list(range(2, y.ndim))
    # Only sigmoid and tanh are flat at both ends; the other tests read the maximum alone.
    low = y.amin(per_channel) if type(module) in _BAND else None
    dead = flat_tests(module)[1](low, y.amax(per_channel)).sum(dtype=y.dtype)
    return torch.stack([shift, centred.sum(), centred @ centred, flat, dead]).view(1, 5)


def _wide_activation_sums(y: torch.Tensor, module: nn.Module, k: int) -> torch.Tensor:
    """:func:`_activation_sums` for K models side by side in a channels-last output, which
    viewed as (units, channels) needs no copy. Each statistic is summed per channel by one
    matrix product with a row of ones (on a CPU much faster than ``sum(0)`` over the rows),
    then per model. For the activations that are flat where ``y <= 0``, a channel is dead
    when all its units are flat, so only the sigmoid and tanh bands need each channel's
    minimum and maximum."""
    c, per_model = y.shape[1], y.shape[1] // k
    units = y.movedim(1, -1).reshape(-1, c)
    ones = torch.ones(1, len(units), dtype=y.dtype, device=y.device)
    flat = _count_flat(units.T, module, ones.T)[:, 0]                   # (c,): flat units per channel
    if type(module) in _BAND:
        dead = flat_tests(module)[1](units.amin(0), units.amax(0))
    else:
        dead = flat == len(units)
    shift = units[0, ::per_model]                                       # (k,): each model's first value
    centred = units - shift.repeat_interleave(per_model)
    sums = torch.stack([(ones @ centred)[0], (ones @ centred.square_())[0], flat])
    dead = torch.count_nonzero(dead.view(k, per_model), dim=1).to(y.dtype)
    return torch.cat([shift.view(1, k), sums.view(3, k, per_model).sum(2), dead.view(1, k)]).T


# Sigmoid and tanh are flat outside a band around their centre: (centre, half-width).
_BAND = {nn.Sigmoid: (0.5, 0.49), nn.Tanh: (0.0, 0.99)}


def _count_flat(units: torch.Tensor, module: nn.Module, ones: torch.Tensor | None = None) -> torch.Tensor:
    """The number of units in the flat region (:func:`flat_tests`' test) in each row of
    ``units``, summed by ``sum(1)``, or by a matrix product with the column ``ones`` when
    given. Counted with float arithmetic where the test allows, which a CPU does faster than
    making and converting a boolean tensor."""
    total = (lambda t: t @ ones) if ones is not None else (lambda t: t.sum(1))
    if type(module) is nn.ReLU:   # outputs >= 0: the flat ones are the zeros
        return units.shape[1] - total(torch.sign(units))
    if type(module) in _BAND:
        centre, half = _BAND[type(module)]
        return total((units - centre).abs_().sub_(half).clamp_(min=0).sign_())
    flat_region, _ = flat_tests(module)
    return total(flat_region(units).to(units.dtype))


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
