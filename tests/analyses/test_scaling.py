"""Power-law fits (exact recovery, convergence as the noise vanishes, robustness to an
outlier, bootstrap intervals) and the memory split against a brute-force enumeration."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import xarray as xr

import basinscope as bs
from basinscope.analyses.scaling import PowerLawFit, fit_power_law, memory_split
from basinscope.errors import BasinscopeError

X = np.array([1, 2, 4, 8, 16, 32, 64], dtype=float)


@pytest.mark.parametrize("a,b,c", [(0.7, 1.5, 0.3), (1.3, 0.8, 1.1), (0.5, -0.6, 0.9)])
def test_noise_free_laws_are_recovered_exactly(a, b, c):
    y = c + b * X ** (-a)
    for loss in ("soft_l1", "linear"):
        f = fit_power_law(X, y, bootstrap=0, loss=loss)
        assert (f.a, f.b, f.c) == pytest.approx((a, b, c), rel=1e-7, abs=1e-9)
        np.testing.assert_allclose(f.predict(X), y, rtol=1e-9)


def test_estimates_converge_as_the_noise_vanishes():
    rng = np.random.default_rng(0)
    e = rng.normal(size=len(X))
    errs = []
    for sigma in (1e-2, 1e-3, 1e-4):
        f = fit_power_law(X, 0.3 + 1.5 * X**-0.7 + sigma * e, bootstrap=0)
        errs.append(abs(f.a - 0.7) + abs(f.b - 1.5) + abs(f.c - 0.3))
    assert errs[0] > 5 * errs[1] > 25 * errs[2]


def test_the_robust_loss_resists_an_outlier():
    y = 0.3 + 1.5 * X**-0.7 + np.random.default_rng(1).normal(size=len(X)) * 1e-3
    y[3] += 0.5
    robust = fit_power_law(X, y, bootstrap=0)
    plain = fit_power_law(X, y, bootstrap=0, loss="linear")
    assert abs(robust.a - 0.7) < abs(plain.a - 0.7) / 3
    assert abs(robust.c - 0.3) < 0.05


def test_bootstrap_intervals_cover_the_truth_and_widen_with_noise():
    rng = np.random.default_rng(2)
    truth = 0.3 + 1.5 * X**-0.7
    widths = []
    for sigma in (0.003, 0.03):
        samples = truth[:, None] + sigma * rng.normal(size=(len(X), 8))
        f = fit_power_law(X, samples.mean(1), y_samples=samples, bootstrap=200, seed=0)
        assert f.resample == "samples" and f.failed_bootstraps == 0
        lo, hi = f.ci["c"]
        widths.append(hi - lo)
        assert lo <= f.c <= hi
    assert widths[1] > 3 * widths[0]
    pairs = fit_power_law(X, truth + 0.003 * rng.normal(size=len(X)), bootstrap=200)
    assert pairs.resample == "pairs" and pairs.ci["a"][0] <= 0.7 <= pairs.ci["a"][1]
    assert "95% bootstrap intervals" in pairs.summary()[0]


def laws_table(widths=(4, 8, 16), ns=(1, 2, 3, 4, 6, 8)):
    laws = {4: (0.5, 1.0, 1.2), 8: (0.6, 0.8, 0.9), 16: (0.8, 0.5, 0.75)}
    values = np.array([[laws[w][2] + laws[w][1] * n ** -laws[w][0] for n in ns] for w in widths])
    return xr.DataArray(values, dims=("width", "n"), coords={"width": list(widths), "n": list(ns)})


def test_memory_split_equals_a_brute_force_enumeration():
    nll = laws_table()
    params = {4: 100, 8: 300, 16: 1000}
    budgets = [300, 600, 1000, 2400, 4000, 8000]
    split = memory_split(nll, params, budgets)
    for b in budgets:
        feasible = [
            (float(nll.sel(width=w, n=n)), w, n)
            for w, n in itertools.product(nll.width.values, nll.n.values)
            if n * params[int(w)] <= b
        ]
        v, w, n = min(feasible)
        row = split.table.sel(budget=b)
        assert (row.measured_width.item(), int(row.measured_n), float(row.measured)) == (w, n, v)
        # exact laws: the prediction is the measured best
        assert bool(row.agree) and float(row.predicted) == pytest.approx(v, rel=1e-7)
    # the extrapolation may use any n the budget allows, so it is never worse
    assert (split.table.extrapolated <= split.table.measured + 1e-9).all()
    assert split.envelope is not None and split.envelope.b > 0
    assert split.laws["16"].a == pytest.approx(0.8, rel=1e-6)
    assert len(split.summary()) == 1 + len(budgets) + 1


def test_results_save_and_load(tmp_path):
    split = memory_split(laws_table(), {4: 100, 8: 300, 16: 1000}, [300, 1000, 4000, 8000])
    bs.save(split, tmp_path / "m")
    back = bs.load(tmp_path / "m")
    assert back.to_dict() == split.to_dict()
    assert isinstance(back.laws["4"], PowerLawFit)


def test_bad_input_is_refused():
    with pytest.raises(BasinscopeError, match="at least 3 distinct x, got 2"):
        fit_power_law([1, 2, 2], [1, 2, 3])
    with pytest.raises(BasinscopeError, match="x must be positive"):
        fit_power_law([0, 1, 2, 3], [1, 2, 3, 4])
    with pytest.raises(BasinscopeError, match="needs at least 4 points, got 3"):
        fit_power_law([1, 2, 3], [3, 2, 1])
    with pytest.raises(BasinscopeError, match=r"y_samples must have shape \(len\(x\), R\)"):
        fit_power_law([1, 2, 3], [3, 2, 1], y_samples=np.zeros((2, 4)))
    with pytest.raises(BasinscopeError, match="unknown loss 'l2'"):
        fit_power_law(X, X, loss="l2")
    with pytest.raises(BasinscopeError, match="fits no measured ensemble"):
        memory_split(laws_table(), {4: 100, 8: 300, 16: 1000}, [50])
    with pytest.raises(BasinscopeError, match="params lacks the widths"):
        memory_split(laws_table(), {4: 100}, [1000])


def test_the_band_holds_the_draws_curves():
    rng = np.random.default_rng(3)
    y = 0.3 + 1.5 * X**-0.7 + 0.01 * rng.normal(size=len(X))
    f = fit_power_law(X, y, bootstrap=100)
    assert f.draws.shape == (100 - f.failed_bootstraps, 3)
    lo, hi = f.band(X)
    assert (lo <= f.predict(X) + 1e-9).all() and (hi >= f.predict(X) - 1e-9).all()
    assert (hi - lo).max() > 0
    assert np.isnan(fit_power_law(X, y, bootstrap=0).band(X)[0]).all()


def test_joint_columns_keep_the_points_correlations():
    rng = np.random.default_rng(4)
    truth = 0.3 + 1.5 * X**-0.7
    # every column shifted as a whole: a correlated replicate of all the points
    samples = truth[:, None] + 0.05 * rng.normal(size=(1, 30))
    f = fit_power_law(X, samples.mean(1), y_samples=samples, joint=True, bootstrap=60)
    g = fit_power_law(X, samples.mean(1), y_samples=samples, bootstrap=60)
    assert f.resample == "columns" and g.resample == "samples"
    # a common shift moves c only: the exponent's interval stays tight when kept joint
    assert f.ci["a"][1] - f.ci["a"][0] < 1e-6 < f.ci["c"][1] - f.ci["c"][0]
    assert f.a == pytest.approx(0.7, rel=1e-6)


def test_an_exact_three_point_fit_is_quick_and_exact():
    x = np.array([1.0, 2.0, 4.0])
    f = fit_power_law(
        x,
        0.3 + 1.5 * x**-0.7,
        y_samples=np.tile((0.3 + 1.5 * x**-0.7)[:, None], (1, 3)) + np.array([[0, 1e-3, -1e-3]]),
        bootstrap=20,
    )
    assert f.a == pytest.approx(0.7, rel=1e-6) and f.f_scale > 1e-6
