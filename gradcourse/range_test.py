"""The learning-rate range test (Smith 2017): one short run whose learning rate grows
geometrically every step, from far too small to far too large, with the loss recorded.

Read the curve from the left: flat (the rate is too small to move anything), then falling
(the rate is useful), then turning up and blowing up (the rate is too large). A good
constant rate, or the peak of a one-cycle schedule, lies where the loss still falls
steeply, a little below the minimum of the curve.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from . import _validate as check
from .models import CNNConfig
from .record import Run
from .train import TrainConfig, train


@dataclass(frozen=True)
class RangeTest:
    """The outcome of :func:`gradcourse.lr_range_test`.

    Attributes:
        lrs: the learning rate of each step kept.
        losses: the training loss of each step kept, smoothed by an exponential moving
            average (bias-corrected, as fastai's and Smith's finders do): one mini-batch's
            loss is too noisy to read.
        run: the whole run's record (per-layer gradients included).
    """

    lrs: np.ndarray
    losses: np.ndarray
    run: Run

    @property
    def min_loss_lr(self) -> float:
        """The rate at the lowest smoothed loss, already on the edge (too large to train at)."""
        return float(self.lrs[int(np.argmin(self.losses))])

    @property
    def steepest_lr(self) -> float:
        """The rate where the smoothed loss falls fastest per decade of rate, before the
        minimum (the first tenth of the steps left out: the average is still settling there)."""
        start, end = len(self.lrs) // 10, int(np.argmin(self.losses)) + 1
        if end - start < 3:
            return float(self.lrs[min(start, end - 1)])
        slope = np.gradient(self.losses[start:end], np.log10(self.lrs[start:end]))
        return float(self.lrs[start + int(np.argmin(slope))])

    def summary(self) -> str:
        return (f"range test over {len(self.lrs)} steps: steepest fall at lr {self.steepest_lr:.2g}, "
                f"lowest loss at lr {self.min_loss_lr:.2g}")


def lr_range_test(model_config: CNNConfig | None = None, train_config: TrainConfig | None = None,
                  data=None, *, lr_min: float = 1e-5, lr_max: float = 10.0, steps: int = 100,
                  smoothing: float = 0.9, stop_factor: float = 4.0, **train_kwargs) -> RangeTest:
    """Run the range test: ``steps`` steps of ``train_config``'s optimizer with the rate
    raised geometrically from ``lr_min`` to ``lr_max`` (``schedule="range_test"``).

    The curve is cut where the smoothed loss exceeds ``stop_factor`` times its minimum (or
    where the run diverged): beyond that it only says "too large". Other keyword arguments
    go to :func:`gradcourse.train` (``device``, ``cache``...).
    """
    check.number("lr_range_test", "lr_min", lr_min, 0.0, lr_max, low_open=True)
    check.integer("lr_range_test", "steps", steps, 3)
    check.number("lr_range_test", "smoothing", smoothing, 0.0, 1.0)
    check.number("lr_range_test", "stop_factor", stop_factor, 1.0, 1e6, low_open=True)
    config = replace(train_config or TrainConfig(), schedule="range_test", lr=lr_max, range_start=lr_min,
                     steps=steps)
    run = train(model_config, config, data, **train_kwargs)
    losses = _smoothed(run.loss, smoothing)
    keep = len(losses)
    if keep:
        above = np.flatnonzero(losses > stop_factor * np.minimum.accumulate(losses))
        keep = int(above[0]) if len(above) else keep
    keep = max(keep, min(3, len(losses)))
    return RangeTest(lrs=run.lr[:keep], losses=losses[:keep], run=run)


def _smoothed(values: np.ndarray, beta: float) -> np.ndarray:
    out, average = np.empty(len(values)), 0.0
    for i, value in enumerate(values):
        average = beta * average + (1 - beta) * value
        out[i] = average / (1 - beta ** (i + 1))
    return out
