"""Initialization that makes a deep network trainable before its first step.

Three tools, each from a paper the course teaches (chapter 3d):

- :func:`delta_orthogonal_`: a convolution kernel that is zero except for an orthogonal
  centre tap (Xiao et al. 2018), so a stack of them is an isometry at initialization;
- :func:`scaled_init_`: every convolution and linear layer drawn at one weight scale
  ``sigma_w`` (Gaussian with variance ``sigma_w**2 / fan_in``, orthogonal or
  delta-orthogonal), the knob of the edge of chaos (Poole et al. 2016);
- :func:`lsuv_init_`: layer-sequential unit-variance initialization (Mishkin & Matas 2016):
  orthogonal weights, then each layer rescaled until its output variance on a batch is 1.

:func:`edge_of_chaos_frame` and :func:`edge_of_chaos_explorer` draw, for a tanh CNN at
initialization, the per-layer backward signal and the singular values of the input-output
Jacobian, one figure per weight scale and depth, and put them behind sliders that work on
the static page. matplotlib is imported only when a figure is drawn.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from .hooks import forward_hooks
from .models import CNNConfig, build_model
from .monitor import backward_signal, jacobian_singular_values, weight_layers

SCHEMES = ("gaussian", "orthogonal", "delta_orthogonal")


@torch.no_grad()
def delta_orthogonal_(weight: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """Fill a convolution kernel ``(out, in, k, k)`` with zeros except its centre tap, an
    ``(out, in)`` orthogonal matrix times ``gain`` (Xiao et al. 2018, "delta-orthogonal").

    With ``out >= in`` the centre tap has orthonormal columns, so the convolution maps every
    pixel's channel vector to one of the same length (times ``gain``): a stack of such
    convolutions with a linear activation is an exact isometry. The kernel size must be
    odd (a centre exists). Works in place and returns ``weight``, like ``nn.init``.
    """
    if weight.ndim < 3:
        raise ValueError(f"delta_orthogonal_ needs a convolution kernel (out, in, k, ...), got shape "
                         f"{tuple(weight.shape)}; use nn.init.orthogonal_ for a matrix")
    if any(size % 2 == 0 for size in weight.shape[2:]):
        raise ValueError(f"delta_orthogonal_ needs an odd kernel size (a centre tap), got "
                         f"{tuple(weight.shape[2:])}")
    centre = torch.empty(weight.shape[0], weight.shape[1], dtype=weight.dtype, device=weight.device)
    nn.init.orthogonal_(centre, gain=gain)
    weight.zero_()
    weight[(slice(None), slice(None), *(size // 2 for size in weight.shape[2:]))] = centre
    return weight


@torch.no_grad()
def scaled_init_(model: nn.Module, sigma_w: float = 1.0, scheme: str = "gaussian",
                 sigma_b: float = 0.0) -> nn.Module:
    """Initialize every convolution and linear layer at weight scale ``sigma_w``:

    - ``gaussian``: weights ``N(0, sigma_w**2 / fan_in)`` (``sigma_w = 1`` is LeCun's scale;
      Kaiming's for ReLU is ``sqrt(2)``);
    - ``orthogonal``: ``nn.init.orthogonal_`` with gain ``sigma_w`` on the kernel flattened
      to ``(out, in * k * k)`` (Saxe et al. 2014);
    - ``delta_orthogonal``: :func:`delta_orthogonal_` with gain ``sigma_w`` for convolutions,
      ``orthogonal`` for linear layers (Xiao et al. 2018).

    Biases are drawn from ``N(0, sigma_b**2)`` (zero by default). Returns ``model``.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme={scheme!r} is not one of {SCHEMES}")
    if not sigma_w > 0:
        raise ValueError(f"sigma_w={sigma_w!r} must be positive")
    for module in weight_layers(model).values():
        weight = module.weight
        if scheme == "gaussian":
            fan_in = weight[0].numel()
            nn.init.normal_(weight, 0.0, sigma_w / math.sqrt(fan_in))
        elif scheme == "delta_orthogonal" and weight.ndim > 2:
            delta_orthogonal_(weight, sigma_w)
        else:
            nn.init.orthogonal_(weight, gain=sigma_w)
        if module.bias is not None:
            nn.init.normal_(module.bias, 0.0, sigma_b) if sigma_b > 0 else module.bias.zero_()
    return model


def layer_output_variances(model: nn.Module, batch: torch.Tensor) -> "OrderedDict[str, float]":
    """Variance of each convolution's and linear layer's *output* (before any normalization
    or activation) over ``batch``, from one forward pass without gradients."""
    layers = weight_layers(model)
    variances: "OrderedDict[str, float]" = OrderedDict()

    def read(name, output):
        variances[name] = float(output.detach().to(torch.float64).var())

    with forward_hooks(layers, read), torch.no_grad():
        model(batch)
    # In the order of the layers, not of the forward pass.
    return OrderedDict((name, variances[name]) for name in layers if name in variances)


@torch.no_grad()
def lsuv_init_(model: nn.Module, batch: torch.Tensor, tol: float = 0.05, max_iter: int = 10,
               orthogonal: bool = True) -> nn.Module:
    """Layer-sequential unit-variance initialization (Mishkin & Matas 2016).

    First (with ``orthogonal=True``) every convolution and linear weight is drawn by
    ``nn.init.orthogonal_`` and every bias set to zero. Then, layer by layer from the input,
    the layer's output variance on ``batch`` is measured and its weights divided by the
    square root of it, until ``|variance - 1| < tol`` (at most ``max_iter`` passes per
    layer). Each layer is fixed before the next is measured, so every layer sees inputs
    that already have the right scale. The passes run in the model's current mode; the
    running statistics of any batch norm are restored afterwards. Returns ``model``.
    """
    if orthogonal:
        scaled_init_(model, 1.0, "orthogonal")
    layers = weight_layers(model)
    norms = {name: m for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    saved = {name: (m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for name, m in norms.items() if m.running_mean is not None}
    try:
        for name, layer in layers.items():
            for _ in range(max_iter):
                seen: list[torch.Tensor] = []
                with forward_hooks({name: layer}, lambda _, output: seen.append(output)):
                    model(batch)
                variance = float(seen[0].to(torch.float64).var())
                if not math.isfinite(variance) or variance == 0.0:
                    raise ValueError(f"lsuv_init_: the output of {name} has variance {variance} on the batch; "
                                     f"it cannot be rescaled to 1")
                if abs(variance - 1.0) < tol:
                    break
                layer.weight.div_(math.sqrt(variance))
    finally:
        for name, (mean, var, count) in saved.items():
            norms[name].running_mean.copy_(mean)
            norms[name].running_var.copy_(var)
            norms[name].num_batches_tracked.copy_(count)
    return model


# -- the edge of chaos ---------------------------------------------------------------------------

def tanh_cnn(sigma_w: float, depth: int, data=None, width: int = 8, seed: int = 0,
             scheme: str = "gaussian", activation: str = "tanh", sigma_b: float = 0.0) -> nn.Module:
    """A plain gradcourse CNN (``depth`` 3x3 convolutions of ``width`` channels, shaped for
    ``data``) initialized by :func:`scaled_init_` at weight scale ``sigma_w``, seeded by ``seed``."""
    model = build_model(CNNConfig(depth=depth, width=width, activation=activation), data, seed=seed)
    return scaled_init_(model, sigma_w, scheme, sigma_b)


def block_signal(model: nn.Module, data, examples: int = 64) -> np.ndarray:
    """``||dL/dh_l||`` at the output of every convolution block of a gradcourse CNN (input
    side first), from :func:`~gradcourse.backward_signal` on the first ``examples`` training
    images of ``data``, with the model run in float64 (so tiny signals do not underflow).
    The model is left in float32 with its gradients cleared."""
    blocks = [block for name, block in model.layers().items() if name != "fc"]
    model.double()
    try:
        x = data.x_train[:examples].to(torch.float64)
        signal = backward_signal(model, x, data.y_train[:examples], blocks)
    finally:
        model.zero_grad(set_to_none=True)
        model.float()
    return signal


def per_layer_factor(signal) -> float:
    """The average factor by which a backward signal (input side first) grows per layer on
    its way back to the input: ``exp(-slope)`` of the least-squares line through
    ``log(signal)`` against the layer index. Below 1 it vanishes, above 1 it explodes."""
    signal = np.asarray(signal, dtype=np.float64)
    return float(np.exp(-np.polyfit(np.arange(len(signal)), np.log(signal), 1)[0]))


def signal_and_spectrum(model: nn.Module, data, examples: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """``(backward signal, singular values)`` of a gradcourse CNN at initialization:
    :func:`block_signal` and the singular values of the Jacobian of the feature maps with
    respect to the first training image (:func:`~gradcourse.jacobian_singular_values`)."""
    return block_signal(model, data, examples), jacobian_singular_values(model, data.x_train[0])


SIGNAL_LIMITS = (1e-15, 1e8)   # backward signal relative to the last block's
SPECTRUM_LIMITS = (1e-16, 1e8)
SIGMA_LABEL = "weight scale σw"  # the explorer's first slider


def edge_of_chaos_frame(sigma_w: float, depth: int, data, width: int = 8, seed: int = 0,
                        activation: str = "tanh", scheme: str = "gaussian", figsize=(7.0, 3.0)):
    """One figure for a plain ``activation`` CNN at initialization with weight scale
    ``sigma_w`` and ``depth`` layers: left, the backward signal ``||dL/dh_l||`` of every
    block relative to the last block's (log scale); right, the singular values of the
    input-output Jacobian, largest first (log scale). Axes are fixed, so frames for
    different settings compare by eye. Returns the matplotlib Figure."""
    import matplotlib.pyplot as plt

    from .plots import OKABE_ITO

    model = tanh_cnn(sigma_w, depth, data, width, seed, scheme, activation)
    signal, values = signal_and_spectrum(model, data)
    relative = signal / signal[-1]
    # Fixed margins rather than a constrained layout: the same layout every frame, at a
    # third of the rendering time.
    fig, (ax_signal, ax_values) = plt.subplots(1, 2, figsize=figsize)
    fig.subplots_adjust(left=0.11, right=0.98, bottom=0.16, top=0.8, wspace=0.3)
    ax_signal.semilogy(np.arange(1, depth + 1), np.clip(relative, *SIGNAL_LIMITS), "o-", ms=2.5,
                       color=OKABE_ITO[0])
    ax_signal.axhline(1.0, color="0.5", lw=0.8, ls=":")
    ax_signal.set(ylim=SIGNAL_LIMITS, xlim=(0.5, depth + 0.5), xlabel="block (1 = input side)",
                  ylabel="signal / last block's", title="Backward signal by block")
    ax_values.semilogy(np.arange(1, len(values) + 1), np.clip(values, *SPECTRUM_LIMITS), "s-", ms=2.5,
                       color=OKABE_ITO[1])
    ax_values.axhline(1.0, color="0.5", lw=0.8, ls=":")
    ax_values.set(ylim=SPECTRUM_LIMITS, xlabel="index (largest first)", ylabel="singular value",
                  title="Jacobian's singular values")
    for ax in (ax_signal, ax_values):
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"{activation} CNN, {depth} layers, σ_w = {sigma_w:g}: backward signal "
                 f"x{per_layer_factor(signal):.2f} per layer towards the input", fontsize=10)
    return fig


def edge_of_chaos_explorer(data, sigma_ws=(0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0),
                           depths=(10, 20, 30), width: int = 8, seed: int = 0, activation: str = "tanh",
                           scheme: str = "gaussian", **explorer_kwargs):
    """A :func:`~gradcourse.static_explorer` with sliders for ``sigma_w`` (labelled "weight
    scale σw") and ``depth``, each frame an :func:`edge_of_chaos_frame`; it starts at
    ``sigma_w = 1`` and the middle depth. Keyword arguments go to ``static_explorer``
    (``title``, ``caption``, ``alt``, ``initial`` keyed by ``SIGMA_LABEL`` and ``depth``...)."""
    from .plots import render_png
    from .static_sliders import static_explorer

    # Each figure is rendered to PNG and closed at once, so at most one is open at a time.
    frames = {(s, d): render_png(edge_of_chaos_frame(s, d, data, width, seed, activation, scheme))
              for s in sigma_ws for d in depths}
    explorer_kwargs.setdefault("title", f"The edge of chaos: a {activation} CNN at initialization")
    explorer_kwargs.setdefault("initial", {SIGMA_LABEL: 1.0 if 1.0 in sigma_ws else sigma_ws[0],
                                           "depth": depths[len(depths) // 2]})
    return static_explorer(frames, {SIGMA_LABEL: list(sigma_ws), "depth": list(depths)}, **explorer_kwargs)
