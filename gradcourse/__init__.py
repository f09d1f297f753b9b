"""gradcourse: see gradients vanish and explode in CNNs, and see each remedy work.

The public API, in the order a notebook uses it::

    import gradcourse as gc
    data = gc.load_data("digits", image_size=16)                 # real data, offline
    run = gc.train(gc.CNNConfig(depth=20, activation="sigmoid"),  # a CNN, trained
                   gc.TrainConfig(lr=0.1, steps=200), data)
    run.grad_norm_at(0)                                           # per-layer gradient norms
    gc.plot_gradient_flow(run)                                    # and the figure

``__all__`` is every name the chapters use. The rest lives in its module and is
reached through it (``gradcourse.vectorized.train_many``, ``gradcourse.record.Run``,
``gradcourse.plots.plot_lr_range_test``); the errors a learner may meet,
:class:`ConfigError` and :class:`DatasetUnavailable`, are importable from here too. Importing gradcourse loads torch only; torchvision,
scikit-learn, matplotlib and ipywidgets are imported when a function needs them.
"""
from ._validate import ConfigError
from .clipping import adaptive_clip_grad_, clip_gradients, unitwise_norm
from .data import DataConfig, DatasetUnavailable, ImageData, available_offline, chapter_data, load_data
from .device import describe_device, pick_device
from .live_sliders import live_explorer
from .models import CNN, CNNConfig, build_model
from .monitor import LayerMonitor, backward_signal, jacobian_singular_values
from .range_test import lr_range_test
from .record import Run, seed_range
from .static_sliders import static_explorer, sweep_explorer
from .sweeps import sweep
from .train import TrainConfig, accuracy_and_loss, apply_max_norm, train
from .vectorized import train_many

__version__ = "0.1.0"

# The figures need matplotlib: imported on first use, so that ``import gradcourse`` stays light.
_PLOTS = ("plot_gradient_flow", "plot_grad_norm_profile", "plot_activation_stats", "plot_activation_histograms",
          "plot_update_ratio", "plot_training_curves", "plot_clipping")


def __getattr__(name):
    if name == "plots" or name in _PLOTS:
        import importlib

        plots = importlib.import_module(".plots", __name__)
        return plots if name == "plots" else getattr(plots, name)
    raise AttributeError(f"module 'gradcourse' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | {"plots", *_PLOTS})


__all__ = [
    # configuration and data
    "CNNConfig", "TrainConfig", "DataConfig", "load_data", "chapter_data",
    # models, training, the run record and its 3-seed summary
    "build_model", "train", "sweep", "lr_range_test", "accuracy_and_loss", "seed_range",
    # measuring
    "LayerMonitor", "backward_signal", "jacobian_singular_values",
    # remedies the course teaches with its own helpers
    "clip_gradients", "adaptive_clip_grad_", "unitwise_norm", "apply_max_norm",
    # devices
    "pick_device",
    # sliders: static (any page) and live (a kernel)
    "static_explorer", "sweep_explorer", "live_explorer",
    # figures
    "plots", *_PLOTS,
]
