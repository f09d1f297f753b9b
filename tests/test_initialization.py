"""Initialization for trainability (chapter 3d): delta-orthogonal kernels, one weight scale for
every layer, LSUV, and the edge-of-chaos explorer."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import gradcourse as gc
from gradcourse.initialization import (
    block_signal, delta_orthogonal_, edge_of_chaos_explorer, edge_of_chaos_frame,
    layer_output_variances, lsuv_init_, per_layer_factor, scaled_init_, signal_and_spectrum,
    tanh_cnn, weight_layers)


def test_delta_orthogonal_kernel_is_zero_except_an_orthogonal_centre_tap():
    torch.manual_seed(0)
    kernel = delta_orthogonal_(torch.empty(16, 8, 3, 3), gain=2.0)
    centre = kernel[:, :, 1, 1]
    outside = kernel.clone()
    outside[:, :, 1, 1] = 0
    assert outside.abs().max() == 0
    assert torch.allclose(centre.T @ centre, 4.0 * torch.eye(8), atol=1e-5)


def test_delta_orthogonal_convolution_keeps_every_pixels_channel_norm():
    torch.manual_seed(1)
    conv = nn.Conv2d(8, 8, 5, padding=2, bias=False)
    delta_orthogonal_(conv.weight)
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        y = conv(x)
    assert torch.allclose(y.norm(dim=1), x.norm(dim=1), atol=1e-5)


def test_delta_orthogonal_rejects_even_kernels_and_matrices():
    with pytest.raises(ValueError, match="odd kernel"):
        delta_orthogonal_(torch.empty(4, 4, 2, 2))
    with pytest.raises(ValueError, match="orthogonal_"):
        delta_orthogonal_(torch.empty(4, 4))


def test_scaled_gaussian_init_has_variance_sigma_w_squared_over_fan_in():
    torch.manual_seed(2)
    model = gc.build_model(gc.CNNConfig(depth=3, width=64))
    scaled_init_(model, sigma_w=1.5)
    for name, layer in weight_layers(model).items():
        fan_in = layer.weight[0].numel()
        assert layer.weight.var().item() == pytest.approx(1.5 ** 2 / fan_in, rel=0.15), name
        assert layer.bias.abs().max() == 0


def test_scaled_delta_orthogonal_init_uses_orthogonal_rows_for_linear_layers():
    model = gc.build_model(gc.CNNConfig(depth=2, width=16))
    scaled_init_(model, 1.0, "delta_orthogonal")
    fc = model.fc.weight.detach()  # 10 x 16: orthonormal rows
    assert torch.allclose(fc @ fc.T, torch.eye(10), atol=1e-5)
    assert model.conv2.conv.weight[:, :, 0, 0].abs().max() == 0


def test_scaled_init_rejects_unknown_scheme_and_bad_scale():
    model = gc.build_model(gc.CNNConfig(depth=1, width=4))
    with pytest.raises(ValueError, match="scheme"):
        scaled_init_(model, 1.0, "uniform")
    with pytest.raises(ValueError, match="sigma_w"):
        scaled_init_(model, 0.0)


def test_lsuv_gives_every_layer_unit_output_variance_on_the_batch():
    torch.manual_seed(3)
    model = gc.build_model(gc.CNNConfig(depth=12, width=8, activation="tanh"))
    batch = torch.randn(128, 1, 8, 8)
    before = list(layer_output_variances(model, batch).values())
    assert min(before) < 0.5  # PyTorch's default shrinks the signal
    lsuv_init_(model, batch, tol=0.02)
    after = layer_output_variances(model, batch)
    assert list(after) == list(weight_layers(model))
    assert all(abs(v - 1) < 0.02 for v in after.values()), after


def test_lsuv_restores_batch_norm_running_statistics():
    torch.manual_seed(4)
    model = gc.build_model(gc.CNNConfig(depth=3, width=8, norm="batch"))
    lsuv_init_(model, torch.randn(32, 1, 8, 8))
    assert torch.equal(model.conv2.norm.running_mean, torch.zeros(8))
    assert int(model.conv2.norm.num_batches_tracked) == 0


def test_lsuv_refuses_a_layer_whose_output_is_constant():
    model = gc.build_model(gc.CNNConfig(depth=2, width=4))
    with pytest.raises(ValueError, match="variance"):
        lsuv_init_(model, torch.zeros(8, 1, 8, 8))


def test_per_layer_factor_reads_a_geometric_signal():
    signal = 3.0 * 0.5 ** np.arange(10)  # halves towards the output: doubles towards the input
    assert per_layer_factor(signal) == pytest.approx(2.0)


@pytest.fixture(scope="module")
def digits():
    return gc.load_data("digits")


def test_tanh_gradients_vanish_in_the_ordered_phase_and_explode_in_the_chaotic(digits):
    ordered = per_layer_factor(block_signal(tanh_cnn(0.5, 12, digits), digits))
    chaotic = per_layer_factor(block_signal(tanh_cnn(3.0, 12, digits), digits))
    assert ordered < 0.7 < 1.2 < chaotic


def test_block_signal_leaves_the_model_in_float32_without_gradients(digits):
    model = tanh_cnn(1.0, 4, digits)
    signal, values = signal_and_spectrum(model, digits)
    assert signal.shape == (4,) and values.shape == (64,)
    assert next(model.parameters()).dtype == torch.float32
    assert all(p.grad is None for p in model.parameters())


def test_delta_orthogonal_tanh_network_has_largest_singular_value_one(digits):
    values = gc.jacobian_singular_values(tanh_cnn(1.0, 6, digits, scheme="delta_orthogonal"),
                                         digits.x_train[0])
    assert values[0] == pytest.approx(1.0, abs=0.01)


def test_edge_of_chaos_frame_is_a_narrow_two_panel_figure(digits):
    import matplotlib.pyplot as plt

    fig = edge_of_chaos_frame(1.0, 4, digits)
    try:
        assert len(fig.axes) == 2
        assert fig.get_size_inches()[0] <= 7
        assert all(ax.get_yscale() == "log" for ax in fig.axes)
    finally:
        plt.close(fig)


def test_edge_of_chaos_explorer_has_a_frame_per_slider_combination(digits):
    explorer = edge_of_chaos_explorer(digits, sigma_ws=(0.5, 2.0), depths=(3, 4), alt="test")
    assert explorer.n_frames == 4
    assert "weight scale σw</label>" in explorer.html and "depth</label>" in explorer.html
    assert 'alt="test (weight scale σw = 0.5, depth = 4)"' in explorer.html
    assert math.isfinite(explorer.size_bytes) and explorer.size_bytes < 1_000_000
