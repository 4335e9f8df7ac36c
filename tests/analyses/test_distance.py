"""Parameter distances and mistake analysis: zeros, known angles, additivity, counts."""

import copy
import math

import pytest
import torch
from torch import nn

from basinscope.analyses.distance import mistake_analysis, parameter_distance
from basinscope.errors import BasinscopeError
from basinscope.plotting.figures.transfer import plot_distance


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


def test_identical_models_have_zero_distance_and_angle():
    m = mlp()
    r = parameter_distance(m, copy.deepcopy(m))
    assert r.overall["l2"] == 0.0
    assert r.overall["relative"] == 0.0
    assert r.overall["angle_deg"] == pytest.approx(0.0, abs=1e-5)
    assert set(r.per_module) == {"1", "3"}
    for v in r.per_module.values():
        assert v["l2"] == 0.0


def test_known_vectors_give_known_angles():
    a = {"w": torch.tensor([1.0, 0.0]), "layer.b": torch.tensor([0.0])}
    b = {"w": torch.tensor([0.0, 2.0]), "layer.b": torch.tensor([0.0])}
    r = parameter_distance(a, b)
    assert r.overall["angle_deg"] == pytest.approx(90.0)
    assert r.overall["l2"] == pytest.approx(math.sqrt(5))
    assert r.overall["relative"] == pytest.approx(math.sqrt(5))
    assert r.per_module["(root)"]["angle_deg"] == pytest.approx(90.0)
    assert math.isnan(r.per_module["layer"]["angle_deg"])  # zero vectors: undefined angle
    c = {"w": torch.tensor([1.0, 1.0]), "layer.b": torch.tensor([1.0])}
    d = {"w": torch.tensor([-1.0, -1.0]), "layer.b": torch.tensor([-1.0])}
    assert parameter_distance(c, d).overall["angle_deg"] == pytest.approx(180.0)
    e = {"w": torch.tensor([1.0, 0.0]), "layer.b": torch.tensor([0.0])}
    f = {"w": torch.tensor([1.0, 1.0]), "layer.b": torch.tensor([0.0])}
    assert parameter_distance(e, f).overall["angle_deg"] == pytest.approx(45.0)


def test_per_module_squares_add_up_to_overall():
    a, b = mlp(0), mlp(1)
    r = parameter_distance(a, b)
    total = sum(v["sq_l2"] for v in r.per_module.values())
    assert total == pytest.approx(r.overall["l2"] ** 2, rel=1e-10)
    ref = torch.cat([(p - q).flatten() for p, q in zip(a.parameters(), b.parameters())])
    assert r.overall["l2"] == pytest.approx(ref.double().norm().item(), rel=1e-6)
    assert len(r.table()) == 3 and r.table()[-1]["module"] == "(all)"
    assert r.to_dict()["overall"]["numel"] == sum(p.numel() for p in a.parameters())
    fig, ax = plot_distance(r)
    assert len(ax.patches) == 2
    fig2, _ = plot_distance(r, metric="angle_deg")
    assert fig2 is not fig


def test_module_selection_and_errors():
    a, b = mlp(0), mlp(1)
    r = parameter_distance(a, b, modules=["1"])
    assert list(r.per_module) == ["1"]
    with pytest.raises(BasinscopeError, match="owns no parameters"):
        parameter_distance(a, b, modules=["nope"])
    with pytest.raises(BasinscopeError, match="missing keys"):
        parameter_distance(a, {"1.weight": torch.zeros(16, 64)})
    with pytest.raises(BasinscopeError, match="unknown statistic"):
        plot_distance(r, metric="bogus")


def test_mistake_counts_add_up_and_self_agreement(digits_xy):
    x, y = digits_xy
    data = (x[:200], y[:200])
    a, b = mlp(0), mlp(1)
    r = mistake_analysis(a, b, data, batch_size=64)
    parts = r.both_right + r.both_wrong + r.only_a_wrong + r.only_b_wrong
    assert parts == r.n == 200
    assert 0.0 <= r.agreement <= 1.0
    s = mistake_analysis(a, a, data)
    assert s.agreement == 1.0
    assert s.only_a_wrong == s.only_b_wrong == s.both_wrong_different == 0
    assert s.to_dict()["n"] == 200
