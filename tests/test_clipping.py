"""Gradient clipping, stated as properties that hold for any gradients (hypothesis draws them)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

import gradcourse as gc
from gradcourse.clipping import total_grad_norm
from gradcourse.clipping import CLIP_MODES

SETTINGS = settings(max_examples=60, deadline=None)
REL = 1e-5  # float32 rounding

shapes = st.lists(st.integers(1, 4), min_size=1, max_size=4).map(tuple)
values = st.floats(-100.0, 100.0, width=32, allow_subnormal=False)


@st.composite
def parameters_with_grads(draw, min_params=1, max_params=4):
    """A few parameters of assorted shapes (biases, matrices, conv filters), each with a gradient."""
    params = []
    for shape in draw(st.lists(shapes, min_size=min_params, max_size=max_params)):
        weight = draw(arrays(np.float32, shape, elements=values))
        grad = draw(arrays(np.float32, shape, elements=values))
        p = nn.Parameter(torch.from_numpy(weight.copy()))
        p.grad = torch.from_numpy(grad.copy())
        params.append(p)
    return params


thresholds = st.floats(1e-3, 1e3)


def flat_grads(params) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in params])


def copies(params) -> list[nn.Parameter]:
    result = []
    for p in params:
        q = nn.Parameter(p.detach().clone())
        q.grad = p.grad.clone()
        result.append(q)
    return result


# -- by norm ------------------------------------------------------------------------------

@SETTINGS
@given(parameters_with_grads(), thresholds)
def test_clip_by_norm_bounds_the_total_norm(params, threshold):
    gc.clip_gradients(params, "norm", threshold)
    assert float(flat_grads(params).norm()) <= threshold * (1 + REL)


@SETTINGS
@given(parameters_with_grads(), thresholds)
def test_clip_by_norm_preserves_the_direction(params, threshold):
    before = flat_grads(params).double()
    gc.clip_gradients(params, "norm", threshold)
    after = flat_grads(params).double()
    if before.norm() > 0:
        cosine = float(before @ after / (before.norm() * after.norm()))
        assert cosine == pytest.approx(1.0, abs=1e-6)


@SETTINGS
@given(parameters_with_grads(), thresholds)
def test_clip_by_norm_leaves_gradients_below_the_threshold_unchanged(params, threshold):
    before = flat_grads(params).clone()
    if float(before.norm()) <= threshold * 0.999:
        gc.clip_gradients(params, "norm", threshold)
        assert torch.equal(flat_grads(params), before)


@SETTINGS
@given(parameters_with_grads(), thresholds)
def test_clip_by_norm_returns_what_clip_grad_norm_returns(params, threshold):
    reference = copies(params)
    expected_before = torch.nn.utils.clip_grad_norm_(reference, threshold)
    before, after, fired = gc.clip_gradients(params, "norm", threshold)
    assert torch.equal(before, expected_before)
    assert float(after) == pytest.approx(float(flat_grads(reference).norm()), rel=REL, abs=1e-30)
    assert bool(fired) == bool(expected_before > threshold)
    assert torch.equal(flat_grads(params), flat_grads(reference))


# -- by value -----------------------------------------------------------------------------

@SETTINGS
@given(parameters_with_grads(), thresholds)
def test_clip_by_value_bounds_every_element_and_keeps_the_small_ones(params, threshold):
    before = flat_grads(params).clone()
    gc.clip_gradients(params, "value", threshold)
    after = flat_grads(params)
    assert float(after.abs().max()) <= threshold * (1 + REL)
    small = before.abs() <= threshold
    assert torch.equal(after[small], before[small])
    assert torch.equal(torch.sign(after), torch.sign(before))


@SETTINGS
@given(parameters_with_grads(), thresholds)
def test_clip_by_value_returns_what_clip_grad_value_does(params, threshold):
    reference = copies(params)
    expected_before = torch.nn.utils.get_total_norm([p.grad for p in reference])
    fires = bool(flat_grads(reference).abs().max() > threshold)
    torch.nn.utils.clip_grad_value_(reference, threshold)
    before, after, fired = gc.clip_gradients(params, "value", threshold)
    assert torch.equal(before, expected_before)
    assert float(after) == pytest.approx(float(flat_grads(reference).norm()), rel=REL)
    assert bool(fired) == fires
    assert torch.equal(flat_grads(params), flat_grads(reference))


# -- adaptive (AGC) -----------------------------------------------------------------------

def unit_norms(tensor: torch.Tensor) -> torch.Tensor:
    """Norm of each output unit, written out independently of gradcourse: rows for 2-d and more,
    each element for vectors."""
    if tensor.ndim <= 1:
        return tensor.abs().double()
    return tensor.double().reshape(tensor.shape[0], -1).norm(dim=1)


clip_factors = st.floats(1e-3, 10.0)
eps_values = st.sampled_from([1e-3, 1e-2, 0.5])


@SETTINGS
@given(parameters_with_grads(), clip_factors, eps_values)
def test_agc_bounds_each_unit_gradient_by_its_weight_norm(params, factor, eps):
    gc.adaptive_clip_grad_(params, factor, eps=eps)
    for p in params:
        bound = factor * unit_norms(p.detach()).clamp_min(eps)
        assert bool((unit_norms(p.grad) <= bound * (1 + REL) + 1e-12).all())


@SETTINGS
@given(parameters_with_grads(), clip_factors, eps_values)
def test_agc_leaves_units_within_the_bound_unchanged(params, factor, eps):
    before = [p.grad.clone() for p in params]
    gc.adaptive_clip_grad_(params, factor, eps=eps)
    for p, grad in zip(params, before):
        bound = factor * unit_norms(p.detach()).clamp_min(eps)
        inside = unit_norms(grad) <= bound * (1 - 1e-4)
        rows_before = grad.reshape(grad.shape[0], -1) if grad.ndim > 1 else grad.reshape(-1, 1)
        rows_after = p.grad.reshape(rows_before.shape)
        assert torch.equal(rows_after[inside], rows_before[inside])


@SETTINGS
@given(parameters_with_grads(), clip_factors)
def test_agc_scales_a_clipped_unit_without_turning_it(params, factor):
    before = [p.grad.clone().double() for p in params]
    gc.adaptive_clip_grad_(params, factor)
    for p, grad in zip(params, before):
        rows_before = grad.reshape(grad.shape[0], -1) if grad.ndim > 1 else grad.reshape(-1, 1)
        rows_after = p.grad.double().reshape(rows_before.shape)
        dots = (rows_before * rows_after).sum(dim=1)
        norms = rows_before.norm(dim=1) * rows_after.norm(dim=1)
        nonzero = norms > 0
        assert torch.allclose(dots[nonzero] / norms[nonzero], torch.ones_like(dots[nonzero]), atol=1e-6)


@SETTINGS
@given(parameters_with_grads(), clip_factors)
def test_agc_reports_whether_any_unit_was_clipped(params, factor):
    exceeds = any(bool((unit_norms(p.grad) > factor * unit_norms(p.detach()).clamp_min(1e-3)).any()) for p in params)
    fired = gc.clip_gradients(params, "agc", factor)[2]
    assert bool(fired) == exceeds


@SETTINGS
@given(parameters_with_grads(min_params=2), clip_factors)
def test_agc_in_clip_gradients_touches_only_the_agc_parameters(params, factor):
    untouched = params[-1].grad.clone()
    before, after, _ = gc.clip_gradients(params, "agc", factor, agc_parameters=params[:-1])
    assert torch.equal(params[-1].grad, untouched)
    assert float(after) == pytest.approx(float(flat_grads(params).norm()), rel=REL)
    assert float(after) <= float(before) * (1 + REL)


# -- shared behaviour ---------------------------------------------------------------------

@SETTINGS
@given(parameters_with_grads(), thresholds)
def test_clip_mode_none_changes_nothing_and_reports_the_norm(params, threshold):
    expected = torch.nn.utils.get_total_norm([p.grad for p in params])
    grads = flat_grads(params).clone()
    before, after, fired = gc.clip_gradients(params, "none", threshold)
    assert torch.equal(before, expected) and torch.equal(after, expected)
    assert not bool(fired)
    assert torch.equal(flat_grads(params), grads)


def test_unitwise_norm_is_per_filter_for_convs_and_per_element_for_vectors():
    weight = torch.arange(2 * 3 * 3 * 3, dtype=torch.float32).reshape(2, 3, 3, 3)
    norms = gc.unitwise_norm(weight)
    assert norms.shape == (2, 1, 1, 1)
    assert torch.allclose(norms.flatten(), weight.reshape(2, -1).norm(dim=1))
    bias = torch.tensor([-3.0, 0.0, 2.0])
    assert torch.equal(gc.unitwise_norm(bias), bias.abs())


def test_total_grad_norm_is_zero_when_no_parameter_has_a_gradient():
    assert float(total_grad_norm([nn.Parameter(torch.ones(3))])) == 0.0


def test_total_grad_norm_skips_parameters_without_gradient():
    with_grad, without = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    with_grad.grad = torch.tensor([3.0, 4.0])
    assert float(total_grad_norm([with_grad, without])) == pytest.approx(5.0)


def test_clip_gradients_rejects_an_unknown_mode_naming_the_modes():
    p = nn.Parameter(torch.ones(2))
    p.grad = torch.ones(2)
    with pytest.raises(ValueError) as excinfo:
        gc.clip_gradients([p], "l2", 1.0)
    for mode in CLIP_MODES:
        assert mode in str(excinfo.value)


def test_clip_by_norm_fires_exactly_above_the_threshold():
    p = nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([3.0, 4.0])
    before, after, fired = gc.clip_gradients([p], "norm", 1.0)
    assert float(before) == pytest.approx(5.0) and float(after) == pytest.approx(1.0, rel=1e-5) and bool(fired)
    p.grad = torch.tensor([3.0, 4.0])
    assert not bool(gc.clip_gradients([p], "norm", 6.0)[2])
    assert math.isclose(float(p.grad.norm()), 5.0, rel_tol=1e-6)
