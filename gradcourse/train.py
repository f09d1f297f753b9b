"""Train one configuration and return its :class:`~gradcourse.record.Run`.

The loop is deliberately plain PyTorch (sample a batch, forward, backward, clip, step,
schedule) with a :class:`~gradcourse.monitor.LayerMonitor` reading a few floats per layer.
Statistics stay on the training device until the run ends, so a GPU run synchronizes
once per step (for the divergence check) and not once per statistic.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, fields, replace
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import _validate as check
from .cache import load_run, run_key, save_run
from .clipping import CLIP_MODES, clip_gradients
from .data import DataConfig, ImageData, load_data
from .device import keep_freed_memory, pick_device
from .models import CNNConfig, build_model
from .monitor import ACTIVATION_STATS, HIST_BINS, LayerMonitor
from .record import Run

OPTIMIZERS = ("sgd", "momentum", "rmsprop", "adagrad", "adam", "adamw")
SCHEDULES = ("constant", "step", "exponential", "plateau", "warmup_cosine", "one_cycle", "range_test")
PROGRESS_ENV = "GRADCOURSE_PROGRESS"


@dataclass(frozen=True)
class TrainConfig:
    """How to train.

    Attributes:
        steps: optimizer steps (mini-batches).
        batch_size: examples per step (sampled without replacement within an epoch).
        optimizer: ``sgd``, ``momentum`` (SGD with momentum), ``rmsprop``, ``adagrad``,
            ``adam`` or ``adamw``.
        lr: (peak) learning rate.
        momentum: momentum for ``momentum`` (``rmsprop`` uses PyTorch's default, none).
        nesterov: Nesterov momentum (``momentum`` only).
        weight_decay: the optimizer's weight decay (an L2 penalty for SGD-family
            optimizers, decoupled for ``adamw``).
        schedule: ``constant``, ``step`` (``StepLR``), ``exponential`` (``ExponentialLR``),
            ``plateau`` (``ReduceLROnPlateau`` on validation loss) or ``warmup_cosine``
            (``LinearLR`` warmup then ``CosineAnnealingLR``), ``one_cycle`` (``OneCycleLR``:
            up to ``lr`` over the first 30 % of the steps, then down to ``lr / 10^4``; it also
            cycles the momentum of ``momentum`` and the first beta of Adam), or ``range_test``
            (``LambdaLR``: from ``range_start`` up to ``lr`` geometrically, every step: the
            learning-rate range test, see :func:`lr_range_test`).
        step_size: steps between decays for ``step``.
        gamma: decay factor for ``step`` (per ``step_size``), ``exponential`` (per step) and
            ``plateau`` (per reduction).
        patience: evaluations without improvement before ``plateau`` reduces the rate.
        warmup_steps: linear warmup length for ``warmup_cosine``.
        range_start: the first step's learning rate for ``range_test``.
        clip: ``none``, ``norm`` (``clip_grad_norm_``), ``value`` (``clip_grad_value_``) or
            ``agc`` (adaptive unit-wise clipping; ``fc`` is left unclipped as in Brock et al.).
        clip_threshold: max total norm, max absolute value, or AGC's clip factor.
        max_weight_norm: after each step, rescale every output unit's weights (rows of
            ``fc``, filters of a conv) to at most this norm (``None``: no constraint).
        eval_every: steps between accuracy evaluations (and at the last step).
        eval_examples: examples of each split used by the evaluations during training;
            the last evaluation uses the whole validation split.
        record_every: steps between per-layer gradient norms, weight norms and update ratios.
        activation_every: steps between activation statistics (a multiple of ``record_every``;
            they change slowly, and reading every activation costs about as much as the
            other statistics together on a CPU).
        hist_every: steps between activation histograms (a multiple of ``activation_every``;
            0: about 40 over the run).
        seed: seeds the initialization and the batch order.
    """

    steps: int = 200
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "constant"
    step_size: int = 100
    gamma: float = 0.5
    patience: int = 3
    warmup_steps: int = 0
    range_start: float = 1e-5
    clip: str = "none"
    clip_threshold: float = 1.0
    max_weight_norm: float | None = None
    eval_every: int = 25
    eval_examples: int = 512
    record_every: int = 1
    activation_every: int = 10
    hist_every: int = 0
    seed: int = 0

    def __post_init__(self):
        owner = "TrainConfig"
        check.integer(owner, "steps", self.steps, 1, 10_000_000)
        check.integer(owner, "batch_size", self.batch_size, 1, 1_000_000)
        check.choice(owner, "optimizer", self.optimizer, OPTIMIZERS)
        check.number(owner, "lr", self.lr, 0.0, 1e6, low_open=True)
        check.number(owner, "momentum", self.momentum, 0.0, 1.0)
        check.boolean(owner, "nesterov", self.nesterov)
        if self.nesterov and self.optimizer != "momentum":
            raise check.ConfigError(f"{owner}.nesterov = True needs optimizer='momentum' "
                                    f"(got optimizer={self.optimizer!r})")
        check.number(owner, "weight_decay", self.weight_decay, 0.0, 10.0)
        check.choice(owner, "schedule", self.schedule, SCHEDULES)
        check.integer(owner, "step_size", self.step_size, 1)
        check.number(owner, "gamma", self.gamma, 0.0, 1.0, low_open=True)
        check.integer(owner, "patience", self.patience, 0)
        check.integer(owner, "warmup_steps", self.warmup_steps, 0, self.steps)
        check.number(owner, "range_start", self.range_start, 0.0,
                     self.lr if self.schedule == "range_test" else 1e6, low_open=True)
        check.choice(owner, "clip", self.clip, CLIP_MODES)
        check.number(owner, "clip_threshold", self.clip_threshold, 0.0, 1e12, low_open=True)
        if self.max_weight_norm is not None:
            check.number(owner, "max_weight_norm", self.max_weight_norm, 0.0, 1e12, low_open=True)
        check.integer(owner, "eval_every", self.eval_every, 1)
        check.integer(owner, "eval_examples", self.eval_examples, 1)
        check.integer(owner, "record_every", self.record_every, 1)
        check.integer(owner, "activation_every", self.activation_every, 1)
        if self.activation_every % self.record_every:
            raise check.ConfigError(f"{owner}.activation_every = {self.activation_every} must be a multiple of "
                                    f"record_every = {self.record_every}")
        check.integer(owner, "hist_every", self.hist_every, 0)
        if self.hist_every % self.activation_every:
            raise check.ConfigError(f"{owner}.hist_every = {self.hist_every} must be 0 or a multiple of "
                                    f"activation_every = {self.activation_every}")
        check.integer(owner, "seed", self.seed, 0)


def split_overrides(overrides: dict) -> tuple[dict, dict, dict]:
    """Sort keyword overrides into (CNNConfig, TrainConfig, DataConfig) fields."""
    names = [{f.name for f in fields(cls)} for cls in (CNNConfig, TrainConfig, DataConfig)]
    parts: tuple[dict, dict, dict] = ({}, {}, {})
    for key, value in overrides.items():
        if key == "name":
            raise check.ConfigError("give the dataset as data='mnist' (or a DataConfig), not name=...")
        for part, allowed in zip(parts, names):
            if key in allowed:
                part[key] = value
                break
        else:
            allowed = sorted(set().union(*names) - {"name"})
            raise check.ConfigError(f"train() got an unknown setting {key!r}; settings are: {', '.join(allowed)}")
    return parts


def train(model_config: CNNConfig | None = None, train_config: TrainConfig | None = None,
          data: ImageData | DataConfig | str | None = None, *, device=None, model: nn.Module | None = None,
          monitor: bool = True, progress: bool | None = None,
          on_progress: Callable[[Run], object] | None = None, progress_every: int = 25,
          should_stop: Callable[[], bool] | None = None, keep_model: bool = False, cache: bool = False,
          **overrides) -> Run:
    """Train a CNN and return the run's record. Never raises for a diverging run.

    Args:
        model_config: the network (default ``CNNConfig()``); ignored when ``model`` is given.
        train_config: optimizer, schedule, clipping... (default ``TrainConfig()``).
        data: an :class:`ImageData`, a :class:`DataConfig` or a dataset name (default ``digits``).
        device: ``"cpu"``, ``"cuda"``, ... (default: the GPU when there is one, see :func:`pick_device`).
        model: train this module instead of building one (e.g. a pretrained network to fine-tune).
        monitor: record per-layer statistics (turn off only to measure their cost).
        progress: show a progress bar for runs longer than two seconds (default: on, unless the
            environment variable ``GRADCOURSE_PROGRESS=0``).
        on_progress: called with the partial record every ``progress_every`` steps (live plots).
        should_stop: polled every step; returning True ends the run early (record kept).
        keep_model: keep the trained model on ``run.model``.
        cache: read the record from the disk cache (``$GRADCOURSE_CACHE``) when this exact
            configuration already ran with this version of gradcourse, and write it there
            otherwise. Needs ``data`` as a name or :class:`DataConfig`; ignored with ``model``,
            ``keep_model`` or ``monitor=False`` (whose record has no statistics).
        **overrides: any field of CNNConfig, TrainConfig or DataConfig, e.g. ``depth=20, lr=0.1``.

    Example:
        >>> run = train(depth=20, activation="sigmoid", steps=100)  # doctest: +SKIP
    """
    for argument, value, expected in (("model_config", model_config, CNNConfig),
                                      ("train_config", train_config, TrainConfig)):
        if value is not None and not isinstance(value, expected):
            raise check.ConfigError(
                f"train({argument}=...) must be a {expected.__name__}, got a {type(value).__name__}; "
                f"call train(CNNConfig(...), TrainConfig(...), data)")
    if data is not None and not isinstance(data, (ImageData, DataConfig, str)):
        raise check.ConfigError(f"train(data=...) must be a dataset name, a DataConfig or an ImageData, "
                                f"got a {type(data).__name__}")
    model_over, train_over, data_over = split_overrides(overrides)
    model_config = replace(model_config or CNNConfig(), **model_over)
    train_config = replace(train_config or TrainConfig(), **train_over)
    device = pick_device(device)
    keep_freed_memory()
    if isinstance(data, ImageData):
        if data_over:
            raise check.ConfigError(f"data settings {sorted(data_over)} cannot change an already loaded ImageData")
    else:
        data = load_data(data, **data_over) if not isinstance(data, DataConfig) else load_data(replace(data, **data_over))
    key = None
    if cache and monitor and model is None and not keep_model and data.config is not None:
        key = run_key(model_config, train_config, data.config, device.type)
        cached = load_run(key)
        if cached is not None:
            return cached
    data = data.to(device)
    torch.manual_seed(train_config.seed)
    if model is None:
        model = build_model(model_config, data)
    model = model.to(device)
    run = _Loop(model, model_config, train_config, data, device, monitor, progress,
                on_progress, progress_every, should_stop).run(keep_model)
    if key is not None and not (should_stop is not None and run.steps_done < train_config.steps and not run.diverged):
        save_run(key, run)
    return run


class _Loop:
    def __init__(self, model, model_config, config, data, device, monitor, progress, on_progress,
                 progress_every, should_stop):
        self.model, self.model_config, self.config, self.data, self.device = model, model_config, config, data, device
        self.monitor_on, self.on_progress, self.progress_every = monitor, on_progress, progress_every
        self.should_stop = should_stop
        if progress is None:
            progress = os.environ.get(PROGRESS_ENV, "1") not in ("0", "false", "False", "no")
        self.progress = progress
        self.monitor = LayerMonitor(model)
        self.optimizer = make_optimizer(model.parameters(), config)
        self.scheduler = make_scheduler(self.optimizer, config)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.agc_params = [p for name, p in model.named_parameters()
                           if p.requires_grad and not name.startswith("fc.")]
        self.constrained = [p for p in self.params if p.ndim >= 2]
        self.generator = torch.Generator().manual_seed(config.seed)
        every = config.activation_every
        self.hist_every = config.hist_every or every * max(1, round(config.steps / 40 / every))

    def batches(self):
        return batch_stream(self.data, self.config.batch_size, self.generator)

    def run(self, keep_model: bool) -> Run:
        config, device = self.config, self.device
        steps = config.steps
        n_layers, n_act = len(self.monitor.layer_names), len(self.monitor.activation_names)
        n_rec = (steps + config.record_every - 1) // config.record_every
        n_act_rec = (steps + config.activation_every - 1) // config.activation_every
        per_step = torch.zeros(steps, 4, device=device)  # loss, grad norm before, after, clipped
        lrs = np.zeros(steps)
        layer_stats = torch.zeros(n_rec, 3, n_layers, device=device, dtype=self.monitor.norm_dtype)
        act_stats = torch.zeros(n_act_rec, n_act, len(ACTIVATION_STATS), device=device)
        hist_steps, hist_counts, hist_ranges = [], [], []
        evals: list[tuple[int, float, float, float]] = []
        self.diverged_at, self.reason = None, ""
        self.done = 0
        bar = _progress_bar(steps) if self.progress else None
        start = time.perf_counter()
        self.model.train()
        self.monitor.__enter__()
        try:
            for step, (x, y) in zip(range(steps), self.batches()):
                if self.should_stop is not None and self.should_stop():
                    break
                record = self.monitor_on and step % config.record_every == 0
                record_act = self.monitor_on and step % config.activation_every == 0
                self.monitor.collect_activations = record_act
                self.monitor.collect_histograms = record_act and step % self.hist_every == 0
                lrs[step] = self.optimizer.param_groups[0]["lr"]
                loss = F.cross_entropy(self.model(x), y)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if record:
                    self.monitor.begin_step()
                before, after, fired = clip_gradients(self.params, config.clip, config.clip_threshold,
                                                      self.agc_params)
                per_step[step] = torch.stack([loss.detach(), before, after, fired.float()]).to(device)
                if not bool(torch.isfinite(per_step[step, :2]).all()):
                    self.diverged_at = step
                    self.reason = "loss is not finite" if not math.isfinite(float(loss.detach())) else "gradient is not finite"
                    break
                self.optimizer.step()
                if config.max_weight_norm is not None:
                    apply_max_norm(self.constrained, config.max_weight_norm)
                if record:
                    layer_stats[step // config.record_every] = self.monitor.end_step()
                if record_act:
                    act_stats[step // config.activation_every] = self.monitor.activation_stats
                    if self.monitor.collect_histograms:
                        hist_steps.append(step)
                        hist_counts.append(self.monitor.histograms.clone())
                        hist_ranges.append(self.monitor.histogram_ranges.clone())
                self.done = step + 1
                last = step == steps - 1
                if self.done % config.eval_every == 0 or last:
                    evals.append((self.done, *self.evaluate(final=last)))
                    self.model.train()
                    if config.schedule == "plateau":
                        self.scheduler.step(evals[-1][3])
                if self.scheduler is not None and config.schedule != "plateau":
                    self.scheduler.step()
                if bar is not None:
                    bar.update(1)
                    if self.done % 20 == 0:
                        bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
                if self.on_progress is not None and self.done % self.progress_every == 0 and not last:
                    self.on_progress(self._record(per_step, lrs, layer_stats, act_stats, evals,
                                                  hist_steps, hist_counts, hist_ranges, start))
        finally:
            self.monitor.remove()
            if bar is not None:
                bar.close()
        run = self._record(per_step, lrs, layer_stats, act_stats, evals, hist_steps, hist_counts, hist_ranges, start)
        if keep_model:
            run.model = self.model
        return run

    @torch.no_grad()
    def evaluate(self, final: bool = False) -> tuple[float, float, float]:
        """(train accuracy, validation accuracy, validation loss) on ``eval_examples`` of each
        split; on the whole validation split (in chunks) when ``final``."""
        self.model.eval()
        self.monitor.collect_activations = False
        n = self.config.eval_examples
        train_acc = accuracy_and_loss(self.model, self.data.x_train[:n], self.data.y_train[:n])[0]
        val_x, val_y = (self.data.x_val, self.data.y_val) if final else (self.data.x_val[:n], self.data.y_val[:n])
        val_acc, val_loss = accuracy_and_loss(self.model, val_x, val_y)
        return train_acc, val_acc, val_loss

    def _record(self, per_step, lrs, layer_stats, act_stats, evals, hist_steps, hist_counts, hist_ranges,
                start) -> Run:
        done, every, act_every = self.done, self.config.record_every, self.config.activation_every
        rows = (done + every - 1) // every if self.monitor_on else 0
        act_rows = (done + act_every - 1) // act_every if self.monitor_on else 0
        steps_np = per_step[:done].cpu().numpy().astype(np.float64)
        layers = layer_stats[:rows].cpu().numpy().astype(np.float64)
        acts = act_stats[:act_rows].cpu().numpy().astype(np.float64)
        ev = np.array(evals, dtype=np.float64).reshape(-1, 4)
        n_act = len(self.monitor.activation_names)
        return Run(
            model_config=self.model_config, train_config=self.config, data_name=self.data.name,
            device=str(self.device), layer_names=list(self.monitor.layer_names),
            activation_names=list(self.monitor.activation_names),
            loss=steps_np[:, 0], lr=lrs[:done].copy(), grad_norm=steps_np[:, 1], grad_norm_clipped=steps_np[:, 2],
            clipped=steps_np[:, 3] > 0.5, stat_step=np.arange(rows) * every, act_step=np.arange(act_rows) * act_every,
            layer_grad_norm=layers[:, 0], layer_weight_norm=layers[:, 1],
            layer_update_ratio=layers[:, 2] / np.maximum(layers[:, 1], 1e-12),
            act_mean=acts[:, :, 0], act_std=acts[:, :, 1], act_saturated=acts[:, :, 2], act_dead=acts[:, :, 3],
            eval_step=ev[:, 0].astype(int), train_acc=ev[:, 1], val_acc=ev[:, 2], val_loss=ev[:, 3],
            hist_step=np.array(hist_steps, dtype=int),
            hist_counts=(torch.stack(hist_counts).cpu().numpy() if hist_counts
                         else np.zeros((0, n_act, HIST_BINS))),
            hist_range=(torch.stack(hist_ranges).cpu().numpy() if hist_ranges else np.zeros((0, n_act, 2))),
            diverged_at=self.diverged_at, diverged_reason=self.reason, seconds=time.perf_counter() - start,
        )


@torch.no_grad()
def accuracy_and_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      chunk: int = 1024) -> tuple[float, float]:
    """``model``'s accuracy and mean cross-entropy on ``images`` and ``labels``, in chunks of
    ``chunk`` images, on the model's device. The model's mode is left as it is (call
    ``model.eval()`` first for the usual evaluation; in training mode batch norm uses each
    chunk's own statistics)."""
    device = next(model.parameters()).device
    images, labels = images.to(device), labels.to(device)
    correct, loss = torch.zeros((), device=device), torch.zeros((), device=device)
    for start in range(0, len(labels), chunk):
        logits = model(images[start:start + chunk])
        target = labels[start:start + chunk]
        correct += (logits.argmax(1) == target).sum()
        loss += F.cross_entropy(logits, target, reduction="sum")
    return float(correct) / len(labels), float(loss) / len(labels)


def make_optimizer(parameters, config: TrainConfig) -> torch.optim.Optimizer:
    """The ``torch.optim`` optimizer named by ``config.optimizer``."""
    params, lr, wd = list(parameters), config.lr, config.weight_decay
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd)
    if config.optimizer == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum, nesterov=config.nesterov, weight_decay=wd)
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=wd)
    if config.optimizer == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=wd)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    return torch.optim.AdamW(params, lr=lr, weight_decay=wd)


def make_scheduler(optimizer, config: TrainConfig):
    """The ``torch.optim.lr_scheduler`` for ``config.schedule`` (``None`` for ``constant``)."""
    sched = torch.optim.lr_scheduler
    if config.schedule == "step":
        return sched.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    if config.schedule == "exponential":
        return sched.ExponentialLR(optimizer, gamma=config.gamma)
    if config.schedule == "plateau":
        return sched.ReduceLROnPlateau(optimizer, mode="min", factor=config.gamma, patience=config.patience)
    if config.schedule == "warmup_cosine":
        cosine_steps = max(1, config.steps - config.warmup_steps)
        cosine = sched.CosineAnnealingLR(optimizer, T_max=cosine_steps)
        if config.warmup_steps == 0:
            return cosine
        warmup = sched.LinearLR(optimizer, start_factor=1.0 / config.warmup_steps, total_iters=config.warmup_steps)
        return sched.SequentialLR(optimizer, [warmup, cosine], milestones=[config.warmup_steps])
    if config.schedule == "one_cycle":
        return sched.OneCycleLR(optimizer, max_lr=config.lr, total_steps=config.steps,
                                cycle_momentum=config.optimizer in ("momentum", "adam", "adamw"))
    if config.schedule == "range_test":
        growth = (config.lr / config.range_start) ** (1.0 / max(config.steps - 1, 1))
        start = config.range_start / config.lr
        return sched.LambdaLR(optimizer, lambda step: start * growth ** step)
    return None


def batch_stream(data: ImageData, batch_size: int, generator: torch.Generator):
    """Endless mini-batches: each epoch a fresh permutation drawn from ``generator`` (so the
    seed fixes the order), the last incomplete batch of an epoch dropped."""
    n = len(data.y_train)
    batch = min(batch_size, n)
    while True:
        order = torch.randperm(n, generator=generator).to(data.device)
        for start in range(0, n - batch + 1, batch):
            index = order[start:start + batch]
            yield data.x_train[index], data.y_train[index]


@torch.no_grad()
def apply_max_norm(parameters, max_norm: float) -> None:
    """Project each output unit's weights (dim 0) onto the ball of radius ``max_norm``.

    This is a max-norm *constraint* on the weights; it is neither gradient clipping nor
    weight normalization.
    """
    for p in parameters:
        p.copy_(torch.renorm(p, p=2, dim=0, maxnorm=max_norm))


def _progress_bar(total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="training", unit="step", delay=2.0, leave=False)
