"""The CNN family: named layers, every configuration runs, initializations have the textbook
scale, weight normalization, and the summary table."""
from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import gradcourse as gc
from gradcourse.models import ACTIVATIONS, INITS, NORMS, POOLS


def forward_and_backward(model: nn.Module, shape=(4, 1, 8, 8)) -> torch.Tensor:
    x = torch.randn(*shape)
    logits = model(x)
    nn.functional.cross_entropy(logits, torch.arange(shape[0]) % 10).backward()
    return logits


def test_layers_are_named_conv1_to_convN_then_fc():
    model = gc.build_model(gc.CNNConfig(depth=4, width=4))
    assert list(model.layers()) == ["conv1", "conv2", "conv3", "conv4", "fc"]
    assert [name for name, _ in model.named_children()][:4] == ["conv1", "conv2", "conv3", "conv4"]
    assert list(model.activation_modules()) == ["conv1", "conv2", "conv3", "conv4"]


@pytest.mark.parametrize("depth", [1, 60])
def test_shallowest_and_deep_models_build_and_run_forward(depth):
    torch.manual_seed(0)
    model = gc.build_model(gc.CNNConfig(depth=depth, width=4))
    logits = forward_and_backward(model)
    assert logits.shape == (4, 10)
    assert bool(torch.isfinite(logits).all())
    assert len(model.layers()) == depth + 1


@pytest.mark.parametrize("activation, norm", list(itertools.product(ACTIVATIONS, NORMS)))
@pytest.mark.parametrize("init, residual, pool", list(itertools.product(INITS, (False, True), POOLS)))
def test_every_activation_norm_init_residual_pool_combination_runs(activation, norm, init, residual, pool):
    torch.manual_seed(0)
    config = gc.CNNConfig(depth=3, width=8, activation=activation, norm=norm, init=init, residual=residual,
                          pool=pool, pool_every=1)
    model = gc.build_model(config)
    logits = forward_and_backward(model)
    assert logits.shape == (4, 10) and bool(torch.isfinite(logits).all())
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())


def test_build_model_shapes_the_network_for_the_data(digits16):
    model = gc.build_model(gc.CNNConfig(depth=2, width=4), digits16)
    assert model.conv1.conv.in_channels == digits16.in_channels
    assert model.fc.out_features == digits16.num_classes
    assert model(digits16.x_train[:2]).shape == (2, 10)


def test_build_model_keyword_overrides_replace_config_fields():
    model = gc.build_model(gc.CNNConfig(depth=2), width=5, activation="tanh")
    assert model.config == gc.CNNConfig(depth=2, width=5, activation="tanh")
    assert isinstance(model.conv1.act, nn.Tanh)


@pytest.mark.parametrize("activation, module", [
    ("sigmoid", nn.Sigmoid), ("tanh", nn.Tanh), ("relu", nn.ReLU), ("leaky_relu", nn.LeakyReLU), ("gelu", nn.GELU),
])
def test_activation_names_map_to_torch_modules(activation, module):
    model = gc.build_model(gc.CNNConfig(depth=2, width=4, activation=activation, leaky_slope=0.2))
    assert all(type(act) is module for act in model.activation_modules().values())
    if activation == "leaky_relu":
        assert model.conv1.act.negative_slope == 0.2


def test_batch_norm_is_batchnorm2d_and_layer_norm_is_one_group():
    batch = gc.build_model(gc.CNNConfig(depth=2, width=12, norm="batch"))
    layer = gc.build_model(gc.CNNConfig(depth=2, width=12, norm="layer"))
    group = gc.build_model(gc.CNNConfig(depth=2, width=12, norm="group"))
    none = gc.build_model(gc.CNNConfig(depth=2, width=12, norm="none"))
    assert isinstance(batch.conv1.norm, nn.BatchNorm2d)
    assert isinstance(layer.conv1.norm, nn.GroupNorm) and layer.conv1.norm.num_groups == 1
    assert isinstance(group.conv1.norm, nn.GroupNorm) and group.conv1.norm.num_groups == math.gcd(8, 12)
    assert isinstance(none.conv1.norm, nn.Identity)


def test_zero_residual_scale_makes_every_block_after_the_first_an_identity():
    torch.manual_seed(0)
    model = gc.build_model(gc.CNNConfig(depth=5, width=8, residual=True, residual_scale=0.0))
    x = torch.randn(3, 1, 8, 8)
    expected = model.fc(model.conv1(x).mean(dim=(2, 3)))
    assert torch.allclose(model(x), expected)


def test_first_block_has_no_shortcut_because_its_channels_change():
    model = gc.build_model(gc.CNNConfig(depth=3, width=8, residual=True))
    assert not model.conv1.residual and model.conv2.residual and model.conv3.residual


def test_pool_kind_selects_max_or_average_downsampling():
    assert isinstance(gc.build_model(gc.CNNConfig(depth=2, pool="max")).downsample, nn.MaxPool2d)
    assert isinstance(gc.build_model(gc.CNNConfig(depth=2, pool="avg")).downsample, nn.AvgPool2d)


# -- initialization ---------------------------------------------------------------------
WIDTH = 64
FAN = WIDTH * 9  # fan_in == fan_out of a 3x3 conv from WIDTH to WIDTH channels


def conv_weights(config: gc.CNNConfig) -> torch.Tensor:
    """All weights of conv2..convN (same shape, WIDTH -> WIDTH), flattened."""
    torch.manual_seed(0)
    model = gc.build_model(config)
    return torch.cat([model.layers()[f"conv{i}"].conv.weight.detach().flatten() for i in range(2, config.depth + 1)])


@pytest.mark.parametrize("init, activation, expected_std", [
    ("default", "relu", 1 / math.sqrt(3 * FAN)),                 # kaiming_uniform(a=sqrt(5)): bound 1/sqrt(fan_in)
    ("normal", "relu", 0.05),                                    # init_std
    ("xavier_uniform", "relu", math.sqrt(2 / (FAN + FAN))),
    ("xavier_normal", "relu", math.sqrt(2 / (FAN + FAN))),
    ("kaiming_normal", "relu", math.sqrt(2 / FAN)),
    ("kaiming_uniform", "relu", math.sqrt(2 / FAN)),
    ("kaiming_normal", "leaky_relu", math.sqrt(2 / (1 + 0.5 ** 2) / FAN)),  # gain sqrt(2 / (1 + slope^2))
    ("kaiming_uniform", "leaky_relu", math.sqrt(2 / (1 + 0.5 ** 2) / FAN)),
])
def test_init_scheme_gives_the_textbook_weight_std(init, activation, expected_std):
    weights = conv_weights(gc.CNNConfig(depth=4, width=WIDTH, init=init, activation=activation,
                                        leaky_slope=0.5, init_std=0.05))
    assert float(weights.std()) == pytest.approx(expected_std, rel=0.03)
    assert abs(float(weights.mean())) < 0.05 * expected_std * 3


@pytest.mark.parametrize("init", INITS)
def test_init_gain_multiplies_the_weight_std(init):
    plain = conv_weights(gc.CNNConfig(depth=3, width=WIDTH, init=init))
    scaled = conv_weights(gc.CNNConfig(depth=3, width=WIDTH, init=init, init_gain=2.5))
    assert torch.allclose(scaled, 2.5 * plain)


@pytest.mark.parametrize("init", [i for i in INITS if i != "default"])
def test_non_default_init_zeroes_the_biases(init):
    model = gc.build_model(gc.CNNConfig(depth=3, width=8, init=init))
    for layer in model.layers().values():
        module = layer.conv if isinstance(layer, gc.models.ConvBlock) else layer
        assert torch.count_nonzero(module.bias) == 0


def test_init_applies_to_the_fc_layer_too():
    torch.manual_seed(0)
    model = gc.build_model(gc.CNNConfig(depth=2, width=256, init="normal", init_std=0.3))
    assert float(model.fc.weight.detach().std()) == pytest.approx(0.3, rel=0.05)


# -- weight normalization ---------------------------------------------------------------

def test_weight_norm_parametrizes_every_conv_and_fc_weight():
    model = gc.build_model(gc.CNNConfig(depth=3, width=8, weight_norm=True))
    for name, layer in model.layers().items():
        module = layer.conv if name != "fc" else layer
        assert parametrize.is_parametrized(module, "weight"), name
        original = module.parametrizations.weight
        assert {n for n, _ in original.named_parameters()} == {"original0", "original1"}  # g and v


def test_weight_norm_preserves_the_initial_weights():
    config = gc.CNNConfig(depth=3, width=8, init="kaiming_normal", init_gain=1.3)
    torch.manual_seed(4)
    plain = gc.build_model(config)
    torch.manual_seed(4)
    normed = gc.build_model(dataclasses.replace(config, weight_norm=True))
    for name in plain.layers():
        a = plain.layers()[name]
        b = normed.layers()[name]
        a, b = (a.conv, b.conv) if name != "fc" else (a, b)
        assert torch.allclose(a.weight, b.weight, atol=1e-6), name


def test_weight_norm_model_trains_its_magnitudes_and_directions():
    torch.manual_seed(0)
    model = gc.build_model(gc.CNNConfig(depth=2, width=4, weight_norm=True))
    forward_and_backward(model)
    weight = model.conv2.conv.parametrizations.weight
    magnitude, direction = weight.original0, weight.original1
    assert magnitude.grad is not None and direction.grad is not None


# -- summary ------------------------------------------------------------------------------

def test_summary_lists_each_layer_output_shape_and_parameter_count():
    model = gc.build_model(gc.CNNConfig(depth=3, width=8, pool_every=1))
    rows = model.summary((1, 8, 8))
    assert rows == [
        {"layer": "conv1", "output_shape": (8, 8, 8), "parameters": 1 * 8 * 9 + 8},
        {"layer": "conv2", "output_shape": (8, 4, 4), "parameters": 8 * 8 * 9 + 8},
        {"layer": "conv3", "output_shape": (8, 2, 2), "parameters": 8 * 8 * 9 + 8},
        {"layer": "fc", "output_shape": (10,), "parameters": 8 * 10 + 10},
    ]


def test_summary_parameter_counts_add_up_to_the_model_with_norm_layers():
    model = gc.build_model(gc.CNNConfig(depth=4, width=8, norm="batch"))
    rows = model.summary((1, 8, 8))
    assert sum(row["parameters"] for row in rows) == sum(p.numel() for p in model.parameters())
    assert rows[0]["parameters"] == 1 * 8 * 9 + 8 + 2 * 8  # conv weight, bias, BatchNorm scale and shift


def test_pooling_stops_once_the_image_is_one_pixel_wide():
    model = gc.build_model(gc.CNNConfig(depth=6, width=4, pool_every=1))
    shapes = [row["output_shape"] for row in model.summary((1, 8, 8))][:-1]
    assert shapes == [(4, 8, 8), (4, 4, 4), (4, 2, 2), (4, 1, 1), (4, 1, 1), (4, 1, 1)]


def test_summary_leaves_training_mode_and_batch_norm_statistics_unchanged():
    model = gc.build_model(gc.CNNConfig(depth=2, width=4, norm="batch"))
    running_mean = model.conv1.norm.running_mean.clone()
    model.summary((1, 8, 8))
    assert model.training
    assert torch.equal(model.conv1.norm.running_mean, running_mean)
    assert all(not layer._forward_hooks for layer in model.layers().values())
