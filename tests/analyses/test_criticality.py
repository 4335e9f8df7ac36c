"""Rewinding and module criticality: a quadratic with a closed-form valley, an untrained
model that rewinding cannot change, and a smoke test on a tiny trained MLP."""

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from basinscope.analyses.criticality import (
    criticality_along_path,
    module_criticality,
    rewind,
)
from basinscope.engine import Metric
from basinscope.errors import BasinscopeError
from basinscope.plotting.figures.transfer import plot_valley


class Quadratic(nn.Module):
    """Every example's output is :math:`\\lVert w - c \\rVert^2`."""

    def __init__(self, w, c):
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.register_buffer("c", c.clone())

    def forward(self, x):
        return ((self.w - self.c) ** 2).sum() * x.new_ones(x.shape[0])


QLOSS = Metric("loss", lambda out, y: out, per_example=True, definition="||w - c||^2")
QDATA = (torch.zeros(4, 1, dtype=torch.float64), torch.zeros(4, dtype=torch.int64))


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 10))


@pytest.fixture(scope="module")
def trained(digits_xy):
    x, y = digits_xy[0][:300], digits_xy[1][:300]
    init = mlp(0)
    final = copy.deepcopy(init)
    opt = torch.optim.SGD(final.parameters(), lr=0.5)
    for _ in range(30):
        opt.zero_grad()
        F.cross_entropy(final(x), y).backward()
        opt.step()
    return init, final, (x, y)


# -- criticality on a quadratic with a known answer ---------------------------------------


@pytest.mark.parametrize("noise", ["absolute", "frobenius"])
def test_quadratic_valley_and_mu_match_closed_form(noise):
    c = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    v = torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64)  # ||theta^0 - theta^F||^2 = 4
    final, init = Quadratic(c, c), Quadratic(c + v, c)
    eps = 1.0
    r = module_criticality(
        final, init, QDATA, metric=QLOSS, epsilon=eps, noise=noise, dtype=torch.float64
    )
    (m,) = r.modules.values()
    assert m.module == "(root)" and m.numel == 3 and m.delta_sq_norm == pytest.approx(4.0)
    alphas, sigmas = r.alphas[:, None], r.sigmas[None, :]
    scale = 1.0 if noise == "absolute" else float(c.norm()) / math.sqrt(3)
    assert m.noise_scale == pytest.approx(scale)
    sig = sigmas * scale
    # antithetic pairs: E ||(1 - alpha) v + sigma u||^2 = (1 - alpha)^2 ||v||^2 + sigma^2 ||u||^2
    expected = (1 - alphas) ** 2 * 4.0 + sig**2 * 3 * m.noise_sq_norm
    np.testing.assert_allclose(m.loss, expected, rtol=1e-10, atol=1e-12)
    assert np.abs(expected - eps).min() > 1e-6  # no grid point sits on the boundary
    ratio = np.where(expected <= eps, alphas**2 * 4.0 / sig**2, np.inf)
    assert m.mu == pytest.approx(ratio.min(), rel=1e-12)
    assert np.isfinite(m.mu) and m.mu > 0
    assert r.network_criticality == pytest.approx(m.mu)
    assert r.baseline_loss == pytest.approx(0.0, abs=1e-12)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["settings"]["noise"] == noise and d["epsilon"] == eps
    _fig, ax = plot_valley(r, "(root)")
    assert "mu=" in ax.get_title()


def test_quadratic_infeasible_module_is_infinitely_critical():
    c = torch.zeros(2, dtype=torch.float64)
    final, init = Quadratic(c, c), Quadratic(c + 3.0, c)
    r = module_criticality(
        final, init, QDATA, metric=QLOSS, epsilon=-1.0, dtype=torch.float64, samples=2
    )
    assert math.isinf(r.mu["(root)"]) and math.isinf(r.network_criticality)
    assert r.to_dict()["network_criticality"] == "inf"
    plot_valley(r, "(root)")


def test_default_epsilon_is_baseline_plus_margin():
    c = torch.ones(2, dtype=torch.float64)
    final, init = Quadratic(c, c), Quadratic(2 * c, c)
    r = module_criticality(
        final, init, QDATA, metric=QLOSS, dtype=torch.float64, alphas=[0.0, 1.0], sigmas=[0.1]
    )
    assert r.epsilon == pytest.approx(r.baseline_loss + 0.1)
    assert r.settings["epsilon_rule"].startswith("baseline loss")


def test_criticality_argument_errors():
    c = torch.ones(2, dtype=torch.float64)
    q = Quadratic(c, c)
    with pytest.raises(BasinscopeError, match="unknown noise variant"):
        module_criticality(q, q, QDATA, metric=QLOSS, noise="gaussian")
    with pytest.raises(BasinscopeError, match="must be > 0"):
        module_criticality(q, q, QDATA, metric=QLOSS, sigmas=[0.0, 1.0])
    with pytest.raises(BasinscopeError, match="even"):
        module_criticality(q, q, QDATA, metric=QLOSS, samples=3)
    with pytest.raises(BasinscopeError, match="unknown split"):
        module_criticality(q, q, {"train": QDATA}, metric=QLOSS, split="test")


# -- rewinding ---------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_rewinding_an_untrained_model_changes_nothing(digits_xy, strategy):
    x, y = digits_xy
    model = mlp(3)
    r = rewind(model, copy.deepcopy(model), (x[:200], y[:200]), strategy=strategy)
    assert set(r.rewound) == {"1", "3"}
    for change in r.change.values():
        assert change == {"loss": 0.0, "accuracy": 0.0}
    assert json.loads(json.dumps(r.to_dict()))["split"] == "train"


def test_rewinding_a_trained_model(trained):
    init, final, data = trained
    before = {k: v.clone() for k, v in final.state_dict().items()}
    r = rewind(final, init, data, modules=["1", "3"])
    assert r.baseline["accuracy"] > 0.5
    assert all(v["loss"] > 0 for v in r.change.values())
    for k, v in final.state_dict().items():
        assert torch.equal(v, before[k])
    # the first layer rewound, by hand
    ref = copy.deepcopy(final)
    ref[1].load_state_dict(init[1].state_dict())
    with torch.no_grad():
        loss = F.cross_entropy(ref(data[0]), data[1]).item()
    assert r.rewound["1"]["loss"] == pytest.approx(loss, rel=1e-5)


# -- smoke: a tiny trained MLP ---------------------------------------------------------------


def test_criticality_smoke_on_trained_mlp(trained):
    init, final, data = trained
    r = module_criticality(
        final,
        init,
        data,
        alphas=np.linspace(0, 1, 5),
        sigmas=np.linspace(0.05, 0.5, 4),
        samples=2,
        noise="frobenius",
    )
    assert set(r.modules) == {"1", "3"}
    for m in r.modules.values():
        assert m.loss.shape == (5, 4)
        assert np.isfinite(m.loss).all()
        assert m.mu >= 0
        # alpha = 1 with the smallest noise is close to the final model
        assert m.loss[-1, 0] < r.baseline_loss + 0.5
    assert r.network_criticality == pytest.approx(sum(r.mu.values()))
    json.dumps(r.to_dict())
    fig, _ = plot_valley(r, "1")
    assert fig is not None
    with pytest.raises(BasinscopeError, match="no module"):
        plot_valley(r, "9")


@pytest.mark.parametrize(("strategy", "timed"), [("auto", 1), ("loop", 0), ("vmap", 0)])
def test_the_strategy_is_timed_at_most_once_and_recorded(trained, monkeypatch, strategy, timed):
    """``auto`` is timed once (not once per module), a pinned strategy never; the strategy
    used is in the settings. Pinned strategies give the same result on every run."""
    from basinscope.engine.evaluate import Evaluator

    trials = []
    real = Evaluator._time_strategies

    def counted(self, *args):
        trials.append(1)
        return real(self, *args)

    monkeypatch.setattr(Evaluator, "_time_strategies", counted)
    init, final, data = trained
    kw = dict(alphas=[0.0, 1.0], sigmas=[0.1, 0.5], samples=2, strategy=strategy)
    r = module_criticality(final, init, data, **kw)
    assert len(trials) == timed
    assert r.settings["strategy"] in (("vmap", "loop") if strategy == "auto" else (strategy,))
    if strategy != "auto":
        again = module_criticality(final, init, data, **kw)
        assert again.to_dict() == r.to_dict()


def test_a_single_dataset_can_be_labelled_with_any_split_name(digits_xy):
    from basinscope.analyses.criticality import _one_split

    x, y = digits_xy
    name, d = _one_split((x[:10], y[:10]), "test")
    assert name == "test" and d[0].shape[0] == 10
    with pytest.raises(BasinscopeError, match=r"unknown split 'val'"):
        _one_split({"train": (x, y), "test": (x, y)}, "val")


def test_criticality_along_the_optimization_path_is_zero_at_the_end():
    c = torch.linspace(-1, 1, 5, dtype=torch.float64)
    final = Quadratic(c, c)
    path = {0: {"w": c + 2.0}, 5: {"w": c.clone()}}
    res = criticality_along_path(final, path, QDATA, metric=QLOSS, epsilon=10.0, samples=2)
    assert sorted(res) == [0, 5]
    assert all(m.mu == 0.0 for m in res[5].modules.values())  # theta^0 = theta^F: no distance
    assert all(m.mu > 0.0 for m in res[0].modules.values())
    with pytest.raises(BasinscopeError, match="no checkpoints given"):
        criticality_along_path(final, {}, QDATA, metric=QLOSS)
