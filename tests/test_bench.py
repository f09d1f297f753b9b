"""The benchmark's sweep figures, on tiny runs (its full figures come from ``make bench``)."""
import pytest

from gradcourse import bench


def test_sweep_speedup_is_sequential_time_over_together_time():
    result = bench.sweep_speedup(1, steps=3, k=2)
    assert set(result) == {"sweep_speedup_2", "sweep_together_s", "sweep_sequential_s", "sweep_speedup_2_bound"}
    assert result["sweep_together_s"] > 0 and result["sweep_sequential_s"] > 0
    assert result["sweep_speedup_2"] == pytest.approx(result["sweep_sequential_s"] / result["sweep_together_s"])


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
