"""A user's mistake reads as a sentence that names the field, the bad value and what is allowed.

Every field of CNNConfig, TrainConfig and DataConfig has at least one bad value here;
a test checks that no field is left out, so a new field arrives with its validation.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

import gradcourse as gc
from gradcourse.device import keep_freed_memory
from gradcourse.data import DATASETS
from gradcourse.models import ACTIVATIONS, INITS, NORMS, POOLS
from gradcourse.train import OPTIMIZERS, SCHEDULES
from gradcourse.clipping import CLIP_MODES

GRADCOURSE_DIR = Path(gc.__file__).resolve().parent


def choices(options):
    """What the message must list for a field with a fixed set of values."""
    return [repr(option) for option in options]


def bounds(*parts):
    """The range the message must state, e.g. ``bounds(">= 1", "<= 200")``."""
    return list(parts)


BOOL = ["True or False"]

# (config class, field, bad value, other settings, fragments the message must contain
#  besides "Owner.field" and the bad value's repr)
CASES = [
    (gc.CNNConfig, "depth", 0, {}, bounds(">= 1", "<= 200")),
    (gc.CNNConfig, "depth", 201, {}, bounds(">= 1", "<= 200")),
    (gc.CNNConfig, "depth", 2.5, {}, ["integer", ">= 1", "<= 200"]),
    (gc.CNNConfig, "depth", True, {}, ["integer"]),
    (gc.CNNConfig, "depth", "6", {}, ["integer"]),
    (gc.CNNConfig, "width", 0, {}, bounds(">= 1", "<= 1024")),
    (gc.CNNConfig, "width", 2048, {}, bounds(">= 1", "<= 1024")),
    (gc.CNNConfig, "activation", "softmax", {}, choices(ACTIVATIONS)),
    (gc.CNNConfig, "activation", "ReLU", {}, choices(ACTIVATIONS)),
    (gc.CNNConfig, "leaky_slope", -0.1, {}, bounds(">= 0.0", "<= 1.0")),
    (gc.CNNConfig, "leaky_slope", math.nan, {}, ["finite number"]),
    (gc.CNNConfig, "norm", "instance", {}, choices(NORMS)),
    (gc.CNNConfig, "residual", 1, {}, BOOL),
    (gc.CNNConfig, "residual", "yes", {}, BOOL),
    (gc.CNNConfig, "residual_scale", -1.0, {}, bounds(">= 0.0", "<= 10.0")),
    (gc.CNNConfig, "init", "he", {}, choices(INITS)),
    (gc.CNNConfig, "init_std", 0.0, {}, bounds("> 0.0", "<= 10.0")),
    (gc.CNNConfig, "init_std", math.inf, {}, ["finite number"]),
    (gc.CNNConfig, "init_gain", 0.0, {}, bounds("> 0.0", "<= 100.0")),
    (gc.CNNConfig, "init_gain", 101.0, {}, bounds("> 0.0", "<= 100.0")),
    (gc.CNNConfig, "pool_every", -1, {}, bounds(">= 0", "<= 200")),
    (gc.CNNConfig, "pool", "min", {}, choices(POOLS)),
    (gc.CNNConfig, "weight_norm", "true", {}, BOOL),

    (gc.TrainConfig, "steps", 0, {}, bounds(">= 1")),
    (gc.TrainConfig, "steps", 10.0, {}, ["integer"]),
    (gc.TrainConfig, "batch_size", 0, {}, bounds(">= 1")),
    (gc.TrainConfig, "optimizer", "lbfgs", {}, choices(OPTIMIZERS)),
    (gc.TrainConfig, "optimizer", "Adam", {}, choices(OPTIMIZERS)),
    (gc.TrainConfig, "lr", 0.0, {}, bounds("> 0.0")),
    (gc.TrainConfig, "lr", -0.1, {}, bounds("> 0.0")),
    (gc.TrainConfig, "lr", math.nan, {}, ["finite number"]),
    (gc.TrainConfig, "lr", "0.1", {}, ["finite number"]),
    (gc.TrainConfig, "momentum", 1.5, {}, bounds(">= 0.0", "<= 1.0")),
    (gc.TrainConfig, "nesterov", "yes", {}, BOOL),
    (gc.TrainConfig, "nesterov", True, {"optimizer": "sgd"}, ["optimizer='momentum'", "'sgd'"]),
    (gc.TrainConfig, "weight_decay", -0.01, {}, bounds(">= 0.0", "<= 10.0")),
    (gc.TrainConfig, "schedule", "cosine", {}, choices(SCHEDULES)),
    (gc.TrainConfig, "step_size", 0, {}, bounds(">= 1")),
    (gc.TrainConfig, "gamma", 0.0, {}, bounds("> 0.0", "<= 1.0")),
    (gc.TrainConfig, "gamma", 1.5, {}, bounds("> 0.0", "<= 1.0")),
    (gc.TrainConfig, "patience", -1, {}, bounds(">= 0")),
    (gc.TrainConfig, "warmup_steps", -1, {}, bounds(">= 0")),
    (gc.TrainConfig, "warmup_steps", 300, {"steps": 200}, bounds(">= 0", "<= 200")),
    (gc.TrainConfig, "range_start", 0.0, {}, bounds("> 0.0")),
    (gc.TrainConfig, "range_start", 1.0, {"schedule": "range_test", "lr": 0.1}, bounds("> 0.0", "<= 0.1")),
    (gc.TrainConfig, "clip", "l2", {}, choices(CLIP_MODES)),
    (gc.TrainConfig, "clip_threshold", 0.0, {}, bounds("> 0.0")),
    (gc.TrainConfig, "max_weight_norm", 0.0, {}, bounds("> 0.0")),
    (gc.TrainConfig, "max_weight_norm", "big", {}, ["finite number"]),
    (gc.TrainConfig, "eval_every", 0, {}, bounds(">= 1")),
    (gc.TrainConfig, "eval_examples", 0, {}, bounds(">= 1")),
    (gc.TrainConfig, "record_every", 0, {}, bounds(">= 1")),
    (gc.TrainConfig, "activation_every", 0, {}, bounds(">= 1")),
    (gc.TrainConfig, "activation_every", 5, {"record_every": 2}, ["multiple of record_every", "2"]),
    (gc.TrainConfig, "hist_every", -1, {}, bounds(">= 0")),
    (gc.TrainConfig, "hist_every", 15, {"activation_every": 10}, ["multiple of activation_every", "10"]),
    (gc.TrainConfig, "seed", -1, {}, bounds(">= 0")),

    (gc.DataConfig, "name", "imagenet", {}, choices(DATASETS)),
    (gc.DataConfig, "name", "MNIST", {}, choices(DATASETS)),
    (gc.DataConfig, "image_size", 3, {}, bounds(">= 4", "<= 256")),
    (gc.DataConfig, "image_size", 16.0, {}, ["integer"]),
    (gc.DataConfig, "val_fraction", 0.0, {}, bounds("> 0.0", "<= 0.9")),
    (gc.DataConfig, "val_fraction", 0.95, {}, bounds("> 0.0", "<= 0.9")),
    (gc.DataConfig, "max_train", 5, {}, bounds(">= 10")),
    (gc.DataConfig, "root", 123, {}, ["folder path"]),
    (gc.DataConfig, "download", "yes", {}, BOOL),
    (gc.DataConfig, "seed", -1, {}, bounds(">= 0")),
]


def case_id(case):
    cls, field, value, others, _ = case
    extra = ",".join(f"{k}={v!r}" for k, v in others.items())
    return f"{cls.__name__}.{field}={value!r}" + (f"[{extra}]" if extra else "")


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_bad_config_value_raises_config_error_naming_field_value_and_allowed(case):
    cls, field, value, others, allowed = case
    with pytest.raises(gc.ConfigError) as excinfo:
        cls(**{field: value, **others})
    message = str(excinfo.value)
    assert f"{cls.__name__}.{field}" in message
    assert repr(value) in message or str(value) in message
    for fragment in allowed:
        assert fragment in message, f"{fragment!r} missing from: {message}"


@pytest.mark.parametrize("cls", [gc.CNNConfig, gc.TrainConfig, gc.DataConfig], ids=lambda c: c.__name__)
def test_every_config_field_has_a_rejected_value_in_this_file(cls):
    tested = {field for owner, field, *_ in CASES if owner is cls}
    assert {f.name for f in dataclasses.fields(cls)} == tested


@pytest.mark.parametrize("cls", [gc.CNNConfig, gc.TrainConfig, gc.DataConfig], ids=lambda c: c.__name__)
def test_default_configs_are_valid_and_frozen(cls):
    config = cls()
    field = dataclasses.fields(cls)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(config, field, getattr(config, field))


def test_config_error_is_a_value_error():
    assert issubclass(gc.ConfigError, ValueError)


def test_train_rejects_an_unknown_setting_and_lists_the_settings(digits):
    with pytest.raises(gc.ConfigError) as excinfo:
        gc.train(data=digits, depht=3)
    message = str(excinfo.value)
    assert "'depht'" in message
    for known in ("depth", "lr", "steps", "image_size"):
        assert known in message


def test_train_rejects_a_dataset_name_given_as_a_setting(digits):
    with pytest.raises(gc.ConfigError, match="data='mnist'"):
        gc.train(data=digits, name="mnist")


def test_train_override_is_validated_like_the_config_field(digits):
    with pytest.raises(gc.ConfigError, match=r"CNNConfig\.depth = 0"):
        gc.train(data=digits, depth=0)


def test_train_rejects_data_settings_for_already_loaded_data(digits):
    with pytest.raises(gc.ConfigError, match="image_size"):
        gc.train(data=digits, image_size=16)


def test_train_with_the_configs_swapped_says_which_argument_is_which(digits):
    """``gc.train(gc.TrainConfig(...), gc.CNNConfig(...))`` is an easy slip in a notebook."""
    with pytest.raises(gc.ConfigError) as excinfo:
        gc.train(gc.TrainConfig(steps=2), gc.CNNConfig(depth=2), digits, device="cpu")
    assert "CNNConfig" in str(excinfo.value) and "TrainConfig" in str(excinfo.value)


def test_cnn_rejects_bad_input_shape_with_config_error():
    with pytest.raises(gc.ConfigError, match=r"CNN\.in_channels = 0"):
        gc.CNN(gc.CNNConfig(), in_channels=0)
    with pytest.raises(gc.ConfigError, match=r"CNN\.num_classes = 1"):
        gc.CNN(gc.CNNConfig(), num_classes=1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_pick_device_cuda_without_gpu_names_the_available_devices():
    with pytest.raises(ValueError) as excinfo:
        gc.pick_device("cuda")
    message = str(excinfo.value)
    assert "'cuda'" in message and "no CUDA GPU" in message
    assert "available: " in message and "cpu" in message


def test_pick_device_rejects_a_name_that_is_not_a_device():
    with pytest.raises(ValueError, match="'gpu' is not a device name"):
        gc.pick_device("gpu")


def test_pick_device_reads_the_environment_variable(monkeypatch):
    monkeypatch.setenv("GRADCOURSE_DEVICE", "cpu")
    assert gc.pick_device() == torch.device("cpu")


def test_pick_device_prefers_cuda_when_present():
    expected = "cuda" if torch.cuda.is_available() else ("mps" if "mps" in gc.device.available_devices() else "cpu")
    assert gc.pick_device().type == expected
    assert gc.device.available_devices()[-1] == "cpu"


USER_MISTAKES = {
    "depth=0": dict(depth=0),
    "width=0": dict(width=0),
    "lr=-1": dict(lr=-1.0),
    "optimizer='Adam'": dict(optimizer="Adam"),
    "batch_size=0": dict(batch_size=0),
    "clip_threshold=0": dict(clip="norm", clip_threshold=0.0),
    "data='imagenet'": dict(data="imagenet"),
    "device='gpu'": dict(device="gpu"),
    "device='tpu'": dict(device="tpu"),
    "image_size=2": dict(data="digits", image_size=2),
    "unknown setting": dict(learning_rate=0.1),
    "configs swapped": dict(model_config=gc.TrainConfig(steps=2), train_config=gc.CNNConfig(depth=2)),
}


@pytest.mark.parametrize("mistake", list(USER_MISTAKES.values()), ids=list(USER_MISTAKES))
def test_user_mistake_raises_a_gradcourse_error_not_a_torch_traceback(mistake):
    settings = {"steps": 2, "device": "cpu", **mistake}
    with pytest.raises(ValueError) as excinfo:  # ConfigError and pick_device's errors are ValueErrors
        gc.train(**settings)
    raised_in = Path(str(excinfo.traceback[-1].path)).resolve()
    assert GRADCOURSE_DIR in raised_in.parents, f"raised inside {raised_in}: {excinfo.value!r}"


@pytest.mark.parametrize("limit", [0, 33, 2.5, "32", True])
def test_keep_freed_memory_names_its_allowed_range(limit):
    with pytest.raises(gc.ConfigError, match=r"limit_mb=.*from 1 to 32"):
        keep_freed_memory(limit)
