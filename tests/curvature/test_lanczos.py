"""Lanczos eigenpairs against brute-force float64 references (dense Hessians, closed forms)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from basinscope.curvature.lanczos import Eigenpairs, lanczos_both_ends, lanczos_eigenpairs
from basinscope.curvature.operators import HessianOperator
from basinscope.errors import BasinscopeError
from curvature_cases import dense_hessian, tiny_models

REL = 1e-6  # eigenvalue error allowed, relative to max |lambda|


class MatrixOperator:
    """An explicit symmetric matrix as an operator (``matvec``, ``n``, ``num_matvecs``)."""

    def __init__(self, a: torch.Tensor):
        self.a, self.n, self.num_matvecs = a, a.shape[0], 0

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self.num_matvecs += 1
        return self.a @ v


def with_spectrum(eigenvalues, seed: int = 0) -> MatrixOperator:
    """``Q diag(eigenvalues) Q^T`` with a seeded random orthogonal ``Q``."""
    ev = torch.as_tensor(np.asarray(eigenvalues, dtype=np.float64))
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(ev), len(ev), dtype=torch.float64, generator=g))
    return MatrixOperator((q * ev) @ q.T)


def assert_matches_dense(res: Eigenpairs, evals, evecs, dense, which: str) -> None:
    k = res.k
    ref = evals.flip(0)[:k] if which == "largest" else evals[:k]
    scale = float(evals.abs().max())
    np.testing.assert_allclose(res.eigenvalues, ref.numpy(), rtol=0, atol=REL * scale)
    assert res.which == which and res.all_converged
    # reported residuals are the true ones
    v = res.eigenvectors
    true = torch.linalg.vector_norm(dense @ v - v * torch.as_tensor(res.eigenvalues), dim=0)
    np.testing.assert_allclose(res.residuals, true.numpy(), rtol=1e-6, atol=1e-14 * scale)
    assert np.all(res.residuals <= res.tol * np.abs(res.eigenvalues))
    torch.testing.assert_close(v.T @ v, torch.eye(k, dtype=torch.float64), rtol=0, atol=1e-10)
    # eigenvectors up to sign, where the eigenvalue is well separated
    pos = torch.arange(len(evals) - 1, len(evals) - 1 - k, -1) if which == "largest" else range(k)
    for i, p in enumerate(pos):
        p = int(p)
        gaps = [abs(float(evals[p] - evals[q])) for q in (p - 1, p + 1) if 0 <= q < len(evals)]
        if min(gaps) > 1e-2 * scale:
            assert abs(float(v[:, i] @ evecs[:, p])) == pytest.approx(1.0, abs=1e-8)


@pytest.fixture(scope="module")
def xy(digits_xy):
    x, y = digits_xy
    return x[:90], y[:90]


@pytest.fixture(scope="module")
def cases(xy):
    """Per tiny model: the Hessian operator, the dense float64 Hessian and its eigh."""
    out = {}
    for name, model in tiny_models().items():
        dense = dense_hessian(model, *xy)
        evals, evecs = torch.linalg.eigh(dense)
        out[name] = (HessianOperator(model, xy), dense, evals, evecs)
    return out


@pytest.mark.parametrize("name", ["mlp", "cnn", "bn_eval"])
def test_both_ends_match_the_dense_hessian(name, cases):
    op, dense, evals, evecs = cases[name]
    assert evals[0] < 0 < evals[-1]  # an indefinite Hessian: both ends matter
    top, bottom = lanczos_both_ends(op, 3, 3, tol=1e-6)
    assert_matches_dense(top, evals, evecs, dense, "largest")
    assert_matches_dense(bottom, evals, evecs, dense, "smallest")
    assert top.num_matvecs == bottom.num_matvecs == top.iterations + 6  # 6 verifying products
    assert top.semantics == op.semantics and top.semantics["operator"] == "hessian"


def test_separate_runs_equal_both_ends(cases):
    op, dense, evals, evecs = cases["mlp"]
    top, bottom = lanczos_both_ends(op, 3, 3)
    before = op.num_matvecs
    largest = lanczos_eigenpairs(op, 3, "largest")
    smallest = lanczos_eigenpairs(op, 3, "smallest")
    assert op.num_matvecs - before == largest.num_matvecs + smallest.num_matvecs
    scale = float(evals.abs().max())
    np.testing.assert_allclose(largest.eigenvalues, top.eigenvalues, rtol=0, atol=REL * scale)
    np.testing.assert_allclose(smallest.eigenvalues, bottom.eigenvalues, rtol=0, atol=REL * scale)
    assert_matches_dense(largest, evals, evecs, dense, "largest")
    assert_matches_dense(smallest, evals, evecs, dense, "smallest")
    # one shared Krylov space costs fewer products than two runs
    assert top.num_matvecs < largest.num_matvecs + smallest.num_matvecs


def test_largest_is_algebraic_not_magnitude():
    # the most negative eigenvalue is twice the top one in magnitude
    op = with_spectrum([-20.0, 10.0, 9.0, 8.5, *np.linspace(-5, 5, 96)])
    top = lanczos_eigenpairs(op, 3, "largest")
    np.testing.assert_allclose(top.eigenvalues, [10.0, 9.0, 8.5], rtol=1e-6)
    bottom = lanczos_eigenpairs(op, 2, "smallest")
    np.testing.assert_allclose(bottom.eigenvalues, [-20.0, -5.0], rtol=1e-6)


def test_clustered_eigenvalues_are_resolved():
    op = with_spectrum([10.0, 10.0 - 1e-3, 10.0 - 2e-3, *np.linspace(-8, 8, 197)])
    res = lanczos_eigenpairs(op, 3, tol=1e-8, max_iter=200)
    assert res.all_converged
    np.testing.assert_allclose(res.eigenvalues, [10.0, 9.999, 9.998], rtol=1e-10)


@pytest.mark.parametrize("which", ["largest", "smallest"])
def test_repeated_eigenvalues_found_with_their_multiplicity(which):
    # one start vector sees one copy of each eigenvalue: the space becomes invariant after
    # four steps and the restarts must find the other copies
    spectrum = [5.0] * 3 + [2.0] * 10 + [-1.0] * 7 + [0.0] * 30
    res = lanczos_eigenpairs(with_spectrum(spectrum), 3, which)
    expected = [5.0] * 3 if which == "largest" else [-1.0] * 3
    np.testing.assert_allclose(res.eigenvalues, expected, rtol=1e-12)
    assert res.all_converged and res.info["restarts"] >= 2
    assert res.iterations < 50  # stopped without exhausting the space


def test_exactly_low_rank_operator():
    g = torch.Generator().manual_seed(3)
    u = torch.randn(120, 4, dtype=torch.float64, generator=g)
    a = u @ torch.diag(torch.tensor([3.0, 1.0, -0.5, -2.0], dtype=torch.float64)) @ u.T
    evals = torch.linalg.eigvalsh(a)
    op = MatrixOperator(a)
    top, bottom = lanczos_both_ends(op, 2, 2)
    np.testing.assert_allclose(top.eigenvalues, evals.flip(0)[:2].numpy(), rtol=1e-10)
    np.testing.assert_allclose(bottom.eigenvalues, evals[:2].numpy(), rtol=1e-10)
    assert top.info["stopped_by"].startswith("converged") and top.iterations <= 8
    # asking for more than the rank returns exact zeros, and says they converged
    res = lanczos_eigenpairs(op, 6, "largest")
    assert res.all_converged and res.iterations < 20
    np.testing.assert_allclose(res.eigenvalues[:2], evals.flip(0)[:2].numpy(), rtol=1e-10)
    np.testing.assert_allclose(res.eigenvalues[2:], 0.0, atol=1e-12)


def test_tiny_operator_exhausts_the_space():
    op = with_spectrum([3.0, -1.0, 0.5, 2.0, -4.0])
    top, bottom = lanczos_both_ends(op, 2, 3)
    np.testing.assert_allclose(top.eigenvalues, [3.0, 2.0], rtol=1e-12)
    np.testing.assert_allclose(bottom.eigenvalues, [-4.0, -1.0, 0.5], rtol=1e-12)
    assert top.iterations == 5


def test_seeded_and_reproducible(cases):
    op = with_spectrum([*np.linspace(-3, 4, 150)])
    a = lanczos_eigenpairs(op, 3, tol=1e-8)
    b = lanczos_eigenpairs(op, 3, tol=1e-8)
    assert a.eigenvalues.tobytes() == b.eigenvalues.tobytes()
    assert torch.equal(a.eigenvectors, b.eigenvectors) and a.num_matvecs == b.num_matvecs
    c = lanczos_eigenpairs(op, 3, tol=1e-8, seed=1)
    assert c.num_matvecs != a.num_matvecs or c.eigenvalues.tobytes() != a.eigenvalues.tobytes()
    np.testing.assert_allclose(c.eigenvalues, a.eigenvalues, rtol=1e-9)
    # the global RNG is never touched
    torch.manual_seed(123)
    state = torch.get_rng_state()
    lanczos_eigenpairs(cases["cnn"][0], 1, seed=5)
    assert torch.equal(torch.get_rng_state(), state)


def test_warm_start_along_a_trajectory(xy):
    x, y = xy
    model = tiny_models()["mlp"]
    first1 = lanczos_eigenpairs(HessianOperator(model, xy), 1)
    first3 = lanczos_eigenpairs(HessianOperator(model, xy), 3)
    # the next point of a trajectory: one small SGD step
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    with torch.no_grad():
        for p, g in zip(model.parameters(), grads):
            p -= 3e-4 * g
        assert float(F.cross_entropy(model(x), y)) < float(loss)
    op = HessianOperator(model, xy)
    for first in (first1, first3):
        cold = lanczos_eigenpairs(op, first.k)
        warm = lanczos_eigenpairs(op, first.k, v0=first.eigenvectors)
        assert cold.all_converged and warm.all_converged
        np.testing.assert_allclose(warm.eigenvalues, cold.eigenvalues, rtol=1e-6)
        assert warm.info["start"] == f"warm ({first.k} vector{'s' if first.k > 1 else ''})"
        if first.k == 1:  # sharpness tracking: far fewer products
            assert warm.num_matvecs < cold.num_matvecs / 2
        else:  # several vectors share one start vector: separating them costs steps
            assert warm.num_matvecs < cold.num_matvecs


def test_max_iter_too_small_is_reported_not_raised(cases):
    op = cases["mlp"][0]
    res = lanczos_eigenpairs(op, 3, max_iter=5)
    assert res.iterations == 5 and res.num_matvecs == 8
    assert not res.converged.any() and res.info["stopped_by"] == "max_iter"
    np.testing.assert_array_less(res.tol * np.abs(res.eigenvalues), res.residuals)
    assert res.to_dict()["converged"] == [False, False, False]


def _linear_case(loss_name: str):
    g = torch.Generator().manual_seed(0)
    n, d = 200, 8
    x = torch.randn(n, d, dtype=torch.float64, generator=g) * torch.linspace(0.2, 3.0, d)
    torch.manual_seed(0)
    model = nn.Linear(d, 1).double()
    xt = torch.cat([x, torch.ones(n, 1, dtype=torch.float64)], 1)  # weight entries, then bias
    if loss_name == "mse":
        y = torch.randn(n, 1, dtype=torch.float64, generator=g)
        ref = 2.0 * xt.T @ xt / n  # d/dw of mean (x.w + b - y)^2, twice

        def loss_fn(out, y):
            return F.mse_loss(out, y)

    else:
        y = (x[:, 0] + 0.5 * torch.randn(n, dtype=torch.float64, generator=g) > 0).double()
        with torch.no_grad():
            p = torch.sigmoid(model(x)[:, 0])
        ref = xt.T @ (xt * (p * (1 - p))[:, None]) / n

        def loss_fn(out, y):
            return F.binary_cross_entropy_with_logits(out[:, 0], y)

    return HessianOperator(model, (x, y), loss_fn=loss_fn, batch_size=64), ref


@pytest.mark.parametrize("loss_name", ["mse", "logistic"])
def test_closed_form_linear_and_logistic_regression(loss_name):
    op, ref = _linear_case(loss_name)
    evals = torch.linalg.eigvalsh(ref)
    top, bottom = lanczos_both_ends(op, 3, 3, tol=1e-9)
    assert top.all_converged and bottom.all_converged
    np.testing.assert_allclose(top.eigenvalues, evals.flip(0)[:3].numpy(), rtol=1e-9)
    np.testing.assert_allclose(bottom.eigenvalues, evals[:3].numpy(), rtol=1e-9)
    assert bottom.eigenvalues[0] > 0  # convex: positive definite


def test_to_dict_is_json_ready(cases):
    import json

    res = lanczos_eigenpairs(cases["cnn"][0], 2, "smallest")
    d = json.loads(json.dumps(res.to_dict()))
    assert d["method"] == "lanczos" and d["which"] == "smallest" and len(d["eigenvalues"]) == 2
    assert d["semantics"]["bn_mode"] == "eval" and "eigenvectors" not in d
    assert d["info"]["residuals"].startswith("true products")
    back = Eigenpairs.from_dict(d)
    assert back.to_dict() == res.to_dict() and back.eigenvectors is None
    np.testing.assert_array_equal(back.eigenvalues, res.eigenvalues)
    assert back.converged.dtype == bool and "algebraically smallest" in back.definition


def test_bad_arguments_say_how_to_fix_them(cases):
    op = with_spectrum([1.0, 2.0, 3.0, 4.0])
    with pytest.raises(BasinscopeError, match="use lanczos_both_ends for both ends"):
        lanczos_eigenpairs(op, 1, "both_ends")
    with pytest.raises(BasinscopeError, match=r"unknown which='magnitude'"):
        lanczos_eigenpairs(op, 1, "magnitude")
    with pytest.raises(BasinscopeError, match=r"asked for 5 eigenpairs of an operator of dim"):
        lanczos_eigenpairs(op, 5)
    with pytest.raises(BasinscopeError, match=r"max_iter=2 is smaller than the 3 eigenpairs"):
        lanczos_eigenpairs(op, 3, max_iter=2)
    with pytest.raises(BasinscopeError, match=r"v0 must be a vector of length 4 or an \(n, m\)"):
        lanczos_eigenpairs(op, 1, v0=torch.ones(3))
    with pytest.raises(BasinscopeError, match="v0 must be finite and nonzero"):
        lanczos_eigenpairs(op, 1, v0=torch.zeros(4))
    with pytest.raises(BasinscopeError, match="tol must be a positive number"):
        lanczos_eigenpairs(op, 1, tol=0)
    with pytest.raises(BasinscopeError, match=r"k_bottom must be a positive integer, got 0"):
        lanczos_both_ends(op, 1, 0)
    with pytest.raises(BasinscopeError, match=r"expected a symmetric operator with \.matvec"):
        lanczos_eigenpairs(torch.eye(3), 1)


def test_progress_bar_on_stderr(capsys):
    lanczos_eigenpairs(with_spectrum(np.linspace(-1, 2, 30)), 1, progress=True)
    assert "lanczos" in capsys.readouterr().err


def test_zero_operator():
    res = lanczos_eigenpairs(MatrixOperator(torch.zeros(6, 6, dtype=torch.float64)), 2)
    assert res.eigenvalues.tolist() == [0.0, 0.0] and res.all_converged
