"""The benchmark's sweep figures, on tiny runs (its full figures come from ``make bench``)."""
import pytest
import torch

from gradcourse import bench


def test_sweep_speedup_is_sequential_time_over_together_time():
    result = bench.sweep_speedup(1, steps=3, k=2)
    assert set(result) == {"sweep_speedup_2", "sweep_together_s", "sweep_sequential_s", "sweep_passes_only_s",
                           "sweep_speedup_2_passes_only", "sweep_speedup_2_at_matmul_rate"}
    assert result["sweep_together_s"] > 0 and result["sweep_sequential_s"] > 0 and result["sweep_passes_only_s"] > 0
    assert result["sweep_speedup_2"] == pytest.approx(result["sweep_sequential_s"] / result["sweep_together_s"])
    assert result["sweep_speedup_2_passes_only"] == pytest.approx(
        result["sweep_sequential_s"] / result["sweep_passes_only_s"])


def test_the_passes_only_reference_runs_the_wide_networks_passes_on_the_same_batches(monkeypatch):
    """passes_only's time is a lower bound on train_many's only if it does the same passes:
    one forward (and backward) of the K-wide network per step, on train_many's batches."""
    from gradcourse.data import load_data
    from gradcourse.live_sliders import LIVE_MODEL, LIVE_TRAIN
    from gradcourse.vectorized import WideCNN, passes_only

    data = load_data("digits")
    configs = bench._lr_sweep(LIVE_TRAIN, 4, 3)
    seen = []
    forward = WideCNN.forward

    def spy(self, x):
        seen.append((self.k, x.clone()))
        return forward(self, x)

    monkeypatch.setattr(WideCNN, "forward", spy)
    passes_only(LIVE_MODEL, configs, data)
    passes = [x for _, x in seen]
    assert [k for k, _ in seen] == [3] * 4
    seen.clear()
    from gradcourse.vectorized import train_many
    train_many(LIVE_MODEL, configs, data)
    train_batches = [x for _, x in seen][:4]   # then its evaluation's chunks
    assert all(torch.equal(a, b) for a, b in zip(passes, train_batches))


def test_sweep_scaling_reports_the_cost_per_model_of_each_width():
    result = bench.sweep_scaling(1, widths=(1, 2, 3), steps=3)
    assert set(result) == {"train_alone_s", "sweep_per_model_s_2", "sweep_per_model_s_3"}
    assert all(seconds > 0 for seconds in result.values())


def test_a_missing_required_figure_is_reported():
    results = dict.fromkeys(bench.REQUIRED, 1.0)
    assert bench.missing_figures(results, cores=1, gpu=False) == []
    assert bench.missing_figures(results, cores=2, gpu=False) == ["sweep_speedup_8_all_cores"]
    assert bench.missing_figures(results, cores=1, gpu=True) == ["gpu_speedup"]
    del results["sweep_speedup_8"]
    assert bench.missing_figures(results, cores=1, gpu=False) == ["sweep_speedup_8"]
