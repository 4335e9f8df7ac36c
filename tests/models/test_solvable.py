"""Solvable models and their data: deep linear networks, two-layer ReLU networks with a scalar
output and their conserved quantities, the low-rank teacher and Gaussian inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from basinscope.data import gaussian_inputs, low_rank_teacher, teacher_data
from basinscope.errors import BasinscopeError
from basinscope.models import (
    build_model,
    conserved_quantities,
    end_to_end,
    soft_committee,
    two_layer_relu,
)


def test_deep_linear_is_the_product_of_its_layers_at_small_depth():
    m = build_model(
        "deep_linear",
        {"in_features": 3, "out_features": 2, "width": 4, "depth": 3, "init_scale": 0.5},
        init_seed=1,
    ).double()
    w1, w2, w3 = (getattr(m, f"fc{i}").weight for i in (1, 2, 3))
    # closed form: W = W3 W2 W1, element by element
    closed = torch.einsum("ij,jk,kl->il", w3, w2, w1)
    torch.testing.assert_close(end_to_end(m), closed, rtol=0, atol=1e-15)
    x = torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(m(x), x @ closed.T)
    assert [n for n, _ in m.named_parameters()] == ["fc1.weight", "fc2.weight", "fc3.weight"]


def test_deep_linear_init_scale_is_the_weights_standard_deviation():
    m = build_model("deep_linear", {"width": 200, "depth": 2, "init_scale": 1e-3}, init_seed=0)
    w = torch.cat([p.flatten() for p in m.parameters()])
    assert w.std().item() == pytest.approx(1e-3, rel=0.05)
    again = build_model("deep_linear", {"width": 200, "depth": 2, "init_scale": 1e-3}, init_seed=0)
    assert all(torch.equal(a, b) for a, b in zip(m.parameters(), again.parameters(), strict=True))
    with pytest.raises(BasinscopeError, match="init_scale must be a finite number >= 0"):
        build_model("deep_linear", {"init_scale": -1.0})


def test_low_rank_teacher_has_the_chosen_singular_values_and_whitened_inputs():
    t = low_rank_teacher(7, 5, [3.0, 1.5, 0.5], seed=2)
    s = torch.linalg.svdvals(t.matrix)
    torch.testing.assert_close(s[:3], torch.tensor([3.0, 1.5, 0.5], dtype=torch.float64))
    assert s[3:].abs().max() < 1e-12
    torch.testing.assert_close(t.U.T @ t.U, torch.eye(3, dtype=torch.float64))
    x = gaussian_inputs(50, 7, seed=3, whiten=True, dtype=torch.float64)
    torch.testing.assert_close(x.T @ x / 50, torch.eye(7, dtype=torch.float64))
    assert torch.equal(x, gaussian_inputs(50, 7, seed=3, whiten=True, dtype=torch.float64))
    data = teacher_data(x, t, "toy", noise=0.1, noise_seed=4)
    assert data.regression and data.y.shape == (50, 5) and data.name == "toy-noise0.1-seed4"
    clean = teacher_data(x, t, "toy")
    assert 0 < (data.y - clean.y).std() < 0.2
    with pytest.raises(BasinscopeError, match="exceeds min"):
        low_rank_teacher(2, 5, [1, 1, 1], seed=0)


def test_soft_committee_is_a_signed_sum_of_relus():
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = soft_committee(v, [1.0, -1.0])
    x = torch.tensor([[2.0, 3.0], [-1.0, 4.0], [1.0, -5.0]])
    torch.testing.assert_close(t(x)[:, 0], torch.relu(x[:, 0]) - torch.relu(x[:, 1]))


def _grads(model, x, y):
    loss = 0.5 * ((model(x) - y) ** 2).mean()
    return torch.autograd.grad(loss, list(model.parameters()))


def _tiny(bias=False):
    torch.manual_seed(0)
    m = two_layer_relu(3, 4, bias=bias).double()
    x = torch.randn(40, 3, dtype=torch.float64)
    y = torch.randn(40, 1, dtype=torch.float64)
    return m, x, y


@pytest.mark.parametrize("bias", [False, True])
def test_an_exact_gradient_flow_integrator_conserves_each_neuron(bias):
    """Classical RK4 on the flow (float64, step 1e-3 over time 1): the conserved quantities
    move by no more than the integrator's error (measured: ~1e-12 without biases, ~1e-8 with
    them, where more examples cross a ReLU kink and RK4 loses its order), far below the
    ~1e-3 drift of gradient descent at the same step."""
    m, x, y = _tiny(bias)
    params = list(m.parameters())
    c0 = conserved_quantities(m).clone()
    h = 1e-3

    def field():
        return [-g for g in _grads(m, x, y)]

    with torch.no_grad():
        for _ in range(1000):
            p0 = [p.clone() for p in params]
            ks = []
            for frac in (0.0, 0.5, 0.5, 1.0):
                for p, q, k in zip(params, p0, ks[-1] if ks else [None] * len(params), strict=True):
                    p.copy_(q if k is None else q + frac * h * k)
                with torch.enable_grad():
                    ks.append(field())
            for p, q, k1, k2, k3, k4 in zip(params, p0, *ks, strict=True):
                p.copy_(q + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4))
    moved = (conserved_quantities(m) - c0).abs().max().item()
    assert moved < 1e-7
    m2, _, _ = _tiny(bias)
    assert (next(iter(m2.parameters())) - params[0]).abs().max() > 1e-2  # the weights did move


def test_a_gradient_step_changes_c_by_exactly_eta_squared_times_the_gradient_terms():
    m, x, y = _tiny()
    eta = 0.3
    c0 = conserved_quantities(m).clone()
    gw, ga = _grads(m, x, y)
    with torch.no_grad():
        m.fc1.weight -= eta * gw
        m.fc2.weight -= eta * ga
    expected = eta**2 * ((gw**2).sum(1) - ga[0] ** 2)
    torch.testing.assert_close(conserved_quantities(m) - c0, expected, rtol=1e-10, atol=1e-14)


def test_gradient_descent_drift_over_a_fixed_time_shrinks_with_the_step():
    drifts = []
    for eta in (0.08, 0.04, 0.02):
        m, x, y = _tiny()
        c0 = conserved_quantities(m).clone()
        for _ in range(round(2.0 / eta)):
            gw, ga = _grads(m, x, y)
            with torch.no_grad():
                m.fc1.weight -= eta * gw
                m.fc2.weight -= eta * ga
        drifts.append((conserved_quantities(m) - c0).abs().max().item())
    ratios = np.array(drifts[:-1]) / np.array(drifts[1:])
    assert np.all((ratios > 1.7) & (ratios < 2.3)), drifts  # O(eta): halves with the step
