"""Live sliders for Jupyter and Colab: move a control and a CNN retrains in the kernel.

One background thread trains; the newest request always wins. Every control change bumps a
generation counter, and the run in progress polls ``should_stop`` (every step), so a slider
dragged across ten values trains the last one instead of queueing ten runs. Finished runs are
kept in memory by configuration, so going back to a setting shows it at once.

A static HTML page has no kernel: when the book is built (``GRADCOURSE_STATIC_BUILD=1``,
set by ``make book``) :func:`~gradcourse.live_explorer` returns a short note instead of widgets, and the
page shows the precomputed :func:`~gradcourse.sweep_explorer` instead.
"""
from __future__ import annotations

import html
import math
import os
import threading
import time
from collections import OrderedDict
from dataclasses import replace
from typing import Callable

from .data import ImageData, load_data
from .device import pick_device
from .models import ACTIVATIONS, INITS, NORMS, CNNConfig
from .record import Run
from .plots import FRAME_DPI, OKABE_ITO, explorer_figure, render_png
from .train import OPTIMIZERS, TrainConfig, split_overrides, train

STATIC_BUILD_ENV = "GRADCOURSE_STATIC_BUILD"
CLIP_CHOICES = (("off", "none"), ("by norm", "norm"), ("by value", "value"), ("adaptive (AGC)", "agc"))
CONTROLS = ("lr", "clip", "clip_threshold", "depth", "activation", "init", "norm", "residual", "optimizer")
# The starting point when no configs are given: a run sized to retrain in well under a
# second on a 2-core laptop CPU (100 steps of a 6-layer CNN on 8x8 digits, downsampled after
# every second convolution), that learns (Kaiming initialization, SGD with momentum: about
# 0.9 validation accuracy) and that fails when the learning rate is raised tenfold, so the
# learning-rate slider shows too small, right and too large.
LIVE_MODEL = CNNConfig(init="kaiming_normal", pool_every=2)
LIVE_TRAIN = TrainConfig(steps=100, optimizer="momentum", lr=0.02, eval_every=50)
ERROR_COLOR = OKABE_ITO[3]  # vermillion; the text also says "Error", so colour is not the only cue

STATIC_NOTE = (
    '<div class="gc-live-note" style="border-left:4px solid #0072B2;padding:.5em .8em;margin:1em 0;'
    'background:#f3f7fb"><strong>Live explorer.</strong> This cell retrains a network in a Python kernel '
    "each time you move a slider, so it cannot run in this static page. Open the notebook in Colab "
    "(the rocket icon at the top of the page) or in Jupyter to use it; the precomputed sliders on "
    "this page show the same experiments.</div>")


def in_static_build() -> bool:
    """True while the static HTML book is being built (``GRADCOURSE_STATIC_BUILD=1``)."""
    return os.environ.get(STATIC_BUILD_ENV, "").strip().lower() in ("1", "true", "yes")


class StaticBuildNote:
    """What :func:`~gradcourse.live_explorer` shows in a static build: a note, and no kernel-bound widget."""

    html = STATIC_NOTE

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        return "Live explorer: open this notebook in Colab or Jupyter to use it."


def live_explorer(model_config: CNNConfig | None = None, train_config: TrainConfig | None = None,
                  data="digits", plot: Callable[[Run], object] | None = None, **settings):
    """A :class:`~gradcourse.live_sliders.LiveExplorer` to display in a notebook, or a ``StaticBuildNote`` while the
    static book is built (no widgets are created then, so the page loads no widget manager).

    Example:
        >>> gc.live_explorer(gc.CNNConfig(depth=12, activation="sigmoid"))  # doctest: +SKIP
    """
    if in_static_build():
        return StaticBuildNote()
    return LiveExplorer(model_config, train_config, data, plot, **settings)


class LiveExplorer:
    """ipywidgets controls that retrain a CNN in the kernel and show the result as it trains.

    Controls: learning rate and clip threshold (log sliders), clipping mode (off, norm, value,
    AGC), depth, activation, initialization, normalization, residual connections, optimizer.

    Args:
        model_config, train_config: the starting point (defaults: ``LIVE_MODEL`` and
            ``LIVE_TRAIN``, 100 steps of a Kaiming-initialized 6-layer CNN with pooling, SGD and
            momentum, which retrains in under a second on a 2-core CPU).
        data: a dataset name, ``DataConfig`` or ``ImageData`` (loaded once, kept on the device).
        plot: ``plot(run) -> Figure``, called on partial runs while training and on the final
            run (default: ``explorer_figure`` from ``gradcourse.plots``, the loss curve
            and the per-layer gradient norms).
        device: where to train (default :func:`gradcourse.pick_device`: the GPU when there is one).
        start: train the starting configuration right away.
        progress_every: steps between looks at the partial run; frames are drawn at most
            every ``frame_interval`` seconds.
        **settings: any CNNConfig / TrainConfig field, applied on top of the configs.

    For scripts and tests: ``set(..., wait=True)`` blocks until the result is shown;
    ``status`` is the text under the figure, ``png`` the image shown, ``run`` the run shown,
    ``error`` the last error (or ``None``) and ``counts`` the runs trained, cancelled and
    served from memory.
    """

    def __init__(self, model_config: CNNConfig | None = None, train_config: TrainConfig | None = None,
                 data="digits", plot: Callable[[Run], object] | None = None, *, device=None, start: bool = True,
                 progress_every: int = 10, frame_interval: float = 0.5, dpi: int = FRAME_DPI, cache_size: int = 256,
                 **settings):
        self.model_config, self.train_config = model_config or LIVE_MODEL, train_config or LIVE_TRAIN
        self.device = pick_device(device)
        self.data = (data if isinstance(data, ImageData) else load_data(data)).to(self.device)
        self.plot = plot or explorer_figure
        self.progress_every, self.frame_interval, self.dpi = progress_every, frame_interval, dpi
        self.settings: dict = {}
        self.run: Run | None = None
        self.error: str | None = None
        self.counts = {"trained": 0, "cancelled": 0, "from_memory": 0, "frames": 0}
        self._memory: OrderedDict = OrderedDict()  # (CNNConfig, TrainConfig) -> (Run, PNG bytes)
        self._cache_size = cache_size
        self._lock = threading.Condition()
        self._generation = 0       # bumped by every request; a run whose generation is old stops
        self._done_generation = 0  # the newest generation that has been shown (or failed)
        self._pending = None
        self._closed = False
        self._thread: threading.Thread | None = None
        self._syncing = False
        self._status_text = ""
        self._build_widgets()
        self._apply(settings)
        if start:
            self.update()

    # ----- public API -------------------------------------------------------------------
    @property
    def status(self) -> str:
        """The status line under the figure, as plain text."""
        return self._status_text

    @property
    def png(self) -> bytes:
        """The PNG shown now (``b""`` before the first figure)."""
        return bytes(self.image.value)

    def configs(self) -> tuple[CNNConfig, TrainConfig]:
        """The (CNNConfig, TrainConfig) the controls describe now; raises ConfigError if invalid."""
        model_over, train_over, data_over = split_overrides(self.settings)
        if data_over:
            raise ValueError(f"data settings {sorted(data_over)} cannot change in a live explorer; "
                             f"pass data=DataConfig(...) when you create it")
        return replace(self.model_config, **model_over), replace(self.train_config, **train_over)

    def set(self, wait: bool = False, **settings) -> Run | None:
        """Change settings (any CNNConfig / TrainConfig field; ``clip_threshold=None`` turns
        clipping off), move the controls to match, and retrain. With ``wait`` return the run
        shown (``None`` after an error); otherwise return at once."""
        try:
            split_overrides(settings)  # an unknown name is refused and not kept
        except ValueError as error:
            self._show_error(self._bump(), error)
            return None
        self._apply(settings)
        return self.update(wait=wait)

    def update(self, wait: bool = False) -> Run | None:
        """Retrain for the current settings (served from memory when this setting already ran)."""
        generation = self._bump()
        try:
            configs = self.configs()
        except Exception as error:  # ConfigError and friends: shown, never raised
            self._show_error(generation, error)
            return None
        with self._lock:
            remembered = self._memory.get(configs)
            if remembered is not None:
                self._memory.move_to_end(configs)
        if remembered is not None:
            run, png = remembered
            self.counts["from_memory"] += 1
            self._show(generation, png, f"(from memory) {run.summary()}", run=run, done=True)
            return run
        with self._lock:
            self._pending = (generation, configs)
            self._lock.notify_all()
        self._ensure_thread()
        if wait:
            self.wait()
            return self.run if self.error is None and self.run is not None and \
                (self.run.model_config, self.run.train_config) == configs else None
        return None

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the newest request is shown (or failed); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._done_generation < self._generation and not self._closed:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._lock.wait(remaining)
        return True

    def close(self) -> None:
        """Stop the training thread and close the widgets."""
        with self._lock:
            self._closed = True
            self._generation += 1
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.widget.close()

    def __repr__(self) -> str:
        return f"LiveExplorer({self.settings or 'starting configuration'}; {self.status or 'idle'})"

    def _repr_mimebundle_(self, **kwargs):
        if in_static_build():
            return {"text/html": STATIC_NOTE, "text/plain": repr(StaticBuildNote())}
        return self.widget._repr_mimebundle_(**kwargs)

    # ----- widgets ----------------------------------------------------------------------
    def _build_widgets(self) -> None:
        import ipywidgets as w

        m, t = self.model_config, self.train_config
        style, wide = {"description_width": "8em"}, w.Layout(width="22em")
        self.controls = {
            "lr": w.FloatLogSlider(value=t.lr, base=10, min=-4, max=0.5, step=0.1, description="learning rate",
                                   readout_format=".2g", continuous_update=False, style=style, layout=wide),
            "clip": w.Dropdown(options=CLIP_CHOICES, value=t.clip, description="clipping", style=style, layout=wide),
            "clip_threshold": w.FloatLogSlider(value=t.clip_threshold, base=10, min=-3, max=2, step=0.1,
                                               description="clip threshold", readout_format=".2g",
                                               continuous_update=False, disabled=t.clip == "none",
                                               style=style, layout=wide),
            "depth": w.IntSlider(value=m.depth, min=1, max=max(32, m.depth), description="depth",
                                 continuous_update=False, style=style, layout=wide),
            "activation": w.Dropdown(options=ACTIVATIONS, value=m.activation, description="activation",
                                     style=style, layout=wide),
            "init": w.Dropdown(options=INITS, value=m.init, description="init", style=style, layout=wide),
            "norm": w.Dropdown(options=NORMS, value=m.norm, description="normalization", style=style, layout=wide),
            "residual": w.Checkbox(value=m.residual, description="residual connections", indent=False),
            "optimizer": w.Dropdown(options=OPTIMIZERS, value=t.optimizer, description="optimizer",
                                    style=style, layout=wide),
        }
        for name, control in self.controls.items():
            control.observe(lambda change, name=name: self._on_control(name, change["new"]), names="value")
        self.image = w.Image(format="png", value=b"", layout=w.Layout(max_width="100%"))
        self.status_line = w.HTML(value="")
        names = list(self.controls)
        left = w.VBox([self.controls[n] for n in names[:5]])
        right = w.VBox([self.controls[n] for n in names[5:]])
        self.widget = w.VBox([w.HBox([left, right]), self.image, self.status_line])

    def _on_control(self, name: str, value) -> None:
        if self._syncing:
            return
        self.settings[name] = value
        if name == "clip":
            self.controls["clip_threshold"].disabled = value == "none"
        self.update()

    def _apply(self, settings: dict) -> None:
        """Store settings and move the controls to match (without triggering a run per control)."""
        settings = dict(settings)
        if "clip_threshold" in settings and settings["clip_threshold"] is None:
            del settings["clip_threshold"]
            settings["clip"] = "none"
        self.settings.update(settings)
        self._syncing = True
        try:
            for name, value in settings.items():
                if name in self.controls:
                    _move_control(self.controls[name], value)
            self.controls["clip_threshold"].disabled = self.settings.get("clip", self.train_config.clip) == "none"
        finally:
            self._syncing = False

    # ----- the training thread ----------------------------------------------------------
    def _bump(self) -> int:
        with self._lock:
            self._generation += 1
            self._pending = None  # an older request that has not started never will
            return self._generation

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._work, name="gradcourse-live-explorer", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        while True:
            with self._lock:
                while self._pending is None and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                generation, configs = self._pending
                self._pending = None
            self._train_and_show(generation, configs)

    def _train_and_show(self, generation: int, configs) -> None:
        model_config, train_config = configs
        stale = lambda: self._generation != generation  # noqa: E731
        last_frame = [-math.inf]
        started = time.perf_counter()

        def on_progress(partial: Run) -> None:
            now = time.perf_counter()
            if stale() or now - last_frame[0] < self.frame_interval:
                return
            # Drawing a frame pauses training (same thread): after the first one, skip a frame
            # when the final figure is due within half a frame interval anyway.
            done = max(partial.steps_done, 1)
            remaining = (now - started) / done * (train_config.steps - done)
            if last_frame[0] > -math.inf and remaining < self.frame_interval / 2:
                return
            png = render_png(self.plot(partial), self.dpi)
            self.counts["frames"] += 1
            self._show(generation, png, f"training... step {partial.steps_done} of {train_config.steps}")
            last_frame[0] = time.perf_counter()

        self._show(generation, None, f"training... ({train_config.steps} steps on {self.device.type})")
        try:
            run = train(model_config, train_config, self.data, device=self.device, progress=False,
                        on_progress=on_progress, progress_every=self.progress_every, should_stop=stale)
            if stale():
                self.counts["cancelled"] += 1
                self._finish(generation)
                return
            png = render_png(self.plot(run), self.dpi)
        except Exception as error:  # shown under the figure; the thread keeps serving requests
            self._show_error(generation, error)
            return
        self.counts["trained"] += 1
        with self._lock:
            self._memory[configs] = (run, png)
            while len(self._memory) > self._cache_size:
                self._memory.popitem(last=False)
        self._show(generation, png, run.summary(), run=run, done=True)

    # ----- what is displayed ------------------------------------------------------------
    def _show(self, generation: int, png: bytes | None, status: str, run: Run | None = None,
              done: bool = False) -> None:
        """Update image and status, unless a newer request has been made since ``generation``."""
        with self._lock:
            if generation != self._generation:
                self._finish_locked(generation)
                return
            if png is not None:
                self.image.value = png
            self._status_text = status
            self.status_line.value = html.escape(status)
            if done:
                self.run, self.error = run, None
                self._finish_locked(generation)

    def _show_error(self, generation: int, error: BaseException) -> None:
        text = f"{type(error).__name__}: {error}"
        with self._lock:
            if generation == self._generation:
                self.error = text
                self._status_text = f"Error: {text} (the figure shows the last valid setting)"
                self.status_line.value = (f'<span style="color:{ERROR_COLOR}"><b>Error:</b> {html.escape(text)}'
                                          f"</span> (the figure shows the last valid setting)")
            self._finish_locked(generation)

    def _finish(self, generation: int) -> None:
        with self._lock:
            self._finish_locked(generation)

    def _finish_locked(self, generation: int) -> None:
        self._done_generation = max(self._done_generation, generation)
        self._lock.notify_all()


def _move_control(control, value) -> None:
    """Set a control to ``value`` when it can show it (widening a slider's range if needed)."""
    import ipywidgets as w

    if isinstance(control, w.FloatLogSlider):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
            return  # invalid: the config check reports it
        exponent = math.log(value, control.base)
        control.min, control.max = min(control.min, math.floor(exponent)), max(control.max, math.ceil(exponent))
        control.value = value
    elif isinstance(control, w.IntSlider):
        if isinstance(value, int) and not isinstance(value, bool) and value >= control.min:
            control.max = max(control.max, value)
            control.value = value
    elif isinstance(control, w.Dropdown):
        if value in [option[1] if isinstance(option, tuple) else option for option in control.options]:
            control.value = value
    elif isinstance(control, w.Checkbox) and isinstance(value, bool):
        control.value = value
