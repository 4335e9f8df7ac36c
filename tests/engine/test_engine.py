import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from basinscope.analyses import interpolate, random_line, random_surface
from basinscope.engine import (
    BatchNormWarning,
    EvalJob,
    Metric,
    PointBasis,
    as_batches,
    evaluate_points,
)
from basinscope.errors import BasinscopeError
from basinscope.geometry import get_buffers, get_params, random_directions
from helpers import reference_metrics


class Quadratic(nn.Module):
    """Output w - x, so the metric 0.5 * ||w - x||^2 has a closed-form mean over data."""

    def __init__(self, d=5):
        super().__init__()
        self.w = nn.Parameter(torch.linspace(-1, 1, d))

    def forward(self, x):
        return self.w - x


HALF_SQ = Metric("halfsq", lambda out, y: 0.5 * (out**2).sum(-1), per_example=True)


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_quadratic_surface_matches_closed_form(strategy):
    torch.manual_seed(0)
    model = Quadratic()
    x = torch.randn(37, 5, dtype=torch.float64)
    y = torch.zeros(37, dtype=torch.int64)
    d1 = {"w": torch.randn(5, dtype=torch.float64)}
    d2 = {"w": torch.randn(5, dtype=torch.float64)}
    a = np.linspace(-2, 2, 9)
    b = np.linspace(-1, 3, 7)
    land = random_surface(
        model,
        (x, y),
        directions=[d1, d2],
        alphas=a,
        betas=b,
        metrics=[HALF_SQ],
        dtype="float64",
        strategy=strategy,
        batch_size=10,
    )
    w = model.w.detach().double().numpy()
    xs = x.numpy()
    expected = np.empty((9, 7))
    for i, al in enumerate(a):
        for j, be in enumerate(b):
            p = w + al * d1["w"].numpy() + be * d2["w"].numpy()
            # closed form: 0.5||p - mean x||^2 + 0.5 * mean ||x - mean x||^2
            mu = xs.mean(0)
            expected[i, j] = 0.5 * np.sum((p - mu) ** 2) + 0.5 * np.mean(np.sum((xs - mu) ** 2, 1))
    np.testing.assert_allclose(land.dataset["train_halfsq"].values, expected, rtol=1e-12)
    assert land.dataset.attrs["strategy"] == strategy


def _cnn(bn):
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4) if bn else nn.Identity(),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 64, 10),
    )


MODELS = {
    "mlp": lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)),
    "mlp_bn": lambda: nn.Sequential(
        nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10)
    ),
    "cnn": lambda: _cnn(False),
    "cnn_bn": lambda: _cnn(True),
}


def _trained_bn_stats(model, x):
    # give BatchNorm non-trivial running statistics
    model.train()
    with torch.no_grad():
        model(x[:64])
        model(x[64:128] * 1.5)
    model.eval()
    return model


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("strategy", ["vmap", "loop"])
@pytest.mark.parametrize("bn_policy", ["stored", "recompute"])
def test_engine_matches_float64_per_point_loop(name, strategy, bn_policy, digits_xy):
    x, y = digits_xy
    x, y = x[:200], y[:200]
    torch.manual_seed(1)
    model = _trained_bn_stats(MODELS[name](), x)
    params, buffers = get_params(model), get_buffers(model)
    dirs = random_directions(params, 3)
    coeffs = np.array([[0.0, 0.0], [0.5, -0.3], [-1.0, 0.8], [0.2, 1.0]])
    bn_x = [x[i : i + 50] for i in range(0, 150, 50)]
    job = EvalJob(
        model,
        PointBasis(params, tuple(dirs), buffers),
        {"train": (x, y)},
        strategy=strategy,
        bn_policy=bn_policy,
        bn_data=[(b, y[:50]) for b in bn_x],
        bn_batches=3,
        batch_size=64,
        dtype=torch.float64,
    )
    res = evaluate_points(job, coeffs, chunk_size=3)
    for i, (a, b) in enumerate(coeffs):
        p = {
            k: params[k].double() + a * dirs[0][k].double() + b * dirs[1][k].double()
            for k in params
        }
        loss, acc = reference_metrics(
            model, p, buffers, x, y, bn_recompute_data=bn_x if bn_policy == "recompute" else None
        )
        assert res.values["train_loss"][i] == pytest.approx(loss, rel=1e-9, abs=1e-12)
        assert res.values["train_accuracy"][i] == pytest.approx(acc, abs=1e-12)


def test_float32_agrees_with_float64(digits_xy):
    x, y = digits_xy
    model = MODELS["mlp"]()
    r32 = random_line(model, (x[:300], y[:300]), alphas=np.linspace(-1, 1, 9))
    r64 = random_line(model, (x[:300], y[:300]), alphas=np.linspace(-1, 1, 9), dtype="float64")
    np.testing.assert_allclose(
        r32.dataset["train_loss"].values, r64.dataset["train_loss"].values, rtol=1e-5
    )


def test_engine_never_mutates_the_callers_model(digits_xy):
    x, y = digits_xy
    model = _trained_bn_stats(MODELS["cnn_bn"](), x)
    model.train()
    before = copy.deepcopy(model.state_dict())
    random_surface(
        model,
        (x[:100], y[:100]),
        alphas=[-1, 1],
        betas=[0, 1],
        bn_policy="recompute",
        bn_data=(x[:100], y[:100]),
        strategy="vmap",
    )
    random_surface(model, (x[:100], y[:100]), alphas=[-1, 1], betas=[0, 1], strategy="loop")
    after = model.state_dict()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert model.training


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_engine_is_deterministic(digits_xy, strategy):
    # bitwise equality holds for one strategy: vmap and loop agree only to rounding
    x, y = digits_xy
    model = MODELS["cnn"]()
    a = random_surface(
        model,
        (x[:150], y[:150]),
        alphas=np.linspace(-1, 1, 3),
        betas=np.linspace(-1, 1, 3),
        chunk_size=4,
        strategy=strategy,
    )
    b = random_surface(
        model,
        (x[:150], y[:150]),
        alphas=np.linspace(-1, 1, 3),
        betas=np.linspace(-1, 1, 3),
        chunk_size=4,
        strategy=strategy,
    )
    assert np.array_equal(a.dataset["train_loss"].values, b.dataset["train_loss"].values)


def test_non_finite_values_are_recorded_not_replaced(digits_xy):
    x, y = digits_xy
    model = MODELS["mlp"]()
    with torch.no_grad():
        model[1].weight.mul_(1e18)
    d = {k: torch.ones_like(v) * 1e38 for k, v in get_params(model).items()}
    land = random_line(model, (x[:50], y[:50]), direction=d, alphas=[0.0, 1e3, 1e6])
    vals = land.dataset["train_loss"].values
    assert not np.isfinite(vals).all()
    assert land.evaluation["nonfinite"]["train_loss"] == int((~np.isfinite(vals)).sum())
    stored = land.to_dict()["dataset"]["data_vars"]["train_loss"]["data"]
    assert any(isinstance(v, str) for v in stored)  # JSON-ready: "inf"/"nan", as they are


def test_user_callables_dict_batches_and_dataloaders(digits_xy):
    x, y = digits_xy
    model = MODELS["mlp"]()

    def mean_logit(out, target):
        return out.mean()

    dict_batches = [{"input": x[i : i + 40], "label": y[i : i + 40]} for i in range(0, 120, 40)]
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x[:120], y[:120]), batch_size=25
    )
    a = random_line(model, dict_batches, alphas=[0, 0.5], metrics=["loss", mean_logit])
    b = random_line(model, loader, alphas=[0, 0.5], metrics=["loss", mean_logit])
    c = random_line(model, (x[:120], y[:120]), alphas=[0, 0.5], metrics=["loss", mean_logit])
    for v in ("train_loss", "train_mean_logit"):
        np.testing.assert_allclose(a.dataset[v].values, c.dataset[v].values, rtol=1e-6)
        np.testing.assert_allclose(b.dataset[v].values, c.dataset[v].values, rtol=1e-6)
    with torch.no_grad():
        expected = model(x[:120]).mean().item()
    assert c.dataset["train_mean_logit"].values[0] == pytest.approx(expected, rel=1e-5)


def test_auto_strategy_is_recorded_with_its_trial(digits_xy):
    x, y = digits_xy
    land = random_line(MODELS["mlp"](), (x[:100], y[:100]), alphas=[0, 1])
    assert land.evaluation["strategy"] in ("vmap", "loop")
    assert "vmap_seconds" in land.evaluation["trial"] and "loop_seconds" in land.evaluation["trial"]


def test_stored_batchnorm_comparison_warns(digits_xy):
    x, y = digits_xy
    a, b = MODELS["cnn_bn"](), MODELS["cnn_bn"]()
    with pytest.warns(BatchNormWarning, match="bn_policy='recompute'"):
        interpolate(a, b, (x[:50], y[:50]), alphas=[0, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        interpolate(
            a, b, (x[:50], y[:50]), alphas=[0, 1], bn_policy="recompute", bn_data=(x[:64], y[:64])
        )


def test_interpolation_hits_both_endpoints(digits_xy):
    x, y = digits_xy
    torch.manual_seed(0)
    a, b = MODELS["mlp"](), MODELS["mlp"]()
    land = interpolate(a, b, (x[:100], y[:100]), alphas=[0.0, 1.0], dtype="float64")
    for m, val in (
        (a, land.dataset["train_loss"].values[0]),
        (b, land.dataset["train_loss"].values[1]),
    ):
        loss, _ = reference_metrics(m, get_params(m), get_buffers(m), x[:100], y[:100])
        assert val == pytest.approx(loss, rel=1e-10)


def test_bad_data_and_options_are_explained(digits_xy):
    x, y = digits_xy
    model = MODELS["mlp"]()
    with pytest.raises(BasinscopeError, match="the dataset is empty"):
        as_batches((x[:0], y[:0]))
    with pytest.raises(
        BasinscopeError, match=r"dict batch needs a target key .* this one has keys \['a', 'b'\]"
    ):
        as_batches([{"a": x[:2], "b": y[:2]}])
    with pytest.raises(BasinscopeError, match="cannot read data of type int"):
        as_batches(3)
    with pytest.raises(BasinscopeError, match="unknown metric 'los'"):
        random_line(model, (x[:10], y[:10]), metrics=["los"])
    with pytest.raises(BasinscopeError, match="unknown BatchNorm policy 'fresh'"):
        random_line(model, (x[:10], y[:10]), bn_policy="fresh")
    with pytest.raises(BasinscopeError, match="bn_policy='recompute' needs bn_data"):
        random_line(MODELS["cnn_bn"](), (x[:10], y[:10]), bn_policy="recompute")
    with pytest.raises(BasinscopeError, match="unknown dtype 'float99'"):
        random_line(model, (x[:10], y[:10]), dtype="float99")


class ReversedExecutor:
    """Stands in for a distributed executor: rebuilds the worker from the job, returns out of order."""

    name = "reversed"

    def run(self, evaluator, tasks):
        worker = evaluator.job.build()
        worker.strategy = evaluator.strategy
        for index, coeffs in reversed(list(tasks)):
            yield index, worker.evaluate_chunk(coeffs)

    def describe(self):
        return {"executor": self.name}


def test_executor_seam_accepts_out_of_order_workers(digits_xy, tmp_path):
    x, y = digits_xy
    model = MODELS["mlp"]()
    kw = dict(alphas=np.linspace(-1, 1, 5), betas=np.linspace(-1, 1, 3), chunk_size=4)
    kw["strategy"] = "vmap"  # pinned: the two runs are compared bit for bit
    local = random_surface(model, (x[:100], y[:100]), **kw)
    remote = random_surface(
        model, (x[:100], y[:100]), executor=ReversedExecutor(), run_dir=tmp_path / "r", **kw
    )
    assert remote.evaluation["executor"] == "reversed"
    assert np.array_equal(local.dataset["train_loss"].values, remote.dataset["train_loss"].values)


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_per_example_values_reach_the_hook_and_average_to_the_chunk(digits_xy, strategy):
    from basinscope.geometry import get_params

    x, y = digits_xy
    model = MODELS["mlp"]()
    params = get_params(model)
    d = {k: torch.randn_like(v) for k, v in params.items()}
    seen = []
    common = dict(metrics=("loss", "error"), batch_size=64, strategy=strategy)
    data = {"train": (x[:150], y[:150])}
    job = EvalJob(model, PointBasis(params, (d,)), data, **common)
    hooked = EvalJob(
        model,
        PointBasis(params, (d,)),
        data,
        per_example=lambda c, v: seen.append((c, v)),
        **common,
    )
    coeffs = np.linspace(-1, 1, 5)[:, None]
    plain = evaluate_points(job, coeffs, chunk_size=2)
    kept = evaluate_points(hooked, coeffs, chunk_size=2)
    assert [len(c) for c, _ in seen] == [2, 2, 1]
    assert np.array_equal(np.concatenate([c for c, _ in seen]), coeffs)
    for name in ("train_loss", "train_error"):
        per = np.concatenate([v[name] for _, v in seen])
        assert per.shape == (5, 150)
        # the chunk means are the per-example means; the plain path sums the same float32
        # per-example values batch by batch in float64: only the float64 summation order differs
        np.testing.assert_array_equal(kept.values[name], per.mean(axis=1))
        np.testing.assert_allclose(kept.values[name], plain.values[name], rtol=1e-12)
    assert set(np.unique(np.concatenate([v["train_error"] for _, v in seen]))) <= {0.0, 1.0}
