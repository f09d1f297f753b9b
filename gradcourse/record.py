"""The record of one training run: numbers only, small enough to keep thousands of steps."""
from __future__ import annotations

import os
import pickle
import threading
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np


@dataclass
class Run:
    """Everything measured during one call of :func:`gradcourse.train`.

    Per step (index ``0 .. steps_done-1``): ``loss``, ``lr``, ``grad_norm`` (total, before
    clipping), ``grad_norm_clipped`` (after), ``clipped`` (whether clipping changed anything).

    Per recorded step (``stat_step``, every ``record_every`` steps), arrays of shape
    ``(recorded steps, layers)`` in the order of ``layer_names``: ``layer_grad_norm``
    (before clipping), ``layer_weight_norm`` (before the step's update), ``layer_update_ratio``. At the steps in
    ``act_step`` (every ``activation_every`` steps), over ``activation_names``: ``act_mean``, ``act_std``, ``act_saturated`` (fraction of units
    where the activation's derivative is nearly zero), ``act_dead`` (fraction of channels
    flat for the whole batch).

    Periodically (``eval_step``): ``train_acc``, ``val_acc``, ``val_loss``.

    Activation histograms (``hist_step``): ``hist_counts`` of shape
    ``(histogram steps, activation layers, bins)`` with each row's ``[low, high]`` in
    ``hist_range``.

    A run that met a non-finite loss or gradient stops there: ``diverged_at`` is that step,
    ``diverged_reason`` says what was non-finite, and every array keeps the steps before it.
    """

    model_config: object
    train_config: object
    data_name: str
    device: str
    layer_names: list[str]
    activation_names: list[str]
    loss: np.ndarray
    lr: np.ndarray
    grad_norm: np.ndarray
    grad_norm_clipped: np.ndarray
    clipped: np.ndarray
    stat_step: np.ndarray
    layer_grad_norm: np.ndarray
    layer_weight_norm: np.ndarray
    layer_update_ratio: np.ndarray
    act_step: np.ndarray
    act_mean: np.ndarray
    act_std: np.ndarray
    act_saturated: np.ndarray
    act_dead: np.ndarray
    eval_step: np.ndarray
    train_acc: np.ndarray
    val_acc: np.ndarray
    val_loss: np.ndarray
    hist_step: np.ndarray
    hist_counts: np.ndarray
    hist_range: np.ndarray
    diverged_at: int | None = None
    diverged_reason: str = ""
    seconds: float = 0.0
    model: object = field(default=None, repr=False, compare=False)

    @property
    def steps_done(self) -> int:
        """Number of completed optimizer steps."""
        return len(self.loss)

    @property
    def diverged(self) -> bool:
        return self.diverged_at is not None

    @property
    def final_val_acc(self) -> float:
        """Validation accuracy at the last evaluation (NaN if there was none)."""
        return float(self.val_acc[-1]) if len(self.val_acc) else float("nan")

    @property
    def best_val_acc(self) -> float:
        return float(np.max(self.val_acc)) if len(self.val_acc) else float("nan")

    @property
    def clip_fraction(self) -> float:
        """Fraction of completed steps where clipping changed the gradient."""
        return float(np.mean(self.clipped)) if len(self.clipped) else 0.0

    def layer_index(self, name: str) -> int:
        if name not in self.layer_names:
            raise KeyError(f"layer {name!r} is not in this run; layers: {', '.join(self.layer_names)}")
        return self.layer_names.index(name)

    def grad_norm_at(self, step: int = 0) -> dict[str, float]:
        """Per-layer gradient norms at the recorded step closest to ``step`` (default: the first)."""
        if not len(self.stat_step):
            raise ValueError("this run recorded no per-layer statistics")
        row = int(np.argmin(np.abs(self.stat_step - step)))
        return dict(zip(self.layer_names, self.layer_grad_norm[row].tolist()))

    def grad_norm_ratio(self, step: int = 0, first: str = "conv1", last: str = "fc") -> float:
        """Gradient norm of layer ``first`` over that of ``last`` at the recorded step closest to
        ``step``: far below 1 when gradients vanish towards the input, far above when they explode."""
        norms = self.grad_norm_at(step)
        return norms[first] / norms[last]

    def summary(self) -> str:
        """One line of at most about 70 characters: steps, final loss, validation accuracy,
        clipping; a diverged run as "diverged at step N" with the reason."""
        if self.diverged:
            return f"diverged at step {self.diverged_at} ({self.diverged_reason})"
        loss = f"{self.loss[-1]:.3g}" if len(self.loss) else "n/a"
        clipped = f", clipped {self.clip_fraction:.0%}" if self.train_config.clip != "none" else ""
        device = "" if self.device == "cpu" else f" on {self.device}"
        return f"finished {self.steps_done} steps: loss {loss}, val acc {self.final_val_acc:.3f}{clipped}{device}"

    def __repr__(self) -> str:
        return f"Run({self.data_name}, {self.summary()})"

    def without_model(self) -> "Run":
        """A copy without the trained model, for saving or caching."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["model"] = None
        return Run(**values)

    def save(self, path) -> None:
        """Write the record (without the model) to ``path``. The file appears whole or not at
        all (written under a temporary name, then renamed), so notebooks running side by side
        never read a half-written record."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.part")
        try:
            with open(partial, "wb") as handle:
                pickle.dump(self.without_model(), handle, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)

    @staticmethod
    def load(path) -> "Run":
        """Read a record written by :meth:`save`."""
        with open(path, "rb") as handle:
            return pickle.load(handle)
