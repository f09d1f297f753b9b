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
from .device import available_devices, describe_device, pick_device
from .models import CNN, CNNConfig, build_model
from .monitor import LayerMonitor
from .record import Run
from .train import TrainConfig, apply_max_norm, make_optimizer, make_scheduler, train

__version__ = "0.1.0"

__all__ = [
    "CNN", "CNNConfig", "ConfigError", "DataConfig", "DatasetUnavailable", "ImageData", "LayerMonitor", "Run",
    "TrainConfig", "adaptive_clip_grad_", "apply_max_norm", "available_devices", "available_offline",
    "build_model", "clip_gradients", "describe_device", "load_data", "make_optimizer", "make_scheduler",
    "pick_device", "total_grad_norm", "train", "unitwise_norm",
]
