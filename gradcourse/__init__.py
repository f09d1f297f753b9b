"""gradcourse: see gradients vanish and explode in CNNs, and see each remedy work.

The public API, in the order a notebook uses it::

    import gradcourse as gc
    data = gc.load_data("digits", image_size=16)                 # real data, offline
    run = gc.train(gc.CNNConfig(depth=20, activation="sigmoid"),  # a CNN, trained
                   gc.TrainConfig(lr=0.1, steps=200), data)
    run.grad_norm_at(0)                                           # per-layer gradient norms

Importing gradcourse loads torch only; torchvision, scikit-learn, matplotlib and
ipywidgets are imported when a function needs them.
"""
from ._validate import ConfigError
from .clipping import adaptive_clip_grad_, clip_gradients, total_grad_norm, unitwise_norm
from .data import DataConfig, DatasetUnavailable, ImageData, available_offline, load_data
from .device import available_devices, describe_device, keep_freed_memory, pick_device
from .models import CNN, CNNConfig, build_model
from .monitor import LayerMonitor, backward_signal, jacobian_singular_values
from .range_test import RangeTest, lr_range_test
from .record import Run
from .train import TrainConfig, apply_max_norm, make_optimizer, make_scheduler, train
# These three modules share a name with their main function, so they are imported here (each
# defers matplotlib and ipywidgets to first use): a lazy import would leave the module, not the
# function, bound to gradcourse.sweep once Python registers the submodule on the package.
from .sweep import sweep
from .vectorized import can_train_together, train_many
from .static_explorer import StaticExplorer, static_explorer, sweep_explorer
from .live_explorer import LiveExplorer, in_static_build, live_explorer

__version__ = "0.1.0"

# Names from modules that need matplotlib or ipywidgets: imported on first use, so that
# ``import gradcourse`` stays light.
_LAZY = {
    "plots": "plots",
    "plot_gradient_flow": "plots", "plot_grad_norm_profile": "plots", "plot_activation_stats": "plots",
    "plot_activation_histograms": "plots", "plot_update_ratio": "plots", "plot_training_curves": "plots",
    "plot_clipping": "plots", "figure_to_png": "plots", "plot_lr_range_test": "plots",
}


def __getattr__(name):
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'gradcourse' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(f".{module_name}", __name__)
    return module if name == module_name else getattr(module, name)


def __dir__():
    return sorted(set(globals()) | set(_LAZY))

__all__ = [
    "CNN", "CNNConfig", "ConfigError", "DataConfig", "DatasetUnavailable", "ImageData", "LayerMonitor", "Run",
    "TrainConfig", "backward_signal", "adaptive_clip_grad_", "apply_max_norm", "available_devices", "available_offline",
    "build_model", "clip_gradients", "describe_device", "load_data", "make_optimizer", "make_scheduler",
    "pick_device", "total_grad_norm", "train", "unitwise_norm", "sweep", "StaticExplorer", "static_explorer",
    "sweep_explorer", "LiveExplorer", "in_static_build", "live_explorer", "train_many", "can_train_together",
    "keep_freed_memory", "RangeTest", "lr_range_test", "jacobian_singular_values",
    *sorted(_LAZY),
]
