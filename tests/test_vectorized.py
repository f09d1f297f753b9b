"""train_many trains several configurations as one grouped network, and must agree with train()."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import gradcourse as gc
from gradcourse.vectorized import WideCNN, can_train_together, train_many

MODEL = gc.CNNConfig(depth=4, width=8, init="kaiming_normal")
POOLED = gc.CNNConfig(depth=4, width=8, init="kaiming_normal", pool_every=1)  # 8x8 -> 4 -> 2 -> 1
# tanh: with a kinked activation a value within rounding of the kink can land on either
# side, and the pre-activation batch norm of the next block magnifies that (up to 1e-3
# after a few steps), which is float noise, not a disagreement.
NORMED = gc.CNNConfig(depth=4, width=8, init="kaiming_normal", norm="batch", residual=True, pool_every=2,
                      activation="tanh")


def _configs(**common):
    return [gc.TrainConfig(steps=12, lr=lr, eval_every=6, **common) for lr in (0.01, 0.05, 0.2)]


@pytest.mark.parametrize("common", [
    {"optimizer": "sgd"},
    {"optimizer": "momentum", "clip": "norm", "clip_threshold": 0.5},
    {"optimizer": "momentum", "clip": "value", "clip_threshold": 0.01},
], ids=["sgd", "momentum+norm clip", "momentum+value clip"])
@pytest.mark.parametrize("model", [MODEL, POOLED, NORMED], ids=["unpooled", "max-pooled", "batch-norm residual"])
def test_train_many_matches_train_for_each_configuration(digits, common, model):
    """Equal up to float rounding. At a large learning rate training amplifies rounding
    differences step by step, so the first steps are compared tightly and the rest loosely."""
    configs = _configs(**common)
    together = train_many(model, configs, digits)
    for config, run in zip(configs, together):
        alone = gc.train(model, config, digits)
        assert run.steps_done == alone.steps_done
        np.testing.assert_allclose(run.loss[:5], alone.loss[:5], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(run.grad_norm[:5], alone.grad_norm[:5], rtol=1e-5)
        np.testing.assert_allclose(run.loss, alone.loss, rtol=1e-2)
        np.testing.assert_allclose(run.grad_norm, alone.grad_norm, rtol=2e-2)
        np.testing.assert_allclose(run.grad_norm_clipped, alone.grad_norm_clipped, rtol=2e-2)
        np.testing.assert_array_equal(run.clipped, alone.clipped)
        np.testing.assert_allclose(run.layer_grad_norm[:5], alone.layer_grad_norm[:5], rtol=1e-4)
        np.testing.assert_allclose(run.layer_update_ratio[:5], alone.layer_update_ratio[:5], rtol=1e-4)
        np.testing.assert_allclose(run.act_mean[:1], alone.act_mean[:1], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(run.act_saturated, alone.act_saturated, atol=2e-2)
        np.testing.assert_allclose(run.val_acc, alone.val_acc, atol=0.02)


@pytest.mark.parametrize("activation, pool, pooled_first", [("relu", "max", True), ("relu", "avg", False),
                                                              ("tanh", "max", False)])
def test_pooling_before_the_relu_changes_no_value_and_no_gradient(digits, activation, pool, pooled_first):
    """Off the steps that record activation statistics, a ReLU followed by a max pool runs
    as the pool then the ReLU: the logits and every gradient must be bit for bit the same."""
    config = gc.CNNConfig(depth=4, width=8, init="kaiming_normal", pool_every=1, activation=activation, pool=pool)
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(gc.build_model(config, digits))
    wide = WideCNN(models)
    assert wide.pool_first is pooled_first
    x, y = digits.x_train[:32], digits.y_train[:32]
    results = []
    for observe in (True, False):
        wide.observe = observe
        wide.zero_grad(set_to_none=True)
        logits = wide(x)
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.repeat_interleave(3)).backward()
        results.append([logits.detach()] + [p.grad.clone() for p in wide.parameters()])
    assert len(results[0]) == 1 + 2 * 5
    for observed, fast in zip(*results):
        torch.testing.assert_close(fast, observed, rtol=0, atol=0)


def test_a_diverging_model_stops_alone_and_the_others_carry_on(digits):
    configs = [gc.TrainConfig(steps=30, lr=lr, optimizer="momentum") for lr in (0.02, 1e4)]
    calm, wild = train_many(gc.CNNConfig(depth=4, width=8, init="kaiming_normal", init_gain=2.0), configs, digits)
    assert wild.diverged and wild.steps_done == wild.diverged_at < 30
    assert not calm.diverged and calm.steps_done == 30
    assert np.isfinite(calm.loss).all()


def test_configurations_that_differ_in_more_than_lr_threshold_momentum_are_refused(digits):
    configs = [gc.TrainConfig(lr=0.1), gc.TrainConfig(lr=0.1, batch_size=32)]
    assert not can_train_together([MODEL, MODEL], configs)
    with pytest.raises(ValueError, match=r"TrainConfig.batch_size differs .*only clip_threshold, lr, momentum may"):
        train_many(MODEL, configs, digits)


@pytest.mark.parametrize("config, message", [
    (gc.CNNConfig(weight_norm=True), "CNNConfig.weight_norm = True: train_many supports False"),
    (gc.TrainConfig(optimizer="adam"), "TrainConfig.optimizer = 'adam': train_many supports 'sgd', 'momentum'"),
])
def test_train_many_names_the_option_it_refuses(digits, config, message):
    model, train = (config, gc.TrainConfig()) if isinstance(config, gc.CNNConfig) else (MODEL, config)
    with pytest.raises(ValueError, match=message):
        train_many(model, [train, train], digits)


def test_every_config_field_is_on_train_manys_allow_list():
    """A new option must be added to the allow-list (supported or refused) before train_many
    trains a configuration that uses it; until then train_many refuses every configuration."""
    from dataclasses import fields

    from gradcourse.vectorized import MODEL_OPTIONS, TRAIN_OPTIONS

    assert {f.name for f in fields(gc.CNNConfig)} == set(MODEL_OPTIONS)
    assert {f.name for f in fields(gc.TrainConfig)} == set(TRAIN_OPTIONS)


@pytest.mark.parametrize("change", [{"optimizer": "adam"}, {"schedule": "step"}, {"clip": "agc"},
                                    {"weight_decay": 1e-4}, {"max_weight_norm": 1.0}, {"nesterov": True,
                                    "optimizer": "momentum"}])
def test_options_train_many_does_not_support_are_refused(change):
    assert not can_train_together([MODEL, MODEL], [gc.TrainConfig(**change), gc.TrainConfig(**change)])


def test_the_norms_of_a_vanishing_gradient_do_not_underflow(digits):
    """The first layers of a deep sigmoid network have gradient norms near 1e-22, whose
    squares are below float32's range: they must be summed again in float64, as train() does."""
    model = gc.CNNConfig(depth=12, width=8, activation="sigmoid", init="normal", init_std=0.01)
    configs = [gc.TrainConfig(steps=3, lr=lr, eval_every=3) for lr in (0.01, 0.1)]
    run = train_many(model, configs, digits)[0]
    alone = gc.train(model, configs[0], digits)
    assert 0 < run.layer_grad_norm[0, 0] < 1e-20
    np.testing.assert_allclose(run.layer_grad_norm[:, :3], alone.layer_grad_norm[:, :3], rtol=1e-5)
    np.testing.assert_allclose(run.layer_weight_norm, alone.layer_weight_norm, rtol=1e-5)


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "tanh", "sigmoid"])
def test_activation_statistics_match_train_for_every_activation(digits, activation):
    """The wide hooks count flat units their own way for each activation (the zeros of a
    ReLU, a threshold for the others): the first recorded statistics must be train()'s."""
    model = gc.CNNConfig(depth=4, width=8, init="kaiming_normal", activation=activation)
    configs = [gc.TrainConfig(steps=12, lr=lr, eval_every=6) for lr in (0.01, 0.05)]
    run = train_many(model, configs, digits)[0]
    alone = gc.train(model, configs[0], digits)
    np.testing.assert_allclose(run.act_mean[:1], alone.act_mean[:1], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(run.act_std[:1], alone.act_std[:1], rtol=1e-4)
    np.testing.assert_allclose(run.act_saturated[:1], alone.act_saturated[:1], atol=1e-6)
    np.testing.assert_allclose(run.act_dead[:1], alone.act_dead[:1], atol=1e-6)


def test_an_unnormalized_residual_relu_network_trains_together_as_alone(digits):
    """The block's ReLU reads the residual stream directly when there is no normalization:
    it must not overwrite it (an in-place ReLU there broke backward and the forward values)."""
    model = gc.CNNConfig(depth=4, width=8, residual=True, norm="none", activation="relu")
    configs = [gc.TrainConfig(steps=6, lr=lr, eval_every=6) for lr in (0.01, 0.05)]
    for config, run in zip(configs, train_many(model, configs, digits)):
        alone = gc.train(model, config, digits)
        np.testing.assert_allclose(run.loss[:3], alone.loss[:3], rtol=1e-5)



def test_statistics_every_few_steps_are_recorded_as_train_records_them(digits):
    """The shared loop records per-layer norms every ``record_every`` steps for both."""
    configs = [gc.TrainConfig(steps=12, lr=lr, eval_every=6, record_every=3, activation_every=6)
               for lr in (0.01, 0.05)]
    run = train_many(MODEL, configs, digits)[0]
    alone = gc.train(MODEL, configs[0], digits)
    np.testing.assert_array_equal(run.stat_step, [0, 3, 6, 9])
    np.testing.assert_array_equal(run.stat_step, alone.stat_step)
    np.testing.assert_array_equal(run.act_step, alone.act_step)
    np.testing.assert_allclose(run.layer_grad_norm[:2], alone.layer_grad_norm[:2], rtol=1e-4)
