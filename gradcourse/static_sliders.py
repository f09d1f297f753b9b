"""Sliders for the static HTML book: precomputed figures swapped by a few lines of JavaScript.

A static page has no Python kernel, so an ipywidgets slider there would be dead. Instead
:func:`~gradcourse.static_explorer` embeds one PNG per combination of slider values (base64, inside the
block) and a small inline script that shows the PNG for the current slider positions. The
block needs no CDN, no kernel and no other file: it works in the built Jupyter Book page, in
Jupyter (a trusted notebook) and in Colab.

:func:`~gradcourse.sweep_explorer` does the whole pipeline: train a grid with
:func:`~gradcourse.sweep`, draw each run, and build the block.

matplotlib is imported only when a figure is drawn or rendered.
"""
from __future__ import annotations

import base64
import html
import json
import math
import uuid
from dataclasses import dataclass
from typing import Callable, Mapping

from .plots import FRAME_DPI, close_figure, explorer_figure, render_png, shared_limits

MAX_BYTES = 2_000_000

# How a slider named after a config field is labelled on the page.
FIELD_LABELS = {
    "lr": "learning rate", "clip_threshold": "clip threshold", "clip": "clipping", "depth": "depth",
    "init_gain": "init gain", "init_std": "init std", "weight_decay": "weight decay", "batch_size": "batch size",
    "residual_scale": "residual scale", "max_weight_norm": "max weight norm", "warmup_steps": "warmup steps",
}


@dataclass(frozen=True)
class StaticExplorer:
    """A self-contained HTML slider block; notebooks display it through ``_repr_html_``.

    Attributes:
        html: the block (a ``<div>`` with its images, controls, style and script).
        n_frames: number of slider combinations (distinct images may be fewer).
        size_bytes: size of ``html`` in bytes (UTF-8).
    """

    html: str
    n_frames: int

    @property
    def size_bytes(self) -> int:
        return len(self.html.encode("utf-8"))

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        return f"StaticExplorer({self.n_frames} frames, {self.size_bytes / 1e6:.2f} MB)"

    def to_page(self, title: str = "gradcourse explorer") -> str:
        """A complete HTML document holding only this block (to open in a browser)."""
        return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
                f"</title></head>\n<body>\n{self.html}\n</body></html>\n")


def format_value(value) -> str:
    """How a slider value reads on the page: ``None`` is "off", floats in short ``%g`` form."""
    if value is None:
        return "off"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def static_explorer(frames: Mapping[tuple, object], sliders: Mapping[str, list], title: str | None = None,
                    caption: str | None = None, value_format: Mapping[str, Callable] | Callable | None = None,
                    alt: str | None = None, initial: Mapping[str, object] | None = None, dpi: int = FRAME_DPI,
                    max_bytes: int | None = MAX_BYTES) -> StaticExplorer:
    """Build a slider block that shows one precomputed image per combination of slider values.

    Args:
        frames: ``{(value of slider 1, value of slider 2, ...): image}`` with one entry for every
            combination; an image is a matplotlib ``Figure`` (rendered to PNG at ``dpi`` and
            closed) or PNG bytes. With one slider a key may be the bare value.
        sliders: ``{name: [values...]}`` in display order; the name is a config field
            (labelled as in ``FIELD_LABELS``, e.g. ``lr`` reads "learning rate") or any label.
        title: a heading over the image.
        caption: a sentence under the image.
        value_format: how values read on the page: one callable for every slider or
            ``{name: callable}``; default: ``None`` reads "off", ``True`` "on", floats in short ``%g`` form.
        alt: alternative text for the image; the current slider values are appended to it.
        initial: ``{name: value}`` for the starting positions (default: each slider's first value).
        dpi: resolution of figures rendered here (the default keeps a 5x5 sweep of the default
            two-panel figure under 1 MB).
        max_bytes: raise when the block is larger than this (``None``: no limit).

    Raises:
        ValueError: a combination without a frame, a frame for values that are not on the
            sliders, an image that is neither a Figure nor PNG bytes, or a block over ``max_bytes``.
    """
    sliders = {name: list(values) for name, values in sliders.items()}
    try:
        by_index = _index_frames(frames, sliders)
    except ValueError:
        for image in frames.values():  # do not leave the figures open in the notebook
            if hasattr(image, "savefig"):
                close_figure(image)
        raise
    names = list(sliders)

    images, frame_image, seen = [], {}, {}
    for combo in sorted(by_index):
        png = _png_bytes(by_index[combo], dpi)
        if png not in seen:  # identical images are embedded once
            seen[png] = len(images)
            images.append(base64.b64encode(png).decode("ascii"))
        frame_image[",".join(map(str, combo))] = seen[png]

    formatters = [_formatter(value_format, name) for name in names]
    labels = [[fmt(v) for v in values] for fmt, values in zip(formatters, sliders.values())]
    start = [0] * len(names)
    for name, value in (initial or {}).items():
        positions = {_hashable(v): i for i, v in enumerate(sliders.get(name, []))}
        if _hashable(value) not in positions:
            raise ValueError(f"initial {name}={value!r} is not a value of the sliders {sliders!r}")
        start[names.index(name)] = positions[_hashable(value)]
    block = _render(names, labels, images, frame_image, start, title, caption, alt or title or "Figure")
    explorer = StaticExplorer(block, n_frames=len(frame_image))
    if max_bytes is not None and explorer.size_bytes > max_bytes:
        raise ValueError(f"the explorer block is {explorer.size_bytes / 1e6:.2f} MB, over the limit of "
                         f"{max_bytes / 1e6:.2f} MB ({len(frame_image)} frames, {len(images)} distinct images); "
                         f"use fewer slider values, a smaller figure or a lower dpi (now {dpi})")
    return explorer


def _index_frames(frames: Mapping, sliders: dict[str, list]) -> dict[tuple, object]:
    """``{(index of slider 1's value, ...): image}``, checking that frames and sliders match."""
    if not sliders or any(not values for values in sliders.values()):
        raise ValueError(f"sliders = {sliders!r} must map each slider name to a non-empty list of values")
    names = list(sliders)
    positions = [{_hashable(v): i for i, v in enumerate(values)} for values in sliders.values()]
    by_index = {}
    for key, image in frames.items():
        key = key if isinstance(key, tuple) else (key,)
        if len(key) != len(names) or any(_hashable(v) not in index for v, index in zip(key, positions)):
            raise ValueError(f"frame {key!r} does not match the sliders {', '.join(names)} with values {sliders!r}")
        by_index[tuple(index[_hashable(v)] for v, index in zip(key, positions))] = image
    for combo in _product(len(values) for values in sliders.values()):
        if combo not in by_index:
            missing = ", ".join(f"{name}={sliders[name][i]!r}" for name, i in zip(names, combo))
            raise ValueError(f"no frame for the slider combination {missing}; frames must cover all "
                             f"{math.prod(len(v) for v in sliders.values())} combinations")
    return by_index


def sweep_explorer(grid: dict[str, list], plot: Callable | None = None, model_config=None, train_config=None,
                   data="digits", title: str | None = None, caption: str | None = None, *,
                   value_format=None, alt: str | None = None, initial: Mapping[str, object] | None = None,
                   cache: bool = True, progress: bool = False, dpi: int = FRAME_DPI) -> StaticExplorer:
    """Train every combination of ``grid`` (see :func:`~gradcourse.sweep`), draw each run
    with ``plot(run) -> Figure`` and return the slider block (one slider per grid field).

    The default ``plot`` is ``explorer_figure`` (loss curve and per-layer gradient norms) with the same axis limits in every frame,
    so that moving a slider moves the curves and not the axes.

    Example:
        >>> gc.sweep_explorer({"lr": [0.01, 0.1, 1.0], "clip_threshold": [None, 1.0]},
        ...                   train_config=gc.TrainConfig(steps=200))  # doctest: +SKIP
    """
    from .sweeps import sweep

    runs = sweep(grid, model_config, train_config, data, cache=cache, progress=progress)
    if plot is None:
        limits = shared_limits(runs.values())
        plot = lambda run: explorer_figure(run, **limits)  # noqa: E731
        alt = alt or f"{title + ': ' if title else ''}training loss per step and gradient norm by layer"
    frames = {key: plot(run) for key, run in runs.items()}
    return static_explorer(frames, grid, title=title, caption=caption, value_format=value_format, alt=alt,
                           initial=initial, dpi=dpi)


def _png_bytes(image, dpi: int) -> bytes:
    if isinstance(image, (bytes, bytearray)):
        if not bytes(image[:8]) == b"\x89PNG\r\n\x1a\n":
            raise ValueError("a frame given as bytes must be a PNG image")
        return bytes(image)
    if hasattr(image, "savefig"):
        return render_png(image, dpi)
    raise ValueError(f"a frame must be a matplotlib Figure or PNG bytes, not {type(image).__name__}")


def _formatter(value_format, name: str) -> Callable:
    if value_format is None:
        return format_value
    if callable(value_format):
        return value_format
    return value_format.get(name, format_value)


def _hashable(value):
    """A dict key for a slider value: the value itself (so 2, 2.0 and numpy's 2 match), else its repr."""
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


def _product(sizes):
    import itertools

    return itertools.product(*(range(n) for n in sizes))


_STYLE = """
.gcx { margin: 1em 0; max-width: 100%; }
.gcx .gcx-title { font-weight: 600; margin-bottom: .4em; }
.gcx img { max-width: 100%; height: auto; display: block; }
.gcx .gcx-controls { display: grid; grid-template-columns: max-content minmax(8em, 22em) max-content;
  gap: .3em .8em; align-items: center; margin: .5em 0; }
.gcx output { font-variant-numeric: tabular-nums; min-width: 4em; font-weight: 600; }
.gcx .gcx-caption { font-size: .9em; color: #444; margin-top: .3em; }
.gcx .gcx-nojs { font-size: .85em; color: #666; }
"""

# Plain ES5, no modules and no globals: the same text runs in a Sphinx page, in Jupyter and in Colab.
_SCRIPT = """
(function () {{
  var id = "{uid}";
  // Find the block from this script when possible, and its parts inside the block: this
  // holds however the host inserts the output (page, Jupyter, Colab's iframe).
  var me = document.currentScript;
  var root = (me && me.parentNode && me.parentNode.id === id) ? me.parentNode : document.getElementById(id);
  if (!root || root.getAttribute("data-ready")) return;
  root.setAttribute("data-ready", "1");
  function part(suffix) {{ return root.querySelector("[id='" + id + suffix + "']"); }}
  var data = JSON.parse(part("-data").textContent);
  var img = part("-img");
  var inputs = [], outputs = [];
  for (var i = 0; i < data.sliders.length; i++) {{
    inputs.push(part("-s" + i));
    outputs.push(part("-v" + i));
  }}
  function show() {{
    var key = [], parts = [];
    for (var i = 0; i < inputs.length; i++) {{
      var k = parseInt(inputs[i].value, 10), label = data.sliders[i].labels[k];
      key.push(k);
      outputs[i].textContent = label;
      inputs[i].setAttribute("aria-valuetext", label);
      parts.push(data.sliders[i].name + " = " + label);
    }}
    var frame = data.frames[key.join(",")];
    if (frame === undefined) return;
    img.src = "data:image/png;base64," + data.images[frame];
    img.alt = data.alt + " (" + parts.join(", ") + ")";
  }}
  for (var j = 0; j < inputs.length; j++) {{
    inputs[j].disabled = false;
    inputs[j].addEventListener("input", show);
    inputs[j].addEventListener("change", show);
  }}
  var note = part("-nojs");
  if (note) note.parentNode.removeChild(note);
  show();
}})();
"""


def _render(names, labels, images, frame_image, start, title, caption, alt) -> str:
    uid = f"gcx-{uuid.uuid4().hex[:12]}"  # unique per block: several blocks per page never clash
    esc = html.escape
    pretty = [FIELD_LABELS.get(name, name.replace("_", " ")) for name in names]
    first_key = ",".join(map(str, start))
    first_alt = f"{alt} ({', '.join(f'{p} = {labels[i][start[i]]}' for i, p in enumerate(pretty))})"
    controls = []
    for i, (name, row) in enumerate(zip(pretty, labels)):
        controls.append(
            f'<label for="{uid}-s{i}">{esc(name)}</label>'
            f'<input type="range" id="{uid}-s{i}" min="0" max="{len(row) - 1}" step="1" value="{start[i]}" '
            f'aria-valuetext="{esc(row[start[i]])}" disabled>'
            f'<output id="{uid}-v{i}" for="{uid}-s{i}">{esc(row[start[i]])}</output>')
    data = {"sliders": [{"name": n, "labels": row} for n, row in zip(pretty, labels)],
            "frames": frame_image, "images": images, "alt": alt}
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    parts = [f'<div class="gcx" id="{uid}">', f"<style>{_STYLE}</style>"]
    if title:
        parts.append(f'<div class="gcx-title">{esc(title)}</div>')
    parts += [
        f'<img id="{uid}-img" src="data:image/png;base64,{images[frame_image[first_key]]}" alt="{esc(first_alt)}">',
        f'<div class="gcx-controls">{"".join(controls)}</div>',
        f'<div class="gcx-nojs" id="{uid}-nojs">The sliders need JavaScript (in Jupyter: trust the notebook).</div>',
    ]
    if caption:
        parts.append(f'<div class="gcx-caption">{esc(caption)}</div>')
    parts += [f'<script type="application/json" id="{uid}-data">{payload}</script>',
              f"<script>{_SCRIPT.format(uid=uid)}</script>", "</div>"]
    return "\n".join(parts)
