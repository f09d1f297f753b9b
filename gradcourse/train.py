"""Train one configuration and return its :class:`~gradcourse.record.Run`.

:func:`train` and :func:`gradcourse.vectorized.train_many` share one loop,
:class:`Loop`: sample a batch, forward and backward, the monitor reads the raw gradients,
clip, check for divergence, step, record per-layer norms, evaluate, schedule. What differs
between one model and K models side by side is in :class:`OneModel` (plain ``torch.optim``
and :func:`~gradcourse.clipping.clip_gradients`) and in
:class:`gradcourse.vectorized.WideModels`. Statistics stay on the training device until
the run ends (:class:`~gradcourse.record.RunBuffer`), so a GPU run synchronizes once per
step for the divergence check, and otherwise only where a number must reach Python (a
histogram's range, which ``torch.histc`` takes as numbers; the float32 range check of K
models' norms), not once per statistic.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, fields, replace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import _validate as check
from .cache import load_run, run_key, save_run
from .clipping import CLIP_MODES, clip_gradients
from .data import DataConfig, ImageData, load_data
from .device import keep_freed_memory, pick_device
from .models import CNNConfig, build_model
from .monitor import LayerMonitor
from .record import Run, RunBuffer

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
        data: an :class:`~gradcourse.data.ImageData`, a :class:`DataConfig` or a dataset name (default ``digits``).
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
            otherwise. Needs ``data`` whose configuration is known (a name, a :class:`DataConfig`
            or what :func:`~gradcourse.load_data` returned); ignored with ``model``,
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
    if model is None:
        model = build_model(model_config, data, seed=train_config.seed)
    else:  # the seed still fixes any randomness of the model's own (dropout)
        torch.manual_seed(train_config.seed)
    model = model.to(device)
    layer_monitor = LayerMonitor(model)
    loop = Loop(OneModel(model, train_config, layer_monitor), layer_monitor, [train_config], data, device,
                measure=monitor, progress=progress, on_progress=on_progress, progress_every=progress_every,
                should_stop=should_stop)
    run = loop.run(model_config)[0]
    if keep_model:
        run.model = model
    if key is not None and not (should_stop is not None and run.steps_done < train_config.steps and not run.diverged):
        save_run(key, run)
    return run


class Loop:
    """The training loop of :func:`train` (one model) and :func:`~gradcourse.vectorized.train_many` (K
    models side by side in one wide network). Per step: a batch, forward and backward
    (``models.forward_backward``), the monitor reads the raw gradients, clipping
    (``models.clip``), the divergence check, the update (``models.step``), the monitor's
    per-layer norms; every ``eval_every`` steps an evaluation; then the learning-rate
    schedule. Everything measured goes into one :class:`~gradcourse.record.RunBuffer`.

    ``models`` is :class:`OneModel` or :class:`gradcourse.vectorized.WideModels`: they
    differ only in how they run the passes, clip and update (``torch.optim`` for one model,
    SGD's rule per model for K), each returning one value per model.
    """

    def __init__(self, models, monitor: LayerMonitor, configs: list[TrainConfig], data: ImageData, device, *,
                 measure: bool = True, progress: bool | None = False, on_progress=None, progress_every: int = 25,
                 should_stop=None):
        self.models, self.monitor, self.configs, self.data, self.device = models, monitor, configs, data, device
        self.monitor_on = measure
        if progress is None:
            progress = os.environ.get(PROGRESS_ENV, "1") not in ("0", "false", "False", "no")
        self.progress, self.on_progress, self.progress_every = progress, on_progress, progress_every
        self.should_stop = should_stop
        base = configs[0]
        every = base.activation_every
        self.hist_every = base.hist_every or every * max(1, round(base.steps / 40 / every))

    def run(self, model_config) -> list[Run]:
        config, device, monitor, models = self.configs[0], self.device, self.monitor, self.models
        k, steps = len(self.configs), self.configs[0].steps
        buffer = RunBuffer(self.configs, monitor.layer_names, monitor.activation_names, device, self.monitor_on)
        alive, all_alive = torch.ones(k, dtype=torch.bool, device=device), True
        bar = _progress_bar(steps) if self.progress else None
        batches = batch_stream(self.data, config.batch_size, torch.Generator().manual_seed(config.seed))
        start = time.perf_counter()
        models.train(True)
        hooks = monitor if self.monitor_on else contextlib.nullcontext()
        try:
            with hooks:
                for step, (x, y) in zip(range(steps), batches):
                    if self.should_stop is not None and self.should_stop():
                        break
                    record = self.monitor_on and step % config.record_every == 0
                    record_act = self.monitor_on and step % config.activation_every == 0
                    monitor.collect_activations = record_act
                    monitor.collect_histograms = hist = record_act and step % self.hist_every == 0 and k == 1
                    models.observe(record_act)
                    buffer.lr[step] = models.learning_rates()
                    losses = models.forward_backward(x, y, alive)
                    if record:
                        models.begin_record()
                    before, after, fired = models.clip()
                    buffer.add_step(step, losses, before, after, fired)
                    if not self._finite(losses, before, None if all_alive else alive):
                        alive = self._diverge(buffer, step, losses, before, alive)
                        all_alive = bool(alive.all())
                        if not bool(alive.any()):
                            break
                    models.step(None if all_alive else alive)
                    if record:
                        buffer.add_layers(step, models.end_record())
                    if record_act:
                        buffer.add_activations(step, monitor.activation_table(),
                                               (monitor.histograms, monitor.histogram_ranges) if hist else None)
                    buffer.done = done = step + 1
                    last = done == steps
                    val_loss = None
                    if done % config.eval_every == 0 or last:
                        buffer.add_evaluation(done, *self.evaluate(final=last))
                        val_loss = buffer.evals[-1][3][0]
                        models.train(True)
                    models.schedule(val_loss)
                    if bar is not None:
                        bar.update(1)
                        if done % 20 == 0:
                            bar.set_postfix(loss=f"{float(losses[0]):.3f}")
                    if self.on_progress is not None and done % self.progress_every == 0 and not last:
                        self.on_progress(buffer.run(0, model_config, self.data.name, device,
                                                    time.perf_counter() - start))
        finally:
            if bar is not None:
                bar.close()
        seconds = (time.perf_counter() - start) / k
        return [buffer.run(i, model_config, self.data.name, device, seconds) for i in range(k)]

    @staticmethod
    def _finite(losses, before, alive) -> bool:
        """Whether every live model's loss and gradient norm are finite (``alive``: which
        models are, ``None`` for all), in one look: their sum is finite only if each of them
        is. (A sum of finite values that overflows only sends the loop to :meth:`_diverge`,
        which tests each model.)"""
        total = losses + before
        if alive is not None:
            total = torch.where(alive, total, 0.0)
        return math.isfinite(float(total.sum()))

    @staticmethod
    def _diverge(buffer, step: int, losses, before, alive):
        """Mark the models whose loss or gradient just became non-finite; the new mask."""
        finite = torch.isfinite(losses) & torch.isfinite(before)
        for index in torch.nonzero(alive & ~finite).flatten().tolist():
            buffer.diverge(index, step, "loss is not finite" if not bool(torch.isfinite(losses[index]))
                           else "gradient is not finite")
        return alive & finite

    @torch.no_grad()
    def evaluate(self, final: bool = False):
        """Per model: (train accuracy, validation accuracy, validation loss) on
        ``eval_examples`` of each split; on the whole validation split when ``final``."""
        self.models.train(False)
        self.monitor.collect_activations = False
        self.models.observe(False)
        n, data = self.configs[0].eval_examples, self.data
        train_acc, _ = self.models.evaluate(data.x_train[:n], data.y_train[:n])
        val_x, val_y = (data.x_val, data.y_val) if final else (data.x_val[:n], data.y_val[:n])
        val_acc, val_loss = self.models.evaluate(val_x, val_y)
        return train_acc, val_acc, val_loss


class OneModel:
    """:func:`train`'s side of the :class:`Loop`: one model, the ``torch.optim`` optimizer and
    ``lr_scheduler`` its config names, and clipping by :func:`~gradcourse.clipping.clip_gradients`."""

    def __init__(self, model: nn.Module, config: TrainConfig, monitor: LayerMonitor):
        self.model, self.config, self.monitor = model, config, monitor
        self.optimizer = make_optimizer(model.parameters(), config)
        self.scheduler = make_scheduler(self.optimizer, config)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.agc_params = [p for name, p in model.named_parameters()
                           if p.requires_grad and not name.startswith("fc.")]
        self.constrained = [p for p in self.params if p.ndim >= 2]
        # Without clipping, the total norm is only reported: when the monitor copies every
        # trainable gradient (once), it is the norm of that copy. (Clipping uses
        # clip_grad_norm_'s own sum, so a run clips exactly as PyTorch does.)
        watched = [id(p) for p in monitor.params]
        self.norm_from_monitor = config.clip == "none" and sorted(watched) == sorted(id(p) for p in self.params)
        self.not_clipped: torch.Tensor | None = None   # made once, on the gradients' device
        self.recording = False

    def train(self, mode: bool) -> None:
        self.model.train(mode)

    def observe(self, on: bool) -> None:
        """(Only the wide network reorders work on steps that record no activations.)"""

    def learning_rates(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def forward_backward(self, x, y, alive) -> torch.Tensor:
        loss = F.cross_entropy(self.model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return loss.detach().view(1)

    def begin_record(self) -> None:
        """Per-layer norms are wanted this step: the monitor copies the raw gradients."""
        self.monitor.begin_step()
        self.recording = True

    def end_record(self) -> torch.Tensor:
        self.recording = False
        return self.monitor.end_step().norms

    def clip(self):
        if self.recording and self.norm_from_monitor:
            norm = self.monitor.total_grad_norm()
            if self.not_clipped is None:
                self.not_clipped = torch.zeros(1, dtype=torch.bool, device=norm.device)
            return norm, norm, self.not_clipped
        before, after, fired = clip_gradients(self.params, self.config.clip, self.config.clip_threshold,
                                              self.agc_params)
        return before.view(1), after.view(1), fired.view(1)

    def step(self, alive) -> None:
        """One optimizer step (``alive``, which models still train, concerns only
        :class:`gradcourse.vectorized.WideModels`)."""
        self.optimizer.step()
        if self.config.max_weight_norm is not None:
            apply_max_norm(self.constrained, self.config.max_weight_norm)

    def schedule(self, val_loss: float | None) -> None:
        """One scheduler step; ``plateau`` steps only after an evaluation, on its loss."""
        if self.config.schedule == "plateau":
            if val_loss is not None:
                self.scheduler.step(val_loss)
        elif self.scheduler is not None:
            self.scheduler.step()

    def evaluate(self, images, labels):
        return per_model_accuracy_and_loss(self.model, images, labels, chunk=1024)


@torch.no_grad()
def accuracy_and_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      chunk: int = 1024) -> tuple[float, float]:
    """``model``'s accuracy and mean cross-entropy on ``images`` and ``labels``, in chunks of
    ``chunk`` images, on the model's device. The model's mode is left as it is (call
    ``model.eval()`` first for the usual evaluation; in training mode batch norm uses each
    chunk's own statistics)."""
    accuracy, loss = per_model_accuracy_and_loss(model, images, labels, chunk)
    return float(accuracy[0]), float(loss[0])


@torch.no_grad()
def per_model_accuracy_and_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, chunk: int):
    """:func:`accuracy_and_loss` as two ``(k,)`` NumPy arrays, for a model whose logits are
    ``(batch, classes)`` (k = 1) or ``(batch, k, classes)`` (K models side by side)."""
    device = next(model.parameters()).device
    images, labels = images.to(device), labels.to(device)
    correct = loss = 0
    for start in range(0, len(labels), chunk):
        logits = model(images[start:start + chunk])
        logits = logits if logits.ndim == 3 else logits.unsqueeze(1)                     # (batch, k, classes)
        target = labels[start:start + chunk].unsqueeze(1).expand(-1, logits.shape[1])   # (batch, k)
        correct = correct + (logits.argmax(-1) == target).sum(0)
        loss = loss + F.cross_entropy(logits.permute(0, 2, 1), target, reduction="none").sum(0)
    return (correct / len(labels)).cpu().numpy(), (loss / len(labels)).cpu().numpy()


def make_optimizer(parameters, config: TrainConfig) -> torch.optim.Optimizer:
    """The ``torch.optim`` optimizer named by ``config.optimizer``, with ``foreach=True``:
    one call updates all parameter tensors (PyTorch picks it by default on CUDA only; on a
    CPU it gives the same numbers, with less overhead per tensor)."""
    params, lr, common = list(parameters), config.lr, {"weight_decay": config.weight_decay, "foreach": True}
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, **common)
    if config.optimizer == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum, nesterov=config.nesterov, **common)
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, **common)
    if config.optimizer == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, **common)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, **common)
    return torch.optim.AdamW(params, lr=lr, **common)


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
