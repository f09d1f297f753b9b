"""LayerMonitor's numbers equal the same quantities computed by hand with autograd and hooks."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradcourse as gc
from gradcourse.hooks import forward_hooks

CONFIG = gc.CNNConfig(depth=3, width=8, norm="batch", init="kaiming_normal")


def one_batch(data, n=32):
    return data.x_train[:n], data.y_train[:n]


def one_step(monitor, optimizer=None):
    """begin_step, the optimizer's step (if any), end_step: the step's LayerStats."""
    monitor.begin_step()
    if optimizer is not None:
        optimizer.step()
    return monitor.end_step()


def manual_layer_grad_norms(model, layers, loss) -> torch.Tensor:
    """sqrt(sum of squared gradients of every parameter of each layer), by torch.autograd.grad."""
    params = [list(layer.parameters()) for layer in layers.values()]
    grads = torch.autograd.grad(loss, [p for group in params for p in group], retain_graph=True)
    norms, start = [], 0
    for group in params:
        norms.append(torch.sqrt(sum((g.double() ** 2).sum() for g in grads[start:start + len(group)])))
        start += len(group)
    return torch.stack(norms)


def test_grad_norms_equal_a_manual_autograd_computation(digits):
    torch.manual_seed(0)
    model = gc.build_model(CONFIG, digits)
    x, y = one_batch(digits)
    with gc.LayerMonitor(model) as monitor:
        loss = F.cross_entropy(model(x), y)
        expected = manual_layer_grad_norms(model, model.layers(), loss)
        loss.backward()
        measured = one_step(monitor).grad_norm
    assert monitor.layer_names == ["conv1", "conv2", "conv3", "fc"]
    assert torch.allclose(measured.double(), expected, rtol=1e-5)


def test_recorded_step_zero_grad_norms_equal_a_manual_computation_with_the_same_seed(small_digits):
    """train() seeds the initialization with TrainConfig.seed; one batch of 64 is the whole
    training set, so step 0 sees exactly the examples used here (in another order)."""
    seed = 5
    run = gc.train(CONFIG, gc.TrainConfig(steps=1, batch_size=64, seed=seed), small_digits, device="cpu")
    torch.manual_seed(seed)
    model = gc.build_model(CONFIG, small_digits)
    loss = F.cross_entropy(model(small_digits.x_train), small_digits.y_train)
    expected = manual_layer_grad_norms(model, model.layers(), loss)
    assert run.layer_names == ["conv1", "conv2", "conv3", "fc"]
    assert run.layer_grad_norm[0] == pytest.approx(expected.numpy(), rel=1e-4)
    assert run.grad_norm[0] == pytest.approx(float(expected.norm()), rel=1e-4)


def test_update_ratio_equals_the_weight_change_over_the_weight_norm(digits):
    torch.manual_seed(1)
    model = gc.build_model(CONFIG, digits)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = one_batch(digits)
    with gc.LayerMonitor(model) as monitor:
        F.cross_entropy(model(x), y).backward()
        before = {name: [p.detach().clone() for p in layer.parameters()] for name, layer in model.layers().items()}
        stats = one_step(monitor, optimizer)
        weight_norms, ratios = stats.weight_norm, stats.update_ratio
    for index, (name, layer) in enumerate(model.layers().items()):
        old = before[name]
        delta = torch.sqrt(sum(((p.detach() - q) ** 2).sum() for p, q in zip(layer.parameters(), old)))
        norm = torch.sqrt(sum((q ** 2).sum() for q in old))
        assert float(weight_norms[index]) == pytest.approx(float(norm), rel=1e-5), name
        assert float(ratios[index]) == pytest.approx(float(delta / norm), rel=1e-4), name


def test_recorded_sgd_update_ratio_is_lr_times_grad_norm_over_weight_norm(digits):
    run = gc.train(gc.CNNConfig(depth=3, width=8), gc.TrainConfig(steps=3, batch_size=32, lr=0.05), digits,
                   device="cpu")
    expected = 0.05 * run.layer_grad_norm / run.layer_weight_norm  # plain SGD: delta W = -lr * grad
    assert run.layer_update_ratio == pytest.approx(expected, rel=1e-4)


# -- activation statistics --------------------------------------------------------------

def manual_activation_stats(output: torch.Tensor, kind: str) -> list[float]:
    """mean, std, fraction of units in the flat region, fraction of channels flat for the batch."""
    y = output.double()
    if kind == "sigmoid":
        flat = (y < 0.01) | (y > 0.99)
        channel_flat = flat.transpose(0, 1).reshape(y.shape[1], -1).all(dim=1)
    else:  # relu
        flat = y <= 0
        channel_flat = flat.transpose(0, 1).reshape(y.shape[1], -1).all(dim=1)
    return [float(y.mean()), float(y.std(unbiased=False)), float(flat.double().mean()),
            float(channel_flat.double().mean())]


@pytest.mark.parametrize("activation, gain", [("sigmoid", 6.0), ("relu", 1.0)])
def test_activation_stats_equal_a_manual_computation_from_a_forward_hook(digits, activation, gain):
    torch.manual_seed(2)
    model = gc.build_model(gc.CNNConfig(depth=3, width=8, activation=activation, init="xavier_normal",
                                        init_gain=gain), digits)
    with torch.no_grad():
        model.conv2.conv.bias[0] = -100.0  # channel 0 of conv2: flat for the whole batch
    outputs = {}
    hooks = [module.register_forward_hook(lambda m, i, o, name=name: outputs.__setitem__(name, o.detach()))
             for name, module in model.activation_modules().items()]
    x, _ = one_batch(digits, 64)
    with gc.LayerMonitor(model) as monitor:
        model(x)
    for hook in hooks:
        hook.remove()
    assert monitor.activation_names == ["conv1", "conv2", "conv3"]
    for index, name in enumerate(monitor.activation_names):
        expected = manual_activation_stats(outputs[name], activation)
        assert monitor.activation_stats[index].tolist() == pytest.approx(expected, rel=1e-3, abs=1e-6), name
    assert float(monitor.activation_stats[1, 3]) >= 1 / 8  # the channel we killed counts as dead
    assert float(monitor.activation_stats[:, 2].max()) > 0.01  # the statistics are not trivially zero


def test_activation_stats_ignore_forward_passes_without_gradient(digits):
    model = gc.build_model(gc.CNNConfig(depth=2, width=4), digits)
    with gc.LayerMonitor(model) as monitor:
        with torch.no_grad():
            model(digits.x_train[:16])
        assert torch.count_nonzero(monitor.activation_stats) == 0
        model(digits.x_train[:16])
        assert torch.count_nonzero(monitor.activation_stats) > 0


def test_activation_stats_are_not_collected_when_switched_off(digits):
    model = gc.build_model(gc.CNNConfig(depth=2, width=4), digits)
    with gc.LayerMonitor(model) as monitor:
        monitor.collect_activations = False
        model(digits.x_train[:16])
        assert torch.count_nonzero(monitor.activation_stats) == 0


def test_histograms_count_every_activation_over_the_range_it_produced(digits):
    model = gc.build_model(gc.CNNConfig(depth=2, width=4, activation="tanh"), digits)
    outputs = []
    hook = model.conv2.act.register_forward_hook(lambda m, i, o: outputs.append(o.detach()))
    with gc.LayerMonitor(model) as monitor:
        monitor.collect_histograms = True
        model(digits.x_train[:16])
    hook.remove()
    units = 16 * 4 * 8 * 8
    assert monitor.histograms.sum(dim=1).tolist() == [units, units]
    assert monitor.histogram_ranges[1].tolist() == pytest.approx([float(outputs[0].min()), float(outputs[0].max())])


def test_hooks_are_removed_when_the_with_block_ends(digits):
    model = gc.build_model(gc.CNNConfig(depth=3, width=4), digits)
    modules = list(model.activation_modules().values())
    with gc.LayerMonitor(model) as monitor:
        assert all(len(m._forward_hooks) == 1 for m in modules)
    assert all(len(m._forward_hooks) == 0 for m in modules)
    stats = monitor.activation_stats.clone()
    model(digits.x_train[:8])
    assert torch.equal(monitor.activation_stats, stats)


def test_hooks_are_removed_when_the_with_block_raises(digits):
    model = gc.build_model(gc.CNNConfig(depth=2, width=4), digits)
    with pytest.raises(KeyError):
        with gc.LayerMonitor(model):
            raise KeyError("inside the block")
    assert all(len(m._forward_hooks) == 0 for m in model.activation_modules().values())


def test_monitor_works_on_a_plain_sequential_model():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    x, y = torch.randn(16, 1, 8, 8), torch.arange(16) % 10
    outputs = []
    hook = model[1].register_forward_hook(lambda m, i, o: outputs.append(o.detach()))
    with gc.LayerMonitor(model) as monitor:
        loss = F.cross_entropy(model(x), y)
        expected = manual_layer_grad_norms(model, {"0": model[0], "3": model[3]}, loss)
        loss.backward()
        stats = one_step(monitor)
        measured = stats.grad_norm
    hook.remove()
    assert monitor.layer_names == ["0", "3"] and monitor.activation_names == ["1"]
    assert torch.allclose(measured.double(), expected, rtol=1e-5)
    assert float(monitor.activation_stats[0, 0]) == pytest.approx(float(outputs[0].mean()), abs=1e-6)
    assert float(monitor.activation_stats[0, 1]) == pytest.approx(float(outputs[0].std(unbiased=False)), rel=1e-3)
    assert stats.as_dict()["grad_norm"] == pytest.approx(dict(zip(["0", "3"], measured.tolist())))


def test_layer_without_a_gradient_has_norm_zero():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    for p in model[0].parameters():
        p.requires_grad_(False)
    monitor = gc.LayerMonitor(model)
    model(torch.randn(4, 3)).sum().backward()
    norms = one_step(monitor).grad_norm
    assert float(norms[0]) == 0.0 and float(norms[1]) > 0.0


def test_monitor_accepts_explicit_layers_and_activations():
    model = nn.Sequential(nn.Linear(3, 5), nn.Sigmoid(), nn.Linear(5, 2))
    monitor = gc.LayerMonitor(model, layers={"hidden": model[0]}, activations={"squash": model[1]})
    assert monitor.layer_names == ["hidden"] and monitor.activation_names == ["squash"]


# -- one flat copy per step, and the helpers built on the same hooks ---------------------

@pytest.mark.parametrize("depth", [3, 30])
def test_end_step_equals_the_textbook_definitions_after_a_momentum_step(digits, depth):
    torch.manual_seed(2)
    model = gc.build_model(gc.CNNConfig(depth=depth, width=4, norm="batch"), digits)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = one_batch(digits)
    with gc.LayerMonitor(model) as monitor:
        for _ in range(2):  # the second step has a momentum buffer: the update is not just -lr * grad
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            grads = [gc.monitor.layer_grad_norm(layer) for layer in model.layers().values()]
            before = [[p.detach().clone() for p in layer.parameters()] for layer in model.layers().values()]
            stats = one_step(monitor, optimizer)
    after = [[p.detach() for p in layer.parameters()] for layer in model.layers().values()]
    assert stats.norms.shape == (3, 1, depth + 1)
    assert stats.grad_norm.tolist() == pytest.approx(grads, rel=1e-6)
    assert stats.update_ratio.tolist() == pytest.approx(
        [gc.monitor.update_to_weight_ratio(b, a) for b, a in zip(before, after)], rel=1e-5)


@pytest.mark.parametrize("hidden, padded", [(8, True), (256, False)])  # layer sizes alike; one layer dominates
@pytest.mark.parametrize("membership_limit", [4_000_000, 0])  # one matrix product; a segmented reduction
def test_end_step_is_the_same_whether_layers_share_padded_slots_or_are_packed(hidden, padded, membership_limit,
                                                                             monkeypatch):
    monkeypatch.setattr(gc._norms, "_MEMBERSHIP_LIMIT", membership_limit)
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, hidden), nn.Tanh(), nn.Linear(hidden, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    with gc.LayerMonitor(model) as monitor:
        assert monitor._rows.padded is padded
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        expected_grads = manual_layer_grad_norms(model, monitor.layers, loss)
        loss.backward()
        before = [[p.detach().clone() for p in layer.parameters()] for layer in monitor.layers.values()]
        stats = one_step(monitor, optimizer)
    after = [[p.detach() for p in layer.parameters()] for layer in monitor.layers.values()]
    assert stats.norms.dtype == torch.float64 and stats.norms.shape == (3, 1, 3)
    assert torch.allclose(stats.grad_norm, expected_grads, rtol=1e-6)
    assert stats.update_ratio.tolist() == pytest.approx(
        [gc.monitor.update_to_weight_ratio(b, a) for b, a in zip(before, after)], rel=1e-5)


def test_norms_too_small_for_float32_squares_are_summed_in_float64():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    monitor = gc.LayerMonitor(model)
    model(torch.randn(3, 4)).sum().backward()
    with torch.no_grad():
        model[0].weight.grad.mul_(1e-25)  # squares of 1e-26 underflow to 0 in float32
        model[0].bias.grad.mul_(1e-25)
    norms = one_step(monitor).grad_norm
    expected = torch.cat([model[0].weight.grad.double().reshape(-1), model[0].bias.grad.double()]).norm()
    assert norms.dtype == torch.float64
    assert 0 < float(norms[0]) == pytest.approx(float(expected), rel=1e-9)


def test_end_step_without_begin_step_raises_a_helpful_error():
    monitor = gc.LayerMonitor(gc.build_model(gc.CNNConfig(depth=2, width=4)))
    with pytest.raises(RuntimeError, match="begin_step"):
        monitor.end_step()


def test_histograms_of_a_large_batch_count_whole_examples_up_to_the_sample_size_over_their_range(digits):
    from gradcourse.monitor import HIST_SAMPLE

    model = gc.build_model(gc.CNNConfig(depth=1, width=16), digits)
    outputs = []
    hook = model.conv1.act.register_forward_hook(lambda m, i, o: outputs.append(o.detach()))
    with gc.LayerMonitor(model) as monitor:
        monitor.collect_histograms = True
        model(digits.x_train[:64])
    hook.remove()
    per_example = 16 * 8 * 8
    counted = (HIST_SAMPLE // per_example) * per_example
    assert 0 < counted < 64 * per_example
    assert monitor.histograms[0].sum().item() == counted
    sample = outputs[0][:HIST_SAMPLE // per_example]
    lo, hi = float(sample.min()), float(sample.max())  # the range of the values counted
    assert monitor.histogram_ranges[0].tolist() == pytest.approx([lo, hi])
    expected = torch.histc(sample, gc.monitor.HIST_BINS, lo, hi)
    assert torch.equal(monitor.histograms[0], expected)


def test_a_tiny_spread_around_one_half_is_measured_without_cancellation():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(20, 50), nn.Sigmoid())
    with torch.no_grad():
        model[0].weight.mul_(1e-4)
        model[0].bias.zero_()
    x = torch.randn(256, 20)
    with gc.LayerMonitor(model, layers={"0": model[0]}) as monitor:
        out = model(x)
    reference = out.detach().double()
    assert float(reference.std()) < 1e-3  # sigmoid outputs within about 1e-4 of 0.5
    assert float(monitor.activation_stats[0, 0]) == pytest.approx(float(reference.mean()), abs=1e-7)
    assert float(monitor.activation_stats[0, 1]) == pytest.approx(float(reference.std(unbiased=False)), rel=1e-3)


def test_backward_signal_is_the_norm_of_the_loss_gradient_with_respect_to_each_output(digits):
    torch.manual_seed(6)
    model = gc.build_model(gc.CNNConfig(depth=4, width=8, activation="tanh"), digits)
    x, y = one_batch(digits)
    outputs = []
    hooks = [layer.register_forward_hook(lambda m, i, o: outputs.append(o)) for layer in model.layers().values()]
    loss = F.cross_entropy(model(x), y)
    for hook in hooks:
        hook.remove()
    expected = [float(g.double().norm()) for g in torch.autograd.grad(loss, outputs)]
    measured = gc.backward_signal(model, x, y)  # default: model.layers(), input side first
    assert measured == pytest.approx(expected, rel=1e-6)
    assert all(len(layer._forward_hooks) == 0 for layer in model.layers().values())
    convs = [model.conv1, model.conv2]
    assert gc.backward_signal(model, x, y, convs) == pytest.approx(expected[:2], rel=1e-6)


@pytest.mark.parametrize("hidden", [8, 256])  # padded slots; packed layers
def test_one_rows_fallback_to_float64_does_not_change_the_other_rows(hidden):
    from gradcourse._norms import LayerRows

    sizes, layers = [8 * 8, 8, 8 * hidden, hidden], [0, 0, 1, 1]
    rows = LayerRows(sizes, layers, 2, k=1)
    grads = torch.randn(1, sum(sizes))
    packed = [grads[:, :72], grads[:, 72:]]
    parts = [grads[:, 0:64], grads[:, 64:72], grads[:, 72:72 + 8 * hidden], grads[:, 72 + 8 * hidden:]]
    one = rows.fill(parts, out=rows.new(1, grads)[0])
    alone = rows.norms(one)
    tiny = torch.stack([one, one * 1e-25])
    big = torch.stack([one] * 500).view(500, 1, -1)   # large enough for the float32 path
    with_tiny_row = rows.norms(tiny)
    assert torch.equal(with_tiny_row[0], alone)
    assert (with_tiny_row[1] / with_tiny_row[0]).flatten().tolist() == pytest.approx([1e-25, 1e-25], rel=1e-6)
    assert torch.allclose(rows.norms(big)[0], alone, rtol=1e-6)
    # In the float32 path too: a row of a vanishing layer and a layer that is exactly
    # zero are summed again in float64, and nothing else changes.
    odd = big.clone()
    odd[7, 0] *= 1e-25
    odd[9, 0, :72] = 0.0
    norms, plain = rows.norms(odd), rows.norms(big)
    assert (norms[7, 0] / alone[0]).tolist() == pytest.approx([1e-25, 1e-25], rel=1e-6)
    assert norms[9, 0, 0] == 0.0 and norms[9, 0, 1] == plain[9, 0, 1]
    others = [i for i in range(500) if i not in (7, 9)]
    assert torch.equal(norms[others], plain[others])
    expected = torch.stack([torch.cat(packed[:1]).norm(), packed[1].norm()]).double()
    assert torch.allclose(alone.flatten(), expected, rtol=1e-6)


# -- the textbook definitions themselves -----------------------------------------------

def test_layer_grad_norm_is_the_root_of_the_sum_of_squared_gradient_entries():
    layer = nn.Linear(2, 1)
    layer.weight.grad = torch.tensor([[3.0, 0.0]])
    layer.bias.grad = torch.tensor([4.0])
    assert gc.monitor.layer_grad_norm(layer) == pytest.approx(5.0)


def test_update_to_weight_ratio_is_the_change_over_the_weights():
    before, after = [torch.tensor([3.0, 4.0])], [torch.tensor([3.0, 4.5])]
    assert gc.monitor.update_to_weight_ratio(before, after) == pytest.approx(0.5 / 5.0)


def test_activation_statistics_of_a_relu_output_count_zeros_and_dead_channels():
    output = torch.tensor([[[[0.0, 2.0]], [[0.0, 0.0]]], [[[1.0, 1.0]], [[0.0, 0.0]]]])  # (2, 2, 1, 2)
    stats = gc.monitor.activation_statistics(output, nn.ReLU())
    assert stats["mean"] == pytest.approx(0.5) and stats["std"] == pytest.approx(math.sqrt(0.5))
    assert stats["saturated"] == pytest.approx(5 / 8) and stats["dead"] == pytest.approx(0.5)


@pytest.mark.parametrize("activation", ["sigmoid", "relu", "tanh"])
def test_the_monitor_computes_the_textbook_statistics(digits, activation):
    torch.manual_seed(1)
    model = gc.build_model(gc.CNNConfig(depth=3, width=8, activation=activation), digits)
    x, y = one_batch(digits, 64)
    outputs = {}
    with gc.LayerMonitor(model) as monitor, forward_hooks(model.activation_modules(), outputs.__setitem__):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        grads = one_step(monitor).grad_norm
    for index, (name, layer) in enumerate(model.layers().items()):
        assert float(grads[index]) == pytest.approx(gc.monitor.layer_grad_norm(layer), rel=1e-6), name
    for index, (name, module) in enumerate(model.activation_modules().items()):
        expected = gc.monitor.activation_statistics(outputs[name], module)
        assert monitor.activation_stats[index].tolist() == pytest.approx(
            [expected[k] for k in ("mean", "std", "saturated", "dead")], rel=1e-3, abs=1e-6), name


def test_total_grad_norm_is_the_norm_of_every_copied_gradient(digits):
    model = gc.build_model(gc.CNNConfig(depth=3, width=4), digits)
    monitor = gc.LayerMonitor(model)
    with pytest.raises(RuntimeError, match="begin_step"):
        monitor.total_grad_norm()
    torch.nn.functional.cross_entropy(model(digits.x_train[:16]), digits.y_train[:16]).backward()
    monitor.begin_step()
    expected = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
    assert monitor.total_grad_norm().tolist() == pytest.approx([float(expected)], rel=1e-6)
