"""Mode-connecting curves: weights and points against brute-force references, the engine's
view of a curve, training that keeps the endpoints, and Garipov et al.'s finding that a
trained curve avoids the straight line's barrier between two independently trained MLPs."""

import copy
import dataclasses
import json
import math
from itertools import pairwise

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from basinscope.analyses.curves import (
    Curve,
    evaluate_curve,
    init_curve,
    load_curve,
    save_curve,
    train_curve,
)
from basinscope.engine import BatchNormWarning
from basinscope.errors import BasinscopeError
from basinscope.geometry import get_buffers, get_params
from basinscope.models import mlp
from basinscope.training import TrainConfig, train


def _tiny(seed, **kw):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 10)).to(**kw)


def _random_curve(kind, n_inner, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    shapes = {"w": (3, 4), "b": (3,)}
    pts = [
        {k: torch.randn(s, generator=g, dtype=dtype) for k, s in shapes.items()}
        for _ in range(n_inner + 2)
    ]
    return Curve(kind, (pts[0], pts[-1]), tuple(pts[1:-1]))


def _de_casteljau(points, t):
    """Brute-force Bezier point: repeated linear interpolation of the control points."""
    pts = [{k: v.double() for k, v in p.items()} for p in points]
    while len(pts) > 1:
        pts = [{k: (1 - t) * p[k] + t * q[k] for k in p} for p, q in pairwise(pts)]
    return pts[0]


@pytest.fixture(scope="module")
def two_mlps(digits_xy):
    """Two MLPs trained independently (different init and data order) on all of digits."""
    x, y = digits_xy
    out = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        cfg = TrainConfig(steps=150, batch_size=128, lr=0.1, momentum=0.9, data_seed=seed)
        out.append(train(mlp(hidden=(32,)), (x, y), cfg).model)
    return out


# -- weights and points ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "n_inner"),
    [("bezier", 0), ("bezier", 1), ("bezier", 4), ("polychain", 1), ("polychain", 3)],
)
def test_weights_sum_to_one_are_nonnegative_and_one_hot_at_the_ends(kind, n_inner):
    c = _random_curve(kind, n_inner)
    ts = np.linspace(0, 1, 37)
    w = c.weights(ts)
    assert w.shape == (37, n_inner + 2)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=0, atol=1e-14)
    assert (w >= 0).all()
    np.testing.assert_array_equal(c.weights(0.0), np.eye(n_inner + 2)[0])
    np.testing.assert_array_equal(c.weights(1.0), np.eye(n_inner + 2)[-1])
    for i, p in ((0, c.endpoints[0]), (1, c.endpoints[1])):
        for k in p:
            assert torch.equal(c.point(float(i))[k], p[k])


@pytest.mark.parametrize("order", [1, 2, 3, 5])
def test_bezier_points_match_de_casteljau(order):
    c = _random_curve("bezier", order - 1)
    for t in (0.0, 0.13, 0.5, 0.77, 1.0):
        ref = _de_casteljau(c.points, t)
        got = c.point(t)
        for k in ref:
            torch.testing.assert_close(got[k], ref[k], rtol=1e-12, atol=1e-12)


def test_bezier_of_order_one_is_the_straight_line():
    c = _random_curve("bezier", 0)
    a, b = c.endpoints
    for t in (0.0, 0.3, 0.5, 1.0):
        for k in a:
            torch.testing.assert_close(c.point(t)[k], (1 - t) * a[k] + t * b[k], rtol=0, atol=1e-14)


def test_polychain_passes_through_its_bends_and_is_linear_between():
    one = _random_curve("polychain", 1)
    for k, v in one.point(0.5).items():
        assert torch.equal(v, one.control_points[0][k])
    two = _random_curve("polychain", 2)
    a, p1, p2, b = two.points
    for k in a:
        assert torch.equal(two.point(2 / 3)[k], p2[k])
        # t = 0.5 is the middle of the second segment P1 -> P2
        torch.testing.assert_close(two.point(0.5)[k], (p1[k] + p2[k]) / 2, rtol=0, atol=1e-14)
        torch.testing.assert_close(two.point(0.9)[k], 0.3 * p2[k] + 0.7 * b[k], rtol=0, atol=1e-14)


@pytest.mark.parametrize(("kind", "n_inner"), [("bezier", 2), ("polychain", 2)])
def test_point_equals_the_engines_point_basis_evaluation(kind, n_inner):
    c = _random_curve(kind, n_inner)
    ts = np.array([0.0, 0.21, 0.5, 0.9, 1.0])
    basis = c.as_point_basis()
    params, _ = basis.stacked(torch.as_tensor(c.coeffs(ts)), torch.float64, "cpu")
    for i, t in enumerate(ts):
        for k, v in c.point(t).items():
            torch.testing.assert_close(params[k][i], v, rtol=1e-12, atol=1e-12)


def test_length_of_straight_curves_is_the_distance_and_curved_ones_are_longer(two_mlps):
    a, b = two_mlps
    pa, pb = get_params(a), get_params(b)
    dist = math.sqrt(sum(float(((pb[k].double() - pa[k].double()) ** 2).sum()) for k in pa))
    assert init_curve(a, b, "bezier", order=1).length(num=51) == pytest.approx(dist, rel=1e-12)
    for kind, kw in (("bezier", {"order": 3}), ("polychain", {"bends": 2})):
        # linear init: the segment itself, up to the float32 rounding of the interior points
        straight = init_curve(a, b, kind, **kw)
        assert straight.length(num=51) == pytest.approx(dist, rel=1e-6)
    bent = init_curve(a, b, "bezier", order=2, init="noise", noise_scale=0.5, seed=3)
    assert bent.length() > dist * 1.01
    # a polychain's length is exact: the sum of its segments' lengths
    pc = init_curve(a, b, "polychain", bends=2, init="noise", seed=1)
    segs = sum(
        math.sqrt(sum(float(((q[k].double() - p[k].double()) ** 2).sum()) for k in p))
        for p, q in pairwise(pc.points)
    )
    assert pc.length(num=7) == pytest.approx(segs, rel=1e-9)


def test_tensors_and_safetensors_round_trip(tmp_path):
    c = _random_curve("polychain", 2, dtype=torch.float32)
    again = Curve.from_tensors(c.to_tensors(), "polychain")
    loaded = load_curve(save_curve(tmp_path / "c.safetensors", c))
    for other in (again, loaded):
        assert other.kind == "polychain" and len(other.control_points) == 2
        for p, q in zip(c.points, other.points):
            assert all(torch.equal(p[k], q[k]) for k in p)
    with pytest.raises(BasinscopeError, match="not of the form 'p<index>/<parameter name>'"):
        Curve.from_tensors({"w": torch.zeros(1)}, "bezier")


# -- training ----------------------------------------------------------------------------
def test_training_moves_only_the_interior_points_and_is_deterministic(digits_xy):
    x, y = digits_xy
    x = x[:, :, :3, :2]  # 6 features for the tiny model
    a, b = _tiny(0), _tiny(1)
    seen = []
    kw = dict(steps=20, batch_size=64, lr=0.1, seed=5, data_seed=2)
    r = train_curve(a, b, (x, y), callbacks=[lambda s, info: seen.append((s, info["t"]))], **kw)
    pa, pb = get_params(a), get_params(b)
    for k in pa:
        assert torch.equal(r.curve.endpoints[0][k], pa[k])
        assert torch.equal(r.curve.endpoints[1][k], pb[k])
    mid = {k: (pa[k] + pb[k]) / 2 for k in pa}
    assert max(float((r.curve.control_points[0][k] - mid[k]).abs().max()) for k in pa) > 1e-3
    assert [t for _, t in seen] == r.history["t"] and len(set(r.history["t"])) == 20
    assert all(0 <= t < 1 for t in r.history["t"])
    again = train_curve(a, b, (x, y), **kw)
    other = train_curve(a, b, (x, y), **{**kw, "seed": 6})
    for k in pa:
        assert torch.equal(again.curve.control_points[0][k], r.curve.control_points[0][k])
    assert again.history == r.history and other.history["t"] != r.history["t"]
    assert r.config["kind"] == "bezier" and r.config["order"] == 2 and r.config["seed"] == 5


@pytest.mark.parametrize(("kind", "kw"), [("bezier", {"order": 2}), ("polychain", {"bends": 1})])
def test_trained_curve_avoids_the_straight_lines_barrier(kind, kw, two_mlps, digits_xy):
    """Garipov et al. 2018: a trained curve's maximum loss lies below the line's."""
    a, b = two_mlps
    x, y = digits_xy
    res = train_curve(a, b, (x, y), kind=kind, steps=300, batch_size=128, lr=0.05, **kw)
    ev = evaluate_curve(a, res.curve, (x, y), ts=np.linspace(0, 1, 11))
    curve_max, line_max = ev.max_curve["train_loss"], ev.max_line["train_loss"]
    print(f"{kind}: max train loss on the curve {curve_max:.4f}, on the line {line_max:.4f}")
    assert curve_max < 0.6 * line_max
    assert ev.max_curve["train_error"] < ev.max_line["train_error"]
    # the curve and the line share their endpoints
    np.testing.assert_allclose(
        ev.curve["train_loss"].values[[0, -1]], ev.line["train_loss"].values[[0, -1]], rtol=1e-5
    )
    assert ev.length > ev.distance and ev.settings["bn_policy"] == "stored"
    json.dumps(ev.to_dict())


def test_batchnorm_model_trains_and_evaluates_with_recomputed_statistics(digits_xy):
    x, y = digits_xy
    x, y = x[:512], y[:512]
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        cfg = TrainConfig(steps=30, batch_size=128, lr=0.1, data_seed=seed)
        models.append(train(mlp(hidden=(16,), batchnorm=True), (x, y), cfg).model)
    a, b = models
    before = get_buffers(a)
    res = train_curve(a, b, (x, y), steps=30, batch_size=64, lr=0.05)
    assert all(torch.equal(v, before[k]) for k, v in a.named_buffers())  # caller's model untouched
    ev = evaluate_curve(a, res.curve, (x, y), ts=[0.0, 0.5, 1.0], bn_batches=2, strategy="loop")
    assert ev.settings["bn_policy"] == "recompute" and ev.settings["bn_data"] == "split 'train'"
    assert np.isfinite(ev.curve["train_loss"].values).all()
    np.testing.assert_allclose(
        ev.curve["train_loss"].values[[0, -1]], ev.line["train_loss"].values[[0, -1]], rtol=1e-5
    )
    # the other options run: BatchNorm on a's stored statistics, Adam
    other = train_curve(a, b, (x, y), steps=3, bn_mode="eval", optimizer="adam", lr=1e-3)
    assert other.config["bn_mode"] == "eval" and other.config["momentum"] is None
    with pytest.warns(BatchNormWarning, match="bn_policy='stored'"):
        evaluate_curve(a, other.curve, (x, y), ts=[0.5], bn_policy="stored", include_line=False)


# -- errors ------------------------------------------------------------------------------
def test_errors_say_what_is_wrong(two_mlps, digits_xy):
    a, b = two_mlps
    x, y = digits_xy
    with pytest.raises(BasinscopeError, match=r"order must be an integer >= 1, got 0"):
        init_curve(a, b, "bezier", order=0)
    with pytest.raises(BasinscopeError, match=r"bends must be an integer >= 1, got 0"):
        init_curve(a, b, "polychain", bends=0)
    with pytest.raises(BasinscopeError, match="unknown curve kind 'spline'"):
        init_curve(a, b, "spline")
    with pytest.raises(BasinscopeError, match="unknown init 'random'"):
        init_curve(a, b, init="random")
    with pytest.raises(BasinscopeError, match=r"endpoints' parameters do not match: .*shape"):
        init_curve(a, mlp(hidden=(16,)))
    with pytest.raises(BasinscopeError, match="order 1 is the straight line"):
        train_curve(a, b, (x, y), order=1, steps=1)
    with pytest.raises(BasinscopeError, match="unknown t_sampling 'arc'"):
        train_curve(a, b, (x, y), t_sampling="arc", steps=1)
    c = init_curve(a, b)
    with pytest.raises(BasinscopeError, match=r"t must lie in \[0, 1\].*\[1.5\]"):
        c.weights([0.0, 1.5])
    with pytest.raises(BasinscopeError, match=r"t must lie in \[0, 1\].*\[-0.1\]"):
        evaluate_curve(a, c, (x, y), ts=[-0.1, 0.5])
    with pytest.raises(BasinscopeError, match="the model's parameters and the curve's points"):
        evaluate_curve(mlp(hidden=(16,)), c, (x, y))


# -- the trainer, the spec, the run folder -------------------------------------------------
def _plain_sgd_curve(a, b, x, y, *, steps, batch_size, lr, momentum, seed, data_seed):
    """Brute force: the interior point of a quadratic Bezier curve trained by a hand-written
    SGD loop over the same t draws and minibatches (what train_curve did before it went
    through the trainer)."""
    from torch.func import functional_call

    from basinscope.training._data import BatchStream
    from basinscope.training.trainer import optimizer_step

    pa, pb = get_params(a), get_params(b)
    mid = {k: (pa[k] + 0.5 * (pb[k] - pa[k])).clone().requires_grad_(True) for k in pa}
    net = copy.deepcopy(a).train()
    buffers = {k: v.clone() for k, v in net.named_buffers()}
    opt = torch.optim.SGD(list(mid.values()), lr=lr, momentum=momentum)
    stream = BatchStream(x, y, batch_size, data_seed)
    t_gen = torch.Generator().manual_seed((seed * 1_000_003 + 4_242) % (2**63 - 1))
    ts = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed((data_seed * 1_000_003 + 99_991) % (2**63 - 1))
        for step in range(1, steps + 1):
            t = float(torch.rand((), generator=t_gen, dtype=torch.float64))
            w = [(1 - t) ** 2, 2 * t * (1 - t), t**2]
            used = [(float(c), p) for c, p in zip(w, (pa, mid, pb)) if c != 0]
            phi = {k: sum(c * p[k] for c, p in used) for k in pa}
            xb, yb = next(stream)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(functional_call(net, (phi, buffers), (xb,)), yb).backward()
            optimizer_step(opt, step, lr, 0.0)
            ts.append(t)
    return {k: v.detach() for k, v in mid.items()}, ts


def test_training_through_the_trainer_equals_a_plain_sgd_loop(digits_xy):
    """train_curve is the trainer training a module whose parameters are the control
    points: same optimizer, t draws and minibatches as a plain loop, so the same bits."""
    x, y = digits_xy
    x, y = x[:300, :, :3, :2], y[:300]
    a, b = _tiny(0), _tiny(1)
    kw = dict(steps=12, batch_size=32, lr=0.1, momentum=0.9, seed=3, data_seed=4)
    res = train_curve(a, b, (x, y), **kw)
    mid, ts = _plain_sgd_curve(a, b, x, y, **kw)
    assert res.history["t"] == ts
    for k, v in mid.items():
        assert torch.equal(res.curve.control_points[0][k], v), k


def _round_trip(result, tmp_path):
    from basinscope.store import load, save

    again = load(save(result, tmp_path / "run"))
    assert type(again) is type(result)
    assert again.to_dict() == json.loads(json.dumps(result.to_dict()))
    return again


def test_spec_and_run_folder(digits_xy, tmp_path):
    from basinscope.analyses.curves import CurveEvalSpec, CurveSpec
    from basinscope.plotting import plot

    x, y = digits_xy
    x, y = x[:200, :, :3, :2], y[:200]
    a, b = _tiny(0), _tiny(1)
    spec = CurveSpec(kind="polychain", bends=2, steps=4, batch_size=32, seed=2)
    res = train_curve(a, b, (x, y), spec=spec)
    same = train_curve(a, b, (x, y), kind="polychain", bends=2, steps=4, batch_size=32, seed=2)
    assert res.spec == spec and res.history == same.history and res.kind == "curve"
    ev = evaluate_curve(a, res.curve, (x, y), spec=CurveEvalSpec(points=3, strategy="loop"))
    assert ev.spec.points == 3 and ev.curve["t"].values.tolist() == [0.0, 0.5, 1.0]
    assert ev.length_ratio == ev.length / ev.distance
    full = dataclasses.replace(res, metrics=ev)
    again = _round_trip(full, tmp_path)
    for p, q in zip(full.curve.points, again.curve.points):
        assert all(torch.equal(p[k], q[k]) for k in p)
    assert again.metrics.curve.identical(ev.curve)
    for r in (full, res, ev):
        fig, ax = plot(r)
        assert ax in fig.axes
    with pytest.raises(BasinscopeError, match="order must be at least 2 for a Bezier curve"):
        CurveSpec(order=1)
    with pytest.raises(BasinscopeError, match=r"order must be <= 64 \(each control point"):
        CurveSpec(order=65)
