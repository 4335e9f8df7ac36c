"""(ε, δ)-basin test (Neyshabur et al. 2020, Definition 3.1): explicit-loss toys with exact
expectations, exit points against a brute-force line search, a one-point hull, BatchNorm,
real MLPs, seeds and errors."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from scipy import integrate, optimize
from torch import nn

from basinscope.analyses.basin import BasinResult, ConditionEstimate, basin_test, exit_weights
from basinscope.engine import BatchNormWarning, Metric
from basinscope.errors import BasinscopeError
from basinscope.models import mlp
from basinscope.training import TrainConfig, train


class Bowl(nn.Module):
    """Every example's output is :math:`\\|\\theta - c\\|^2`: the loss is explicit."""

    def __init__(self, theta, center):
        super().__init__()
        self.theta = nn.Parameter(torch.as_tensor(theta, dtype=torch.float64).clone())
        self.register_buffer("center", torch.as_tensor(center, dtype=torch.float64).clone())

    def forward(self, x):
        d = self.theta - self.center
        return (d @ d) * x.new_ones(x.shape[0])


OUTPUT = Metric("loss", lambda out, y: out, per_example=True, definition="the output")
TOY_DATA = (torch.zeros(4, 1, dtype=torch.float64), torch.zeros(4, dtype=torch.long))
TOY = dict(metric=OUTPUT, dtype="float64")
SEGMENT = np.array([[1.0, 0.0, 0.0, 0.0], [-1.0, 0.5, 0.0, 0.0]])  # bowl centred at 0
TRIANGLE = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0], [0.5, 0.0, 1.5, 0.5]])
CENTER = np.array([0.3, 0.2, 0.4, 0.1])
HALF_NORMAL_MEAN = math.sqrt(2 / math.pi)  # E|nu| / delta


def _bowls(vertices, center=np.zeros(4)):
    return [Bowl(v, center) for v in vertices]


def _abs_integral(coef, a, b):
    """Exact :math:`\\int_a^b |q(t)| dt` for a polynomial ``q``: split at its real roots."""
    q = np.polynomial.Polynomial(coef)
    big_q = q.integ()
    roots = sorted(r.real for r in q.roots() if abs(r.imag) < 1e-12 and a < r.real < b)
    pts = [a, *roots, b]
    return sum(abs(big_q(y) - big_q(x)) for x, y in itertools.pairwise(pts))


def _segment_truth(t0, t1, delta):
    """Closed forms on the segment for the bowl :math:`\\ell(w) = \\|w\\|^2`.

    :math:`w(t) = t_0 + t e`, :math:`t \\sim U[0, 1]`: :math:`\\mu = \\|t_0\\|^2 + t_0 \\cdot e
    + \\|e\\|^2/3`, :math:`\\mathbb{E}|\\ell - \\mu| = \\int_0^1 |\\ell(t) - \\mu| dt` (exact).
    The ray leaves the segment at either end with probability 1/2, so condition 2 is
    :math:`(\\ell_0 + \\ell_1)/2 + \\delta^2 - \\mu` and condition 3, stepping along
    :math:`\\pm e/\\|e\\|`, is :math:`(\\ell_0 + \\ell_1)/2 + \\delta\\sqrt{2/\\pi}\\|e\\| +
    \\delta^2 - \\mu`.
    """
    e = t1 - t0
    mu = t0 @ t0 + t0 @ e + e @ e / 3
    d = _abs_integral([t0 @ t0 - mu, 2 * t0 @ e, e @ e], 0.0, 1.0)
    ends = (t0 @ t0 + t1 @ t1) / 2
    e2 = ends + delta**2 - mu
    e3 = ends + delta * HALF_NORMAL_MEAN * np.linalg.norm(e) + delta**2 - mu
    return mu, d, e2, e3


def _triangle_truth(delta):
    """Triangle, bowl :math:`\\|w - c\\|^2`: :math:`\\mu` exact (Dirichlet moments),
    :math:`\\mathbb{E}|\\ell - \\mu|` by quadrature (inner integral exact), conditions 2 and 3
    integrated exactly over the noise given the exit point, then averaged over 400k pairs."""
    a = TRIANGLE - CENTER
    g = a @ a.T
    mu = (np.trace(g) + g.sum()) / 12  # E b_i b_j = (1 + [i = j]) / 12

    def inner(s):
        p, d = np.array([1 - s, s, 0.0]), np.array([-1.0, 0.0, 1.0])
        return _abs_integral([p @ g @ p - mu, 2 * p @ g @ d, d @ g @ d], 0.0, 1 - s)

    mad = 2 * integrate.quad(inner, 0, 1, epsabs=1e-12, limit=200)[0]
    rng = np.random.default_rng(123)
    b1, b2 = rng.dirichlet(np.ones(3), 400_000), rng.dirichlet(np.ones(3), 400_000)
    f = exit_weights(b1, b2)
    wf, w1 = f @ TRIANGLE, b1 @ TRIANGLE
    u = (wf - w1) / np.linalg.norm(wf - w1, axis=1, keepdims=True)
    lf = ((wf - CENTER) ** 2).sum(1)
    e2 = lf.mean() + delta**2 - mu
    e3 = (lf + 2 * delta * HALF_NORMAL_MEAN * ((wf - CENTER) * u).sum(1)).mean() + delta**2 - mu
    return mu, mad, e2, e3


# -- exit points --------------------------------------------------------------------------
def _in_hull(point, vertices):
    """Is ``point`` in conv(vertices)? (LP feasibility: point = λᵀV, λ ≥ 0, Σλ = 1)."""
    m = len(vertices)
    res = optimize.linprog(
        np.zeros(m),
        A_eq=np.vstack([vertices.T, np.ones(m)]),
        b_eq=np.append(point, 1.0),
        bounds=[(0, None)] * m,
        method="highs",
    )
    return res.status == 0


def _line_search(inside, lo=0.0, hi=1e3, iters=60):
    """Largest α with ``inside(α)``, by bisection (the set is an interval [0, α̃])."""
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if inside(mid) else (lo, mid)
    return lo


def test_exit_point_matches_brute_force_line_search_on_a_triangle():
    rng = np.random.default_rng(0)
    b1, b2 = rng.dirichlet(np.ones(3), 40), rng.dirichlet(np.ones(3), 40)
    f = exit_weights(b1, b2)
    assert f.shape == (40, 3)
    np.testing.assert_allclose(f.sum(1), 1.0)
    assert np.all(f >= 0) and np.all(f.min(1) == 0.0)  # on the boundary
    for k in range(40):
        d = b2[k] - b1[k]
        alpha = _line_search(lambda a, k=k, d=d: bool(np.all(b1[k] + a * d >= -1e-13)))
        assert alpha >= 1.0  # w2 is in S: the exit is at or beyond it
        np.testing.assert_allclose(f[k], b1[k] + alpha * d, atol=1e-9)
        np.testing.assert_allclose(exit_weights(b1[k], b2[k]), f[k])  # one point
    # in parameter space: the ray from w1 through w2 leaves conv(TRIANGLE) at θ(f)
    for k in range(4):
        w1, w2 = b1[k] @ TRIANGLE, b2[k] @ TRIANGLE
        alpha = _line_search(
            lambda a, w1=w1, w2=w2: _in_hull(w1 + a * (w2 - w1), TRIANGLE), hi=20.0, iters=30
        )
        np.testing.assert_allclose(f[k] @ TRIANGLE, w1 + alpha * (w2 - w1), atol=1e-6)


def test_exit_point_on_a_segment_and_degenerate_rays():
    f = exit_weights([[0.7, 0.3], [0.2, 0.8]], [[0.6, 0.4], [0.5, 0.5]])
    np.testing.assert_array_equal(f, [[0.0, 1.0], [1.0, 0.0]])  # the end the ray points to
    np.testing.assert_array_equal(exit_weights([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]), [0.2, 0.3, 0.5])
    np.testing.assert_array_equal(exit_weights([1.0], [1.0]), [1.0])
    with pytest.raises(BasinscopeError, match="barycentric weights"):
        exit_weights([0.5, 0.6], [0.5, 0.5])
    with pytest.raises(BasinscopeError, match="of one shape"):
        exit_weights([0.5, 0.5], [1.0, 0.0, 0.0])


# -- toys with explicit losses ------------------------------------------------------------
def test_segment_bowl_matches_the_closed_forms():
    delta = 0.5
    mu, mad, e2, e3 = _segment_truth(SEGMENT[0], SEGMENT[1], delta)
    res = basin_test(_bowls(SEGMENT), TOY_DATA, delta=delta, samples=64, pairs=64, **TOY)
    assert isinstance(res, BasinResult) and isinstance(res.condition1, ConditionEstimate)
    assert res.affine_dimension == 1 and res.num_params == 4
    lo, hi = res.mean_loss_ci
    assert lo <= mu <= hi
    for truth, cond in zip((mad, e2, e3), res.conditions):
        assert cond.ci[0] <= truth <= cond.ci[1], (cond.condition, truth, cond.ci)
    # the samples are what they claim to be
    w = np.array(res.inside_weights) @ SEGMENT
    np.testing.assert_allclose(res.inside_losses, (w**2).sum(1), rtol=1e-12)
    assert res.vertex_losses == pytest.approx([1.0, 1.25])
    np.testing.assert_allclose(
        res.exit_distances,
        np.abs(np.array(res.exit_points)[:, 1] - np.array(res.pair_start)[:, 1]) * math.sqrt(4.25),
    )
    # epsilon=None: the smallest epsilon for (1); basin iff (2) and (3) hold there
    assert res.epsilon_estimated and res.epsilon == res.condition1.estimate
    assert res.condition1.holds and res.condition1.ci_supports is None
    assert res.condition2.threshold == pytest.approx(2 * res.epsilon)
    assert res.holds == (min(res.condition2.estimate, res.condition3.estimate) >= 2 * res.epsilon)
    assert res.epsilon_range == pytest.approx(
        (res.epsilon, min(res.condition2.estimate, res.condition3.estimate) / 2)
    )
    # true values: D = 0.277, E2 = 0.958, E3 = 1.781: a basin for eps in [0.277, 0.479]
    assert res.holds and res.ci_supports
    json.dumps(res.to_dict())


def test_segment_bowl_verdicts_for_a_given_epsilon():
    kw = dict(delta=0.5, samples=64, pairs=64, **TOY)
    inside = basin_test(_bowls(SEGMENT), TOY_DATA, epsilon=0.4, **kw)
    c1, c2, c3 = inside.conditions
    assert c1.holds and c1.ci_supports and c1.ci[1] <= 0.4 and c1.margin == 0.4 - c1.estimate
    assert c2.holds and c2.threshold == 0.8 and c2.margin == pytest.approx(c2.estimate - 0.8)
    assert not c2.ci_supports  # true margin 0.958 - 0.8 is ~2 standard errors (seed 0: inside)
    assert c3.holds and c3.ci_supports
    assert inside.holds and not inside.ci_supports and not inside.epsilon_estimated
    # too strict for (1), too lax for (2): fails, and the intervals say so
    strict = basin_test(_bowls(SEGMENT), TOY_DATA, epsilon=0.1, **kw)
    assert not strict.condition1.holds and strict.condition1.ci_supports
    assert strict.condition2.holds and strict.condition3.holds
    assert not strict.holds and strict.ci_supports
    lax = basin_test(_bowls(SEGMENT), TOY_DATA, epsilon=2.0, **kw)
    assert lax.condition1.holds and not lax.condition2.holds and not lax.condition3.holds
    assert not lax.holds and lax.ci_supports


def test_intervals_cover_the_closed_forms():
    """Normal 95% intervals (delta-method for E|l - mu|) cover in ~95% of 60 seeds."""
    delta = 0.5
    _, mad, e2, e3 = _segment_truth(SEGMENT[0], SEGMENT[1], delta)
    hits = np.zeros(3)
    for seed in range(60):
        res = basin_test(
            _bowls(SEGMENT), TOY_DATA, delta=delta, samples=32, pairs=32, seed=seed, **TOY
        )
        hits += [c.ci[0] <= t <= c.ci[1] for t, c in zip((mad, e2, e3), res.conditions)]
    assert np.all(hits / 60 >= 0.85), hits


def test_triangle_bowl_matches_numerical_integrals():
    delta = 0.3
    mu, mad, e2, e3 = _triangle_truth(delta)
    res = basin_test(
        _bowls(TRIANGLE, CENTER),
        TOY_DATA,
        delta=delta,
        samples=128,
        pairs=96,
        seed=1,
        confidence=0.99,
        **TOY,
    )
    assert res.affine_dimension == 2
    assert res.mean_loss_ci[0] <= mu <= res.mean_loss_ci[1]
    for truth, cond in zip((mad, e2, e3), res.conditions):
        assert cond.ci[0] <= truth <= cond.ci[1], (cond.condition, truth, cond.ci)
    # every loss is the explicit one at the point the definition names
    w = np.array(res.inside_weights) @ TRIANGLE
    np.testing.assert_allclose(res.inside_losses, ((w - CENTER) ** 2).sum(1), rtol=1e-12)
    wf, w1 = np.array(res.exit_points) @ TRIANGLE, np.array(res.pair_start) @ TRIANGLE
    np.testing.assert_allclose(res.exit_distances, np.linalg.norm(wf - w1, axis=1), rtol=1e-10)
    kappa = (
        wf + np.array(res.step_lengths)[:, None] * (wf - w1) / np.array(res.exit_distances)[:, None]
    )
    np.testing.assert_allclose(res.step_losses, ((kappa - CENTER) ** 2).sum(1), rtol=1e-10)
    assert res.noise_norms and np.mean(np.square(res.noise_norms)) == pytest.approx(
        delta**2, rel=0.3
    )


def test_single_model_hull_is_a_point():
    """S = {w} at the bowl's minimum: (1) is exactly 0, l(w + nu) = ||nu||^2 and
    l(w + |nu'| u) = nu'^2, both with mean delta^2."""
    delta = 0.4
    one = _bowls(CENTER[None], CENTER)
    res = basin_test(one, TOY_DATA, delta=delta, epsilon=0.0, samples=8, pairs=48, **TOY)
    c1, c2, c3 = res.conditions
    assert c1.estimate == 0.0 and c1.std_error == 0.0 and c1.holds and c1.ci_supports
    assert set(res.inside_losses) == {0.0} and res.mean_loss == 0.0
    assert res.affine_dimension == 0 and set(res.exit_distances) == {0.0}
    np.testing.assert_allclose(res.noise_losses, np.square(res.noise_norms), rtol=1e-12)
    np.testing.assert_allclose(res.step_losses, np.square(res.step_lengths), rtol=1e-12)
    for c in (c2, c3):
        assert c.ci[0] <= delta**2 <= c.ci[1]
        assert c.holds and c.ci_supports  # a strict minimum: any noise raises the loss
    assert "unit sphere" in res.settings["degenerate_rays"]
    # epsilon=None: eps_hat = 0, a (0, delta)-basin
    est = basin_test(one, TOY_DATA, delta=delta, samples=8, pairs=48, **TOY)
    assert est.epsilon == 0.0 and est.holds and est.ci_supports
    # m identical solutions are the same point
    twice = basin_test(_bowls([CENTER, CENTER], CENTER), TOY_DATA, delta=delta, pairs=16, **TOY)
    assert twice.affine_dimension == 0 and twice.condition1.estimate == 0.0
    assert np.all(np.isfinite(twice.step_losses))


def test_affinely_dependent_solutions_warn():
    collinear = np.array([SEGMENT[0], SEGMENT[1], (SEGMENT[0] + SEGMENT[1]) / 2])
    with pytest.warns(UserWarning, match="affinely dependent"):
        res = basin_test(_bowls(collinear), TOY_DATA, delta=0.5, samples=8, pairs=8, **TOY)
    assert res.affine_dimension == 1


def test_reproducible_from_seed():
    kw = dict(delta=0.3, samples=16, pairs=24, **TOY)
    a = basin_test(_bowls(TRIANGLE, CENTER), TOY_DATA, seed=5, **kw)
    b = basin_test(_bowls(TRIANGLE, CENTER), TOY_DATA, seed=5, **kw)
    c = basin_test(_bowls(TRIANGLE, CENTER), TOY_DATA, seed=6, **kw)
    assert a.to_dict() == b.to_dict()
    assert a.inside_losses != c.inside_losses and a.noise_losses != c.noise_losses


def test_batchnorm_outside_points_use_exit_point_statistics(digits_xy):
    """Stored statistics outside S are the exit point's: extrapolating the running variance
    along the ray (here t = |nu| / ||f - w1|| is large) would make it negative."""
    x, y = digits_xy
    data = (x[:64], y[:64])
    torch.manual_seed(0)
    a = mlp(hidden=(8,), batchnorm=True)
    b = mlp(hidden=(8,), batchnorm=True)
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        b.fc1.weight.add_(1e-3)
        a.bn1.running_var.fill_(1.0)
        b.bn1.running_var.fill_(1e-3)
    with pytest.warns(BatchNormWarning):
        res = basin_test([a, b], data, delta=1.0, samples=8, pairs=16)
    assert max(np.array(res.step_lengths) / np.array(res.exit_distances)) > 10
    assert np.all(np.isfinite(res.step_losses)) and np.all(np.isfinite(res.noise_losses))
    rec = basin_test(
        [a, b], data, delta=1.0, samples=8, pairs=8, bn_policy="recompute", bn_data=data
    )
    assert np.all(np.isfinite(rec.step_losses))


# -- real models --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def solutions(digits_xy):
    """Two fine-tuned copies of one pre-trained MLP, and two MLPs from random inits."""
    x, y = digits_xy
    source, target = (x[:300], y[:300]), (x[300:600], y[300:600])
    torch.manual_seed(0)
    pre = train(mlp(hidden=(16,)), source, TrainConfig(steps=60, batch_size=32, lr=0.1)).model
    tune = [
        train(pre, target, TrainConfig(steps=30, batch_size=32, lr=0.05, data_seed=s)).model
        for s in (1, 2)
    ]
    scratch = []
    for s in (1, 2):
        torch.manual_seed(10 + s)
        cfg = TrainConfig(steps=90, batch_size=32, lr=0.1, data_seed=s)
        scratch.append(train(mlp(hidden=(16,)), target, cfg).model)
    return tune, scratch, target


def test_real_models_smoke(solutions):
    tune, scratch, data = solutions
    kw = dict(delta=1.0, samples=16, pairs=16)
    for name, models in (("fine-tuned", tune), ("scratch", scratch)):
        res = basin_test(models, data, **kw)
        assert res.num_params == 64 * 16 + 16 + 16 * 10 + 10 and res.affine_dimension == 1
        assert res.epsilon == res.condition1.estimate >= 0
        for c in res.conditions:
            assert math.isfinite(c.estimate) and c.ci[0] <= c.estimate <= c.ci[1]
        json.dumps(res.to_dict())
        print(
            f"{name}: mu={res.mean_loss:.4f} eps_hat={res.epsilon:.4f} "
            f"E2={res.condition2.estimate:.4f}±{res.condition2.std_error:.4f} "
            f"E3={res.condition3.estimate:.4f}±{res.condition3.std_error:.4f} "
            f"basin={res.holds} supported={res.ci_supports}"
        )
    again = basin_test(tune, data, **kw)
    assert again.to_dict() == basin_test(tune, data, **kw).to_dict()


# -- errors -------------------------------------------------------------------------------
def test_errors(solutions):
    tune, _, data = solutions
    bowls = _bowls(SEGMENT)
    for bad in (0, -1.0, math.nan):
        with pytest.raises(BasinscopeError, match="delta must be"):
            basin_test(bowls, TOY_DATA, delta=bad, **TOY)
    with pytest.raises(BasinscopeError, match=r"do not match: .*shape mismatches"):
        basin_test([tune[0], mlp(hidden=(8,))], data, delta=0.1)
    with pytest.raises(BasinscopeError, match=r"do not match: .*missing keys"):
        basin_test([bowls[0], tune[0]], data, delta=0.1)
    with pytest.raises(BasinscopeError, match="samples must be an integer >= 2"):
        basin_test(bowls, TOY_DATA, delta=0.1, samples=1, **TOY)
    with pytest.raises(BasinscopeError, match="pairs must be an integer >= 2"):
        basin_test(bowls, TOY_DATA, delta=0.1, pairs=1, **TOY)
    with pytest.raises(BasinscopeError, match="epsilon must be >= 0"):
        basin_test(bowls, TOY_DATA, delta=0.1, epsilon=-0.1, **TOY)
    with pytest.raises(BasinscopeError, match="strictly between 0 and 1"):
        basin_test(bowls, TOY_DATA, delta=0.1, confidence=1.0, **TOY)
    with pytest.raises(BasinscopeError, match="non-empty sequence of models"):
        basin_test([], TOY_DATA, delta=0.1)
    with pytest.raises(BasinscopeError, match="unknown dtype 'float99'"):
        basin_test(bowls, TOY_DATA, delta=0.1, metric=OUTPUT, dtype="float99")


def test_spec_and_run_folder(solutions, tmp_path):
    """A spec runs the test as its keywords do; the result (its conditions nested) is saved
    and loaded as the same typed object and drawn."""
    from basinscope.analyses.basin import BasinSpec
    from basinscope.plotting import plot
    from basinscope.store import load, save

    tune, _, data = solutions
    spec = BasinSpec(delta=1.0, samples=8, pairs=8, seed=3, metric="error")
    res = basin_test(tune, data, spec=spec, labels=("a", "b"))
    same = basin_test(tune, data, delta=1.0, samples=8, pairs=8, seed=3, metric="error")
    assert res.spec == spec and res.labels == ("a", "b") and same.labels == ("0", "1")
    lines = res.summary()
    assert lines[0].startswith(f"epsilon {res.epsilon:.4g} (estimated: the smallest for ")
    assert ", delta 1; mean error in the hull " in lines[0]
    assert lines[1:4] == [c.summary()[0] for c in res.conditions]
    assert lines[1].startswith("  (1) flat inside: estimate ") and " vs threshold " in lines[1]
    assert lines[4].startswith("(epsilon, delta)-basin: ")
    assert res.to_dict() == {**same.to_dict(), "labels": ["a", "b"]}
    again = load(save(res, tmp_path / "run"))
    assert isinstance(again.condition2, ConditionEstimate)
    assert again.to_dict() == json.loads(json.dumps(res.to_dict()))
    for r in (res, res.condition3):
        fig, ax = plot(r)
        assert ax in fig.axes
    custom = basin_test(_bowls(SEGMENT), TOY_DATA, delta=0.5, samples=4, pairs=4, **TOY)
    assert custom.spec is None  # a custom metric has no spec
    with pytest.raises(BasinscopeError, match="delta is required"):
        BasinSpec()
    with pytest.raises(BasinscopeError, match=r"delta must be a finite number > 0, got 0"):
        BasinSpec(delta=0.0)
