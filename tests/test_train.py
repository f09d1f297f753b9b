"""train(): deterministic, never raises for a diverging run, follows the optimizer, schedule,
clipping and constraint it is given, and keeps a record of a few floats per layer per step."""
from __future__ import annotations

import dataclasses
import math
import pickle
import re
import subprocess
import sys

import matplotlib
import numpy as np
import pytest
import torch
from torch import nn

import gradcourse as gc
from gradcourse.train import make_optimizer
from gradcourse.clipping import CLIP_MODES
from gradcourse.train import OPTIMIZERS

matplotlib.use("Agg")

TINY_MODEL = gc.CNNConfig(depth=3, width=8)
TINY_TRAIN = gc.TrainConfig(steps=20, batch_size=32, eval_every=10, eval_examples=64)


def tiny_run(data, model_config=TINY_MODEL, train_config=TINY_TRAIN, **overrides) -> gc.Run:
    return gc.train(model_config, train_config, data, device="cpu", **overrides)


def array_fields(run: gc.Run) -> dict[str, np.ndarray]:
    return {f.name: getattr(run, f.name) for f in dataclasses.fields(run)
            if isinstance(getattr(run, f.name), np.ndarray)}


# -- determinism --------------------------------------------------------------------------

def test_same_config_and_seed_give_identical_records(digits):
    first, second = tiny_run(digits, seed=3), tiny_run(digits, seed=3)
    a, b = array_fields(first), array_fields(second)
    assert a.keys() == b.keys() and len(a) > 20
    for name in a:
        assert np.array_equal(a[name], b[name]), name


def test_different_seed_gives_a_different_record(digits):
    first, second = tiny_run(digits, seed=3), tiny_run(digits, seed=4)
    assert not np.array_equal(first.loss, second.loss)
    assert not np.array_equal(first.layer_grad_norm, second.layer_grad_norm)


# -- the record ---------------------------------------------------------------------------

def test_record_has_one_entry_per_step_and_per_layer(digits):
    run = tiny_run(digits)
    steps, layers = 20, ["conv1", "conv2", "conv3", "fc"]
    assert run.steps_done == steps and not run.diverged
    for name in ("loss", "lr", "grad_norm", "grad_norm_clipped", "clipped"):
        assert getattr(run, name).shape == (steps,), name
    assert run.layer_names == layers and run.activation_names == layers[:-1]
    for name in ("layer_grad_norm", "layer_weight_norm", "layer_update_ratio"):
        assert getattr(run, name).shape == (steps, len(layers)), name
    assert list(run.stat_step) == list(range(steps))
    assert list(run.act_step) == [0, 10]
    for name in ("act_mean", "act_std", "act_saturated", "act_dead"):
        assert getattr(run, name).shape == (2, 3), name
    assert bool(np.isfinite(run.loss).all()) and bool((run.layer_grad_norm > 0).all())


def test_record_every_and_activation_every_thin_the_statistics(digits):
    run = tiny_run(digits, record_every=2, activation_every=4)
    assert list(run.stat_step) == list(range(0, 20, 2))
    assert run.layer_grad_norm.shape == (10, 4)
    assert list(run.act_step) == [0, 4, 8, 12, 16]
    assert run.loss.shape == (20,)  # per-step values are kept for every step


def test_evaluations_run_every_eval_every_steps_and_at_the_end(digits):
    run = tiny_run(digits, steps=25)
    assert list(run.eval_step) == [10, 20, 25]
    assert bool(((0 <= run.val_acc) & (run.val_acc <= 1)).all())
    assert bool(((0 <= run.train_acc) & (run.train_acc <= 1)).all())
    assert run.final_val_acc == run.val_acc[-1]


def test_last_evaluation_uses_the_whole_validation_split(digits):
    run = tiny_run(digits)
    n_val = len(digits.y_val)  # 359, prime: only the whole split gives a multiple of 1/359
    correct = run.val_acc[-1] * n_val
    assert correct == pytest.approx(round(correct), abs=1e-6)
    assert run.val_acc[0] * 64 == pytest.approx(round(run.val_acc[0] * 64), abs=1e-6)


def test_tiny_cnn_learns_the_digits(digits):
    run = tiny_run(digits, dataclasses.replace(TINY_MODEL, init="kaiming_normal"),
                   dataclasses.replace(TINY_TRAIN, steps=150, optimizer="momentum", lr=0.05, eval_every=50))
    assert run.loss[-10:].mean() < run.loss[:10].mean() / 2
    assert run.final_val_acc > 0.5


def test_long_run_record_is_a_few_floats_per_layer_per_step(digits):
    steps = 2000
    run = gc.train(gc.CNNConfig(depth=1, width=4),
                   gc.TrainConfig(steps=steps, batch_size=8, eval_every=1000, eval_examples=32), digits, device="cpu")
    layers, act_rows = 2, steps // 10
    assert run.steps_done == steps
    assert run.loss.shape == (steps,)
    assert run.layer_grad_norm.shape == (steps, layers)
    assert run.act_mean.shape == (act_rows, 1)
    assert 30 <= len(run.hist_step) <= 50  # about 40 histograms whatever the length
    assert run.hist_counts.shape == (len(run.hist_step), 1, gc.monitor.HIST_BINS)
    size = len(pickle.dumps(run))
    arrays = sum(a.nbytes for a in array_fields(run).values())
    assert size < 1.1 * arrays + 20_000
    floats_per_step = arrays / 8 / steps
    assert floats_per_step < 5 + 4 * layers, f"{floats_per_step:.1f} floats per step"


def test_record_holds_numbers_not_tensors_or_graphs(digits):
    run = tiny_run(digits)
    for f in dataclasses.fields(run):
        value = getattr(run, f.name)
        assert not isinstance(value, torch.Tensor), f.name
        if isinstance(value, np.ndarray):
            assert value.dtype.kind in "fbi", f.name
    assert run.model is None


def test_keep_model_returns_the_trained_model(digits):
    run = tiny_run(digits, keep_model=True)
    assert isinstance(run.model, gc.CNN)
    assert run.without_model().model is None


def test_saved_record_loads_back_equal_without_the_model(digits, tmp_path):
    run = tiny_run(digits, keep_model=True)
    run.save(tmp_path / "sub" / "run.pkl")
    loaded = gc.Run.load(tmp_path / "sub" / "run.pkl")
    assert loaded.model is None
    for name, value in array_fields(run).items():
        assert np.array_equal(getattr(loaded, name), value), name
    assert loaded.model_config == run.model_config and loaded.train_config == run.train_config


def test_saving_over_a_record_replaces_it_whole_and_leaves_no_partial_file(digits, tmp_path):
    # Notebooks built side by side share the run cache: a reader must never see half a file.
    path = tmp_path / "run.pkl"
    path.write_bytes(b"an older record")
    run = tiny_run(digits)
    run.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["run.pkl"]
    assert gc.Run.load(path).steps_done == run.steps_done


def test_grad_norm_at_picks_the_nearest_recorded_step(digits):
    run = tiny_run(digits, record_every=5, activation_every=5)
    assert list(run.grad_norm_at(7)) == run.layer_names
    assert list(run.grad_norm_at(7).values()) == run.layer_grad_norm[1].tolist()  # step 5 is nearest to 7
    assert list(run.grad_norm_at(0).values()) == run.layer_grad_norm[0].tolist()


def test_layer_index_names_the_layers_when_a_name_is_wrong(digits):
    run = tiny_run(digits, steps=2)
    assert run.layer_index("conv2") == 1
    with pytest.raises(KeyError, match="conv1, conv2, conv3, fc"):
        run.layer_index("conv9")


def test_summary_reports_steps_loss_and_accuracy(digits):
    run = tiny_run(digits)
    text = run.summary()
    assert text.startswith("finished 20 steps: loss ") and "val acc" in text and len(text) <= 80


class FunctionalReLUNet(nn.Module):
    """Activations as functions in forward(): no module for a hook to watch."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


def test_a_model_with_functional_activations_trains_with_its_layers_monitored(digits):
    import matplotlib.pyplot as plt

    torch.manual_seed(0)
    run = gc.train(train_config=gc.TrainConfig(steps=5, batch_size=16), data=digits, model=FunctionalReLUNet(),
                   device="cpu")
    assert run.steps_done == 5 and not run.diverged
    assert run.layer_names == ["conv1", "conv2", "fc"] and run.activation_names == []
    assert bool((run.layer_grad_norm > 0).all())
    for plot in ("plot_activation_stats", "plot_grad_norm_profile", "plot_gradient_flow"):
        getattr(gc, plot)(run)
    plt.close("all")


def test_train_accepts_any_module_and_monitors_its_layers(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    run = gc.train(train_config=gc.TrainConfig(steps=5, batch_size=16), data=digits, model=model, device="cpu")
    assert run.layer_names == ["0", "3"] and run.activation_names == ["1"]
    assert run.layer_grad_norm.shape == (5, 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_runs_on_the_gpu_when_asked(digits):
    run = gc.train(TINY_MODEL, TINY_TRAIN, digits, device="cuda", keep_model=True)
    assert run.device.startswith("cuda") and next(run.model.parameters()).is_cuda
    assert run.layer_grad_norm.shape == (20, 4) and bool(np.isfinite(run.loss).all())


def test_monitor_off_keeps_per_step_values_only(digits):
    run = tiny_run(digits, monitor=False)
    assert run.loss.shape == (20,)
    assert run.layer_grad_norm.shape[0] == 0 and run.act_mean.shape[0] == 0


# -- divergence ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def diverged_run(digits):
    """A learning rate of a million sends the weights to infinity within a few steps."""
    return gc.train(TINY_MODEL, dataclasses.replace(TINY_TRAIN, lr=1e6, steps=30), digits, device="cpu")


def test_huge_learning_rate_ends_the_run_cleanly_with_diverged_at(diverged_run):
    assert diverged_run.diverged
    assert 0 <= diverged_run.diverged_at < 30
    assert "not finite" in diverged_run.diverged_reason


def test_diverged_record_keeps_only_the_steps_before_divergence(diverged_run):
    done = diverged_run.diverged_at
    assert diverged_run.steps_done == done
    for name in ("loss", "lr", "grad_norm", "grad_norm_clipped", "clipped"):
        assert len(getattr(diverged_run, name)) == done, name
    assert diverged_run.layer_grad_norm.shape[0] == len(diverged_run.stat_step) == done
    assert len(diverged_run.act_step) == math.ceil(done / TINY_TRAIN.activation_every)
    assert diverged_run.act_mean.shape[0] == len(diverged_run.act_step)
    assert bool(np.isfinite(diverged_run.loss).all())
    assert bool(np.isfinite(diverged_run.layer_grad_norm).all())


def test_diverged_run_summary_says_where_and_why(diverged_run):
    text = diverged_run.summary()
    assert f"diverged at step {diverged_run.diverged_at}" in text and diverged_run.diverged_reason in text


@pytest.fixture(scope="module")
def diverged_at_first_step(digits):
    """init_gain=100 on 20 layers overflows the very first forward pass."""
    return gc.train(gc.CNNConfig(depth=20, width=4, init_gain=100.0), dataclasses.replace(TINY_TRAIN, steps=5),
                    digits, device="cpu")


def test_run_that_diverges_at_step_zero_has_empty_arrays_and_a_summary(diverged_at_first_step):
    run = diverged_at_first_step
    assert run.diverged_at == 0 and run.steps_done == 0
    assert run.layer_grad_norm.shape == (0, 21)
    assert "diverged at step 0" in run.summary()
    assert math.isnan(run.final_val_acc)


PLOTS = ["plot_gradient_flow", "plot_grad_norm_profile", "plot_activation_stats", "plot_activation_histograms",
         "plot_update_ratio", "plot_training_curves", "plot_clipping"]


@pytest.mark.parametrize("plot", PLOTS)
@pytest.mark.parametrize("which", ["diverged_run", "diverged_at_first_step"])
def test_plots_of_a_diverged_run_draw_without_raising(plot, which, request):
    import matplotlib.pyplot as plt

    run = request.getfixturevalue(which)
    figure = getattr(gc, plot)(run)
    assert figure is not None
    plt.close("all")


# -- optimizers and schedules -------------------------------------------------------------

@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_trains_without_diverging(digits, optimizer):
    lr = 0.05 if optimizer in ("sgd", "momentum", "adagrad") else 0.003
    run = tiny_run(digits, optimizer=optimizer, lr=lr, steps=10)
    assert not run.diverged and run.steps_done == 10
    assert np.all(run.lr == lr)
    assert bool((run.layer_update_ratio > 0).all())


def test_nesterov_momentum_trains(digits):
    run = tiny_run(digits, optimizer="momentum", nesterov=True, steps=5)
    assert not run.diverged and run.steps_done == 5


def test_optimizers_are_the_torch_classes_with_the_config_settings():
    params = [nn.Parameter(torch.ones(2))]
    sgd = make_optimizer(params, gc.TrainConfig(optimizer="momentum", lr=0.2, momentum=0.8, nesterov=True,
                                                   weight_decay=0.01))
    assert isinstance(sgd, torch.optim.SGD)
    group = sgd.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.2, 0.8, True, 0.01)
    assert isinstance(make_optimizer(params, gc.TrainConfig(optimizer="adamw")), torch.optim.AdamW)
    assert isinstance(make_optimizer(params, gc.TrainConfig(optimizer="rmsprop")), torch.optim.RMSprop)


def test_constant_schedule_keeps_the_learning_rate(digits):
    assert np.all(tiny_run(digits, lr=0.03).lr == 0.03)


def test_step_schedule_multiplies_by_gamma_every_step_size_steps(digits):
    run = tiny_run(digits, schedule="step", step_size=5, gamma=0.5, lr=0.1)
    expected = 0.1 * 0.5 ** (np.arange(20) // 5)
    assert run.lr == pytest.approx(expected)


def test_exponential_schedule_multiplies_by_gamma_every_step(digits):
    run = tiny_run(digits, schedule="exponential", gamma=0.9, lr=0.1)
    assert run.lr == pytest.approx(0.1 * 0.9 ** np.arange(20))


def test_warmup_cosine_rises_linearly_then_follows_a_cosine(digits):
    warmup, steps, lr = 5, 20, 0.1
    run = tiny_run(digits, schedule="warmup_cosine", warmup_steps=warmup, lr=lr)
    rise = run.lr[:warmup + 1]
    assert rise == pytest.approx(np.linspace(lr / warmup, lr, warmup + 1))  # linear, from lr/warmup to lr
    k = np.arange(warmup, steps)
    assert run.lr[warmup:] == pytest.approx(lr * 0.5 * (1 + np.cos(np.pi * (k - warmup) / (steps - warmup))))
    assert run.lr.max() == pytest.approx(lr)


def test_plateau_schedule_reduces_the_rate_after_an_evaluation_without_improvement(digits):
    # At lr=1e-6 the validation loss cannot improve by ReduceLROnPlateau's 0.01% threshold.
    run = tiny_run(digits, schedule="plateau", patience=0, gamma=0.5, lr=1e-6, eval_every=2, steps=10)
    assert run.lr[0] == 1e-6 and run.lr[-1] < 1e-6
    assert bool((np.diff(run.lr) <= 0).all())
    changed = np.flatnonzero(np.diff(run.lr)) + 1
    assert len(changed) >= 2
    assert set(changed) <= set(run.eval_step.tolist())  # only right after an evaluation
    assert run.lr[changed] / run.lr[changed - 1] == pytest.approx(0.5)


# -- clipping and the max-norm constraint -------------------------------------------------

@pytest.mark.parametrize("clip", CLIP_MODES)
def test_every_clip_mode_trains(digits, clip):
    run = tiny_run(digits, clip=clip, clip_threshold=0.5, steps=5)
    assert run.steps_done == 5 and not run.diverged
    assert bool((run.grad_norm_clipped <= run.grad_norm * (1 + 1e-6)).all())


def test_clip_by_norm_records_clipped_norms_at_most_the_threshold(digits):
    threshold = 0.15  # about the median gradient norm of this run: some steps clip, some do not
    run = tiny_run(digits, clip="norm", clip_threshold=threshold, lr=0.1)
    assert bool((run.grad_norm_clipped <= threshold * (1 + 1e-5)).all())
    assert np.array_equal(run.clipped, run.grad_norm > threshold)
    above = run.grad_norm > threshold
    assert 0 < above.sum() < len(above), "the threshold should bite on some steps only"
    assert run.grad_norm_clipped[above] == pytest.approx(np.full(above.sum(), threshold), rel=1e-5)


def test_no_clipping_records_equal_norms_and_never_fires(digits):
    run = tiny_run(digits)
    assert np.array_equal(run.grad_norm, run.grad_norm_clipped)
    assert not run.clipped.any() and run.clip_fraction == 0.0


@pytest.mark.parametrize("model_config", [TINY_MODEL, dataclasses.replace(TINY_MODEL, residual=True, norm="batch")],
                         ids=["plain", "residual-with-a-head-norm"])
def test_a_monitored_run_reports_the_total_norm_of_an_unmonitored_one(digits, model_config):
    # Without clipping, a monitored run reports the norm of the gradients its monitor copied
    # when the monitor watches every parameter; the residual network's head normalization is
    # not a monitored layer, so there the loop sums the gradients itself.
    on, off = tiny_run(digits, model_config), tiny_run(digits, model_config, monitor=False)
    assert on.grad_norm == pytest.approx(off.grad_norm, rel=1e-5)
    assert np.array_equal(on.loss, off.loss)


def test_a_monitored_run_clips_exactly_as_an_unmonitored_one(digits):
    on = tiny_run(digits, clip="norm", clip_threshold=0.15, lr=0.1)
    off = tiny_run(digits, clip="norm", clip_threshold=0.15, lr=0.1, monitor=False)
    for field in ("loss", "grad_norm", "grad_norm_clipped", "clipped"):
        assert np.array_equal(getattr(on, field), getattr(off, field)), field


def test_layer_grad_norms_are_recorded_before_clipping(digits):
    run = tiny_run(digits, clip="norm", clip_threshold=1e-3, steps=3)
    assert np.sqrt((run.layer_grad_norm ** 2).sum(axis=1)) == pytest.approx(run.grad_norm, rel=1e-4)


def test_clip_by_value_bounds_every_gradient_element(digits):
    run = tiny_run(digits, clip="value", clip_threshold=1e-3, steps=5)
    n_params = sum(p.numel() for p in gc.build_model(TINY_MODEL, digits).parameters())
    assert bool((run.grad_norm_clipped <= 1e-3 * math.sqrt(n_params) * (1 + 1e-5)).all())
    assert run.clipped.all()


def test_max_weight_norm_keeps_every_unit_within_the_ball(digits):
    limit = 0.5
    run = tiny_run(digits, dataclasses.replace(TINY_MODEL, init="kaiming_normal", init_gain=3.0),
                   max_weight_norm=limit, lr=0.5, keep_model=True)
    for name, p in run.model.named_parameters():
        if p.ndim >= 2:
            unit_norms = p.detach().reshape(p.shape[0], -1).norm(dim=1)
            assert float(unit_norms.max()) <= limit * (1 + 1e-5), name


def test_apply_max_norm_shrinks_only_units_above_the_limit():
    weight = nn.Parameter(torch.tensor([[3.0, 4.0], [0.3, 0.4]]))
    gc.apply_max_norm([weight], 1.0)
    assert weight.detach().norm(dim=1).tolist() == pytest.approx([1.0, 0.5], rel=1e-5)
    assert weight.detach()[0].tolist() == pytest.approx([0.6, 0.8], rel=1e-5)


# -- cache, early stop, progress ----------------------------------------------------------

def test_cache_writes_a_record_then_reuses_it(small_digits, cache_dir):
    first = tiny_run(small_digits, cache=True)
    files = list(cache_dir.glob("*.pkl"))
    assert len(files) == 1
    second = tiny_run(small_digits, cache=True)
    assert second.seconds == first.seconds  # read back, not retrained
    for name, value in array_fields(first).items():
        assert np.array_equal(getattr(second, name), value), name
    assert list(cache_dir.glob("*.pkl")) == files


def test_cache_keys_differ_for_different_configs(small_digits, cache_dir):
    tiny_run(small_digits, cache=True, steps=3)
    tiny_run(small_digits, cache=True, steps=4)
    assert len(list(cache_dir.glob("*.pkl"))) == 2


def test_cache_off_writes_nothing(small_digits, cache_dir):
    tiny_run(small_digits, steps=3)
    assert not cache_dir.exists() or not list(cache_dir.glob("*.pkl"))


def test_corrupt_cache_entry_is_retrained_and_overwritten(small_digits, cache_dir):
    first = tiny_run(small_digits, cache=True, steps=3)
    (path,) = cache_dir.glob("*.pkl")
    path.write_bytes(b"not a pickle")
    again = tiny_run(small_digits, cache=True, steps=3)
    assert np.array_equal(again.loss, first.loss)
    assert gc.Run.load(path).steps_done == 3


def test_should_stop_ends_the_run_early_and_keeps_the_record(digits):
    calls = []

    def stop_after_five():
        calls.append(1)
        return len(calls) > 5

    run = tiny_run(digits, should_stop=stop_after_five)
    assert run.steps_done == 5 and not run.diverged
    assert run.layer_grad_norm.shape[0] == 5


def test_stopped_run_is_not_cached(small_digits, cache_dir):
    tiny_run(small_digits, cache=True, should_stop=lambda: True)
    assert not cache_dir.exists() or not list(cache_dir.glob("*.pkl"))


def test_on_progress_receives_growing_partial_records(digits):
    partial = []
    run = tiny_run(digits, on_progress=partial.append, progress_every=5)
    assert [p.steps_done for p in partial] == [5, 10, 15]
    for p in partial:
        assert np.array_equal(p.loss, run.loss[:p.steps_done])
        assert p.layer_grad_norm.shape == (p.steps_done, 4)


def test_divergence_check_is_one_sum_and_an_overflow_only_sends_it_to_the_exact_test():
    from gradcourse.record import RunBuffer
    from gradcourse.train import Loop

    nan, big = float("nan"), 3e38
    alive = torch.tensor([True, True, False])
    assert Loop._finite(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, 0.5, 0.5]), None)
    assert not Loop._finite(torch.tensor([1.0, nan, 3.0]), torch.ones(3), None)
    assert Loop._finite(torch.tensor([1.0, 2.0, nan]), torch.ones(3), alive)   # a dead model is ignored
    finite_but_large = torch.tensor([big, big, 1.0])
    assert not Loop._finite(finite_but_large, torch.ones(3), alive)   # the sum overflows...
    buffer = RunBuffer([gc.TrainConfig(steps=2)] * 3, ["conv1"], ["conv1"], "cpu", True)
    still = Loop._diverge(buffer, 0, finite_but_large, torch.ones(3), alive)
    assert still.tolist() == alive.tolist() and buffer.diverged_at == [None] * 3   # ...no model died


def test_grad_norm_ratio_is_conv1_over_fc_at_the_recorded_step(digits):
    run = gc.train(gc.CNNConfig(depth=3, width=4), gc.TrainConfig(steps=5), digits)
    norms = run.grad_norm_at(3)
    assert run.grad_norm_ratio(3) == norms["conv1"] / norms["fc"]
    assert run.grad_norm_ratio(0, first="conv3", last="conv1") == run.grad_norm_at(0)["conv3"] / run.grad_norm_at(0)["conv1"]
    every_step = run.grad_norm_ratio(None)
    assert every_step.shape == run.stat_step.shape
    assert every_step.tolist() == [run.grad_norm_ratio(int(step)) for step in run.stat_step]
    with pytest.raises(KeyError, match="layer 'conv9' is not in this run; layers: conv1, conv2, conv3, fc"):
        run.grad_norm_ratio(None, first="conv9")


_FAULTS = """
import ctypes, resource, sys, torch
if sys.argv[1] == "keep":
    from gradcourse.device import keep_freed_memory
    assert keep_freed_memory()
else:  # glibc's initial thresholds (128 KB), fixed so that they cannot adapt
    mallopt = ctypes.CDLL(None).mallopt
    assert mallopt(-3, 128 * 1024) and mallopt(-1, 128 * 1024)
def step():  # three 8 MB tensors alive at once, then freed together, as in a training step
    blocks = [torch.empty(2 << 20).fill_(1.0) for _ in range(3)]
    del blocks
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_keep_freed_memory_stops_freed_blocks_from_faulting_in_again():
    """Ten steps that each make and free three 8 MB tensors (2,048 pages apiece). With glibc's
    initial thresholds every block is mapped anew and faults in again; after keep_freed_memory
    the steps reuse the same pages."""
    def faults(mode):
        done = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True)
        return int(done.stdout.strip())
    initial, kept = faults("initial"), faults("keep")
    assert initial > 25 * 2048, initial
    assert kept < 2 * 2048, kept  # at most one block's pages again (the heap may move once)


def test_the_cache_key_changes_with_the_code_and_not_with_its_docstrings_or_comments():
    from gradcourse.cache import _code_without_docstrings as code

    documented = 'def f(x):\n    """Twice x."""\n    return 2 * x  # doubled\n'
    assert code(documented) == code('def f(x):\n    """Double x."""\n    return 2 * x\n')
    assert code(documented) != code('def f(x):\n    """Twice x."""\n    return 3 * x\n')
    assert code('class A:\n    "A class."\n') == code('class A:\n    pass\n')


def test_seed_range_writes_the_smallest_and_largest_value_over_seeds():
    assert gc.seed_range([0.94, 0.91, 0.97], ".2f") == "0.91 to 0.97"
    assert gc.seed_range(np.array([[3e-6, 1e-6], [2e-6, 9e-7]]), ".0e") == "9e-07 to 3e-06"
    assert gc.seed_range([2.0]) == "2 to 2"


@pytest.mark.parametrize("values, fmt, message", [
    ([], ".2f", "values is empty"),
    ([1.0, 2.0], "d", "fmt = 'd' is not a format spec for a float"),
    ([0.9, float("nan")], ".2f", r"values = \[0.9, nan\] hold NaN \(a diverged run\?\)"),
])
def test_seed_range_refuses_what_it_cannot_write(values, fmt, message):
    with pytest.raises(ValueError, match=message):
        gc.seed_range(values, fmt)


def test_end_loss_is_the_mean_training_loss_of_the_last_steps(digits):
    run = gc.train(gc.CNNConfig(depth=2, width=4), gc.TrainConfig(steps=30, eval_every=30), digits,
                   device="cpu", progress=False)
    assert run.end_loss() == pytest.approx(run.loss[-20:].mean())
    assert run.end_loss(5) == pytest.approx(run.loss[25:].mean())
    assert run.end_loss(100) == pytest.approx(run.loss.mean()), "a shorter run: all its steps"
    assert run.end_loss(np.int64(5)) == run.end_loss(5)
    for last, problem in ((0, "is out of range; allowed: >= 1"), (2.5, "must be an integer"),
                          (True, "must be an integer")):
        with pytest.raises(ValueError, match=re.escape(f"Run.end_loss.last = {last!r} {problem}")):
            run.end_loss(last)
