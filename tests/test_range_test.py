"""The learning-rate range test, the one-cycle schedule, and the Jacobian's singular values."""
import dataclasses

import numpy as np
import pytest
import torch

import gradcourse as gc

FAST = gc.TrainConfig(batch_size=32, eval_every=50, eval_examples=64)


def test_range_test_schedule_raises_the_rate_geometrically_every_step(digits):
    run = gc.train(gc.CNNConfig(depth=2, width=4), gc.TrainConfig(
        schedule="range_test", lr=1.0, range_start=1e-4, steps=5, batch_size=16), digits, device="cpu")
    assert run.lr == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0])


def test_one_cycle_rises_to_the_peak_rate_then_falls_far_below_it(digits):
    run = gc.train(gc.CNNConfig(depth=2, width=4), gc.TrainConfig(
        schedule="one_cycle", optimizer="momentum", lr=0.1, steps=40, batch_size=16), digits, device="cpu")
    peak = int(np.argmax(run.lr))
    assert run.lr[peak] == pytest.approx(0.1) and 8 <= peak <= 16
    assert run.lr[0] < 0.01 and run.lr[-1] < 1e-4
    assert np.all(np.diff(run.lr[:peak + 1]) > 0) and np.all(np.diff(run.lr[peak:]) < 0)


@pytest.fixture(scope="module")
def range_test(digits):
    config = dataclasses.replace(FAST, optimizer="momentum")
    return gc.lr_range_test(gc.CNNConfig(depth=4, width=8, norm="batch"), config, digits, lr_min=1e-4,
                            lr_max=30.0, steps=120, device="cpu")


def test_range_test_curve_falls_then_rises_and_is_cut_when_it_blows_up(range_test):
    losses = range_test.losses
    assert losses.min() < 0.6 * losses[:5].mean(), "the loss falls at useful rates"
    assert len(range_test.lrs) < range_test.run.steps_done or range_test.run.diverged, "cut past the blow-up"
    assert range_test.lrs[0] == pytest.approx(1e-4) and np.all(np.diff(range_test.lrs) > 0)


def test_range_test_suggests_a_steepest_rate_below_the_minimum(range_test):
    assert range_test.lrs[0] < range_test.steepest_lr < range_test.min_loss_lr
    assert "steepest fall at lr" in range_test.summary()


def test_range_test_refuses_a_start_above_the_end(digits):
    with pytest.raises(gc.ConfigError, match="lr_min"):
        gc.lr_range_test(data=digits, lr_min=1.0, lr_max=0.1)


def test_jacobian_singular_values_grow_with_the_weight_scale(digits):
    spreads = []
    for std in (0.5, 2.0):
        torch.manual_seed(0)
        model = gc.build_model(gc.CNNConfig(depth=6, width=4, activation="tanh", init="normal",
                                            init_std=std / 6.0), digits)
        values = gc.jacobian_singular_values(model, digits.x_train[0])
        assert values.shape == (64,) and np.all(np.diff(values) <= 1e-12)
        spreads.append(values[0])
    assert spreads[1] > 100 * spreads[0]
