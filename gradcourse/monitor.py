"""Per-layer statistics of a training run, a few floats per layer per step.

:class:`LayerMonitor` works on any PyTorch model: give it named layers (and, optionally,
named activation modules) and it reports, per layer, the gradient norm, the weight norm
and the update-to-weight ratio, and per activation module the mean, standard deviation,
fraction of units in the flat (small-derivative) region and fraction of channels that
are flat for the whole batch. Activations are read by forward hooks that the monitor
removes when its ``with`` block ends; nothing is kept but the statistics.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Mapping

import torch
from torch import nn

ACTIVATION_STATS = ("mean", "std", "saturated", "dead")
HIST_BINS = 32

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


class LayerMonitor:
    """Collects per-layer statistics from a model while it trains.

    Use it as a context manager around the training loop::

        with LayerMonitor(model) as monitor:
            for x, y in batches:
                loss = loss_fn(model(x), y)           # hooks read activation statistics
                loss.backward()
                grads = monitor.grad_norms()          # per-layer gradient norms
                monitor.snapshot_weights()            # before the step
                optimizer.step()
                norms, ratios = monitor.update_ratios()  # ||W||, ||delta W|| / ||W|| per layer

    Per layer means all parameters of that named module (a conv block's convolution
    weight and bias, plus its normalization's parameters).
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
        self._owner = torch.tensor(owner, dtype=torch.long, device=device)
        # Norms are taken in float64: in float32 the squares of gradients below ~1e-19 underflow
        # to 0, and a deep sigmoid network's first layers have gradients far smaller than that.
        # (Apple's MPS has no float64; there the norms stay float32.)
        self.norm_dtype = torch.float32 if device.type == "mps" else torch.float64
        self._previous: list[torch.Tensor] | None = None
        self._hooks: list = []
        self.collect_activations = True
        self.collect_histograms = False
        n_act = len(self.activations)
        self.activation_stats = torch.zeros(n_act, len(ACTIVATION_STATS), device=device)
        self.histograms = torch.zeros(n_act, HIST_BINS, device=device)
        self.histogram_ranges = torch.zeros(n_act, 2, device=device)

    # -- hooks -------------------------------------------------------------------------
    def __enter__(self) -> "LayerMonitor":
        for index, (name, module) in enumerate(self.activations.items()):
            self._hooks.append(module.register_forward_hook(self._make_hook(index, module)))
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove the forward hooks (called automatically at the end of a ``with`` block)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    def _make_hook(self, index: int, module: nn.Module):
        flat_region, flat_channel = _FLAT_REGION.get(type(module), _FLAT_REGION[nn.ReLU])

        def hook(mod, inputs, output):
            if not (self.collect_activations and torch.is_grad_enabled()):
                return
            y = output.detach()
            # One pass each for sum, sum of squares and the flat count: std_mean and
            # multi-dimension boolean reductions cost ten times more on a CPU.
            n = y.numel()
            mean = y.sum() / n
            var = ((y * y).sum() / n - mean * mean).clamp_min(0.0)
            saturated = flat_region(y).sum() / n
            channel_dims = tuple(d for d in range(y.ndim) if d != 1) if y.ndim > 1 else (0,)
            low, high = y.amin(dim=channel_dims), y.amax(dim=channel_dims)
            dead = flat_channel(low, high).float().mean()
            self.activation_stats[index] = torch.stack([mean, var.sqrt(), saturated, dead])
            if self.collect_histograms:
                # The range is fitted to the values this layer produced at this step (not
                # fixed, e.g. for ReLU), so a sigmoid layer stuck near 0.5 is still resolved.
                lo, hi = float(low.min()), float(high.max())
                hi = max(hi, lo + 1e-6)
                self.histograms[index] = torch.histc(y.float().clamp(lo, hi), HIST_BINS, lo, hi)
                self.histogram_ranges[index, 0], self.histogram_ranges[index, 1] = lo, hi

        return hook

    # -- gradients and weights ---------------------------------------------------------
    def _per_layer(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        tensors = [t.to(self.norm_dtype) for t in tensors]
        squares = torch.stack(torch._foreach_norm(tensors)) ** 2
        per_layer = torch.zeros(len(self.layers), device=squares.device, dtype=squares.dtype)
        return per_layer.index_add_(0, self._owner, squares).sqrt()

    def grad_norms(self) -> torch.Tensor:
        """Per-layer L2 norm of the current gradients (0 where a layer has no gradient)."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        return self._per_layer(grads)

    def weight_norms(self) -> torch.Tensor:
        """Per-layer L2 norm of the parameters."""
        return self._per_layer([p.detach() for p in self.params])

    def snapshot_weights(self) -> None:
        """Remember the parameters, so :meth:`update_ratios` can measure the next update."""
        self._previous = torch._foreach_mul([p.detach() for p in self.params], 1.0)

    def update_ratios(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per layer ``(||W_before||, ||W_after - W_before|| / ||W_before||)`` since :meth:`snapshot_weights`."""
        if self._previous is None:
            raise RuntimeError("call snapshot_weights() before the optimizer step, then update_ratios() after it")
        deltas = torch._foreach_sub([p.detach() for p in self.params], self._previous)
        before = self._per_layer(self._previous)
        self._previous = None
        return before, self._per_layer(deltas) / before.clamp_min(1e-12)

    def grad_norms_dict(self) -> "OrderedDict[str, float]":
        """Per-layer gradient norms as ``{layer name: float}``, handy for logging."""
        return OrderedDict(zip(self.layer_names, self.grad_norms().tolist()))
