"""Train several configurations of one CNN at once, as one wide network.

A learning-rate or clip-threshold sweep trains K copies of the same architecture on the
same batches. Rather than K small networks one after another, :func:`train_many` builds
one network whose convolutions have ``groups=K``: group ``k`` holds model ``k``'s
weights, so the models never mix, but every layer runs as one larger kernel (in
channels-last layout, where a CPU's grouped convolution of 8x8 maps runs close to its
matrix-multiply peak; BENCHMARKS.md has the measurements, what that buys and what bounds it). The
first convolution is not grouped: every model reads the same images, so one convolution
from the image channels to K x width channels computes all K first layers. Each model
keeps its own learning rate, clip threshold, gradient norms, divergence step and record;
the records match :func:`gradcourse.train`'s for the same configurations up to
floating-point rounding (a test checks it).

Supported: optimizers ``sgd`` and ``momentum``, a ``constant`` schedule, clipping
``none``, ``norm`` or ``value``, no weight decay, max-norm or weight normalization, and
statistics at every step; configurations may differ in ``lr``, ``clip_threshold`` and
``momentum`` only. The update is SGD's own rule, ``buf = momentum * buf + grad;
w -= lr * buf``, applied to one row per model that holds all its gradients (``torch.optim``
has one learning rate per parameter tensor, and here a tensor holds K models). Activation
histograms are not recorded. Where a ReLU is followed by a max pool, the pool runs first on
the steps that record no activation statistics: the same values and gradients, bit for
bit, for a quarter of the ReLU's work.
:func:`can_train_together` says whether a list of configurations qualifies, and
:func:`unsupported_options` says why not: every field of both configs is on an allow-list,
so a new option is refused until someone teaches train_many it.
"""
from __future__ import annotations

import time
from dataclasses import fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import ImageData
from .hooks import forward_hooks
from .device import keep_freed_memory
from .models import CNN, CNNConfig, block_rule, build_model
from .monitor import ACTIVATION_STATS, HIST_BINS, flat_tests, float64_where_needed, pad_to_slots
from .record import Run
from .train import TrainConfig, batch_stream

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
    "clip": ("none", "norm", "value"), "max_weight_norm": (None,), "record_every": (1,),
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
    """K copies of a :class:`CNN` side by side: every layer is grouped by model."""

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

    Returns one :class:`Run` per configuration, in order. Raises ``ValueError`` if the
    configurations cannot share a network (``unsupported_options`` says why)."""
    problems = unsupported_options(model_config, train_configs)
    if problems:
        raise ValueError("train_many cannot train these configurations together: " + "; ".join(problems)
                         + " (gradcourse.train trains any of them alone)")
    device = torch.device(device)
    keep_freed_memory()
    data = data.to(device)
    wide = build_wide(model_config, data, len(train_configs), train_configs[0].seed).to(device)
    return _Together(wide, model_config, train_configs, data, device).run()


def build_wide(model_config: CNNConfig, data: ImageData, k: int, seed: int) -> WideCNN:
    """``k`` copies of ``model_config``'s network as one :class:`WideCNN`, each initialized
    exactly as :func:`gradcourse.train` initializes it with this ``seed``."""
    models = []
    for _ in range(k):
        torch.manual_seed(seed)
        models.append(build_model(model_config, data))
    return WideCNN(models)


def passes_only(model_config: CNNConfig, train_configs: list[TrainConfig], data: ImageData) -> None:
    """:func:`train_many`'s steps with nothing but each step's forward and backward pass (on
    its own batches): no update, no records, no evaluation, no activation statistics. The
    benchmark's measured ceiling for a sweep (``sweep_speedup_K_passes_only``)."""
    wide = build_wide(model_config, data, len(train_configs), train_configs[0].seed).to(data.device)
    together = _Together(wide, model_config, train_configs, data, data.device)
    together.collect = together.wide.observe = False
    for _, (x, y) in zip(range(train_configs[0].steps), together.batches()):
        together.passes(x, y)


class _Together:
    def __init__(self, wide: WideCNN, model_config, configs, data, device):
        self.wide, self.model_config, self.configs, self.data, self.device = wide, model_config, configs, data, device
        self.k = len(configs)
        base = configs[0]
        self.base = base
        self.lr = torch.tensor([c.lr for c in configs], device=device)
        self.threshold = torch.tensor([c.clip_threshold for c in configs], device=device)
        self.momentum = torch.tensor([c.momentum if c.optimizer == "momentum" else 0.0 for c in configs],
                                     device=device)
        # A residual network's head normalization is trained and clipped with the rest, in a
        # slot after fc's; the records keep the named layers only, as train()'s monitor does.
        self.layer_params = [list(m.parameters()) for m in wide.layer_modules]
        if list(wide.head_norm.parameters()):
            self.layer_params.append(list(wide.head_norm.parameters()))
        self.params = [p for group in self.layer_params for p in group]
        self.layer_sizes = [sum(p.numel() // self.k for p in group) for group in self.layer_params]
        # The optimizer works on rows: row i holds model i's gradients (then its momentum buffer,
        # then its update) for every parameter, each layer in a zero-padded slot of the largest
        # layer's size. Per-layer norms are then one reduction over a (K, layers, slot) view,
        # clipping and the momentum update a few operations on the whole row, and only the
        # final "w -= update" goes back to the parameters, one in-place subtraction each.
        k = self.k
        self.param_blocks = [_blocks(p.detach(), k) for p in self.params]   # (K, n) views, made once
        self.slot = max(self.layer_sizes)
        self.param_layer = [index for index, group in enumerate(self.layer_params) for _ in group]
        self.columns, filled = [], [0] * len(self.layer_sizes)   # each parameter's columns in a row
        for block, layer in zip(self.param_blocks, self.param_layer):
            start = layer * self.slot + filled[layer]
            self.columns.append(slice(start, start + block.shape[1]))
            filled[layer] += block.shape[1]
        width = len(self.layer_sizes) * self.slot
        self.grad_rows, self.weight_rows, self.update_rows, self.momentum_rows = (
            torch.zeros(k, width, device=device) for _ in range(4))
        self.zeros = torch.zeros(k, self.slot, device=device)
        self.param_parts = pad_to_slots(self.param_blocks, self.param_layer, self.slot, self.zeros)
        self.generator = torch.Generator().manual_seed(base.seed)
        self.alive = torch.ones(self.k, dtype=torch.bool, device=device)
        self.act_stats = torch.zeros(len(wide.blocks), self.k, len(ACTIVATION_STATS), device=device)
        self.collect = False

    def _read_activations(self, index: int, output: torch.Tensor) -> None:
        """The activation statistics of block ``index``'s K models (a forward hook, while
        :meth:`run` runs and ``collect`` is set)."""
        if not (self.collect and torch.is_grad_enabled()):
            return
        module = self.wide.blocks[index].act
        y = output.detach()
        b, c = y.shape[:2]
        k = self.k
        # (positions, K, C) without a copy: the activations are channels-last.
        per_model = y.permute(0, 2, 3, 1).reshape(-1, k, c // k)
        n = per_model.shape[0] * per_model.shape[2]
        # Every reduction runs over dim 0 first, to (K, channels), and as a plain sum, amin or
        # amax: on a CPU these are several times faster along the outer dimension of a
        # contiguous tensor than a boolean count or an aminmax.
        shift = per_model[:4].mean(dim=(0, 2), keepdim=True)  # as in LayerMonitor: no cancellation
        centred = per_model - shift
        offset = centred.sum(0).sum(1) / n
        var = (centred.square_().sum(0).sum(1) / n - offset * offset).clamp_min(0.0)
        flat_region, flat_channel = flat_tests(module)
        if type(module) is nn.ReLU:   # outputs >= 0: the flat ones are the zeros
            flat = 1.0 - torch.sign(per_model).sum(0).sum(1) / n
        else:
            flat = flat_region(per_model).sum(0, dtype=torch.int32).sum(1) / n
        low, high = per_model.amin(dim=0), per_model.amax(dim=0)  # (K, channels per model)
        dead = flat_channel(low, high).float().mean(1)
        self.act_stats[index] = torch.stack([shift.view(k) + offset, var.sqrt(), flat, dead], dim=1)

    def slot_norms(self, rows: torch.Tensor) -> torch.Tensor:
        """(layers, K) norms of each layer's slot in ``rows``: summed in float32, and again in
        float64 for a model whose sums leave the range where float32 is exact, as in
        :class:`LayerMonitor` (:func:`float64_where_needed`), so the gradients of a vanishing
        layer never underflow to 0. (Converting every row to float64 would copy it.)"""
        slots = rows.view(self.k, len(self.layer_sizes), self.slot)
        sums = float64_where_needed(
            torch.linalg.vector_norm(slots, dim=2).double().square_(),              # (K, layers)
            lambda outside: torch.linalg.vector_norm(slots[outside], dim=2, dtype=torch.float64).square_())
        return sums.sqrt_().T.float()

    def copy_rows(self, blocks: list[torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
        """``rows`` filled with the (K, n) ``blocks`` (one per parameter, in order), each layer
        in its slot and the rest of the slot 0."""
        torch.cat(pad_to_slots(blocks, self.param_layer, self.slot, self.zeros), dim=1, out=rows)
        return rows

    def batches(self):
        return batch_stream(self.data, self.base.batch_size, self.generator)

    def passes(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One step's forward and backward pass of all K models on the batch ``(x, y)``: each
        model's mean cross-entropy, and its gradients in ``.grad`` (a diverged model's loss
        is left out). Returns the K losses."""
        logits = self.wide(x)
        losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.repeat_interleave(self.k),
                                 reduction="none").view(len(y), self.k).mean(0)
        for p in self.params:
            p.grad = None
        torch.where(self.alive, losses, torch.zeros_like(losses)).sum().backward()
        return losses

    def run(self) -> list[Run]:
        activations = {index: block.act for index, block in enumerate(self.wide.blocks)}
        with forward_hooks(activations, self._read_activations):
            return self._train()

    def _train(self) -> list[Run]:
        base, k, device = self.base, self.k, self.device
        steps = base.steps
        n_layers = len(self.layer_params)
        loss_hist = torch.zeros(steps, k, device=device)
        before_hist = torch.zeros(steps, k, device=device)
        after_hist = torch.zeros(steps, k, device=device)
        fired_hist = torch.zeros(steps, k, dtype=torch.bool, device=device)
        layer_grad = torch.zeros(steps, n_layers, k, device=device)
        layer_weight = torch.zeros(steps, n_layers, k, device=device)
        layer_ratio = torch.zeros(steps, n_layers, k, device=device)
        n_act = (steps + base.activation_every - 1) // base.activation_every
        act_hist = torch.zeros(n_act, len(self.wide.blocks), k, len(ACTIVATION_STATS), device=device)
        diverged_at = [None] * k
        reasons = [""] * k
        evals = []
        start = time.perf_counter()
        self.wide.train()
        done = 0
        for step, (x, y) in zip(range(steps), self.batches()):
            self.collect = self.wide.observe = step % base.activation_every == 0
            losses = self.passes(x, y)
            grads = self.copy_rows([_blocks(p.grad, k) for p in self.params], self.grad_rows)
            grad_norms = self.slot_norms(grads)                                      # (layers, K)
            total = grad_norms.pow(2).sum(0).sqrt()
            finite = torch.isfinite(losses) & torch.isfinite(total)
            newly = self.alive & ~finite
            if bool(newly.any()):
                for index in torch.nonzero(newly).flatten().tolist():
                    diverged_at[index] = step
                    reasons[index] = ("loss is not finite" if not bool(torch.isfinite(losses[index]))
                                      else "gradient is not finite")
                self.alive &= finite
                if not bool(self.alive.any()):
                    break
            fired = self._clip(grads, total)
            after = total if base.clip == "none" else self.slot_norms(grads).pow(2).sum(0).sqrt()
            weights_before = self.slot_norms(torch.cat(self.param_parts, dim=1, out=self.weight_rows))
            all_alive = diverged_at.count(None) == k
            with torch.no_grad():
                if not all_alive:  # a diverged model's gradient may hold NaN; its learning rate is 0 now
                    grads.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
                step_lr = self.lr if all_alive else torch.where(self.alive, self.lr, torch.zeros_like(self.lr))
                # SGD's rule, buf = momentum * buf + grad; w -= lr * buf, for all parameters at once
                self.momentum_rows.mul_(self.momentum.view(k, 1)).add_(grads)
                updates = torch.mul(self.momentum_rows, step_lr.view(k, 1), out=self.update_rows)
                for weights, columns in zip(self.param_blocks, self.columns):
                    weights.sub_(updates[:, columns])
            ratios = self.slot_norms(updates) / weights_before.clamp_min(1e-12)
            row_alive = self.alive.view(1, k)
            loss_hist[step] = losses.detach()
            before_hist[step], after_hist[step], fired_hist[step] = total, after, fired & self.alive
            layer_grad[step] = grad_norms
            layer_weight[step] = weights_before
            layer_ratio[step] = torch.where(row_alive, ratios, torch.zeros_like(ratios))
            if self.collect:
                act_hist[step // base.activation_every] = self.act_stats
            done = step + 1
            if done % base.eval_every == 0 or done == steps:
                evals.append((done, *self._evaluate(final=done == steps)))
                self.wide.train()
        seconds = time.perf_counter() - start
        return [self._record(i, done, diverged_at[i], reasons[i], loss_hist, before_hist, after_hist, fired_hist,
                             layer_grad, layer_weight, layer_ratio, act_hist, evals, seconds / k) for i in range(k)]

    @torch.no_grad()
    def _clip(self, grads: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
        """Clip each model's gradient row in place, by the rule of ``clip_grad_norm_`` or
        ``clip_grad_value_``; returns which models' clipping fired."""
        k = self.k
        if self.base.clip == "norm":
            scale = (self.threshold / (total + 1e-6)).clamp(max=1.0)
            grads.mul_(scale.view(k, 1))
            return scale < 1.0
        if self.base.clip == "value":
            limit = self.threshold.view(k, 1)
            fired = (grads.abs() > limit).any(1)
            grads.clamp_(-limit, limit)
            return fired
        return torch.zeros(k, dtype=torch.bool, device=self.device)

    @torch.no_grad()
    def _evaluate(self, final: bool):
        self.wide.eval()
        collect, self.collect, self.wide.observe = self.collect, False, False
        n = self.base.eval_examples
        train_acc, _ = self._accuracy(self.data.x_train[:n], self.data.y_train[:n])
        x_val, y_val = (self.data.x_val, self.data.y_val) if final else (self.data.x_val[:n], self.data.y_val[:n])
        val_acc, val_loss = self._accuracy(x_val, y_val)
        self.collect = self.wide.observe = collect
        return train_acc, val_acc, val_loss

    def _accuracy(self, x, y, chunk: int = 128):
        # One model's activations for 1024 images are 4 MB per layer at 8x8 and width 16, K
        # models' K times that: chunks of 128 images keep them in the CPU's cache.
        correct = torch.zeros(self.k, device=self.device)
        loss = torch.zeros(self.k, device=self.device)
        for start in range(0, len(y), chunk):
            logits = self.wide(x[start:start + chunk])
            target = y[start:start + chunk]
            correct += (logits.argmax(-1) == target.unsqueeze(1)).float().sum(0)
            loss += F.cross_entropy(logits.permute(0, 2, 1), target.unsqueeze(1).expand(-1, self.k),
                                    reduction="none").sum(0)
        return (correct / len(y)).cpu().numpy(), (loss / len(y)).cpu().numpy()

    def _record(self, i, done, diverged_at, reason, loss_hist, before_hist, after_hist, fired_hist, layer_grad,
                layer_weight, layer_ratio, act_hist, evals, seconds) -> Run:
        stop = diverged_at if diverged_at is not None else done
        every = self.base.activation_every
        act_rows = (stop + every - 1) // every
        acts = act_hist[:act_rows, :, i].cpu().numpy().astype(np.float64)
        kept = [e for e in evals if diverged_at is None or e[0] <= diverged_at]
        n_act = len(self.wide.blocks)
        to_np = lambda t: t.cpu().numpy().astype(np.float64)  # noqa: E731
        names = self.wide.names
        return Run(
            model_config=self.model_config, train_config=self.configs[i], data_name=self.data.name,
            device=str(self.device), layer_names=list(names), activation_names=list(names[:-1]),
            loss=to_np(loss_hist[:stop, i]), lr=np.full(stop, self.configs[i].lr),
            grad_norm=to_np(before_hist[:stop, i]), grad_norm_clipped=to_np(after_hist[:stop, i]),
            clipped=fired_hist[:stop, i].cpu().numpy(), stat_step=np.arange(stop),
            layer_grad_norm=to_np(layer_grad[:stop, :len(names), i]),
            layer_weight_norm=to_np(layer_weight[:stop, :len(names), i]),
            layer_update_ratio=to_np(layer_ratio[:stop, :len(names), i]), act_step=np.arange(act_rows) * every,
            act_mean=acts[:, :, 0], act_std=acts[:, :, 1], act_saturated=acts[:, :, 2], act_dead=acts[:, :, 3],
            eval_step=np.array([e[0] for e in kept], dtype=int),
            train_acc=np.array([e[1][i] for e in kept]), val_acc=np.array([e[2][i] for e in kept]),
            val_loss=np.array([e[3][i] for e in kept]),
            hist_step=np.zeros(0, dtype=int), hist_counts=np.zeros((0, n_act, HIST_BINS)), hist_range=np.zeros((0, n_act, 2)),
            diverged_at=diverged_at, diverged_reason=reason, seconds=seconds,
        )


def _blocks(t: torch.Tensor, k: int) -> torch.Tensor:
    """``t`` as a ``(k, numel / k)`` view whose row ``i`` holds model ``i``'s entries (dim 0 is
    the model-major dimension). Works for channels-last tensors too: their dim 0 is still
    outermost in memory, so each model's block is one contiguous run (in another order,
    which sums and elementwise updates do not see)."""
    if t.is_contiguous():
        return t.view(k, -1)
    if not (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)):
        raise ValueError(f"a tensor of shape {tuple(t.shape)} and strides {t.stride()} has no per-model blocks")
    size = t.numel() // k
    return t.as_strided((k, size), (size, 1), t.storage_offset())
