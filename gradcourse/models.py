"""A family of plain and residual CNNs described by one configuration.

Every model has the same named layers, ``conv1`` ... ``convN`` and ``fc``, and every
statistic and plot in gradcourse refers to layers by these names.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from . import _validate as check
from .hooks import forward_hooks

ACTIVATIONS = ("sigmoid", "tanh", "relu", "leaky_relu", "gelu")
NORMS = ("none", "batch", "group", "layer")
INITS = ("default", "normal", "xavier_uniform", "xavier_normal", "kaiming_normal", "kaiming_uniform")
POOLS = ("max", "avg")


@dataclass(frozen=True)
class CNNConfig:
    """Shape and initialization of a CNN.

    Attributes:
        depth: number of 3x3 convolution layers (``conv1`` ... ``conv{depth}``).
        width: channels of every convolution.
        activation: ``sigmoid``, ``tanh``, ``relu``, ``leaky_relu`` or ``gelu``.
        leaky_slope: negative slope of ``leaky_relu``.
        norm: normalization after each convolution: ``none``, ``batch``, ``group`` or
            ``layer`` (layer norm over channels and positions, i.e. one group).
        residual: make ``conv2`` ... ``convN`` pre-activation residual blocks
            (He et al. 2016, "Identity mappings"): ``y = x + residual_scale *
            conv(act(norm(x)))``. The branch ends in a convolution, so its output has
            mean about zero and the sum does not drift with depth. ``conv1`` stays
            ``act(norm(conv(x)))``.
        residual_scale: a fixed multiplier on each residual branch. Small values start
            every block close to the identity, the idea of SkipInit (De & Smith 2020), which
            learns its scale from 0; this one is fixed, so 0 freezes the branches (their
            weights get no gradient).
        init: weight initialization of convolutions and ``fc``: ``default`` (PyTorch's),
            ``normal`` (std ``init_std``), ``xavier_uniform``, ``xavier_normal``,
            ``kaiming_normal`` or ``kaiming_uniform``.
        init_std: standard deviation for ``init="normal"``.
        init_gain: multiplier applied to the initial weights of every scheme.
        pool_every: downsample 2x after every ``pool_every``-th convolution while the image is
            at least 2 pixels wide (0: never). The head is always global average pooling and ``fc``.
        pool: ``max`` or ``avg`` for that downsampling.
        weight_norm: reparametrize every weight as ``g * v / ||v||``
            (``torch.nn.utils.parametrizations.weight_norm``).
    """

    depth: int = 6
    width: int = 16
    activation: str = "relu"
    leaky_slope: float = 0.01
    norm: str = "none"
    residual: bool = False
    residual_scale: float = 1.0
    init: str = "default"
    init_std: float = 0.01
    init_gain: float = 1.0
    pool_every: int = 0
    pool: str = "max"
    weight_norm: bool = False

    def __post_init__(self):
        owner = "CNNConfig"
        check.integer(owner, "depth", self.depth, 1, 200)
        check.integer(owner, "width", self.width, 1, 1024)
        check.choice(owner, "activation", self.activation, ACTIVATIONS)
        check.number(owner, "leaky_slope", self.leaky_slope, 0.0, 1.0)
        check.choice(owner, "norm", self.norm, NORMS)
        check.boolean(owner, "residual", self.residual)
        check.number(owner, "residual_scale", self.residual_scale, 0.0, 10.0)
        check.choice(owner, "init", self.init, INITS)
        check.number(owner, "init_std", self.init_std, 0.0, 10.0, low_open=True)
        check.number(owner, "init_gain", self.init_gain, 0.0, 100.0, low_open=True)
        check.integer(owner, "pool_every", self.pool_every, 0, 200)
        check.choice(owner, "pool", self.pool, POOLS)
        check.boolean(owner, "weight_norm", self.weight_norm)


class ConvBlock(nn.Module):
    """A plain block ``act(norm(conv(x)))``, or a pre-activation residual block
    ``x + residual_scale * conv(act(norm(x)))``."""

    def __init__(self, in_channels: int, out_channels: int, config: CNNConfig, residual: bool):
        super().__init__()
        if residual and in_channels != out_channels:
            raise ValueError(f"a residual block needs in_channels == out_channels, got {in_channels} "
                             f"and {out_channels}")
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm = _norm(config.norm, out_channels)
        self.act = _activation(config)
        self.residual = residual
        self.residual_scale = config.residual_scale

    def forward(self, x):
        return block_rule(self, x)


def block_rule(block, x: torch.Tensor) -> torch.Tensor:
    """The one definition of a block's output, for :class:`ConvBlock` and for the K-wide
    blocks of :mod:`gradcourse.vectorized` (anything with ``conv``, ``norm``, ``act``,
    ``residual`` and ``residual_scale``)."""
    if block.residual:
        return x + block.residual_scale * block.conv(block.act(block.norm(x)))
    return block.act(block.norm(block.conv(x)))


class CNN(nn.Module):
    """``conv1 ... convN`` (3x3, same width), optional pooling, global average pool, ``fc``."""

    def __init__(self, config: CNNConfig, in_channels: int = 1, num_classes: int = 10, image_size: int = 8):
        super().__init__()
        check.integer("CNN", "in_channels", in_channels, 1)
        check.integer("CNN", "num_classes", num_classes, 2)
        check.integer("CNN", "image_size", image_size, 1)
        self.config = config
        size = image_size
        channels = in_channels
        self.downsample_after: set[str] = set()
        for i in range(1, config.depth + 1):
            name = f"conv{i}"
            self.add_module(name, ConvBlock(channels, config.width, config, residual=config.residual and i > 1))
            channels = config.width
            if config.pool_every and i % config.pool_every == 0 and size >= 2 and i < config.depth:
                self.downsample_after.add(name)
                size //= 2
        self.downsample = nn.MaxPool2d(2) if config.pool == "max" else nn.AvgPool2d(2)
        # A pre-activation network ends with the normalization and activation that a next
        # block would start with (He et al. 2016): the head reads normalized features, not
        # the raw residual sum, whose scale grows with depth.
        self.head_norm = _norm(config.norm, config.width) if config.residual else nn.Identity()
        self.head_act = _activation(config) if config.residual else nn.Identity()
        self.fc = nn.Linear(config.width, num_classes)
        initialize(self, config)
        if config.weight_norm:
            for layer in self.layers().values():
                target = layer.conv if isinstance(layer, ConvBlock) else layer
                nn.utils.parametrizations.weight_norm(target, name="weight")

    def layers(self) -> "OrderedDict[str, nn.Module]":
        """The named layers, input to output: ``conv1`` ... ``convN``, ``fc``."""
        names = [f"conv{i}" for i in range(1, self.config.depth + 1)] + ["fc"]
        return OrderedDict((name, getattr(self, name)) for name in names)

    def activation_modules(self) -> "OrderedDict[str, nn.Module]":
        """Each conv layer's activation function module, keyed by the layer's name."""
        return OrderedDict((name, block.act) for name, block in self.layers().items() if name != "fc")

    def features(self, x):
        """The feature maps the head pools: every block, with its downsampling, input to output."""
        for name, block in self.layers().items():
            if name == "fc":
                break
            x = block(x)
            if name in self.downsample_after:
                x = self.downsample(x)
        return self.head_act(self.head_norm(x))

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))

    def summary(self, input_shape) -> list[dict]:
        """Output shape and parameter count of each layer for one input of ``input_shape`` (C, H, W)."""
        layers, rows = self.layers(), []

        def record(name, output):
            params = sum(p.numel() for p in layers[name].parameters())
            rows.append({"layer": name, "output_shape": tuple(output.shape[1:]), "parameters": params})

        was_training = self.training
        self.eval()
        try:
            with forward_hooks(layers, record), torch.no_grad():
                self(torch.zeros(1, *input_shape, device=next(self.parameters()).device))
        finally:
            self.train(was_training)
        return rows


def build_model(config: CNNConfig | None = None, data=None, *, seed: int | None = None, **overrides) -> CNN:
    """Build a :class:`~gradcourse.models.CNN` shaped for ``data`` (an :class:`~gradcourse.data.ImageData`), or for
    1x8x8 inputs and 10 classes when no data is given. Keyword overrides replace config fields.

    ``seed`` seeds torch's random generator first (``torch.manual_seed``), so the weights are
    the ones :func:`gradcourse.train` starts from with ``TrainConfig(seed=seed)``."""
    from dataclasses import replace

    config = replace(config or CNNConfig(), **overrides) if overrides else (config or CNNConfig())
    if seed is not None:
        torch.manual_seed(seed)
    if data is None:
        return CNN(config)
    return CNN(config, data.in_channels, data.num_classes, data.image_size)


def initialize(model: CNN, config: CNNConfig) -> None:
    """Initialize every conv and ``fc`` weight by ``config.init``, scaled by ``config.init_gain``."""
    for layer in model.layers().values():
        module = layer.conv if isinstance(layer, ConvBlock) else layer
        weight, bias = module.weight, module.bias
        with torch.no_grad():
            if config.init != "default":
                _init_weight(weight, config)
                if bias is not None:
                    bias.zero_()
            if config.init_gain != 1.0:
                weight.mul_(config.init_gain)


def _init_weight(weight: torch.Tensor, config: CNNConfig) -> None:
    if config.init == "normal":
        nn.init.normal_(weight, 0.0, config.init_std)
    elif config.init == "xavier_uniform":
        nn.init.xavier_uniform_(weight)
    elif config.init == "xavier_normal":
        nn.init.xavier_normal_(weight)
    else:
        leaky = config.activation == "leaky_relu"
        kwargs = {"a": config.leaky_slope if leaky else 0.0, "nonlinearity": "leaky_relu" if leaky else "relu"}
        if config.init == "kaiming_normal":
            nn.init.kaiming_normal_(weight, **kwargs)
        else:
            nn.init.kaiming_uniform_(weight, **kwargs)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(8, channels), channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    return nn.Identity()


def _activation(config: CNNConfig) -> nn.Module:
    return {
        "sigmoid": nn.Sigmoid,
        "tanh": nn.Tanh,
        "relu": nn.ReLU,
        "leaky_relu": lambda: nn.LeakyReLU(config.leaky_slope),
        "gelu": nn.GELU,
    }[config.activation]()
