"""Stochastic Lanczos quadrature against dense float64 spectra."""

import json

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from basinscope.curvature.operators import HessianOperator
from basinscope.curvature.slq import SpectralDensity, lanczos_tridiagonal, spectral_density
from basinscope.errors import BasinscopeError
from basinscope.plotting.spectrum import plot_spectral_density
from curvature_cases import MatrixOperator, dense_hessian, spectrum_matrix, tiny_models


@pytest.fixture(scope="module")
def bulk():
    """n=300, eigenvalues spread over [0.5, 3]."""
    eigs = np.sort(np.random.default_rng(0).uniform(0.5, 3.0, 300))
    return spectrum_matrix(eigs, seed=1), eigs


@pytest.fixture(scope="module")
def hessian_case(digits_xy):
    x, y = digits_xy[0][:90], digits_xy[1][:90]
    model = tiny_models()["cnn"]
    op = HessianOperator(model, (x, y), method="forward-over-reverse")
    return op, np.linalg.eigvalsh(dense_hessian(model, x, y).numpy())


def test_weights_are_probabilities_and_nodes_lie_in_the_spectrum(bulk):
    a, eigs = bulk
    op = MatrixOperator(a)
    sd = spectral_density(op, num_runs=5, lanczos_steps=30, seed=0)
    assert sd.nodes.shape == sd.weights.shape == (5, 30)
    np.testing.assert_allclose(sd.weights.sum(1), 1.0, rtol=1e-12)
    assert (sd.weights >= 0).all()
    assert sd.nodes.min() >= eigs[0] - 1e-10 and sd.nodes.max() <= eigs[-1] + 1e-10
    assert sd.num_matvecs == op.num_matvecs == 150 and sd.dimension == 300
    assert sd.moment(0) == pytest.approx(1.0, rel=1e-12)


def test_moments_match_the_dense_spectrum(bulk):
    a, eigs = bulk
    sd = spectral_density(MatrixOperator(a), num_runs=10, lanczos_steps=20, seed=0)
    for k in range(5):
        assert sd.moment(k) == pytest.approx(np.mean(eigs**k), rel=0.05), k
    assert sd.trace() == pytest.approx(eigs.sum(), rel=0.05)


@pytest.mark.parametrize("steps", [40, 4])
def test_quadrature_is_exact_for_the_start_vector(steps):
    """Gauss quadrature: sum_i w_i theta_i^k = v^T A^k v for k <= 2m - 1 (all k when m = n)."""
    eigs = np.linspace(-2.0, 3.0, 40)
    a = spectrum_matrix(eigs, seed=2)
    v = torch.randn(40, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    sd = spectral_density(MatrixOperator(a), num_runs=1, lanczos_steps=steps, start_vectors=v)
    assert sd.distribution == "given" and sd.lanczos_steps == steps
    u = (v / v.norm())[:, 0]
    for k in range(min(2 * steps, 12)):
        exact = float(u @ torch.linalg.matrix_power(a, k) @ u)
        assert sd.moment(k) == pytest.approx(exact, rel=1e-8, abs=1e-10), k


def test_invariant_subspace_stops_early():
    eigs = np.zeros(60)
    eigs[:3] = [5.0, 2.0, -1.0]
    a = spectrum_matrix(eigs, seed=3)
    op = MatrixOperator(a)
    v = torch.randn(60, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    sd = spectral_density(op, num_runs=3, lanczos_steps=30, start_vectors=v)
    # the Krylov space of a rank-3 matrix has dimension 4 (with the null-space part)
    assert sd.num_matvecs == 3 * 4
    assert sd.nodes.shape == (3, 30)
    np.testing.assert_allclose(sd.weights.sum(1), 1.0, rtol=1e-12)
    assert (sd.weights[:, 4:] == 0).all()
    np.testing.assert_allclose(np.sort(sd.nodes[0, :4]), [-1.0, 0.0, 2.0, 5.0], atol=1e-8)
    u = v / v.norm(dim=0)
    for k in range(10):  # an invariant subspace makes the quadrature exact for every degree
        exact = np.mean(
            [float(u[:, r] @ torch.linalg.matrix_power(a, k) @ u[:, r]) for r in range(3)]
        )
        assert sd.moment(k) == pytest.approx(exact, rel=1e-8), k
    zero = spectral_density(MatrixOperator(torch.zeros(10, 10)), num_runs=2, lanczos_steps=5)
    assert zero.num_matvecs == 2 and zero.moment(1) == 0.0 and zero.moment(0) == 1.0


def test_smoothed_density_integrates_to_one(bulk):
    a, _ = bulk
    sd = spectral_density(MatrixOperator(a), num_runs=3, lanczos_steps=25, seed=0)
    grid = sd.default_grid(2000)
    for sigma in (None, 0.05):
        dens = sd.density(grid, sigma)
        assert dens.shape == grid.shape and (dens >= 0).all()
        assert np.trapezoid(dens, grid) == pytest.approx(1.0, abs=1e-3)
    assert sd.density(np.zeros((2, 3)), 0.1).shape == (2, 3)
    with pytest.raises(BasinscopeError, match="sigma must be a positive kernel width"):
        sd.density(grid, 0.0)


def test_extreme_nodes_approach_the_hessian_extremes(hessian_case):
    op, eigs = hessian_case
    sd = spectral_density(op, num_runs=2, lanczos_steps=80, seed=0)
    lo, hi = sd.extremes()
    assert eigs[0] - 1e-9 <= lo <= eigs[0] + 0.02 * abs(eigs[0])
    assert eigs[-1] - 0.02 * eigs[-1] <= hi <= eigs[-1] + 1e-9
    assert sd.semantics == op.semantics and sd.lanczos_steps == 80
    np.testing.assert_allclose(sd.weights.sum(1), 1.0, rtol=1e-12)


def test_reproducible_and_json(bulk):
    a, _ = bulk
    one = spectral_density(MatrixOperator(a), num_runs=2, lanczos_steps=10, seed=3)
    two = spectral_density(MatrixOperator(a), num_runs=2, lanczos_steps=10, seed=3)
    other = spectral_density(
        MatrixOperator(a), num_runs=2, lanczos_steps=10, seed=4, distribution="gaussian"
    )
    np.testing.assert_array_equal(one.nodes, two.nodes)
    np.testing.assert_array_equal(one.weights, two.weights)
    assert not np.array_equal(one.nodes, other.nodes) and other.distribution == "gaussian"
    d = json.loads(json.dumps(one.to_dict()))
    back = SpectralDensity.from_dict(d)
    assert back.moment(2) == one.moment(2) and back.to_dict() == one.to_dict()
    assert d["kind"] == "spectral_density" and "Lanczos quadrature" in back.definition


def test_lanczos_tridiagonal_of_a_diagonal():
    op = MatrixOperator(torch.diag(torch.arange(1.0, 7.0, dtype=torch.float64)))
    alphas, betas, matvecs = lanczos_tridiagonal(op, torch.ones(6, 1, dtype=torch.float64), 10)
    assert len(alphas[0]) == 6 and len(betas[0]) == 5 and matvecs == 6
    t = np.diag(alphas[0]) + np.diag(betas[0], 1) + np.diag(betas[0], -1)
    np.testing.assert_allclose(np.linalg.eigvalsh(t), np.arange(1.0, 7.0), atol=1e-12)


def test_bad_options_are_reported():
    op = MatrixOperator(torch.eye(5, dtype=torch.float64))
    with pytest.raises(BasinscopeError, match="num_runs must be at least 1"):
        spectral_density(op, num_runs=0)
    with pytest.raises(BasinscopeError, match="lanczos_steps must be at least 1"):
        spectral_density(op, lanczos_steps=0)
    with pytest.raises(BasinscopeError, match="unknown start-vector distribution 'uniform'"):
        spectral_density(op, distribution="uniform")
    with pytest.raises(BasinscopeError, match=r"start_vectors must have shape \(n, num_runs\)"):
        spectral_density(op, num_runs=2, start_vectors=torch.ones(5, 3))
    with pytest.raises(BasinscopeError, match="start_vectors has a zero column"):
        spectral_density(op, num_runs=1, start_vectors=torch.zeros(5, 1))


def test_plot_spectral_density(bulk, tmp_path):
    a, _ = bulk
    sd = spectral_density(MatrixOperator(a), num_runs=2, lanczos_steps=20, seed=0)
    fig, ax = plot_spectral_density(sd)
    assert isinstance(fig, Figure) and ax.get_yscale() == "log"
    assert "matrix eigenvalue density" in ax.get_title()
    assert any("max" in t.get_text() for t in ax.texts)
    fig.savefig(tmp_path / "density.png")
    assert (tmp_path / "density.png").stat().st_size > 0
    _, ax2 = plot_spectral_density(sd, sigma=0.1, log=False, title="bulk")
    assert ax2.get_yscale() == "linear" and ax2.get_title() == "bulk"
    shared = Figure()
    own_ax = shared.add_subplot()
    assert plot_spectral_density(sd, ax=own_ax) == (shared, own_ax)
    with pytest.raises(BasinscopeError, match="sigma must be a positive kernel width"):
        plot_spectral_density(sd, sigma=-1.0)
