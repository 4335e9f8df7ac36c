"""Hutchinson and Hutch++ against exact traces (dense float64 Hessians, explicit matrices)."""

import json

import numpy as np
import pytest
import torch

from basinscope.curvature.operators import HessianOperator
from basinscope.curvature.trace import TraceEstimate, hutch_plus_plus_trace, hutchinson_trace
from basinscope.errors import BasinscopeError
from curvature_cases import MatrixOperator, dense_hessian, spectrum_matrix, tiny_models


@pytest.fixture(scope="module")
def hessian_case(digits_xy):
    x, y = digits_xy[0][:90], digits_xy[1][:90]
    model = tiny_models()["mlp"]
    op = HessianOperator(model, (x, y), method="forward-over-reverse")
    return op, float(dense_hessian(model, x, y).trace())


@pytest.fixture(scope="module")
def spread():
    """n=120, eigenvalues evenly in [-3, 5]: Hutchinson needs ~40 probes for rtol=0.1."""
    eigs = np.linspace(-3.0, 5.0, 120)
    return spectrum_matrix(eigs, seed=1), float(eigs.sum())


@pytest.fixture(scope="module")
def decaying():
    """PSD, n=200, trace dominated by ten large eigenvalues (Hutch++'s favourable case)."""
    eigs = np.concatenate([100.0 * 0.7 ** np.arange(10), 0.05 * np.ones(190)])
    return spectrum_matrix(eigs, seed=3), float(eigs.sum())


@pytest.mark.parametrize("estimator", [hutchinson_trace, hutch_plus_plus_trace])
def test_converges_to_exact_hessian_trace(estimator, hessian_case):
    op, exact = hessian_case
    # Hutchinson's per-probe std is ~0.9 tr(H) here: rtol=0.1 takes ~300 probes
    rtol = 0.1 if estimator is hutchinson_trace else 0.05
    est = estimator(op, rtol=rtol, batch=32, seed=0)
    assert est.converged
    assert est.ci_halfwidth <= rtol * abs(est.estimate)
    assert abs(est.estimate - exact) <= 4 * est.std_error
    assert est.semantics == op.semantics and est.semantics["operator"] == "hessian"
    assert est.num_samples >= 10


@pytest.mark.parametrize("estimator", [hutchinson_trace, hutch_plus_plus_trace])
def test_confidence_interval_covers_the_truth(estimator, decaying):
    a, exact = decaying
    covered = []
    for seed in range(20):
        est = estimator(MatrixOperator(a), rtol=0.05, batch=64, seed=seed)
        assert est.converged and est.ci_halfwidth <= 0.05 * abs(est.estimate)
        covered.append(abs(est.estimate - exact) <= est.ci_halfwidth)
    assert np.mean(covered) >= 0.8  # nominal 95%, fixed seeds


@pytest.mark.parametrize("estimator", [hutchinson_trace, hutch_plus_plus_trace])
def test_tighter_rtol_gives_smaller_error(estimator, spread):
    a, exact = spread
    budget = (
        {"max_samples": 2000, "batch": 32}
        if estimator is hutchinson_trace
        else {"max_matvecs": 6000, "batch": 32}
    )

    def mean_error(rtol):
        runs = [estimator(MatrixOperator(a), rtol=rtol, seed=s, **budget) for s in range(8)]
        assert all(r.converged for r in runs)
        return np.mean([abs(r.estimate - exact) for r in runs])

    loose, tight = mean_error(0.2), mean_error(0.02)
    assert tight < loose / 2
    assert tight < 0.02 * exact


def test_hutch_plus_plus_beats_hutchinson_at_equal_matvecs(decaying):
    a, exact = decaying
    errs_h, errs_pp = [], []
    for seed in range(20):
        h = hutchinson_trace(MatrixOperator(a), min_samples=60, max_samples=60, seed=seed)
        pp = hutch_plus_plus_trace(MatrixOperator(a), num_matvecs=60, seed=seed)
        assert h.num_matvecs == 60 and pp.num_matvecs == 60
        errs_h.append(h.estimate - exact)
        errs_pp.append(pp.estimate - exact)
        assert pp.std_error < h.std_error
    assert np.mean(np.square(errs_pp)) < 0.05 * np.mean(np.square(errs_h))


def test_hutch_plus_plus_is_exact_when_the_sketch_covers_the_range():
    eigs = np.zeros(80)
    eigs[:5] = [9.0, 4.0, 2.0, -1.0, 0.5]
    a = spectrum_matrix(eigs, seed=2)
    op = MatrixOperator(a)
    est = hutch_plus_plus_trace(op, num_matvecs=30, seed=0)
    assert est.estimate == pytest.approx(14.5, abs=1e-10)
    assert est.std_error < 1e-10 and est.converged
    # only the 5 independent directions of A S are multiplied by A again
    assert est.num_matvecs == 10 + 5 + 10 == op.num_matvecs


def test_hutchinson_is_exact_on_a_diagonal_with_rademacher_probes():
    a = torch.diag(torch.arange(1.0, 51.0, dtype=torch.float64))
    est = hutchinson_trace(MatrixOperator(a), rtol=0.0, seed=4)
    assert est.estimate == pytest.approx(1275.0, rel=1e-14)
    assert est.converged and est.num_samples == 16  # min_samples rounded up to the batch


def test_unconverged_runs_stop_at_the_budget(hessian_case):
    op, exact = hessian_case
    before = op.num_matvecs
    h = hutchinson_trace(op, rtol=1e-4, max_samples=40, batch=16, seed=0)
    assert not h.converged and h.num_samples == h.num_matvecs == 40
    assert op.num_matvecs - before == 40
    assert h.ci_halfwidth > 1e-4 * abs(h.estimate)
    pp = hutch_plus_plus_trace(op, rtol=1e-4, max_matvecs=100, seed=0)
    assert not pp.converged and pp.num_matvecs <= 100
    assert abs(pp.estimate - exact) <= 4 * pp.std_error


def test_adaptive_hutch_plus_plus_doubles_its_budget(spread):
    a, _ = spread
    coarse = hutch_plus_plus_trace(MatrixOperator(a), rtol=0.1, seed=0)
    fine = hutch_plus_plus_trace(MatrixOperator(a), rtol=0.01, seed=0)
    assert coarse.converged and fine.converged
    assert fine.num_samples > coarse.num_samples and fine.num_samples % 10 == 0
    assert fine.std_error < coarse.std_error


def test_gaussian_probes_and_atol(spread):
    a, exact = spread
    est = hutchinson_trace(MatrixOperator(a), rtol=0.0, atol=4.0, distribution="gaussian")
    assert est.converged and est.ci_halfwidth <= 4.0 and est.distribution == "gaussian"
    assert abs(est.estimate - exact) <= 4 * est.std_error


@pytest.mark.parametrize("estimator", [hutchinson_trace, hutch_plus_plus_trace])
def test_seeded_reproducibility_and_json(estimator, hessian_case):
    op, _ = hessian_case
    a = estimator(op, rtol=0.2, batch=32, seed=7)
    b = estimator(op, rtol=0.2, batch=32, seed=7)
    c = estimator(op, rtol=0.2, batch=32, seed=8)
    assert a == b and a.estimate != c.estimate
    d = json.loads(json.dumps(a.to_dict()))
    assert TraceEstimate.from_dict(d) == a and d["kind"] == "trace_estimate"


def test_bad_options_are_reported():
    op = MatrixOperator(torch.eye(4, dtype=torch.float64))
    with pytest.raises(BasinscopeError, match="unknown probe distribution 'normal'"):
        hutchinson_trace(op, distribution="normal")
    with pytest.raises(BasinscopeError, match="confidence must lie strictly between 0 and 1"):
        hutch_plus_plus_trace(op, confidence=95)
    with pytest.raises(BasinscopeError, match="rtol and atol must be non-negative"):
        hutchinson_trace(op, rtol=-0.1)
    with pytest.raises(BasinscopeError, match="min_samples must be at least 2"):
        hutchinson_trace(op, min_samples=1)
    with pytest.raises(BasinscopeError, match=r"max_samples \(5\) is smaller than min_samples"):
        hutchinson_trace(op, max_samples=5)
    with pytest.raises(BasinscopeError, match="batch must be a positive number"):
        hutchinson_trace(op, batch=0)
    with pytest.raises(BasinscopeError, match="num_matvecs must be at least 6"):
        hutch_plus_plus_trace(op, num_matvecs=3)
    with pytest.raises(BasinscopeError, match=r"max_matvecs \(20\) is below the first round"):
        hutch_plus_plus_trace(op, max_matvecs=20)
