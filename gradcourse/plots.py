"""Figures from run records: gradient flow, activation statistics, updates, curves, clipping.

Every function takes :class:`~gradcourse.record.Run` objects, returns the matplotlib
``Figure`` and accepts ``ax=`` where it draws on a single axes. Runs that diverged are
drawn up to the step where they stopped, with a marker there; runs with a single step or
none draw without raising. Colours are colour-blind safe (Okabe-Ito for lines,
viridis for heatmaps) and magnitudes that span decades use log scales.
"""
from __future__ import annotations

import io
import math
from typing import Mapping

import numpy as np


class _Pyplot:
    """``matplotlib.pyplot``, imported on first use: the explorers import this module for
    the palette and the frame figure, and ``import gradcourse`` stays free of matplotlib."""

    def __getattr__(self, name):
        import matplotlib.pyplot

        return getattr(matplotlib.pyplot, name)


plt = _Pyplot()

from . import _validate as check
from .record import Run

FRAME_DPI = 90  # explorer frames: 8 x 3 inches -> 720 x 270 px, about the book's column
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
HEATMAP = "viridis"
UPDATE_RATIO_BAND = (1e-4, 1e-2)


def figure_to_png(fig, dpi: int = 80) -> bytes:
    """Render ``fig`` to PNG bytes, cropped to its content, and close it (so notebooks do
    not also display it)."""
    return render_png(fig, dpi, palette=False, tight=True)


def colors(n: int) -> list[str]:
    """``n`` colour-blind-safe line colours (Okabe-Ito, repeating)."""
    return [OKABE_ITO[i % len(OKABE_ITO)] for i in range(n)]


def depth_colors(n: int, cmap: str = HEATMAP) -> list:
    """``n`` colours ordered from the first layer to the last."""
    return [plt.get_cmap(cmap)(x) for x in np.linspace(0.0, 0.9, max(n, 1))][:n]


def _log_norm(**kwargs):
    from matplotlib.colors import LogNorm

    return LogNorm(**kwargs)


def _axes(ax, figsize=(6.4, 4.0)):
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize, layout="constrained")
        return fig, ax
    return ax.figure, ax


def _as_runs(runs) -> dict[str, list[Run]]:
    """``{label: [run, ...]}`` from a run, a list of runs or ``{label: run or list of runs}``
    (a list: one run per seed, drawn in one colour)."""
    if isinstance(runs, Run):
        return {describe_run(runs): [runs]}
    if isinstance(runs, Mapping):
        groups = {}
        for label, value in runs.items():
            group = [value] if isinstance(value, Run) else list(value) if isinstance(value, (list, tuple)) else None
            if not group or not all(isinstance(run, Run) for run in group):
                raise ValueError(f"runs[{label!r}] is {type(value).__name__} {value!r:.60}; allowed: a Run "
                                 "or a non-empty list of Runs (one per seed)")
            groups[label] = group
        return groups
    runs = list(runs)
    for index, run in enumerate(runs):
        if not isinstance(run, Run):
            raise ValueError(f"runs[{index}] is {type(run).__name__} {run!r:.60}; allowed: a Run "
                             "(or pass {label: [runs]} to draw several seeds in one colour)")
    return {f"run {i + 1}": [run] for i, run in enumerate(runs)}


# How every figure draws the seeds after the first of a comparison: in the first one's
# colour, thin and faint, without a marker or a legend entry (``ax.plot(..., **OTHER_SEEDS)``).
OTHER_SEEDS = {"linewidth": 0.8, "alpha": 0.45, "marker": None, "label": "_nolegend_"}


def running_mean(values, window: int) -> np.ndarray:
    """Running mean of ``values`` over ``window`` consecutive entries (a noisy per-step
    series, such as the loss of each batch, made readable): ``len(values) - window + 1``
    values, the first at index ``window - 1``. ``window = 1`` returns the values."""
    check.integer("running_mean", "window", window, 1)
    window = int(window)
    values = np.asarray(values, dtype=float)
    if window > len(values):
        raise ValueError(f"running_mean.window = {window} is longer than the {len(values)} values")
    return np.convolve(values, np.ones(window) / window, mode="valid")


def _positive(values) -> np.ndarray:
    """Values for a log axis: non-finite and non-positive entries become NaN (gaps)."""
    values = np.asarray(values, dtype=float).copy()
    values[~np.isfinite(values) | (values <= 0)] = np.nan
    return values


def _empty(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")


def _mark_divergence(ax, run: Run, color=None) -> None:
    color = color or OKABE_ITO[3]
    if run.diverged:
        ax.axvline(run.diverged_at, color=color, linestyle="--", linewidth=1.2)
        ax.text(run.diverged_at, 0.98, f" diverged at step {run.diverged_at}", color=color, ha="left", va="top",
                transform=ax.get_xaxis_transform(), fontsize=8)


def plot_gradient_flow(run: Run, ax=None, title: str | None = None, vmin: float | None = None,
                       vmax: float | None = None):
    """Heatmap of per-layer gradient norms: layers (``conv1`` at the top) by training step,
    log colour scale. Vanishing shows as a dark band towards ``conv1``; exploding as bright."""
    fig, ax = _axes(ax, (7.0, 0.25 * len(run.layer_names) + 2.0))
    ax.set_title(title or "Gradient flow: per-layer gradient norm")
    ax.set_xlabel("training step")
    ax.set_ylabel("layer (input at top)")
    data = _positive(run.layer_grad_norm.T)
    if data.size == 0 or np.all(np.isnan(data)):
        _empty(ax, "no recorded steps")
        return fig
    finite = data[np.isfinite(data)]
    norm = _log_norm(vmin=vmin or finite.min(), vmax=vmax or max(finite.max(), finite.min() * 1.0001))
    steps = run.stat_step
    last = steps[-1] + (steps[1] - steps[0] if len(steps) > 1 else 1)
    image = ax.imshow(np.ma.masked_invalid(data), aspect="auto", cmap=HEATMAP, norm=norm, interpolation="nearest",
                      extent=(steps[0] - 0.5, last - 0.5, len(run.layer_names) - 0.5, -0.5))
    label_layer_axis(ax, run.layer_names, axis="y")
    fig.colorbar(image, ax=ax, label="gradient norm (log scale)")
    _mark_divergence(ax, run, color="white")
    return fig


def plot_grad_norm_profile(runs, steps=(0,), ax=None, title: str | None = None, panels: bool = False):
    """Per-layer gradient norm against layer (input to output) at chosen steps, log y.

    ``runs`` is a :class:`~gradcourse.record.Run`, a list of runs, or ``{label: run}``; each
    run has its own colour and marker, and its own line style where one step is drawn. A
    label may hold a list of runs, one per seed: the first is drawn as one run is, the
    others as thin, faint lines of the same colour. With
    ``panels=True``, one panel per step side by side, sharing the y axis (``title`` goes
    above them); otherwise all steps on one axes, one line style per step. A series equal to
    one drawn before it hides under it: the legend says so."""
    runs = _as_runs(runs)
    if not panels:
        fig, ax = _axes(ax)
        hidden = _profile(ax, runs, steps, title or "Gradient norm by layer")
        for line in ax.get_lines():
            if hidden.get(line.get_label()):
                line.set_label(f"{line.get_label()} (same as {hidden[line.get_label()]})")
        legend_outside(ax)
        return fig
    fig, axes = plt.subplots(1, len(steps), figsize=(3.5 * len(steps), 3.3), sharey=True,
                             layout="constrained", squeeze=False)
    notes: dict[str, list[str]] = {}
    for index, (panel, step) in enumerate(zip(axes[0], steps)):
        for name, same in _profile(panel, runs, (step,), f"step {step}").items():
            if same:
                notes.setdefault(name, []).append(f"step {step}: same as {same}")
        if index:
            panel.set_ylabel("")
    for line in axes[0][-1].get_lines():
        if line.get_label() in notes:
            line.set_label(f"{line.get_label()} ({'; '.join(notes[line.get_label()])})")
    legend_outside(axes[0][-1])
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _profile(ax, runs: dict[str, list[Run]], steps, title: str) -> dict[str, str | None]:
    """Draw the profiles on ``ax``; for each series, the earlier one it coincides with."""
    ax.set_title(title)
    ax.set_yscale("log")
    ax.set_ylabel("gradient norm (log scale)")
    # Runs of different depths share one axis of layer names: each value is drawn at its
    # own layer's tick (the 6-layer run's fc at fc, not at the 20-layer run's conv7).
    names = merged_layer_order([run.layer_names for group in runs.values() for run in group])
    position = {name: i for i, name in enumerate(names)}
    # Colour, marker and (for one step) line style all tell the runs apart.
    line_styles, markers = ["-", "--", ":", "-."], ["o", "s", "^", "x", "D", "v"]
    drawn: list[tuple[str, np.ndarray, np.ndarray]] = []
    hidden: dict[str, str | None] = {}
    for index, (color, (label, group)) in enumerate(zip(colors(len(runs)), runs.items())):
        for style, step in zip(line_styles * 4, steps):
            style = style if len(steps) > 1 else line_styles[index % 4]
            for seed, run in enumerate(group):
                if not len(run.stat_step) or step > run.stat_step[-1]:
                    continue
                row = int(np.argmin(np.abs(run.stat_step - step)))
                x, values = _gaps_between(np.array([position[name] for name in run.layer_names], dtype=float),
                                          _positive(run.layer_grad_norm[row]))
                if seed:
                    ax.plot(x, values, style, color=color, **OTHER_SEEDS)
                    continue
                name = f"{label}, step {run.stat_step[row]}" if len(steps) > 1 else label
                hidden[name] = next((other for other, ox, ov in drawn if len(ox) == len(x)
                                     and np.array_equal(ox, x) and np.allclose(ov, values, rtol=1e-6, equal_nan=True)),
                                    None)
                ax.plot(x, values, style, marker=markers[index % len(markers)], markersize=4, color=color, label=name)
                drawn.append((name, x, values))
    if not drawn:
        _empty(ax, "no recorded steps")
        return hidden
    label_layer_axis(ax, names)
    ax.set_xlabel("layer (input → output)")
    ax.grid(True, which="major", alpha=0.3)
    return hidden


_STAT_LABELS = {
    "mean": ("act_mean", "activation mean", False),
    "std": ("act_std", "activation standard deviation", True),
    "saturated": ("act_saturated", "fraction of units in the flat region", False),
    "dead": ("act_dead", "fraction of channels flat for the whole batch", False),
}


def plot_activation_stats(run: Run, stat: str = "saturated", ax=None, title: str | None = None):
    """One activation statistic per layer over training: ``mean``, ``std`` (log y),
    ``saturated`` (fraction of units where the derivative is nearly zero) or ``dead``."""
    if stat not in _STAT_LABELS:
        raise ValueError(f"stat = {stat!r} is not allowed; choose one of: {', '.join(_STAT_LABELS)}")
    field, label, log = _STAT_LABELS[stat]
    fig, ax = _axes(ax)
    ax.set_title(title or f"Activations: {label}")
    ax.set_xlabel("training step")
    ax.set_ylabel(label + (" (log scale)" if log else ""))
    values = getattr(run, field)
    if values.size == 0:
        _empty(ax, "no recorded steps")
        return fig
    for color, (index, name) in zip(depth_colors(len(run.activation_names)), enumerate(run.activation_names)):
        series = _positive(values[:, index]) if log else values[:, index]
        ax.plot(run.act_step, series, color=color, marker="o" if len(run.act_step) == 1 else None, label=name)
    if log:
        ax.set_yscale("log")
    elif stat in ("saturated", "dead"):
        ax.set_ylim(-0.02, 1.02)
    layer_key(ax, run.activation_names)
    _mark_divergence(ax, run)
    return fig


def plot_activation_histograms(run: Run, layers=None, max_layers: int = 6, bins: int = 32):
    """Histogram of each layer's activations over training (counts on a log colour scale).

    Every column is one recorded step; the value axis is fitted to the values the layer
    actually produced over the run."""
    names = list(layers) if layers is not None else _spread(run.activation_names, max_layers)
    # At most 3 panels a row, so that the figure is read at the book's column width.
    columns = min(max(len(names), 1), 3)
    rows = math.ceil(max(len(names), 1) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(7.0, 2.6 * rows + 0.6), layout="constrained",
                             squeeze=False)
    axes = axes.ravel()
    fig.suptitle("Activation histograms over training")
    if not len(run.hist_step):
        _empty(axes[0], "no histograms recorded")
        return fig
    for ax, name in zip(axes, names):
        index = run.activation_names.index(name)
        counts, ranges = run.hist_counts[:, index], run.hist_range[:, index]
        low, high = float(ranges[:, 0].min()), float(ranges[:, 1].max())
        high = max(high, low + 1e-6)
        edges = np.linspace(low, high, bins + 1)
        image = np.zeros((bins, len(run.hist_step)))
        for column, (row, (lo, hi)) in enumerate(zip(counts, ranges)):
            # Re-bin onto the common edges, spreading each count uniformly over its bin.
            cumulative = np.concatenate([[0.0], np.cumsum(row)])
            image[:, column] = np.diff(np.interp(edges, np.linspace(lo, hi, len(row) + 1), cumulative))
        image = image / np.maximum(image.sum(axis=0, keepdims=True), 1)
        masked = np.ma.masked_less_equal(image, 0)
        image = ax.imshow(masked, aspect="auto", origin="lower", cmap=HEATMAP, norm=_log_norm(vmin=1e-4, vmax=1),
                          extent=(run.hist_step[0], run.hist_step[-1] + 1, low, high), interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
    for row in range(rows):
        axes[row * columns].set_ylabel("activation value")
    for ax in axes[len(names):]:
        ax.axis("off")
    fig.colorbar(image, ax=axes[:len(names)].tolist(), label="fraction of values (log scale; white: none)",
                 shrink=0.9)
    return fig


def readable_log_axis(ax) -> None:
    """Label a log y axis spanning less than two decades with plain numbers at 1, 2, 5 x 10^k
    (and no minor ticks: the labels already mark those); drop the minor ticks of one spanning
    more than four decades (clutter, and slow to draw)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

    low, high = ax.get_ylim()
    if not 0 < low < high:
        return
    if high / low > 1e4:
        ax.yaxis.set_minor_locator(NullLocator())
    if high / low >= 100:
        return
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_minor_formatter(NullFormatter())


def _gaps_between(x: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``x`` and ``values`` with a NaN wherever ``x`` skips positions (a shallow run's last conv
    next to its fc on an axis of a deeper run's layers): no line is drawn across layers that
    this run does not have."""
    if len(x) < 2:
        return x, values
    jumps = np.flatnonzero(np.diff(x) > 1) + 1
    return np.insert(x, jumps, np.nan), np.insert(values, jumps, np.nan)


def merged_layer_order(name_lists) -> list[str]:
    """One order for the layers of several runs: each run's names keep their order, and a
    name missing from the longest run goes right after its predecessor in its own run."""
    lists = sorted(name_lists, key=len, reverse=True)
    merged = list(lists[0]) if lists else []
    for names in lists[1:]:
        for i, name in enumerate(names):
            if name not in merged:
                after = merged.index(names[i - 1]) + 1 if i else 0
                merged.insert(after, name)
    return merged


def label_layer_axis(ax, names, axis: str = "x", max_labels: int = 16) -> None:
    """Tick every layer and label at most ``max_labels`` of them (always the first and the
    last), so that 20-40 layer names never run together."""
    step = max(1, math.ceil(len(names) / max_labels))
    shown = [n if i % step == 0 or i == len(names) - 1 else "" for i, n in enumerate(names)]
    if axis == "x":
        ax.set_xticks(range(len(names)), shown, rotation=90 if len(names) > 8 else 0, fontsize=8)
    else:
        ax.set_yticks(range(len(names)), shown, fontsize=8)


def legend_outside(ax, **kwargs) -> None:
    """A legend to the right of the axes, off the data (constrained layout makes room)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False, **kwargs)


def layer_key(ax, names, cmap: str = HEATMAP) -> None:
    """Which colour is which layer, off the data: a legend beside the axes for up to 8
    layers, a colour bar labelled with layer names (every few) for more."""
    if len(names) <= 8:
        legend_outside(ax)
        return
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import BoundaryNorm, ListedColormap

    palette = ListedColormap(depth_colors(len(names), cmap))
    mappable = ScalarMappable(norm=BoundaryNorm(np.arange(len(names) + 1) - 0.5, len(names)), cmap=palette)
    bar = ax.figure.colorbar(mappable, ax=ax, pad=0.02)
    step = max(1, math.ceil(len(names) / 10))
    ticks = sorted(set(range(0, len(names), step)) | {len(names) - 1})
    bar.set_ticks(ticks, labels=[names[i] for i in ticks], fontsize=8)
    bar.set_label("layer (input at the bottom)")


def _spread(names: list[str], count: int) -> list[str]:
    if len(names) <= count:
        return list(names)
    picks = np.unique(np.linspace(0, len(names) - 1, count).round().astype(int))
    return [names[i] for i in picks]


def plot_update_ratio(run: Run, ax=None, band=UPDATE_RATIO_BAND, title: str | None = None):
    """Per-layer update-to-weight ratio ``||ΔW|| / ||W||`` over training, log y, with a
    reference band (a common rule of thumb puts healthy SGD training near 1e-3)."""
    fig, ax = _axes(ax)
    ax.set_title(title or "Update-to-weight ratio per layer")
    ax.set_xlabel("training step")
    ax.set_ylabel("‖ΔW‖ / ‖W‖ (log scale)")
    ax.set_yscale("log")
    if band is not None:
        ax.axhspan(*band, color="0.85", zorder=0, label=f"reference band {band[0]:g}–{band[1]:g}")
    if run.layer_update_ratio.size == 0:
        _empty(ax, "no recorded steps")
        return fig
    for color, (index, name) in zip(depth_colors(len(run.layer_names)), enumerate(run.layer_names)):
        ax.plot(run.stat_step, _positive(run.layer_update_ratio[:, index]), color=color, linewidth=1,
                marker="o" if len(run.stat_step) == 1 else None, label=name)
    layer_key(ax, run.layer_names)
    _mark_divergence(ax, run)
    return fig


def plot_training_curves(runs, metrics=("loss", "val_acc"), title: str | None = None, smooth: int = 1):
    """Loss (log y) and validation/training accuracy of several runs side by side.

    ``runs``: a :class:`~gradcourse.record.Run`, a list, or ``{label: run}``; a label may hold a
    list of runs, one per seed, drawn in one colour (the first as one run is, the others thin
    and faint). A run that diverged ends with an ``x`` at its last finite loss, and for the
    first of a label with the step number in the legend."""
    runs = _as_runs(runs)
    allowed = ("loss", "val_acc", "train_acc", "val_loss", "lr", "grad_norm")
    for metric in metrics:
        if metric not in allowed:
            raise ValueError(f"metric {metric!r} is not allowed; choose from: {', '.join(allowed)}")
    # Two panels a row at most, 7 inches wide: read at the book's column width.
    columns = min(len(metrics), 2)
    rows = math.ceil(len(metrics) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(7.0, 2.9 * rows + 0.5), layout="constrained",
                             squeeze=False)
    axes = axes.ravel()
    for ax in axes[len(metrics):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    for color, (label, group) in zip(colors(len(runs)), runs.items()):
        for seed, run in enumerate(group):
            for ax, metric in zip(axes, metrics):
                per_step = metric in ("loss", "lr", "grad_norm")
                x = np.arange(run.steps_done) if per_step else run.eval_step
                y = getattr(run, metric)
                if per_step and smooth > 1 and len(y) >= smooth:
                    y, x = running_mean(y, smooth), x[smooth - 1:]
                name = label + (f" (diverged at {run.diverged_at})" if run.diverged and ax is axes[0] else "")
                style = OTHER_SEEDS if seed else {"label": name}
                ax.plot(x, _positive(y) if per_step else y, color=color,
                        **{**style, "marker": "o" if len(x) == 1 else None})
                if run.diverged and per_step and len(y):
                    finite = np.flatnonzero(np.isfinite(y))
                    if len(finite):
                        ax.plot(x[finite[-1]], y[finite[-1]], "x", color=color, markersize=10 if not seed else 6,
                                markeredgewidth=2 if not seed else 1)
    for ax, metric in zip(axes, metrics):
        ax.set_xlabel("training step")
        ax.set_ylabel({"loss": "training loss (log scale)", "val_acc": "validation accuracy",
                       "train_acc": "training accuracy", "val_loss": "validation loss",
                       "lr": "learning rate (log scale)", "grad_norm": "total gradient norm (log scale)"}[metric])
        if metric in ("loss", "lr", "grad_norm"):
            ax.set_yscale("log")
            readable_log_axis(ax)
        if metric.endswith("acc"):
            ax.set_ylim(0, 1.02)
        ax.grid(True, alpha=0.3)
    # One legend for all panels, under them: it never covers a curve.
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", fontsize=8, frameon=False,
                   ncol=min(len(handles), 2 if max(map(len, labels)) > 28 else 3))
    return fig


def plot_clipping(run: Run, ax=None, title: str | None = None):
    """Total gradient norm per step before and after clipping, the threshold (for norm
    clipping), and the fraction of steps where clipping changed the gradient."""
    fig, ax = _axes(ax)
    config = run.train_config
    ax.set_title(title or f"Clipping ({config.clip}): changed {run.clip_fraction:.0%} of steps")
    ax.set_xlabel("training step")
    ax.set_ylabel("total gradient norm (log scale)")
    ax.set_yscale("log")
    if run.steps_done == 0:
        _empty(ax, "no completed steps")
        return fig
    steps = np.arange(run.steps_done)
    ax.plot(steps, _positive(run.grad_norm), color=OKABE_ITO[0], linewidth=1, label="before clipping")
    if config.clip != "none":
        ax.plot(steps, _positive(run.grad_norm_clipped), color=OKABE_ITO[1], linewidth=2, zorder=3,
                label="after clipping")
        clipped = run.clipped
        ax.plot(steps[clipped], _positive(run.grad_norm[clipped]), "|", color=OKABE_ITO[3], markersize=6,
                label="clipped steps")
    if config.clip == "norm":
        ax.axhline(config.clip_threshold, color="0.3", linestyle="--", label=f"threshold {config.clip_threshold:g}")
    legend_outside(ax)
    _mark_divergence(ax, run)
    return fig


def plot_lr_range_test(result, ax=None, title: str | None = None):
    """A learning-rate range test (:func:`gradcourse.lr_range_test`): smoothed training loss
    against the learning rate (log x), with the steepest fall and the lowest loss marked."""
    fig, ax = _axes(ax, (6.4, 3.6))
    ax.set_title(title or "Learning-rate range test: one run, the rate raised every step")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("smoothed training loss")
    if not len(result.lrs):
        _empty(ax, "no completed steps")
        return fig
    ax.plot(result.lrs, result.losses, color=OKABE_ITO[0], linewidth=1.5, label="loss")
    for lr, name, color, style in ((result.steepest_lr, "steepest fall", OKABE_ITO[2], "--"),
                                   (result.min_loss_lr, "lowest loss", OKABE_ITO[3], ":")):
        ax.axvline(lr, color=color, linestyle=style, linewidth=1.2, label=f"{name}: lr {lr:.2g}")
    ax.grid(True, which="major", alpha=0.3)
    legend_outside(ax)
    return fig


# -- the explorers' frame ----------------------------------------------------------

def describe_run(run) -> str:
    """A short title for a run: the settings a reader compares (learning rate, clipping, network)."""
    m, t = run.model_config, run.train_config
    clip = "off" if t.clip == "none" else f"{t.clip} {t.clip_threshold:g}"
    extras = [m.activation, f"depth {m.depth}"] + (["residual"] if m.residual else []) + \
             ([f"{m.norm} norm"] if m.norm != "none" else []) + ([m.init] if m.init != "default" else [])
    return f"{t.optimizer}, lr {t.lr:g}, clip {clip} ({', '.join(extras)})"


def shared_limits(runs) -> dict:
    """Log-axis limits that hold every run's loss and per-layer gradient norms (for ``explorer_figure``)."""
    def span(arrays, cap=math.inf):
        values = np.concatenate([np.ravel(a) for a in arrays] or [np.zeros(0)])
        values = values[np.isfinite(values) & (values > 0)]
        if not len(values):
            return None
        low, high = float(values.min()), min(float(values.max()), cap)
        return (low / 1.5, max(high * 1.5, low * 10))

    runs = list(runs)
    # A diverging run's last losses would squeeze every other curve into a line: the loss axis
    # stops at 10x the largest starting loss (the divergence marker tells the rest).
    first_losses = [r.loss[0] for r in runs if len(r.loss) and math.isfinite(r.loss[0])]
    loss_cap = 10 * max(first_losses) if first_losses else math.inf
    return {"loss_limits": span([r.loss for r in runs], loss_cap),
            "grad_limits": span([r.layer_grad_norm for r in runs])}


def explorer_figure(run, title: str | None = None, loss_limits: tuple | None = None,
                    grad_limits: tuple | None = None, figsize=(8.0, 3.0)):
    """The explorers' default two-panel figure of one run (also of a run still training).

    Left: training loss per step (log scale) over the configured number of steps, with
    the last validation accuracy and any divergence. Right: per-layer gradient norm
    (log scale) at the first step and at the latest recorded step, ``conv1`` on the left.
    Built without pyplot, so it is safe to draw in a background thread.
    """
    from matplotlib.figure import Figure

    many = len(run.layer_names) > 8
    width, height = figsize
    # Fixed margins (in inches) and title positions rather than a layout engine: every frame
    # lines up, and drawing takes about half the time, which a live explorer feels.
    fig = Figure(figsize=figsize)
    fig.subplots_adjust(left=0.75 / width, right=1 - 0.15 / width, top=1 - 0.55 / height,
                        bottom=(0.95 if many else 0.6) / height, wspace=0.32)
    loss_ax, grad_ax = fig.subplots(1, 2, width_ratios=(1.1, 1.0))
    fig.suptitle(title or describe_run(run), fontsize=10)
    steps = run.train_config.steps
    done = run.steps_done
    loss = _positive(run.loss)
    loss_ax.plot(np.arange(done), loss, color=OKABE_ITO[0], linewidth=1.2)
    accuracy = f", val acc {run.final_val_acc:.2f}" if len(run.val_acc) else ""
    loss_ax.set_title(f"Training loss{accuracy}", fontsize=9, y=1.01)
    loss_ax.set(xlabel="training step", ylabel="loss (log scale)", yscale="log", xlim=(0, max(steps - 1, 1)))
    if run.diverged:
        _mark_divergence(loss_ax, run)
    elif done < steps:
        loss_ax.text(0.98, 0.95, f"training... step {done} of {steps}", transform=loss_ax.transAxes,
                     ha="right", va="top", color="0.35", fontsize=8)

    grad_ax.set_title("Gradient norm by layer", fontsize=9, y=1.01)
    grad_ax.set(ylabel="gradient norm (log scale)", yscale="log")
    layers = range(len(run.layer_names))
    if len(run.stat_step):
        grads = _positive(run.layer_grad_norm)
        grad_ax.plot(layers, grads[0], "o-", color=OKABE_ITO[0], markersize=3, label="step 0")
        if len(run.stat_step) > 1:
            grad_ax.plot(layers, grads[-1], "s--", color=OKABE_ITO[1], markersize=3,
                         label=f"step {run.stat_step[-1]}")
        zero = int(np.sum(run.layer_grad_norm[-1] == 0))
        if zero:  # a log axis cannot show 0: say so instead of leaving an unexplained gap
            grad_ax.text(0.02, 0.03, f"{zero} layers exactly 0 at step {run.stat_step[-1]} (not drawn)",
                         transform=grad_ax.transAxes, fontsize=8, color="0.3", va="bottom")
        grad_ax.legend(fontsize=8, loc="best")
    else:
        grad_ax.text(0.5, 0.5, "no recorded steps", transform=grad_ax.transAxes, ha="center", color="0.4")
    label_layer_axis(grad_ax, run.layer_names, max_labels=8)
    grad_ax.set_xlabel("layer (input → output)")
    for ax, limits in ((loss_ax, loss_limits), (grad_ax, grad_limits)):
        if limits is not None:
            ax.set_ylim(*limits)
        readable_log_axis(ax)
        ax.grid(True, alpha=0.3)
    mark_off_axis(loss_ax, loss)
    return fig


def mark_off_axis(ax, values) -> None:
    """Where a curve leaves the top of a fixed axis, say so at the edge instead of cutting
    it silently: an arrow at the first step above the axis, and from which step."""
    top = ax.get_ylim()[1]
    above = np.flatnonzero(np.nan_to_num(values, nan=-np.inf) > top)
    if len(above):
        step = int(above[0])
        ax.annotate(f"off the axis from step {step}", xy=(step, top), xytext=(0, -14),
                    textcoords="offset points", ha="left", va="top", fontsize=8, color=OKABE_ITO[3],
                    arrowprops={"arrowstyle": "->", "color": OKABE_ITO[3]})


def render_png(fig, dpi: int = FRAME_DPI, palette: bool = True, tight: bool = False) -> bytes:
    """Render a matplotlib figure to PNG bytes at a fixed size (so frames line up) and close it.

    With ``palette`` the PNG is stored with 256 colours: a third of the bytes, for a few
    milliseconds, with no visible change to line plots.
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="white", bbox_inches="tight" if tight else None)
    close_figure(fig)
    if not palette:
        return buffer.getvalue()
    from PIL import Image

    buffer.seek(0)
    image = Image.open(buffer).convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE)
    out = io.BytesIO()
    image.save(out, format="PNG")  # optimize=True: a slightly smaller file, many times slower
    return out.getvalue()


def close_figure(fig) -> None:
    """Close ``fig`` if pyplot manages it (a no-op for a bare ``Figure``)."""
    import sys

    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close(fig)  # a no-op for figures that pyplot does not manage
