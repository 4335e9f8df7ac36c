"""The transfer analyses under the result protocol: specs (``spec=`` gives what the keyword
arguments give), named definitions recorded in every result, and ``load(save(r))`` with the
same dict; the figure of every kind draws."""

from __future__ import annotations

import dataclasses
import inspect
import json

import numpy as np
import pytest
import torch
from torch import nn

from basinscope.analyses.criticality import NOISE_DEFINITIONS, CriticalitySpec, module_criticality
from basinscope.analyses.distance import (
    DistanceAndMistakes,
    DistanceSpec,
    MistakeSpec,
    mistake_analysis,
    parameter_distance,
)
from basinscope.analyses.rewind import EngineOptions, RewindSpec, rewind
from basinscope.analyses.similarity import CKA_ESTIMATORS, CKASpec, cka_matrix
from basinscope.errors import BasinscopeError
from basinscope.inputs import ModelPair
from basinscope.plotting import plot
from basinscope.result import Result
from basinscope.store import load, save
from basinscope.training import TrainConfig
from basinscope.training.finetune import (
    FinetuneComparison,
    FinetuneComparisonSpec,
    FinetuneSpec,
    FinetuneTraining,
    compare_strategies,
    finetune,
)


def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 10))


@pytest.fixture(scope="module")
def data(digits_xy):
    x, y = digits_xy
    return x[:120], y[:120]


def roundtrip(result: Result, tmp_path) -> Result:
    """``load(save(result))``: the same kind, the same dict (as JSON), drawable."""
    back = load(save(result, tmp_path / result.kind))
    assert type(back) is type(result)
    assert json.loads(json.dumps(back.to_dict())) == json.loads(json.dumps(result.to_dict()))
    fig, ax = plot(back)
    assert ax in fig.axes
    return back


@pytest.mark.parametrize(
    ("fn", "spec_cls"),
    [
        (cka_matrix, CKASpec),
        (parameter_distance, DistanceSpec),
        (mistake_analysis, MistakeSpec),
        (rewind, RewindSpec),
        (module_criticality, CriticalitySpec),
        (finetune, FinetuneSpec),
    ],
)
def test_every_setting_of_a_spec_is_a_keyword_of_its_function(fn, spec_cls):
    params = inspect.signature(fn).parameters
    assert fn.spec_class is spec_cls
    assert set(spec_cls().kwargs()) <= set(params), set(spec_cls().kwargs()) - set(params)


# -- CKA: the named estimators --------------------------------------------------------------
@pytest.mark.parametrize("method", sorted(CKA_ESTIMATORS))
def test_each_cka_result_records_its_estimator(method, data, tmp_path):
    a, b = mlp(0), mlp(1)
    r = cka_matrix(a, b, data, method=method, batch_size=40, split="test", labels=("a", "b"))
    assert r.method == method and r.definition == CKA_ESTIMATORS[method]
    assert r.models == ("a", "b") and r.split == "test" and r.spec.method == method
    assert (r.sigma_factor is not None) == (method == "rbf")
    same = cka_matrix(a, b, data, spec=CKASpec(method=method, batch_size=40, split="test"))
    np.testing.assert_array_equal(same.matrix, r.matrix)
    back = roundtrip(r, tmp_path)
    np.testing.assert_array_equal(back.matrix, r.matrix)
    assert back.diagonal() == r.diagonal()


def test_cka_spec_checks():
    with pytest.raises(BasinscopeError, match=r"unknown method 'cca': expected one of minibatch"):
        CKASpec(method="cca")
    with pytest.raises(BasinscopeError, match=r"batch_size must be an integer >= 4 for method"):
        CKASpec(batch_size=3)
    assert CKASpec(batch_size=3, method="linear").batch_size == 3
    with pytest.raises(BasinscopeError, match=r"sigma_factor must be a number > 0, got 0.0"):
        CKASpec(sigma_factor=0.0)
    with pytest.raises(BasinscopeError, match=r"unknown CKA method 'cca'.*linear: \|\|Y_c"):
        cka_matrix(mlp(0), mlp(1), (torch.zeros(8, 64), torch.zeros(8)), method="cca")


def test_empty_layer_lists_mean_every_layer(data):
    a, b = mlp(0), mlp(1)
    r = cka_matrix(a, b, data, layers_a=(), layers_b=[], method="linear")
    assert r.layers_a == r.layers_b == ("1", "3")


# -- distance and mistakes ------------------------------------------------------------------
def test_distance_and_mistakes_round_trip(data, tmp_path):
    a, b = mlp(0), mlp(1)
    dist = parameter_distance(a, b, spec=DistanceSpec(modules=("1",)), labels=("a", "b"))
    assert list(dist.per_module) == ["1"] and dist.spec.modules == ("1",)
    assert "arccos" in dist.definition and dist.models == ("a", "b")
    assert parameter_distance(a, b, modules=()).per_module.keys() == {"1", "3"}
    back = roundtrip(dist, tmp_path)
    assert isinstance(back.overall["numel"], int) and back.overall == dist.overall
    m = mistake_analysis(a, b, data, spec=MistakeSpec(batch_size=7, split="test"))
    assert m.spec.batch_size == 7 and m.split == "test" and "argmax" in m.definition
    assert roundtrip(m, tmp_path).both_wrong == m.both_wrong
    both = roundtrip(DistanceAndMistakes(distance=dist, mistakes=m), tmp_path)
    assert both.mistakes.n == 120 and set(both.definition) == {"distance", "agreement"}


# -- rewinding and criticality --------------------------------------------------------------
def test_rewind_spec_and_round_trip(data, tmp_path):
    final, init = mlp(0), mlp(1)
    r = rewind(final, init, data, strategy="loop", dtype="float64")
    assert r.split == "train" and r.spec.metrics == ("loss", "accuracy")
    assert r.spec.engine == EngineOptions(dtype="float64", strategy="loop")
    spec = RewindSpec().replace(strategy="loop", dtype="float64")
    assert spec.kwargs()["dtype"] == "float64"
    same = rewind(final, init, data, spec=spec)
    assert same.rewound == r.rewound and same.baseline == r.baseline
    assert "rewound to init" in r.definition
    roundtrip(r, tmp_path)


def test_criticality_spec_maps_the_noise_variant(data, tmp_path):
    final, init = mlp(0), mlp(1)
    grid = {"alphas": (0.0, 1.0), "sigmas": (0.1, 0.5), "samples": 2, "strategy": "loop"}
    spec = CriticalitySpec().replace(noise_variant="frobenius", **grid)
    assert spec.kwargs()["noise"] == "frobenius" and "noise_variant" not in spec.kwargs()
    r = module_criticality(final, init, data, spec=spec)
    same = module_criticality(final, init, data, noise="frobenius", **grid)
    assert r.mu == same.mu and r.settings["noise"] == "frobenius"
    assert r.spec.noise_variant == "frobenius" and r.spec.alphas == (0.0, 1.0)
    assert r.definition["noise"] == f"frobenius: {NOISE_DEFINITIONS['frobenius']}"
    assert r.network_criticality == pytest.approx(sum(r.mu.values()))
    back = roundtrip(r, tmp_path)
    assert back.mu == r.mu and back.modules["1"].feasible.dtype == bool
    np.testing.assert_array_equal(back.modules["1"].loss, r.modules["1"].loss)


def test_an_infeasible_module_round_trips_with_infinite_mu(data, tmp_path):
    final, init = mlp(0), mlp(1)
    r = module_criticality(final, init, data, epsilon=-1.0, alphas=[0.0, 1.0], sigmas=[0.1, 1])
    assert r.to_dict()["network_criticality"] == "inf"
    back = roundtrip(r, tmp_path)
    assert np.isinf(back.network_criticality) and np.isnan(back.modules["1"].alpha_star)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"samples": 3}, r"samples must be an even number >= 2 \(antithetic pairs\), got 3"),
        ({"sigmas": (0.0, 1.0)}, r"every sigma must be > 0 \(mu divides by sigma\^2\)"),
        ({"noise_variant": "huge"}, r"unknown noise_variant 'huge': expected one of absolute"),
        ({"dtype": "float99"}, r"unknown dtype 'float99': expected one of float32, float64"),
        ({"strategy": "fast"}, r"unknown strategy 'fast': expected one of auto, vmap, loop"),
    ],
)
def test_criticality_spec_checks(changes, message):
    with pytest.raises(BasinscopeError, match=message):
        CriticalitySpec().replace(**changes)
    assert CriticalitySpec(samples=3, antithetic=False).samples == 3


# -- fine-tuning ----------------------------------------------------------------------------
def test_finetune_results_round_trip_without_the_model(data, tmp_path):
    net = mlp(0)
    config = FinetuneTraining(steps=3, batch_size=32, lr=0.05).config()
    spec = FinetuneSpec(strategy="surgical", blocks=("3",))
    r = finetune(net, data, spec=spec, config=config, source_data=data)
    same = finetune(net, data, strategy="surgical", blocks=["3"], config=config, source_data=data)
    assert r.trainable == same.trainable == ("3.weight", "3.bias")
    assert r.history == same.history and r.trainable_params == 12 * 10 + 10
    assert r.spec == spec and "Lee et al." in r.definition["strategy"]
    assert "model" not in r.to_dict() and "runs" not in r.to_dict()
    back = roundtrip(r, tmp_path)
    assert back.model is None and back.runs == () and back.config == config
    assert back.trainable_params == r.trainable_params
    lp = finetune(net, data, strategy="lp", config=config, source_data=data)
    both = roundtrip(FinetuneComparison(strategies=(r, lp), eval_split="test"), tmp_path)
    assert [row["strategy"] for row in both.table()] == ["surgical", "lp"]
    assert both.table()[1]["trainable_params"] == lp.trainable_params


def test_finetune_training_settings():
    config = FinetuneTraining().config()
    assert dataclasses.asdict(config) == dataclasses.asdict(
        TrainConfig(steps=200, lr=0.01, batch_size=64, momentum=0.9, data_seed=0)
    )
    with pytest.raises(BasinscopeError, match=r"lr must be a finite number > 0, got 0.0"):
        FinetuneTraining(lr=0.0)
    with pytest.raises(BasinscopeError, match=r"TrainConfig.momentum must lie in \[0, 1\)"):
        FinetuneTraining(momentum=1.5)


def test_compare_strategies_takes_its_spec_saves_and_reports(data, tmp_path):
    net, said = mlp(0), []
    train = FinetuneTraining(steps=2, batch_size=32, lr=0.05)
    spec = FinetuneComparisonSpec(strategies=("lp", "dfr"), dfr_examples=30, train=train)
    r = compare_strategies(
        net, data, spec=spec, eval_source=data, save_dir=tmp_path / "models", say=said.append
    )
    assert [s.strategy for s in r.strategies] == ["lp", "dfr"] and r.eval_split == "test"
    assert said == [
        "fine-tuning with lp for 2 steps on 120 target examples",
        "fine-tuning with dfr for 2 steps on 30 target examples",
    ]
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [
        "dfr.safetensors",
        "lp.safetensors",
    ]
    x, y = data  # dfr retrains the head on the last dfr_examples examples of the target
    dfr = finetune(net, data, strategy="dfr", config=train.config(), dfr_data=(x[-30:], y[-30:]))
    assert dfr.history == r.strategies[1].history
    lines = r.summary()
    assert lines[0].startswith("strategy     params src before") and "forgetting" in lines[0]
    assert [line.split()[0] for line in lines[1:3]] == ["lp", "dfr"]
    assert lines[-1] == f"fine-tuned weights: {tmp_path / 'models'}"
    assert compare_strategies(net, data, ["ft"], config=train.config()).weights_files is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"strategies": ("ft", "ft")}, r"each strategies may be given once, got \['ft', 'ft'\]"),
        ({"finetune": FinetuneSpec(blocks=("3",))}, r"blocks is only used by strategies surgical"),
        ({"strategies": ("magic",)}, r"unknown strategies 'magic': expected one of ft, lp"),
    ],
)
def test_finetune_comparison_spec_checks(changes, message):
    with pytest.raises(BasinscopeError, match=message):
        FinetuneComparisonSpec(**changes)
    assert FinetuneComparisonSpec().kwargs()["strategies"] == ("ft",)


def test_model_pair_needs_exactly_two_weights():
    assert ModelPair(weights=("a.safetensors", "b.safetensors")).labels() == ["a", "b"]
    with pytest.raises(
        BasinscopeError,
        match=r"exactly two models are compared, got 1 weights: pass weights A.safetensors weights B.safetensors \(model A, then model B\)",
    ):
        ModelPair(weights=("a.safetensors",))


def test_summaries_are_the_command_lines(data):
    a, b = mlp(0), mlp(1)
    both = DistanceAndMistakes(
        distance=parameter_distance(a, b, labels=("a", "b")),
        mistakes=mistake_analysis(a, b, data, split="test", labels=("a", "b")),
    )
    lines = both.summary()
    assert lines[0].split() == ["module", "l2", "relative", "angle", "(deg)"]
    assert [line.split()[0] for line in lines[1:4]] == ["1", "3", "(all)"]
    assert lines[4].startswith("mistakes on test (120 examples): both right ")
    r = rewind(a, b, data, split="test")
    assert r.summary()[0].startswith("final model on test: loss ")
    assert [line.split()[0] for line in r.summary()[2:]] == ["1", "3"]


def test_the_summary_says_what_the_trust_region_did():
    from types import SimpleNamespace

    from basinscope.training.finetune import _trust_line

    def run(scales, spec):
        h = {"trust_step": [10, 20], "trust_barrier": [0.01, 0.03], "trust_scale": scales}
        return SimpleNamespace(strategy="trust-region", history=h, spec=spec)

    acted = _trust_line(run([1.0, 0.5], {"trust_epsilon": 0.02}))
    assert acted == (
        "trust-region: 2 checks, 1 projections toward w_pre; largest source-loss rise 0.03 "
        "(epsilon 0.02)"
    )
    idle = _trust_line(run([1.0, 1.0], SimpleNamespace(trust_epsilon=0.05)))
    assert idle.endswith(
        "it never acted, so it trained as ft does; a smaller --trust-epsilon constrains it"
    )
    assert _trust_line(SimpleNamespace(strategy="ft", history={"step": [1]}, spec=None)) is None
