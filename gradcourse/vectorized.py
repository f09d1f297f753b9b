"""Train several configurations of one CNN at once, as one wide network.

A learning-rate or clip-threshold sweep trains K copies of the same architecture on the
same batches. Rather than K small networks one after another, :func:`train_many` builds
one network whose convolutions have ``groups=K``: group ``k`` holds model ``k``'s
weights, so the models never mix, but every layer runs as one larger kernel (in
channels-last layout, where a CPU's grouped convolution of 8x8 maps runs close to its
matrix-multiply peak; BENCHMARKS.md has the measurements). The first convolution is not
grouped: every model reads the same images, so one convolution from the image channels to
K x width channels computes all K first layers.

The training loop, the monitor, the evaluation and the records are :func:`gradcourse.train`'s
own (:class:`gradcourse.train.Loop`, :class:`~gradcourse.monitor.LayerMonitor` with
``models=K``, :class:`~gradcourse.record.RunBuffer`); this module adds only the wide
network and :class:`WideModels`, which runs its passes, clips and updates it, one value
per model. The records match :func:`gradcourse.train`'s for the same configurations up to
floating-point rounding (a test checks it).

Supported: optimizers ``sgd`` and ``momentum``, a ``constant`` schedule, clipping
``none``, ``norm`` or ``value``, no weight decay, max-norm or weight normalization;
configurations may differ in ``lr``, ``clip_threshold`` and ``momentum`` only. The update
is SGD's own rule, ``buf = momentum * buf + grad; w -= lr * buf``, applied to one row per
model that holds all its gradients (``torch.optim`` has one learning rate per parameter
tensor, and here a tensor holds K models). Activation histograms are not recorded.
:func:`unsupported_options` says why configurations cannot train together: every field of
both configs is on an allow-list, so a new option is refused until someone teaches
train_many it.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import fields

import torch
import torch.nn.functional as F
from torch import nn

from ._norms import LayerRows, model_blocks
from .clipping import clip_rows_
from .data import ImageData
from .device import keep_freed_memory
from .models import CNN, CNNConfig, block_rule, build_model
from .monitor import LayerMonitor
from .record import Run
from .train import Loop, TrainConfig, batch_stream, per_model_accuracy_and_loss

VARYING = {"lr", "clip_threshold", "momentum"}

# Every field of the two configs, and what train_many supports of it. A field missing here
# (a new option) makes train_many refuse, rather than silently train without it.
MODEL_OPTIONS = {
    "depth": None, "width": None, "activation": None, "leaky_slope": None, "norm": None, "residual": None,
    "residual_scale": None, "init": None, "init_std": None, "init_gain": None, "pool_every": None, "pool": None,
    "weight_norm": (False,),
}
TRAIN_OPTIONS = {
    "steps": None, "batch_size": None, "lr": None, "momentum": None, "eval_every": None, "eval_examples": None,
    "activation_every": None, "hist_every": None, "seed": None, "clip_threshold": None,
    "optimizer": ("sgd", "momentum"), "nesterov": (False,), "weight_decay": (0.0,), "schedule": ("constant",),
    "clip": ("none", "norm", "value"), "max_weight_norm": (None,), "record_every": None,
    # Only read by schedules train_many does not run:
    "step_size": None, "gamma": None, "patience": None, "warmup_steps": None, "range_start": None,
}


def unsupported_options(model_config: CNNConfig, train_configs: list[TrainConfig]) -> list[str]:
    """Why these configurations cannot train together: one line per option that
    :func:`train_many` does not support or that differs between them (empty: they can)."""
    problems = []
    for config, allowed in [(model_config, MODEL_OPTIONS)] + [(c, TRAIN_OPTIONS) for c in train_configs]:
        for f in fields(config):
            value = getattr(config, f.name)
            if f.name not in allowed:
                problems.append(f"{type(config).__name__}.{f.name} is not supported by train_many")
            elif allowed[f.name] is not None and value not in allowed[f.name]:
                problems.append(f"{type(config).__name__}.{f.name} = {value!r}: train_many supports "
                                f"{', '.join(map(repr, allowed[f.name]))}")
    for f in fields(TrainConfig):
        values = {getattr(c, f.name) for c in train_configs}
        if f.name not in VARYING and len(values) > 1:
            problems.append(f"TrainConfig.{f.name} differs between the configurations ({sorted(map(repr, values))}); "
                            f"only {', '.join(sorted(VARYING))} may")
    return list(dict.fromkeys(problems))


def can_train_together(model_configs: list[CNNConfig], train_configs: list[TrainConfig]) -> bool:
    """True when these configurations can share one wide network (see the module docstring)."""
    return len(set(model_configs)) == 1 and not unsupported_options(model_configs[0], train_configs)


class WideCNN(nn.Module):
    """K copies of a :class:`~gradcourse.models.CNN` side by side: every layer is grouped by model."""

    def __init__(self, models: list[CNN]):
        super().__init__()
        first = models[0]
        config, k = first.config, len(models)
        self.k, self.config = k, config
        self.downsample_after = first.downsample_after
        self.downsample = first.downsample
        self.names = list(first.layers())
        self.blocks = nn.ModuleList()
        for index, name in enumerate(self.names[:-1]):
            blocks = [m.layers()[name] for m in models]
            conv = blocks[0].conv
            if index == 0:  # every model reads the same images: one ungrouped conv to K x width channels
                wide_conv = nn.Conv2d(conv.in_channels, conv.out_channels * k, 3, padding=1)
            else:
                wide_conv = nn.Conv2d(conv.in_channels * k, conv.out_channels * k, 3, padding=1, groups=k)
            with torch.no_grad():
                wide_conv.weight.copy_(torch.cat([b.conv.weight for b in blocks]))
                wide_conv.bias.copy_(torch.cat([b.conv.bias for b in blocks]))
            block = nn.Module()
            act = blocks[0].act
            # In place: no second K-wide tensor to write. Not in a pre-activation residual
            # block, whose activation reads the residual stream itself (with no norm between).
            if type(act) is nn.ReLU and not blocks[0].residual:
                act = nn.ReLU(inplace=True)
            block.conv, block.norm, block.act = wide_conv, _wide_norm([b.norm for b in blocks]), act
            block.residual, block.residual_scale = blocks[0].residual, blocks[0].residual_scale
            self.blocks.append(block)
        self.head_norm, self.head_act = _wide_norm([m.head_norm for m in models]), first.head_act
        self.fc = _ManyLinear([m.fc for m in models])
        self.layer_modules = list(self.blocks) + [self.fc]
        # A max pool after a ReLU gives the same values and gradients when it comes first
        # (both pick the largest input of each window; ReLU keeps the order and sends no
        # gradient through a window whose largest input is <= 0), and then the ReLU and its
        # backward touch a quarter of the values. The activation statistics need the full
        # ReLU output, so a caller that reads them sets ``observe`` for that step.
        self.pool_first = (config.activation == "relu" and config.pool == "max" and not config.residual)
        self.observe = True
        # Grouped convolutions are slower than K separate ones in NCHW on a CPU, and come close
        # to the matrix-multiply peak in channels-last (NHWC) layout: keep weights and activations so.
        self.to(memory_format=torch.channels_last)

    def layers(self) -> "OrderedDict[str, nn.Module]":
        """The named layers, as :meth:`CNN.layers`: each holds the K models' parameters."""
        return OrderedDict(zip(self.names, self.layer_modules))

    def activation_modules(self) -> "OrderedDict[str, nn.Module]":
        return OrderedDict((name, block.act) for name, block in zip(self.names, self.blocks))

    def forward(self, x):
        x = x.contiguous(memory_format=torch.channels_last)
        for name, block in zip(self.names, self.blocks):
            if self.pool_first and not self.observe and name in self.downsample_after:
                x = block.act(self.downsample(block.norm(block.conv(x))))
                continue
            x = block_rule(block, x)
            if name in self.downsample_after:
                x = self.downsample(x)
        x = self.head_act(self.head_norm(x))
        return self.fc(x.mean(dim=(2, 3)).view(len(x), self.k, -1))


class _ManyLinear(nn.Module):
    """K linear layers as one batched matrix product: (batch, K, in) -> (batch, K, out).
    (one kernel call for all K heads, cheaper than a grouped ``Conv1d``). ``weight`` is
    (K * out, in), model-major like every other wide parameter."""

    def __init__(self, layers: list[nn.Linear]):
        super().__init__()
        self.k, self.out_features = len(layers), layers[0].out_features
        self.weight = nn.Parameter(torch.cat([layer.weight.detach() for layer in layers]))
        self.bias = nn.Parameter(torch.cat([layer.bias.detach() for layer in layers]))

    def forward(self, x):
        k, out = self.k, self.out_features
        weight = self.weight.view(k, out, -1).transpose(1, 2)                      # (K, in, out)
        logits = torch.baddbmm(self.bias.view(k, 1, out), x.transpose(0, 1), weight)   # (K, batch, out)
        return logits.transpose(0, 1)


def _wide_norm(norms) -> nn.Module:
    """K normalization layers (one per model) as one over K x channels."""
    norm, k = norms[0], len(norms)
    if isinstance(norm, nn.BatchNorm2d):
        wide = nn.BatchNorm2d(norm.num_features * k)
    elif isinstance(norm, nn.GroupNorm):
        wide = nn.GroupNorm(norm.num_groups * k, norm.num_channels * k)
    else:
        return nn.Identity()
    with torch.no_grad():
        wide.weight.copy_(torch.cat([n.weight for n in norms]))
        wide.bias.copy_(torch.cat([n.bias for n in norms]))
    return wide


def train_many(model_config: CNNConfig, train_configs: list[TrainConfig], data: ImageData,
               device: torch.device | str = "cpu") -> list[Run]:
    """Train every ``TrainConfig`` in ``train_configs`` on ``model_config`` together.

    Returns one :class:`~gradcourse.record.Run` per configuration, in order. Raises ``ValueError`` if the
    configurations cannot share a network (``unsupported_options`` says why)."""
    problems = unsupported_options(model_config, train_configs)
    if problems:
        raise ValueError("train_many cannot train these configurations together: " + "; ".join(problems)
                         + " (gradcourse.train trains any of them alone)")
    device = torch.device(device)
    keep_freed_memory()
    data = data.to(device)
    wide = build_wide(model_config, data, len(train_configs), train_configs[0].seed).to(device)
    monitor = LayerMonitor(wide, models=wide.k)
    return Loop(WideModels(wide, train_configs), monitor, train_configs, data, device).run(model_config)


def build_wide(model_config: CNNConfig, data: ImageData, k: int, seed: int) -> WideCNN:
    """``k`` copies of ``model_config``'s network as one :class:`WideCNN`, each initialized
    exactly as :func:`gradcourse.train` initializes it with this ``seed`` (one network, built
    once: the copies start equal)."""
    return WideCNN([build_model(model_config, data, seed=seed)] * k)


def passes_only(model_config: CNNConfig, train_configs: list[TrainConfig], data: ImageData) -> None:
    """:func:`train_many`'s steps with nothing but each step's forward and backward pass (on
    its own batches): no update, no records, no evaluation, no activation statistics. The
    benchmark's measured ceiling for a sweep (``sweep_speedup_K_passes_only``)."""
    wide = build_wide(model_config, data, len(train_configs), train_configs[0].seed).to(data.device)
    models = WideModels(wide, train_configs)
    models.observe(False)
    alive = torch.ones(wide.k, dtype=torch.bool, device=data.device)
    base = train_configs[0]
    batches = batch_stream(data, base.batch_size, torch.Generator().manual_seed(base.seed))
    for _, (x, y) in zip(range(base.steps), batches):
        models.forward_backward(x, y, alive)


class WideModels:
    """:func:`train_many`'s side of :class:`gradcourse.train.Loop`: the passes, clipping and
    SGD update of K models in one :class:`WideCNN`, one value per model.

    The update works on rows (:class:`gradcourse._norms.LayerRows`): row ``i`` holds model
    ``i``'s gradients (and its momentum buffer) for every parameter, each layer in its slot,
    so clipping and the momentum update are a few operations on the whole row, the
    per-layer norms one reduction over rows it already has, and ``w -= lr * buf`` goes back
    to the parameters in one call. A residual network's head normalization is trained and
    clipped with the rest, in a slot after ``fc``'s; the records keep the named layers only,
    as :class:`~gradcourse.monitor.LayerMonitor` does for :func:`train`."""

    def __init__(self, wide: WideCNN, configs: list[TrainConfig]):
        self.wide, self.k, self.clip_mode = wide, wide.k, configs[0].clip
        device = next(wide.parameters()).device
        self.lr = torch.tensor([c.lr for c in configs], device=device).view(self.k, 1)
        self.lr_values = self.lr.view(-1).cpu().numpy()
        self.step_lr = self.lr
        self.threshold = torch.tensor([c.clip_threshold for c in configs], device=device)
        momentum = [c.momentum if c.optimizer == "momentum" else 0.0 for c in configs]
        self.momentum = torch.tensor(momentum, device=device).view(self.k, 1)
        self.has_momentum = any(momentum)
        self.not_clipped = torch.zeros(self.k, dtype=torch.bool, device=device)
        groups = [list(layer.parameters()) for layer in wide.layers().values()]
        self.named_layers = len(groups)
        if list(wide.head_norm.parameters()):
            groups.append(list(wide.head_norm.parameters()))
        self.params = [p for group in groups for p in group]
        self.rows = LayerRows([p.numel() // self.k for p in self.params],
                              [index for index, group in enumerate(groups) for _ in group], len(groups), self.k)
        self.weights = [model_blocks(p.detach(), self.k) for p in self.params]   # (K, n) views, made once
        # The rows the records are read from: the gradients, the weights before the step and,
        # with momentum, the buffers. The update is lr times the last of them.
        self.table = self.rows.new(3 if self.has_momentum else 2, self.params[0]).zero_()
        self.grads, self.before = self.table[0], self.table[1]
        self.buffers = self.table[2] if self.has_momentum else self.grads   # the update is lr times this
        self.buffer_parts = [self.buffers[:, columns] for columns in self.rows.columns]
        self.recording = False
        self.grad_norms: torch.Tensor | None = None

    def train(self, mode: bool) -> None:
        self.wide.train(mode)

    def observe(self, on: bool) -> None:
        """Whether this pass must show every activation (see :attr:`WideCNN.pool_first`)."""
        self.wide.observe = on

    def learning_rates(self):
        return self.lr_values   # constant: train_many allows no schedule

    def forward_backward(self, x, y, alive) -> torch.Tensor:
        """Each model's mean cross-entropy on the batch, and its gradients in ``.grad`` (a
        diverged model's loss is left out of the backward pass)."""
        logits = self.wide(x)
        losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.repeat_interleave(self.k),
                                 reduction="none").view(len(y), self.k).mean(0)
        for p in self.params:
            p.grad = None
        torch.where(alive, losses, torch.zeros_like(losses)).sum().backward()
        return losses.detach()

    def begin_record(self) -> None:
        """This step's per-layer norms are wanted (:meth:`end_record`)."""
        self.recording = True

    @torch.no_grad()
    def clip(self):
        grads = self.rows.fill([model_blocks(p.grad, self.k) for p in self.params], out=self.grads)
        before = torch.linalg.vector_norm(grads, dim=1)   # in float32, as clip_grad_norm_ sums it
        if self.clip_mode == "none":
            return before, before, self.not_clipped
        if self.recording:   # the raw gradients' norms, before clipping
            self.grad_norms = self.rows.norms(grads)
        fired = clip_rows_(grads, before, self.clip_mode, self.threshold)
        return before, torch.linalg.vector_norm(grads, dim=1), fired

    @torch.no_grad()
    def step(self, alive) -> None:
        """SGD's rule, ``buf = momentum * buf + grad; w -= lr * buf``, for all parameters at
        once (``alive``: the models still training, ``None`` for all)."""
        lr = self.lr
        if alive is not None:  # a diverged model's gradient may hold NaN; its learning rate is 0 now
            self.grads.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
            lr = torch.where(alive.view(self.k, 1), lr, 0.0)
        self.step_lr = lr
        if self.recording:
            self.rows.fill(self.weights, out=self.before)
        if self.has_momentum:
            torch.addcmul(self.grads, self.buffers, self.momentum, out=self.buffers)
        torch._foreach_addcmul_(self.weights, self.buffer_parts, [lr] * len(self.weights), value=-1.0)

    def end_record(self) -> torch.Tensor:
        """``(3, K, named layers)``: norms of the gradient, the weights before the step and
        the update, as :meth:`gradcourse.LayerMonitor.end_step` gives them."""
        self.recording = False
        norms = self.rows.norms(self.table)[:, :, :self.named_layers]
        update = None
        if self.has_momentum:
            norms[2].mul_(self.step_lr)   # the update is lr times the buffer...
        else:
            update = norms[0] * self.step_lr   # ... or times the (clipped) gradient
        if self.clip_mode != "none":   # the raw gradients' norms, from before clipping
            norms[0] = self.grad_norms[:, :self.named_layers]
        return norms if update is None else torch.cat([norms, update.unsqueeze(0)])

    def schedule(self, val_loss) -> None:
        """(Constant learning rates only.)"""

    def evaluate(self, images, labels):
        # One model's activations for 1024 images are 4 MB per layer at 8x8 and width 16, K
        # models' K times that: chunks of 128 images keep them in the CPU's cache.
        return per_model_accuracy_and_loss(self.wide, images, labels, chunk=128)
