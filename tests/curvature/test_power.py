"""The power-iteration baseline (PyHessian's rule) and the pitfall it carries."""

import numpy as np
import pytest
import torch

from basinscope.curvature.lanczos import lanczos_eigenpairs
from basinscope.curvature.operators import HessianOperator
from basinscope.curvature.power import power_iteration
from basinscope.errors import BasinscopeError
from curvature_cases import dense_hessian, tiny_models


class MatrixOperator:
    """An explicit symmetric matrix as an operator (``matvec``, ``n``, ``num_matvecs``)."""

    def __init__(self, a: torch.Tensor):
        self.a, self.n, self.num_matvecs = a, a.shape[0], 0

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self.num_matvecs += 1
        return self.a @ v


def with_spectrum(eigenvalues, seed: int = 0) -> MatrixOperator:
    ev = torch.as_tensor(np.asarray(eigenvalues, dtype=np.float64))
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(ev), len(ev), dtype=torch.float64, generator=g))
    return MatrixOperator((q * ev) @ q.T)


# the most negative eigenvalue is larger in magnitude than the top one
PITFALL = [-20.0, 10.0, 6.0, 5.0, *np.linspace(-4, 4, 96)]


def test_pyhessian_pitfall_power_returns_the_negative_end():
    op = with_spectrum(PITFALL)
    power = power_iteration(op, 1)  # PyHessian's "top eigenvalue"
    lanczos = lanczos_eigenpairs(op, 1, "largest")
    assert power.eigenvalues[0] == pytest.approx(-20.0, rel=1e-2)
    assert lanczos.eigenvalues[0] == pytest.approx(10.0, rel=1e-10)
    assert power.which == "largest_magnitude" and power.method == "power"
    # with three pairs, power finds -20, 10, 6 (by magnitude), not the top three 10, 6, 5
    power3 = power_iteration(op, 3, rule="residual", tol=1e-10, max_iter=2000)
    np.testing.assert_allclose(power3.eigenvalues, [-20.0, 10.0, 6.0], rtol=1e-9)
    assert power3.converged[0] and power3.residuals.max() < 1e-8


def test_pyhessian_rule_stops_early_and_says_so():
    op = with_spectrum(PITFALL)
    res = power_iteration(op, 2, rule="pyhessian", tol=1e-3)
    assert res.info["rule_met"] == [True, True]
    # the rule fired, but the residual rule at the same tol is not met: reported honestly
    assert not res.converged.any()
    assert res.num_matvecs == res.iterations == sum(res.info["steps_per_pair"])
    errors = np.abs(res.eigenvalues - [-20.0, 10.0]) / [20.0, 10.0]
    assert errors.max() > 1e-6  # far from the Lanczos solver's accuracy
    residual = power_iteration(op, 2, rule="residual", tol=1e-8, max_iter=3000)
    np.testing.assert_allclose(residual.eigenvalues, [-20.0, 10.0], rtol=1e-12)
    assert residual.converged[0] and residual.info["rule"] == "residual"
    # deflation by an inexact first vector: the second pair's residual cannot drop far below
    # the first one's (PyHessian's scheme; Lanczos has no such floor)
    assert residual.residuals[1] > 0.1 * residual.residuals[0]


def test_residuals_are_true_residuals():
    op = with_spectrum(PITFALL, seed=2)
    res = power_iteration(op, 3)
    v = res.eigenvectors
    true = torch.linalg.vector_norm(op.a @ v - v * torch.as_tensor(res.eigenvalues), dim=0)
    np.testing.assert_allclose(res.residuals, true.numpy(), rtol=1e-10)
    torch.testing.assert_close(v.T @ v, torch.eye(3, dtype=torch.float64), rtol=0, atol=1e-12)
    rq = (v * (op.a @ v)).sum(0)
    np.testing.assert_allclose(res.eigenvalues, rq.numpy(), rtol=1e-12)


def test_against_the_dense_hessian_of_a_tiny_mlp(digits_xy):
    x, y = digits_xy[0][:90], digits_xy[1][:90]
    model = tiny_models()["mlp"]
    evals = torch.linalg.eigvalsh(dense_hessian(model, x, y))
    op = HessianOperator(model, (x, y))
    top_magnitude = float(evals[evals.abs().argmax()])
    res = power_iteration(op, 1)
    assert res.eigenvalues[0] == pytest.approx(top_magnitude, rel=2e-3)
    # PyHessian's rule fired after a few products, with the residual still ~1e-2 |lambda|
    assert res.info["rule_met"] == [True] and not res.all_converged
    assert res.semantics == op.semantics


def test_seeded_and_warm_started():
    op = with_spectrum(PITFALL)
    a, b = power_iteration(op, 2, seed=4), power_iteration(op, 2, seed=4)
    assert a.eigenvalues.tobytes() == b.eigenvalues.tobytes()
    assert torch.equal(a.eigenvectors, b.eigenvectors)
    c = power_iteration(op, 2, seed=5)
    assert c.eigenvalues.tobytes() != a.eigenvalues.tobytes()
    exact = power_iteration(op, 2, rule="residual", tol=1e-10, max_iter=3000)
    warm = power_iteration(op, 2, rule="residual", tol=1e-8, v0=exact.eigenvectors)
    assert warm.num_matvecs <= 4 and warm.info["start"] == "v0 (2 vectors)"


def test_bad_arguments():
    op = with_spectrum([1.0, 2.0, 3.0])
    with pytest.raises(BasinscopeError, match=r"unknown rule='relative'"):
        power_iteration(op, 1, rule="relative")
    with pytest.raises(BasinscopeError, match=r"k must be an integer between 1 and n=3, got 4"):
        power_iteration(op, 4)
    with pytest.raises(BasinscopeError, match=r"max_iter must be a positive integer, got 0"):
        power_iteration(op, 1, max_iter=0)
    with pytest.raises(BasinscopeError, match=r"v0 must be a vector of length 3"):
        power_iteration(op, 1, v0=torch.ones(2))
