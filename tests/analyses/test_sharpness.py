"""Sharpness measures: closed forms on quadratics, brute-force references, and which
measures are invariant to the rescaling symmetries of ReLU and BatchNorm networks."""

import copy
import json
from inspect import signature

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import parameters_to_vector

from basinscope.analyses.sharpness import (
    SHARPNESS_MEASURES,
    SharpnessResult,
    adaptive_sharpness,
    average_sharpness,
    filter_normalized_sharpness,
    m_sharpness,
    sharpness,
    worst_case_sharpness,
)
from basinscope.errors import BasinscopeError
from basinscope.geometry import get_buffers, get_params, random_directions
from helpers import reference_metrics

# -- quadratics with known sharpness -----------------------------------------------------


class Quadratic(nn.Module):
    """Every example's "output" is :math:`\\tfrac12 (\\theta - c)^\\top A (\\theta - c) + b^\\top(\\theta - c)`."""

    def __init__(self, a, center, b=None):
        super().__init__()
        self.theta = nn.Parameter(center.clone())
        self.register_buffer("a", a)
        self.register_buffer("center", center.clone())
        self.register_buffer("b", torch.zeros_like(center) if b is None else b)

    def forward(self, x):
        d = self.theta - self.center
        return (0.5 * d @ self.a @ d + self.b @ d) * x.new_ones(x.shape[0])


def mean_output(out, y):
    return out.mean()


QDATA = (torch.zeros(4, 1), torch.zeros(4, dtype=torch.int64))
Q = dict(loss_fn=mean_output, dtype="float64")


def _spd(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    lam = torch.tensor([3.0, 1.5, 1.0, 0.5, 0.2, 0.1], dtype=torch.float64)[:n]
    return q @ torch.diag(lam) @ q.T


def test_worst_case_l2_at_a_minimum_is_half_rho_squared_lambda_max():
    a = _spd()
    rho = 0.1
    r = worst_case_sharpness(
        Quadratic(a, torch.zeros(6)), QDATA, rho=rho, steps=60, restarts=2, **Q
    )
    exact = 0.5 * rho**2 * float(torch.linalg.eigvalsh(a).max())
    assert r.value == pytest.approx(exact, rel=1e-4)
    assert r.value <= exact * (1 + 1e-12)  # PGA's best point is feasible: a lower bound
    assert r.base_loss == 0.0 and r.perturbed_loss == pytest.approx(exact, rel=1e-4)
    assert r.values[0] == 0.0  # restart 0 starts at the minimum, where the gradient is zero
    assert r.num_evaluations == 2 * 61


def test_worst_case_linf_with_diagonal_hessian_is_half_rho_squared_trace():
    a = torch.diag(torch.tensor([2.0, 0.5, 1.0, 0.0], dtype=torch.float64))
    rho = 0.2
    r = worst_case_sharpness(Quadratic(a, torch.zeros(4)), QDATA, rho=rho, norm="linf", **Q)
    assert r.value == pytest.approx(0.5 * rho**2 * 3.5, rel=1e-12)  # a corner of the box


def test_keskar_relative_sharpness_scales_the_box_by_abs_theta_plus_one():
    diag = torch.tensor([2.0, 0.5, 1.0], dtype=torch.float64)
    center = torch.tensor([3.0, -0.5, 0.0], dtype=torch.float64)
    rho = 0.01
    r = worst_case_sharpness(
        Quadratic(torch.diag(diag), center), QDATA, rho=rho, norm="linf", relative=True, **Q
    )
    box = rho * (center.abs() + 1)
    assert r.value == pytest.approx(100 * float(0.5 * (diag * box**2).sum()) / (1 + 0), rel=1e-12)
    assert "Keskar" in r.definition and r.params["relative"] is True


def test_average_sharpness_is_half_sigma_squared_trace_within_four_standard_errors():
    a = _spd()
    b = torch.linspace(
        -0.1, 0.1, 6, dtype=torch.float64
    )  # not a minimum: the linear term averages out
    sigma = 0.1
    r = average_sharpness(Quadratic(a, torch.zeros(6), b), QDATA, sigma=sigma, samples=400, **Q)
    exact = 0.5 * sigma**2 * float(torch.trace(a))
    assert r.std_error is not None and 0 < r.std_error < 0.1 * exact
    assert abs(r.value - exact) < 4 * r.std_error
    assert len(r.values) == 400 and r.num_evaluations == 401


def test_adaptive_closed_forms_use_the_scaled_hessian():
    a = _spd(4)
    center = torch.tensor([2.0, -1.0, 0.5, 0.1], dtype=torch.float64)
    eta = 0.1
    t = torch.diag(center.abs() + eta)
    model = Quadratic(a, center)
    rho, sigma = 0.1, 0.05
    worst = adaptive_sharpness(model, QDATA, rho=rho, eta=eta, steps=60, restarts=2, **Q)
    exact = 0.5 * rho**2 * float(torch.linalg.eigvalsh(t @ a @ t).max())
    assert worst.value == pytest.approx(exact, rel=1e-4)
    avg = adaptive_sharpness(
        model, QDATA, kind="average", sigma=sigma, eta=eta, samples=400, seed=1, **Q
    )
    assert abs(avg.value - 0.5 * sigma**2 * float(torch.trace(t @ a @ t))) < 4 * avg.std_error
    assert worst.params["eta"] == eta and avg.params["kind"] == "average"


# -- small trained networks --------------------------------------------------------------


def _train(model, x, y, steps, lr):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def data(digits_xy):
    x, y = digits_xy
    return x[:200].double(), y[:200]


@pytest.fixture(scope="module")
def mlp(data):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)).double()
    return _train(net, *data, steps=100, lr=0.5)


@pytest.fixture(scope="module")
def bn_cnn(data):
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 10),
    ).double()
    return _train(net, *data, steps=30, lr=0.2)


def test_m_sharpness_with_m_equal_n_is_worst_case_sharpness(mlp, data):
    kw = dict(rho=0.05, steps=4, restarts=2, seed=3, dtype="float64")
    full = worst_case_sharpness(mlp, data, **kw)
    one_batch = m_sharpness(mlp, data, m=200, **kw)
    assert one_batch.value == pytest.approx(full.value, rel=1e-9)
    assert one_batch.semantics["num_batches"] == 1 and one_batch.std_error is None


def test_sam_step_matches_a_brute_force_reference(mlp, data):
    """m = N, one step from delta = 0: the loss at rho * g / ||g|| minus the loss."""
    x, y = data
    rho = 0.05
    r = m_sharpness(mlp, data, m=200, rho=rho, steps=1, restarts=1, dtype="float64")
    ref = copy.deepcopy(mlp)
    loss = F.cross_entropy(ref(x), y)
    grads = torch.autograd.grad(loss, list(ref.parameters()))
    gnorm = torch.sqrt(sum((g**2).sum() for g in grads))
    with torch.no_grad():
        for p, g in zip(ref.parameters(), grads):
            p.add_(rho * g / gnorm)
        expected = F.cross_entropy(ref(x), y).item() - loss.item()
    assert expected > 0 and r.value == pytest.approx(expected, rel=1e-10)
    assert r.num_evaluations == 2


def test_filter_normalized_sharpness_matches_a_brute_force_reference(mlp, data):
    x, y = data
    r = filter_normalized_sharpness(
        mlp, data, alpha=[-0.2, 0.2], num_directions=3, seed=5, dtype="float64"
    )
    params, buffers = get_params(mlp), get_buffers(mlp)
    base, _ = reference_metrics(mlp, params, buffers, x, y)
    for i, d in enumerate(random_directions(params, 5, 3)):
        curve = [
            reference_metrics(mlp, {k: params[k] + a * d[k] for k in params}, buffers, x, y)[0]
            - base
            for a in (-0.2, 0.2)
        ]
        np.testing.assert_allclose(r.params["curves"][i], curve, rtol=1e-9)
        assert r.values[i] == pytest.approx(max(curve), rel=1e-9)
    assert r.value == pytest.approx(np.mean(r.values), rel=1e-12)
    assert r.base_loss == pytest.approx(base, rel=1e-12)


def test_m_sharpness_averages_disjoint_batches(mlp, data):
    r = m_sharpness(mlp, data, m=64, dtype="float64")
    assert r.semantics["num_batches"] == 3 and r.semantics["examples_left_out"] == 200 - 192
    assert r.value == pytest.approx(np.mean(r.values)) and r.std_error > 0
    assert len(m_sharpness(mlp, data, m=64, max_batches=2).values) == 2


def test_subset_is_the_first_examples(mlp, data):
    x, y = data
    kw = dict(steps=2, restarts=2, dtype="float64")
    a = worst_case_sharpness(mlp, data, subset=50, **kw)
    b = worst_case_sharpness(mlp, (x[:50], y[:50]), **kw)
    assert a.value == b.value and a.semantics["num_examples"] == 50


@pytest.mark.parametrize("measure", sorted(SHARPNESS_MEASURES))
def test_seeded_reproducible_records_its_definition_and_leaves_the_model_alone(
    measure, bn_cnn, data
):
    x, y = data
    model = copy.deepcopy(bn_cnn).float().train()  # float32, train mode: must come back as is
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kw = {"samples": 4} if measure == "average" else {}
    if measure in ("worst_case", "adaptive"):
        kw = {"steps": 2, "restarts": 2}
    if measure == "filter_normalized":
        kw = {"num_directions": 3}
    xs = (x[:64].float(), y[:64])
    kw.update(_loop(measure))
    a = sharpness(model, xs, measure, seed=1, **kw)
    b = sharpness(model, xs, measure, seed=1, **kw)
    c = sharpness(model, xs, measure, seed=2, **kw)
    assert a == b and a.values != c.values
    assert isinstance(a, SharpnessResult) and a.measure == measure
    assert a.definition and a.params["seed"] == 1 and a.semantics["bn_mode"].startswith("eval")
    assert a.semantics["dtype"] == "float32" and a.num_evaluations > 1
    json.dumps(a.to_dict())
    assert model.training and all(p.grad is None and p.requires_grad for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]) and v.dtype == before[k].dtype, k


@pytest.mark.parametrize(
    ("measure", "kwargs", "match"),
    [
        ("nope", {}, "unknown sharpness measure 'nope': expected one of worst_case, average"),
        ("worst_case", {"rho": 0}, "rho must be a positive number, got 0"),
        ("worst_case", {"rho": -0.1}, "rho must be a positive number"),
        ("worst_case", {"norm": "l1"}, "unknown norm 'l1': expected one of l2, linf"),
        ("worst_case", {"steps": 0}, "steps must be an integer >= 1, got 0"),
        ("worst_case", {"subset": 500}, r"subset=500 but the dataset has only 200 examples"),
        (
            "worst_case",
            {"dtype": "float16"},
            "unknown dtype 'float16' for curvature and sharpness: float16 is mixed precision",
        ),
        ("worst_case", {"dtype": "int8"}, "unknown dtype 'int8': expected float32 or float64"),
        ("worst_case", {"sigma": 0.1}, "takes no option sigma; its options are rho, norm"),
        ("average", {"samples": 1}, "samples must be an integer >= 2, got 1"),
        ("average", {"sigma": -1.0}, "sigma must be a positive number"),
        ("adaptive", {"kind": "best"}, "unknown kind 'best': expected 'worst'"),
        ("adaptive", {"eta": -0.1}, "eta must be a number >= 0, got -0.1"),
        ("adaptive", {"norm": "l3"}, "unknown norm 'l3'"),
        ("filter_normalized", {"normalization": "row"}, "unknown normalization 'row'"),
        ("filter_normalized", {"alpha": []}, "alpha must be a number or a non-empty 1D grid"),
        ("filter_normalized", {"num_directions": 0}, "num_directions must be an integer >= 1"),
        ("m_sharpness", {"m": 0}, "m must be an integer >= 1, got 0"),
        ("m_sharpness", {"m": 201}, r"m=201 exceeds the number of examples \(200\)"),
        ("m_sharpness", {"max_batches": 0}, "max_batches must be an integer >= 1"),
    ],
)
def test_errors_say_what_is_wrong(measure, kwargs, match, mlp, data):
    with pytest.raises(BasinscopeError, match=match):
        sharpness(mlp, data, measure, **kwargs)


# -- invariance to rescaling symmetries --------------------------------------------------


def _relu_twin(net, c):
    """First layer (weights and bias) times c, second layer weights / c: the same function.

    ``c`` is a number (one scale for the layer) or a vector (one scale per hidden unit).
    """
    twin = copy.deepcopy(net)
    c = torch.as_tensor(c, dtype=torch.float64)
    with torch.no_grad():
        twin[1].weight.mul_(c.reshape(-1, 1) if c.dim() else c)
        twin[1].bias.mul_(c)
        twin[3].weight.div_(c)
    return twin


def _per_neuron_twin(net, seed):
    """Each hidden unit j scaled by its own c_j, log-uniform in [0.1, 10]."""
    g = torch.Generator().manual_seed(seed)
    c = torch.exp((2 * torch.rand(16, generator=g, dtype=torch.float64) - 1) * np.log(10))
    return _relu_twin(net, c)


def _bn_twin(net, c):
    """Conv weights and bias times c with BatchNorm's stored statistics rescaled to match.

    In eval mode BatchNorm is the affine map :math:`\\gamma (z - \\mu) / \\sqrt{v + \\epsilon}
    + \\beta` with stored :math:`\\mu, v`; it is *not* invariant to scaling :math:`z` by
    :math:`c` on its own (that invariance needs batch statistics, which our eval-mode loss
    semantics exclude). With :math:`\\mu \\to c\\mu`, :math:`v \\to c^2 v` and
    :math:`\\epsilon \\to c^2\\epsilon` the map, and so the network, is unchanged exactly,
    and so is every perturbed network whose conv perturbation is scaled by :math:`c` too.
    """
    twin = copy.deepcopy(net)
    conv, bn = twin[0], twin[1]
    with torch.no_grad():
        conv.weight.mul_(c)
        conv.bias.mul_(c)
        bn.running_mean.mul_(c)
        bn.running_var.mul_(c * c)
    bn.eps *= c * c
    return twin


# symmetry -> (network, twin(network, s), settings s, label of s)
SYMMETRIES = {
    "relu_layer": ("mlp", _relu_twin, (0.1, 10.0), "c={}"),
    "relu_per_neuron": ("mlp", _per_neuron_twin, (0, 1), "random_c_j_seed{}"),
    "batchnorm": ("bn_cnn", _bn_twin, (0.1, 10.0), "c={}"),
}
ALL = frozenset(SYMMETRIES)
ASC = {"steps": 3, "restarts": 2}
# (name, measure, options, the symmetries it is invariant to)
INVARIANCE_TABLE = [
    ("worst_case_l2", "worst_case", {"rho": 0.05, **ASC}, frozenset()),
    ("worst_case_linf", "worst_case", {"rho": 0.005, "norm": "linf", **ASC}, frozenset()),
    ("keskar_relative", "worst_case", {"rho": 1e-3, "norm": "linf", "relative": True, **ASC}, frozenset()),
    ("average", "average", {"sigma": 0.01, "samples": 5}, frozenset()),
    ("m_sharpness", "m_sharpness", {"m": 50, "max_batches": 2}, frozenset()),
    ("adaptive_eta_0.01", "adaptive", {"rho": 0.05, "eta": 0.01, **ASC}, frozenset()),
    ("adaptive_worst_l2", "adaptive", {"rho": 0.05, **ASC}, ALL),
    ("adaptive_worst_linf", "adaptive", {"rho": 0.005, "norm": "linf", **ASC}, ALL),
    ("adaptive_average", "adaptive", {"kind": "average", "sigma": 0.05, "samples": 5}, ALL),
    ("adaptive_m_sharpness", "m_sharpness", {"m": 50, "max_batches": 2, "adaptive": True}, ALL),
    ("filter_normalized", "filter_normalized", {"num_directions": 3}, frozenset({"relu_layer", "batchnorm"})),
    ("unnormalized_random_directions", "filter_normalized", {"normalization": "none", "num_directions": 3}, frozenset()),
]  # fmt: skip
TABLE_CASES = [
    pytest.param(
        row,
        sym,
        s,
        id=f"{row[0]}_is_{'' if sym in row[3] else 'not_'}invariant-{sym}-{label.format(s)}",
    )
    for row in INVARIANCE_TABLE
    for sym, (_, _, settings_, label) in SYMMETRIES.items()
    for s in settings_
]


@pytest.fixture(scope="module")
def twins(mlp, bn_cnn):
    """Each network with its rescaled twins, and a cache of measured sharpness values."""
    nets = {"mlp": mlp, "bn_cnn": bn_cnn}
    out = {}
    for sym, (net_name, twin_fn, settings_, _) in SYMMETRIES.items():
        net = nets[net_name]
        out[sym] = {None: net, **{s: twin_fn(net, s) for s in settings_}}
    return out, {}


def _loop(measure):
    """Engine-based measures: a fixed evaluation strategy (no timing trial, same rounding)."""
    accepts = "strategy" in signature(SHARPNESS_MEASURES[measure]).parameters
    return {"strategy": "loop"} if accepts else {}


def _measured(twins, data, sym, s, row):
    models, cache = twins
    name, measure, kwargs, _ = row
    if (sym, s, name) not in cache:
        model = models[sym][s]
        cache[sym, s, name] = sharpness(
            model, data, measure, dtype="float64", **kwargs, **_loop(measure)
        )
    return cache[sym, s, name]


@pytest.mark.parametrize(
    ("sym", "s"), [(sym, s) for sym, spec in SYMMETRIES.items() for s in spec[2]]
)
def test_rescaled_twin_computes_the_same_function(twins, data, sym, s):
    models, _ = twins
    x, _ = data
    f, g = models[sym][None], models[sym][s]
    with torch.no_grad():
        torch.testing.assert_close(g(x), f(x), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(
        parameters_to_vector(g.parameters()), parameters_to_vector(f.parameters())
    )


@pytest.mark.parametrize(("row", "sym", "s"), TABLE_CASES)
def test_invariance_table(twins, data, row, sym, s):
    """Same function, rescaled parameters: which sharpness measures give the same number.

    Invariant: equal up to float64 rounding (relative difference < 1e-9); not invariant:
    a relative difference above 1e-3 (the measured ones are 1e-2 to 1).
    """
    f = _measured(twins, data, sym, None, row)
    g = _measured(twins, data, sym, s, row)
    assert f.value > 0 and f.base_loss == pytest.approx(g.base_loss, rel=1e-12)
    rel = abs(f.value - g.value) / max(abs(f.value), abs(g.value))
    if sym in row[3]:
        assert rel < 1e-9, f"{row[0]} changed by {rel:.2e} under {sym} rescaling ({s})"
    else:
        assert rel > 1e-3, f"{row[0]} changed only by {rel:.2e} under {sym} rescaling ({s})"


@settings(max_examples=8, deadline=None)
@given(log_c=st.lists(st.floats(-3.0, 3.0), min_size=16, max_size=16))
def test_adaptive_sharpness_is_invariant_to_any_per_neuron_rescaling(mlp, data, log_c):
    """Property: every positive diagonal rescaling of the ReLU symmetry leaves |w|-scaled
    perturbations, and so adaptive sharpness (eta = 0), unchanged."""
    twin = _relu_twin(mlp, torch.exp(torch.tensor(log_c, dtype=torch.float64)))
    for kw in ({"kind": "worst", "steps": 2, "restarts": 1}, {"kind": "average", "samples": 3}):
        a = adaptive_sharpness(mlp, data, dtype="float64", strategy="loop", **kw)
        b = adaptive_sharpness(twin, data, dtype="float64", strategy="loop", **kw)
        assert b.value == pytest.approx(a.value, rel=1e-9, abs=1e-15)


# -- several measures in one run, with the spec that names them -----------------------------


def test_sharpness_measures_run_each_named_measure_with_its_options(mlp, data, tmp_path):
    from basinscope.analyses.sharpness_measures import SharpnessMeasures, sharpness_measures
    from basinscope.analyses.sharpness_spec import SharpnessSpec
    from basinscope.store import load, save

    spec = SharpnessSpec(
        measure=("worst_case", "filter_normalized", "m_sharpness"),
        subset=120,
        steps=2,
        restarts=2,
        num_directions=2,
        m=60,
        dtype="float64",
        strategy="loop",
        seed=4,
    )
    said = []
    res = sharpness_measures(mlp, data, spec, say=said.append)
    assert said == ["worst_case ...", "filter_normalized ...", "m_sharpness ..."]
    assert [r.measure for r in res.measures] == list(spec.measure)
    assert all(r.spec == spec for r in res.measures) and res.spec == spec
    x, y = data
    first = (x[:120], y[:120])
    alone = {
        "worst_case": worst_case_sharpness(
            mlp, first, steps=2, restarts=2, seed=4, dtype="float64"
        ),
        "filter_normalized": filter_normalized_sharpness(
            mlp, first, num_directions=2, seed=4, dtype="float64", strategy="loop"
        ),
        # m-sharpness keeps its own one-step ascent: --steps/--restarts are the others'
        "m_sharpness": m_sharpness(mlp, first, m=60, seed=4, dtype="float64"),
    }
    for name, r in alone.items():
        assert res[name].value == r.value and res[name].values == r.values, name
        assert res.definition[name] == r.definition
    back = load(save(res, tmp_path / "run"))
    assert isinstance(back, SharpnessMeasures) and back.to_dict() == res.to_dict()
    assert back["m_sharpness"].spec == spec
    one = sharpness_measures(mlp, data, measure=("average",), samples=3, strategy="loop")
    assert one.spec.samples == 3 and one["average"].params["samples"] == 3
    with pytest.raises(KeyError, match="'adaptive' was not measured"):
        one["adaptive"]
    lines = res.summary()
    assert lines == [r.summary()[0] for r in res.measures]
    assert lines[0].startswith("worst_case         ") and "(base loss " in lines[0]
    assert " ± " in one.summary()[0] and one.summary()[0].endswith(f"{one.definition['average']})")


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"measure": ("flatness",)}, "unknown measure 'flatness': expected one of worst_case"),
        ({"measure": ()}, "measure names no measure"),
        ({"rho": 0.0}, "rho must be a positive number, got 0.0; e.g. rho 0.05"),
        ({"samples": 1}, r"samples must be an integer >= 2, got 1 \(a standard error"),
        ({"norm": "l3"}, "unknown norm 'l3': expected one of l2, linf"),
        ({"steps": 10**9}, "steps must be <= 100,000,000"),
    ],
)
def test_sharpness_spec_checks_every_option_before_any_measure_runs(settings, match):
    from basinscope.analyses.sharpness_spec import SharpnessSpec

    with pytest.raises(BasinscopeError, match=match):
        SharpnessSpec(**settings)
