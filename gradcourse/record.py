"""The record of one training run: numbers only, small enough to keep thousands of steps."""
from __future__ import annotations

import os
import pickle
import threading
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from . import _validate as check
from ._norms import accumulation_dtype
from .monitor import HIST_BINS


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
    ``(histogram steps, activation layers, bins)``, counted on the batch's first examples
    (``monitor.HIST_SAMPLE`` values at most), with the range of the values counted,
    ``[low, high]``, in ``hist_range``.

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

    def grad_norm_ratio(self, step: int | None = 0, first: str = "conv1", last: str = "fc"):
        """Gradient norm of layer ``first`` over that of ``last`` at the recorded step closest to
        ``step``: far below 1 when gradients vanish towards the input, far above when they explode.
        With ``step=None``, the ratio at every recorded step (an array along ``stat_step``)."""
        if step is None:
            return self.layer_grad_norm[:, self.layer_index(first)] / self.layer_grad_norm[:, self.layer_index(last)]
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

    def end_loss(self, last: int = 20) -> float:
        """The training loss at the end of the run: the mean over its last ``last`` steps
        (all of them in a shorter run). One batch's loss is noisy; this is the number the
        chapters compare, e.g. with ln 10, the loss of a network that has learned nothing
        about 10 classes."""
        check.integer("Run.end_loss", "last", last, 1)
        if self.steps_done == 0:
            raise ValueError("end_loss: the run recorded no step")
        return float(np.mean(self.loss[-int(last):]))

    def outcome(self) -> str:
        """How the run ended, for a table of runs: ``diverged at step N``, or the final
        validation accuracy to two decimals."""
        return f"diverged at step {self.diverged_at}" if self.diverged else f"{self.final_val_acc:.2f}"

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


def seed_range(values, fmt: str = ".2g") -> str:
    """``"smallest to largest"`` of one measurement over seeds (or any values), each written
    with the format spec ``fmt``: ``seed_range([0.91, 0.97, 0.94], ".2f")`` is
    ``"0.91 to 0.97"``. The chapters report a 3-seed result this way."""
    values = np.asarray(values, dtype=float).ravel()
    if values.size == 0:
        raise ValueError("seed_range: values is empty; give one value per seed")
    if np.isnan(values).any():
        raise ValueError(f"seed_range: values = {values.tolist()!r:.80} hold NaN (a diverged run?); "
                         "allowed: numbers, +-inf included")
    try:
        return f"{values.min():{fmt}} to {values.max():{fmt}}"
    except ValueError:
        raise ValueError(f"seed_range: fmt = {fmt!r} is not a format spec for a float "
                         "(allowed: e.g. '.2f', '.2g', '.0e')") from None


class RunBuffer:
    """What a training loop measures while ``k`` models train side by side (``k = 1`` for
    :func:`gradcourse.train`), kept on the training device until the run ends, so that
    recording a statistic never waits for a GPU (:mod:`gradcourse.train` says when a run does).
    :meth:`run` turns model ``i``'s share into its :class:`~gradcourse.record.Run`."""

    def __init__(self, train_configs: list, layer_names: list[str], activation_names: list[str], device,
                 monitored: bool):
        base, k = train_configs[0], len(train_configs)
        self.configs, self.monitored = train_configs, monitored
        self.layer_names, self.activation_names = list(layer_names), list(activation_names)
        self.record_every, self.activation_every = base.record_every, base.activation_every
        # Written in place, step by step: a run keeps no tensor of its own per step (small
        # tensors kept alive between a step's large ones would fragment the memory that the
        # next step's activations reuse).
        steps = base.steps
        n_rec = -(-steps // base.record_every)
        n_act = -(-steps // base.activation_every)
        self.per_step = torch.zeros(steps, 4, k, device=device)  # loss, grad norm before, after, clipped
        self.lr = np.zeros((steps, k))
        self.layers = torch.zeros(n_rec, 3, k, len(layer_names), device=device, dtype=accumulation_dtype(device))
        self.acts = torch.zeros(n_act, k, len(activation_names), 4, device=device)
        self.hist_steps: list[int] = []
        self.hist_counts: list = []
        self.hist_ranges: list = []
        self.evals: list[tuple] = []  # (step, train accuracies, validation accuracies, validation losses)
        self.diverged_at: list[int | None] = [None] * k
        self.reasons = [""] * k
        self.done = 0

    def add_step(self, step: int, losses, before, after, fired) -> None:
        """The step's ``(k,)`` losses and total gradient norms before and after clipping,
        and whether clipping changed each model's gradient."""
        torch.stack([losses, before, after, fired], out=self.per_step[step])

    def add_layers(self, step: int, norms) -> None:
        """Per-layer norms, ``(3, k, layers)`` (:attr:`LayerStats.norms`)."""
        self.layers[step // self.record_every] = norms

    def add_activations(self, step: int, table, histograms=None) -> None:
        """Activation statistics ``(k, modules, 4)``; with one model, optionally the
        ``(counts, ranges)`` of its activation histograms."""
        self.acts[step // self.activation_every] = table
        if histograms is not None:
            self.hist_steps.append(step)
            self.hist_counts.append(histograms[0].clone())
            self.hist_ranges.append(histograms[1].clone())

    def add_evaluation(self, step: int, train_acc, val_acc, val_loss) -> None:
        self.evals.append((step, *(np.asarray(v, dtype=np.float64) for v in (train_acc, val_acc, val_loss))))

    def diverge(self, index: int, step: int, reason: str) -> None:
        self.diverged_at[index], self.reasons[index] = step, reason

    def run(self, index: int, model_config, data_name: str, device, seconds: float) -> Run:
        """Model ``index``'s record, up to the last completed step (or its divergence)."""
        stop = self.diverged_at[index] if self.diverged_at[index] is not None else self.done
        rows = -(-stop // self.record_every) if self.monitored else 0
        act_rows = -(-stop // self.activation_every) if self.monitored else 0
        steps = self.per_step[:stop, :, index].cpu().numpy().astype(np.float64)
        layers = self.layers[:rows, :, index].cpu().numpy().astype(np.float64)
        acts = self.acts[:act_rows, index].cpu().numpy().astype(np.float64)
        evals = [e for e in self.evals if e[0] <= stop]
        n_act = len(self.activation_names)
        return Run(
            model_config=model_config, train_config=self.configs[index], data_name=data_name, device=str(device),
            layer_names=list(self.layer_names), activation_names=list(self.activation_names),
            loss=steps[:, 0], lr=self.lr[:stop, index].copy(), grad_norm=steps[:, 1], grad_norm_clipped=steps[:, 2],
            clipped=steps[:, 3] > 0.5, stat_step=np.arange(rows) * self.record_every,
            act_step=np.arange(act_rows) * self.activation_every,
            layer_grad_norm=layers[:, 0], layer_weight_norm=layers[:, 1],
            layer_update_ratio=layers[:, 2] / np.maximum(layers[:, 1], 1e-12),
            act_mean=acts[:, :, 0], act_std=acts[:, :, 1], act_saturated=acts[:, :, 2], act_dead=acts[:, :, 3],
            eval_step=np.array([e[0] for e in evals], dtype=int),
            train_acc=np.array([e[1][index] for e in evals]), val_acc=np.array([e[2][index] for e in evals]),
            val_loss=np.array([e[3][index] for e in evals]),
            hist_step=np.array(self.hist_steps, dtype=int),
            hist_counts=(torch.stack(self.hist_counts).cpu().numpy() if self.hist_counts
                         else np.zeros((0, n_act, HIST_BINS))),
            hist_range=(torch.stack(self.hist_ranges).cpu().numpy() if self.hist_ranges
                        else np.zeros((0, n_act, 2))),
            diverged_at=self.diverged_at[index], diverged_reason=self.reasons[index], seconds=seconds,
        )
