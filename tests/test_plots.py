"""Figures draw what their labels say."""
from __future__ import annotations

from dataclasses import replace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import gradcourse as gc  # noqa: E402
from gradcourse.plots import merged_layer_order  # noqa: E402

SHORT = gc.TrainConfig(lr=0.05, steps=2, batch_size=16, eval_every=2)


@pytest.fixture(scope="module")
def shallow_and_deep(digits):
    shallow = gc.train(gc.CNNConfig(depth=3, width=4), SHORT, digits, device="cpu")
    deep = gc.train(gc.CNNConfig(depth=7, width=4), SHORT, digits, device="cpu")
    return shallow, deep


def _points_by_tick(ax):
    """{tick label: [y values drawn at that tick]} over every line of the axes."""
    labels = {int(round(t)): label.get_text() for t, label in zip(ax.get_xticks(), ax.get_xticklabels())}
    drawn: dict[str, list[float]] = {}
    for line in ax.get_lines():
        for x, y in zip(line.get_xdata(), line.get_ydata()):
            if np.isfinite(x):  # NaN: a gap where a shallower run has no layer
                drawn.setdefault(labels[int(round(x))], []).append(float(y))
    return drawn


@pytest.mark.parametrize("order", ["shallow first", "deep first"])
def test_grad_norm_profile_draws_each_value_at_its_own_layer_name(shallow_and_deep, order):
    shallow, deep = shallow_and_deep
    runs = {"shallow": shallow, "deep": deep}
    if order == "deep first":
        runs = {"deep": deep, "shallow": shallow}
    fig = gc.plot_grad_norm_profile(runs)
    drawn = _points_by_tick(fig.axes[0])
    plt.close(fig)
    for run in (shallow, deep):
        for name, value in run.grad_norm_at(0).items():
            assert any(np.isclose(value, y) for y in drawn[name]), f"{name} of a {len(run.layer_names)}-layer run"
    # The shallow run's fc is not drawn at the deep run's conv4 (its position in the list).
    assert not any(np.isclose(shallow.grad_norm_at(0)["fc"], y) for y in drawn["conv4"])


def test_merged_layer_order_keeps_every_runs_order():
    assert merged_layer_order([["conv1", "fc"], ["conv1", "conv2", "conv3", "fc"]]) == \
        ["conv1", "conv2", "conv3", "fc"]
    runs = [["stem", "head"], ["stem", "block", "head"], ["stem", "extra", "head"]]
    merged = merged_layer_order(runs)
    assert sorted(merged) == ["block", "extra", "head", "stem"]
    for names in runs:
        assert [merged.index(n) for n in names] == sorted(merged.index(n) for n in names)


def test_a_long_layer_axis_labels_at_most_sixteen_ticks():
    fig, ax = plt.subplots()
    names = [f"conv{i}" for i in range(1, 41)] + ["fc"]
    gc.plots.label_layer_axis(ax, names)
    shown = [label.get_text() for label in ax.get_xticklabels() if label.get_text()]
    plt.close(fig)
    assert len(ax.get_xticks()) == 41 and 2 <= len(shown) <= 16
    assert shown[0] == "conv1" and shown[-1] == "fc"


def test_grad_norm_profile_draws_no_line_across_layers_a_run_does_not_have(shallow_and_deep):
    shallow, deep = shallow_and_deep
    fig = gc.plot_grad_norm_profile({"deep": deep, "shallow": shallow})
    line = [line for line in fig.axes[0].get_lines() if line.get_label() == "shallow"][0]
    plt.close(fig)
    x = np.asarray(line.get_xdata(), dtype=float)
    assert np.isnan(x).sum() == 1, "one gap, between conv3 and fc"


def test_grad_norm_profile_in_panels_draws_one_step_a_panel_with_one_legend(digits):
    runs = {"a": gc.train(gc.CNNConfig(depth=3, width=4), SHORT, digits, device="cpu"),
            "b": gc.train(gc.CNNConfig(depth=3, width=4), replace(SHORT, seed=1), digits, device="cpu")}
    last = int(runs["a"].stat_step[-1])
    fig = gc.plot_grad_norm_profile(runs, steps=(0, last), panels=True, title="two steps")
    plt.close(fig)
    assert [ax.get_title() for ax in fig.axes] == ["step 0", f"step {last}"]
    assert [ax.get_legend() is not None for ax in fig.axes] == [False, True]
    assert fig.axes[1].get_legend().get_texts()[1].get_text() == "b", "b differs from a at both steps"
    for ax, step in zip(fig.axes, (0, last)):
        lines = ax.get_lines()
        assert [line.get_label() for line in lines] == ["a", "b"]
        assert lines[0].get_marker() != lines[1].get_marker(), "each run has its own marker"
        np.testing.assert_allclose(lines[0].get_ydata(), list(runs["a"].grad_norm_at(step).values()))
    assert fig._suptitle.get_text() == "two steps"


def test_grad_norm_profile_in_panels_says_at_which_step_a_series_hides_under_another(digits):
    same_start = {"a": gc.train(gc.CNNConfig(depth=3, width=4), SHORT, digits, device="cpu"),
                  "b": gc.train(gc.CNNConfig(depth=3, width=4), replace(SHORT, lr=0.5), digits, device="cpu")}
    last = int(same_start["a"].stat_step[-1])
    fig = gc.plot_grad_norm_profile(same_start, steps=(0, last), panels=True)
    plt.close(fig)
    legend = [text.get_text() for text in fig.axes[1].get_legend().get_texts()]
    assert legend == ["a", "b (step 0: same as a)"]


def test_grad_norm_profile_says_when_a_series_hides_under_another(digits):
    run = gc.train(gc.CNNConfig(depth=3, width=4), SHORT, digits, device="cpu")
    fig = gc.plot_grad_norm_profile({"first": run, "second": run})
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    plt.close(fig)
    assert labels == ["first", "second (same as first)"]



@pytest.fixture(scope="module")
def three_seeds(digits):
    return [gc.train(gc.CNNConfig(depth=3, width=4), replace(SHORT, seed=seed), digits, device="cpu")
            for seed in (0, 1, 2)]


def test_grad_norm_profile_draws_every_seed_of_a_label_in_its_colour_with_one_legend_entry(three_seeds):
    fig = gc.plot_grad_norm_profile({"three seeds": three_seeds})
    plt.close(fig)
    lines = fig.axes[0].get_lines()
    assert len(lines) == 3
    assert len({line.get_color() for line in lines}) == 1
    assert [text.get_text() for text in fig.axes[0].get_legend().get_texts()] == ["three seeds"]
    for line, run in zip(lines, three_seeds):
        np.testing.assert_allclose(line.get_ydata(), list(run.grad_norm_at(0).values()))
    assert lines[1].get_linewidth() < lines[0].get_linewidth(), "the other seeds are drawn thin"


def test_training_curves_draw_every_seed_of_a_label_with_one_legend_entry(three_seeds):
    fig = gc.plot_training_curves({"three seeds": three_seeds, "one": three_seeds[0]})
    plt.close(fig)
    loss = fig.axes[0].get_lines()
    assert len(loss) == 4
    for line, run in zip(loss, three_seeds):
        np.testing.assert_allclose(line.get_ydata(), run.loss)
    assert [text.get_text() for text in fig.legends[0].get_texts()] == ["three seeds", "one"]


@pytest.mark.parametrize("value", [[], ["not a run"], 5, None])
def test_a_label_without_runs_is_refused_by_name(three_seeds, value):
    with pytest.raises(ValueError, match=r"runs\['empty'\] is .*; allowed: a Run or a non-empty list of Runs"):
        gc.plot_training_curves({"empty": value})


def test_a_list_of_runs_with_something_else_in_it_is_refused_by_position(three_seeds):
    with pytest.raises(ValueError, match=r"runs\[1\] is list .*; allowed: a Run"):
        gc.plot_grad_norm_profile([three_seeds[0], three_seeds[1:]])


def test_running_mean_averages_each_window_and_refuses_a_window_it_cannot_use():
    from gradcourse.plots import running_mean

    np.testing.assert_allclose(running_mean([1.0, 2.0, 3.0, 4.0], 2), [1.5, 2.5, 3.5])
    np.testing.assert_allclose(running_mean([1.0, 2.0], 1), [1.0, 2.0])
    np.testing.assert_allclose(running_mean(np.arange(4.0), np.int64(4)), [1.5])
    with pytest.raises(ValueError, match="running_mean.window = 0 is out of range; allowed: >= 1"):
        running_mean([1.0], 0)
    with pytest.raises(ValueError, match="running_mean.window = 3 is longer than the 2 values"):
        running_mean([1.0, 2.0], 3)
