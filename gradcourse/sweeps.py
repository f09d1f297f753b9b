"""Train every combination of a few settings: the data behind a precomputed slider.

``sweep({"lr": [0.01, 0.1], "clip_threshold": [None, 1.0]})`` trains four runs and
returns them keyed by ``(lr, clip_threshold)``. Every run goes through the disk cache of
:func:`gradcourse.train`, so rebuilding the book with nothing changed retrains nothing.
"""
from __future__ import annotations

import itertools
from dataclasses import replace

from . import _validate as check
from .data import DataConfig, ImageData, load_data
from .models import CNNConfig
from .record import Run
from .train import TrainConfig, split_overrides, train


def sweep(grid: dict[str, list], model_config: CNNConfig | None = None, train_config: TrainConfig | None = None,
          data: ImageData | DataConfig | str = "digits", cache: bool = True, progress: bool = False,
          device=None, together: bool = False) -> dict[tuple, Run]:
    """Train the cartesian product of ``grid`` and return ``{values: run}``.

    Args:
        grid: ``{field: [values...]}`` where each field belongs to :class:`~gradcourse.CNNConfig` or
            :class:`~gradcourse.TrainConfig`, e.g. ``{"lr": [0.01, 0.1, 1.0], "clip_threshold": [None, 1.0]}``.
            A ``clip_threshold`` of ``None`` means "no clipping" (``clip="none"``); a number
            turns on clipping by norm unless ``clip`` is already set (or swept).
        model_config, train_config: the settings shared by every run.
        data: a dataset name, :class:`~gradcourse.DataConfig` or loaded :class:`~gradcourse.data.ImageData` (loaded once).
        cache: read and write each run through the disk cache (see :func:`gradcourse.train`).
        progress: show one progress bar over the configurations.
        device: where to train (default: :func:`gradcourse.pick_device`).
        together: train the grid points that differ only in ``lr``, ``clip_threshold`` or
            ``momentum`` as one grouped network (:func:`gradcourse.vectorized.train_many`):
            faster, and equal to separate runs up to floating-point rounding. Such runs are
            cached under their own keys. Grid points that cannot share a network train alone.

    Returns:
        A dict whose keys are tuples of the grid values in grid order (in the order the
        product visits them: the last field varies fastest).

    Raises:
        ConfigError: an unknown field, an empty or repeated list of values, or a value a
            config does not allow (before anything is trained).
    """
    grid = _checked_grid(grid)
    model_config, train_config = model_config or CNNConfig(), train_config or TrainConfig()
    if not isinstance(data, ImageData):
        data = load_data(data)
    combos = list(itertools.product(*grid.values()))
    # Build (and so validate) every configuration before training the first one.
    configs = [_configs(model_config, train_config, dict(zip(grid, values)), "clip" in grid) for values in combos]
    bar = _progress_bar(len(combos)) if progress else None
    runs = {}
    try:
        if together:
            runs.update(_train_together(combos, configs, data, cache, device, bar))
        for values, (model_cfg, train_cfg) in zip(combos, configs):
            if values not in runs:
                runs[values] = train(model_cfg, train_cfg, data, cache=cache, progress=False, device=device)
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return {values: runs[values] for values in combos}


def _train_together(combos, configs, data: ImageData, cache: bool, device, bar) -> dict[tuple, Run]:
    """Group the grid points that can share one wide network and train each group at once."""
    from .cache import load_run, run_key, save_run
    from .device import pick_device
    from .vectorized import VARYING, can_train_together, train_many

    device = pick_device(device)
    groups: dict = {}
    for values, (model_cfg, train_cfg) in zip(combos, configs):
        shared = replace(train_cfg, **{name: getattr(TrainConfig(), name) for name in VARYING})
        groups.setdefault((model_cfg, shared), []).append((values, train_cfg))
    runs = {}
    for (model_cfg, _), members in groups.items():
        train_cfgs = [train_cfg for _, train_cfg in members]
        if len(members) < 2 or not can_train_together([model_cfg] * len(members), train_cfgs):
            continue
        keys = [run_key("train_many", model_cfg, cfg, data.config, device.type) for cfg in train_cfgs]
        use_cache = cache and data.config is not None
        cached = {values: run for (values, _), key in zip(members, keys)
                  if use_cache and (run := load_run(key)) is not None}
        todo = [(values, cfg, key) for (values, cfg), key in zip(members, keys) if values not in cached]
        if len(todo) >= 2:
            for (values, _, key), run in zip(todo, train_many(model_cfg, [cfg for _, cfg, _ in todo], data, device)):
                cached[values] = run
                if use_cache:
                    save_run(key, run)
        elif todo:
            continue  # a single missing run: leave it to train()
        runs.update(cached)
        if bar is not None:
            bar.update(len(members))
    return runs


def _checked_grid(grid) -> dict[str, list]:
    if not isinstance(grid, dict) or not grid:
        raise check.ConfigError(f"sweep grid = {grid!r} must be a non-empty dict of {{field: [values...]}}")
    model_fields, train_fields, data_fields = split_overrides({name: None for name in grid})
    if data_fields:
        raise check.ConfigError(f"sweep grid fields {sorted(data_fields)} are data settings; sweep model and "
                                f"training settings, and pass the data as data=DataConfig(...)")
    checked = {}
    for name, values in grid.items():
        if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
            raise check.ConfigError(f"sweep grid[{name!r}] = {values!r} must be a list of values")
        values = list(values)
        if not values:
            raise check.ConfigError(f"sweep grid[{name!r}] is empty; give at least one value")
        if len(set(map(repr, values))) != len(values):
            raise check.ConfigError(f"sweep grid[{name!r}] = {values!r} repeats a value")
        checked[name] = values
    return checked


def _configs(model_config: CNNConfig, train_config: TrainConfig, values: dict, clip_swept: bool):
    """The (CNNConfig, TrainConfig) of one grid point; validated on construction."""
    values = dict(values)
    if "clip_threshold" in values:
        threshold = values.pop("clip_threshold")
        if threshold is None:
            values["clip"] = "none"
        else:
            values["clip_threshold"] = threshold
            if not clip_swept and train_config.clip == "none":
                values["clip"] = "norm"
    model_over, train_over, _ = split_overrides(values)
    return replace(model_config, **model_over), replace(train_config, **train_over)


def _progress_bar(total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="sweep", unit="run")
