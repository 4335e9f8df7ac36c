"""Barriers: each definition on analytic curves, refinement, and barriers of real models."""

import json

import numpy as np
import pytest
import torch

from basinscope.analyses import interpolate
from basinscope.analyses.barrier import (
    BARRIER_DEFINITIONS,
    BarrierMatrix,
    BarrierResult,
    barrier,
    barrier_from_curve,
    barrier_matrix,
    barriers,
    eval_data,
    refine_worst,
)
from basinscope.engine import BatchNormWarning
from basinscope.errors import BasinscopeError
from basinscope.models import mlp, resnet
from basinscope.training import TrainConfig, train
from helpers import reference_metrics

DEFINITIONS = tuple(BARRIER_DEFINITIONS)


def bump(a: float, b: float, h: float):
    """f(alpha) = 4 h alpha (1 - alpha) + (1 - alpha) a + alpha b: a bump of height h on a chord."""
    return lambda al: 4 * h * al * (1 - al) + (1 - al) * a + al * b


# -- definitions on analytic curves ---------------------------------------------------------
# (a, b, h): the linear barrier is h at alpha = 1/2; the curve's maximum is at
# alpha* = 1/2 + (b - a) / (8 h) with value (a + b) / 2 + h + (b - a)^2 / (16 h) while
# alpha* is in [0, 1], so mean - linear = (b - a)^2 / (16 h); alpha* = 0.5, 0.6, 0.4, 0.3 here (on the grid).
BUMPS = [(0.0, 0.0, 1.0), (0.2, 0.6, 0.5), (0.6, 0.2, 0.5), (1.0, 0.6, 0.25)]


@pytest.mark.parametrize(("a", "b", "h"), BUMPS)
def test_definitions_on_a_bump_above_a_chord(a, b, h):
    f = bump(a, b, h)
    alphas = np.linspace(0, 1, 11)
    vals = f(alphas)
    star = 0.5 + (b - a) / (8 * h)
    lin, lin_at = barrier_from_curve(alphas, vals, "linear")
    mean, mean_at = barrier_from_curve(alphas, vals, "mean")
    mid, mid_at = barrier_from_curve(alphas, vals, "midpoint")
    assert (lin, lin_at) == pytest.approx((h, 0.5), abs=1e-12)
    assert (mid, mid_at) == pytest.approx((h, 0.5), abs=1e-12)
    assert (mean, mean_at) == pytest.approx((h + (b - a) ** 2 / (16 * h), star), abs=1e-12)
    assert mean - lin == pytest.approx((b - a) ** 2 / (16 * h), abs=1e-12)


def test_mean_and_linear_agree_exactly_when_the_endpoints_are_equal():
    rng = np.random.default_rng(0)
    alphas = np.linspace(0, 1, 17)
    for _ in range(20):
        v = rng.normal(size=17)
        v[-1] = v[0]
        assert barrier_from_curve(alphas, v, "linear") == barrier_from_curve(alphas, v, "mean")


def test_mean_exceeds_linear_by_the_climb_when_the_peak_is_an_endpoint():
    # alpha* = 1/2 + 1 / 0.8 > 1: the curve rises all the way, its maximum is f(1) = b
    alphas = np.linspace(0, 1, 21)
    vals = bump(0.0, 1.0, 0.1)(alphas)
    assert barrier_from_curve(alphas, vals, "linear") == pytest.approx((0.1, 0.5))
    assert barrier_from_curve(alphas, vals, "mean") == pytest.approx((0.5, 1.0))


def test_monotone_convex_curve_has_zero_linear_barrier_but_positive_mean_barrier():
    alphas = np.linspace(0, 1, 25)
    vals = alphas**2  # below its chord everywhere: no barrier above the line
    assert barrier_from_curve(alphas, vals, "linear") == (0.0, 0.0)
    assert barrier_from_curve(alphas, vals, "mean") == (0.5, 1.0)  # f(1) - (0 + 1) / 2
    assert barrier_from_curve(alphas, vals, "midpoint")[0] == pytest.approx(0.25 - 0.5)


def test_midpoint_interpolates_linearly_when_one_half_is_off_the_grid():
    alphas = np.array([0.0, 1 / 3, 2 / 3, 1.0])
    vals = np.array([1.0, 4.0, 2.0, 3.0])
    value, at = barrier_from_curve(alphas[::-1], vals[::-1], "midpoint")  # any order
    assert (value, at) == pytest.approx(((4.0 + 2.0) / 2 - (1.0 + 3.0) / 2, 0.5))


def test_points_outside_the_unit_interval_are_ignored():
    alphas = np.linspace(-0.5, 1.5, 9)
    vals = np.where((alphas >= 0) & (alphas <= 1), 0.0, 10.0)
    assert barrier_from_curve(alphas, vals, "mean") == (0.0, 0.0)


def test_refinement_finds_an_off_grid_peak():
    a, b, h = 0.0, 0.3, 1.0
    f = bump(a, b, h)
    star, true_mean = 0.5 + (b - a) / (8 * h), h + (b - a) ** 2 / (16 * h)  # 0.5375, 1.005625
    grid = np.linspace(0, 1, 25)
    calls = []

    def counted(x):
        calls.append(len(x))
        return f(x)

    coarse, coarse_at = barrier_from_curve(grid, f(grid), "mean")
    al, vals = refine_worst(counted, grid, f(grid), definition="mean", refine_points=9, rounds=2)
    fine, fine_at = barrier_from_curve(al, vals, "mean")
    assert calls == [8, 8]  # 9 points between the neighbours, the middle one already known
    assert set(grid) <= set(al) and np.all(np.diff(al) > 0)
    assert true_mean - coarse > 5e-5  # the grid misses the peak...
    assert 0 <= true_mean - fine < 1e-5 and abs(fine_at - star) < 2e-3  # ...refinement finds it
    assert abs(coarse_at - star) > abs(fine_at - star)
    # midpoint has nothing to refine
    al2, _ = refine_worst(counted, grid, definition="midpoint")
    assert np.array_equal(al2, grid)


# -- errors -------------------------------------------------------------------------------------
def test_errors_name_the_problem_and_the_fix(trained_mlps, small):
    ma, mb = trained_mlps
    alphas = np.linspace(0, 1, 5)
    with pytest.raises(
        BasinscopeError, match=r"unknown barrier definition 'max'.*mean, linear, midpoint"
    ):
        barrier_from_curve(alphas, alphas, "max")
    with pytest.raises(BasinscopeError, match=r"alpha=0 and alpha=1.*missing \[1.0\]"):
        barrier_from_curve(np.linspace(0, 0.9, 5), alphas, "linear")
    with pytest.raises(BasinscopeError, match="unknown barrier definition 'frankle'"):
        barrier(ma, mb, small, definition="frankle")
    with pytest.raises(BasinscopeError, match=r"missing \[0.0\].*np.linspace\(0, 1, 25\)"):
        barrier(ma, mb, small, alphas=[0.2, 0.5, 1.0])
    with pytest.raises(BasinscopeError, match=r"alpha in \[0, 1\].*from -0.5 to 1.5"):
        barrier(ma, mb, small, alphas=np.linspace(-0.5, 1.5, 9))
    with pytest.raises(BasinscopeError, match="num_points must be an integer >= 3, got 2"):
        barrier(ma, mb, small, num_points=2)
    with pytest.raises(BasinscopeError, match=r"unknown barrier metric 'accuracy'.*loss, error"):
        barrier(ma, mb, small, metric="accuracy")
    with pytest.raises(BasinscopeError, match="refine_points must be an integer >= 1"):
        barrier(ma, mb, small, refine_points=0)
    with pytest.raises(BasinscopeError, match="ci_level must be in"):
        barrier(ma, mb, small, bootstrap=10, ci_level=95)
    with pytest.raises(BasinscopeError, match=r"no split 'val'.*'train', 'test'"):
        barrier(ma, mb, small, split="val")
    with pytest.raises(BasinscopeError, match="at least 2 models"):
        barrier_matrix([ma], small)


# -- real models --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small(digits_xy):
    x, y = digits_xy
    return {"train": (x[:1200], y[:1200]), "test": (x[1200:], y[1200:])}


def _trained_mlp(seed: int, x, y):
    torch.manual_seed(seed)
    return train(mlp(), (x, y), TrainConfig(steps=100, lr=0.05, data_seed=seed)).model


@pytest.fixture(scope="module")
def trained_mlps(small):
    x, y = small["train"]
    return _trained_mlp(0, x, y), _trained_mlp(1, x, y)


def test_barrier_between_independently_trained_mlps_is_positive_and_recorded(trained_mlps, small):
    ma, mb = trained_mlps
    r = barrier(ma, mb, small, split="test", strategy="loop")
    assert r.value > 0.01 and r.metric == "error" and r.definition == "linear"
    assert r.split == "test" and r.num_examples == 597 and r.bn_policy == "stored"
    assert r.refined and len(r.alphas) > r.num_points == 25 and np.all(np.diff(r.alphas) > 0)
    assert (r.f0, r.f1) == (r.values[0], r.values[-1])
    assert r.f_worst == r.values[np.flatnonzero(r.alphas == r.worst_alpha)[0]]
    assert r.value == pytest.approx(r.f_worst - (r.f0 + r.worst_alpha * (r.f1 - r.f0)))
    assert r.definition_formula == BARRIER_DEFINITIONS["linear"] and r.ci is None
    assert r.evaluation["strategy"] == "loop" and r.evaluation["points"] == len(r.alphas)
    # refinement only adds points: the maximum can only grow
    coarse = barrier(ma, mb, small, split="test", strategy="loop", refine=False)
    assert not coarse.refined and len(coarse.alphas) == 25
    assert set(coarse.alphas) <= set(r.alphas) and r.value >= coarse.value
    assert json.loads(json.dumps(r.to_dict()))["value"] == r.value


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_curve_is_the_engines_interpolation_curve(trained_mlps, small, strategy):
    ma, mb = trained_mlps
    r = barrier(ma, mb, small, metric="loss", num_points=5, refine=False, strategy=strategy)
    land = interpolate(ma, mb, small, alphas=r.alphas, strategy=strategy)
    np.testing.assert_allclose(r.values, land.dataset["train_loss"].values, rtol=1e-12)
    assert r.evaluation["strategy"] == strategy


@pytest.mark.parametrize("metric", ["loss", "error"])
def test_barrier_between_a_model_and_itself_is_exactly_zero(trained_mlps, small, metric):
    ma, _ = trained_mlps
    for definition in DEFINITIONS:
        r = barrier(ma, ma, small, metric=metric, definition=definition, num_points=6)
        assert r.value == 0.0, definition


def test_bootstrap_interval_contains_the_estimate_and_is_reproducible(trained_mlps, small):
    ma, mb = trained_mlps
    kw = dict(split="test", metric="loss", num_points=9, bootstrap=200)
    r = barrier(ma, mb, small, **kw, seed=3)
    assert r.bootstrap_samples == 200 and r.ci_level == 0.95 and r.bootstrap_se > 0
    assert r.ci[0] < r.value < r.ci[1]
    assert barrier(ma, mb, small, **kw, seed=3).ci == r.ci
    assert barrier(ma, mb, small, **kw, seed=4).ci != r.ci
    narrow = barrier(ma, mb, small, **kw, seed=3, ci_level=0.5).ci
    assert r.ci[0] < narrow[0] < narrow[1] < r.ci[1]


def test_barrier_matrix_is_symmetric_with_a_zero_diagonal(trained_mlps, small):
    ma, mb = trained_mlps
    mc = _trained_mlp(2, *small["train"])
    kw = dict(metric="loss", num_points=5, refine=False, strategy="loop")
    mat, results = barrier_matrix([ma, mb, mc], small, labels=["a", "b", "c"], **kw)
    assert mat.shape == (3, 3) and np.array_equal(mat, mat.T) and np.all(np.diag(mat) == 0)
    assert [r.models for r in results] == [("a", "b"), ("a", "c"), ("b", "c")]
    assert np.all(mat[np.triu_indices(3, 1)] > 0)
    assert mat[0, 2] == barrier(ma, mc, small, **kw).value
    both = barriers([ma, mb, mc], small, labels=["a", "b", "c"], **kw)
    assert isinstance(both, BarrierMatrix) and np.array_equal(both.matrix, mat)
    assert both.summary() == [
        *(r.summary()[0] for r in results),
        f"definition: {BARRIER_DEFINITIONS['linear']}",
    ]
    one = barriers([ma, mc], small, labels=["a", "c"], **kw)
    assert isinstance(one, BarrierResult) and one.value == results[1].value
    assert np.array_equal(one.values, results[1].values) and one.models == ("a", "c")
    line = one.summary()[0]
    assert line.startswith("a -- c: linear loss barrier ") and " at alpha " in line
    assert barriers([ma, mc], small, **kw).models == ("model_a", "model_b")


def test_eval_data_reads_the_training_split_for_recomputed_batchnorm():
    class Options:
        def load(self, split):
            return f"<{split}>"

    assert eval_data(Options(), "test", "stored") == ("<test>", None, {"test": "<test>"})
    ds, bn, read = eval_data(Options(), "test", "recompute")
    assert (ds, bn, read) == ("<test>", "<train>", {"test": "<test>", "train": "<train>"})
    assert eval_data(Options(), "train", "recompute")[1:] == ("<train>", {"train": "<train>"})


# -- BatchNorm ----------------------------------------------------------------------------------
def test_batchnorm_recompute_matches_a_float64_reference_and_differs_from_stored(digits_xy):
    x, y = digits_xy
    x, y = x[:256], y[:256]
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        cfg = TrainConfig(steps=20, lr=0.05, data_seed=seed)
        models.append(train(resnet(depth=8, width=4), (x, y), cfg).model)
    ma, mb = models
    kw = dict(metric="loss", num_points=3, refine=False, dtype="float64", batch_size=128)
    with pytest.warns(BatchNormWarning, match="barrier between two solutions"):
        stored = barrier(ma, mb, (x, y), **kw)
    recomputed = barrier(ma, mb, (x, y), bn_policy="recompute", bn_data=(x, y), bn_batches=2, **kw)
    assert recomputed.bn_policy == "recompute" and recomputed.bn_batches == 2
    assert stored.bn_policy == "stored" and stored.bn_batches == 0
    assert abs(recomputed.values[1] - stored.values[1]) > 1e-3
    # the recomputed midpoint against a brute-force per-point loop (first 2 batches of 128)
    sa, sb = ma.state_dict(), mb.state_dict()
    mid = {k: 0.5 * sa[k].double() + 0.5 * sb[k].double() for k in sa if sa[k].is_floating_point()}
    params = {k: mid[k] for k, _ in ma.named_parameters()}
    buffers = {k: mid.get(k, sa[k]) for k, _ in ma.named_buffers()}
    loss, _ = reference_metrics(ma, params, buffers, x, y, bn_recompute_data=[x[:128], x[128:]])
    # both sides are float64 from the float32 weights on (interpolate() casts the two ends
    # before subtracting), so they differ only in summation order: a few ulps, far below
    # 1e-12; forming theta_B - theta_A in float32 first missed by 1e-9 to 5e-9
    assert recomputed.values[1] == pytest.approx(loss, rel=1e-12)
