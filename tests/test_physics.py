"""The course's claims about gradients at initialization, checked on the real digits.

Each run is one step of a 20-layer CNN: the per-layer gradient norms at step 0 are what
the chapters plot.
"""
from __future__ import annotations

import numpy as np
import pytest

import gradcourse as gc

DEPTH = 20


def conv_grad_norms_at_init(data, **model_settings) -> np.ndarray:
    """Gradient norms of conv1 ... conv20 at step 0 (one batch of 64 digits)."""
    run = gc.train(gc.CNNConfig(depth=DEPTH, width=16, **model_settings),
                   gc.TrainConfig(steps=1, batch_size=64, eval_examples=64), data, device="cpu")
    assert run.layer_names[:-1] == [f"conv{i}" for i in range(1, DEPTH + 1)]
    return run.layer_grad_norm[0, :-1]


def test_deep_sigmoid_cnn_with_default_init_has_vanishing_gradients_at_the_input(digits):
    norms = conv_grad_norms_at_init(digits, activation="sigmoid")
    assert norms[0] <= norms[-1] / 100
    assert norms[DEPTH // 2] < norms[-1]  # already smaller half way down


def test_relu_with_kaiming_init_keeps_conv_gradient_norms_within_an_order_of_magnitude(digits):
    norms = conv_grad_norms_at_init(digits, activation="relu", init="kaiming_normal")
    same_shape = norms[1:]  # conv2 ... conv20: 16 -> 16 channels
    assert same_shape.max() <= 10 * same_shape.min()
    # conv1 reads one input channel, so it has 16x fewer weights; it stays within 10x of the typical layer
    assert np.median(norms) / 10 <= norms[0] <= np.median(norms) * 10


@pytest.fixture(scope="module")
def relu_kaiming_by_gain(digits):
    return {gain: conv_grad_norms_at_init(digits, activation="relu", init="kaiming_normal", init_gain=gain)
            for gain in (1.0, 1.5, 2.0)}


def test_raising_init_gain_with_relu_makes_every_layer_gradient_explode(relu_kaiming_by_gain):
    g1, g15, g2 = relu_kaiming_by_gain[1.0], relu_kaiming_by_gain[1.5], relu_kaiming_by_gain[2.0]
    assert bool((g15 >= 100 * g1).all()) and bool((g2 >= 100 * g15).all())


def test_relu_network_scales_all_layers_together_so_the_depth_profile_keeps_its_shape(relu_kaiming_by_gain):
    """A ReLU network without normalization is positively homogeneous: multiplying every
    weight by the gain multiplies every weight gradient by the same power of the gain, so
    the first-to-last ratio does not grow with the gain (only the overall size does)."""
    ratio = {gain: norms[0] / norms[-1] for gain, norms in relu_kaiming_by_gain.items()}
    assert ratio[2.0] <= 2 * ratio[1.0] and ratio[1.5] <= 2 * ratio[1.0]


def test_raising_init_gain_with_tanh_makes_gradients_grow_from_last_to_first_layer(digits):
    """tanh is not homogeneous: past gain 1 the backward signal is amplified layer by layer."""
    ratio = {}
    for gain in (1.0, 1.5, 2.0):
        norms = conv_grad_norms_at_init(digits, activation="tanh", init="xavier_normal", init_gain=gain)
        ratio[gain] = norms[0] / norms[-1]
    assert ratio[1.0] < ratio[1.5] < ratio[2.0]
    assert ratio[2.0] > 2.0, "at gain 2 the first layer's gradient exceeds the last layer's"
