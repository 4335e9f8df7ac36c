"""Ensemble metrics against brute force; FGE, SWA and independent ensembles report budgets."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from basinscope.analyses.ensembles import (
    EnsembleResult,
    EnsembleSpec,
    ensemble,
    ensemble_metrics,
    fge,
    independent_ensemble,
    swa,
)
from basinscope.errors import BasinscopeError
from basinscope.models import mlp
from basinscope.training import TrainConfig, train


@pytest.fixture(scope="module")
def splits(digits_xy):
    x, y = digits_xy
    return (x[:300], y[:300]), (x[300:500], y[300:500])


@pytest.fixture(scope="module")
def trained(splits):
    """Two small MLPs trained from different seeds, and the config."""
    cfg = TrainConfig(steps=40, batch_size=32, lr=0.1)
    out = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        out.append(train(mlp(hidden=(16,)), splits[0], cfg).model)
    return out, cfg


def test_ensemble_of_identical_models_is_the_model(trained, splits):
    (model, _), _ = trained
    members = [model, copy.deepcopy(model), copy.deepcopy(model)]
    single = ensemble_metrics([model], splits[1])
    many = ensemble_metrics(members, splits[1])
    assert many["ensemble_accuracy"] == single["ensemble_accuracy"] == many["member_accuracies"][0]
    assert many["ensemble_nll"] == pytest.approx(single["member_nll"][0], rel=1e-9)
    assert many["disagreement"] == 0.0
    assert many["pairwise_disagreement"] == [[0.0] * 3] * 3
    assert many["barriers"] == [0.0, 0.0]
    assert single["barriers"] == [] and math.isnan(single["disagreement"])


def test_ensemble_metrics_match_brute_force(trained, splits):
    models, _ = trained
    x, y = splits[1]
    with torch.no_grad():
        logits = [m.eval()(x).double() for m in models]
    probs = sum(F.softmax(z, 1) for z in logits) / 2
    out = ensemble_metrics(models, splits[1], barrier_definition="mean", num_points=5)
    assert out["ensemble_accuracy"] == pytest.approx(float((probs.argmax(1) == y).double().mean()))
    assert out["ensemble_nll"] == pytest.approx(float(F.nll_loss(probs.log(), y)), rel=1e-9)
    disagree = float((logits[0].argmax(1) != logits[1].argmax(1)).double().mean())
    assert out["disagreement"] == pytest.approx(disagree) and disagree > 0
    for m, acc in zip(models, out["member_accuracies"]):
        assert acc == pytest.approx(float((m(x).argmax(1) == y).double().mean()))
    assert len(out["barriers"]) == 1 and out["barriers"][0] >= 0
    assert out["barrier_definition"] == "mean"
    json.dumps(out)


def test_fge_reports_budget_members_and_diversity(trained, splits):
    (model, _), cfg = trained
    res = fge(
        model,
        splits[0],
        cycles=3,
        cycle_steps=8,
        lr_max=0.1,
        lr_min=0.005,
        config=cfg,
        eval_data=splits[1],
        pretrain_steps=cfg.steps,
        num_points=5,
    )
    assert isinstance(res, EnsembleResult) and res.method == "fge"
    assert res.budget == 3 * 8 + cfg.steps
    assert res.members == len(res.models) == 3
    assert res.settings["snapshot_steps"] == [4, 12, 20]
    assert res.settings["snapshot_lrs"] == [0.005] * 3
    assert len(res.barriers) == 2 and res.barrier_definition == "linear"
    assert 0 < res.diversity < 1
    assert 0 <= res.ensemble_accuracy <= 1
    json.dumps(res.to_dict())


def test_swa_reports_budget_and_the_average(trained, splits):
    (model, _), cfg = trained
    res = swa(
        model,
        splits[0],
        steps=20,
        start=8,
        lr=0.05,
        every=4,
        config=cfg,
        eval_data=splits[1],
        pretrain_steps=40,
        barriers=False,
    )
    assert res.method == "swa" and res.budget == 60
    assert res.settings["averaged_steps"] == [8, 12, 16, 20] and res.members == 4
    assert res.ensemble_accuracy == res.metrics["swa_accuracy"] == res.member_accuracies[1]
    assert res.barriers == ()
    json.dumps(res.to_dict())


def test_independent_ensemble_same_budget(splits):
    cfg = TrainConfig(steps=20, batch_size=32, lr=0.1)
    res = independent_ensemble(
        lambda seed: mlp(hidden=(16,)), splits[0], n=2, steps=20, config=cfg, eval_data=splits[1]
    )
    again = independent_ensemble(
        lambda: mlp(hidden=(16,)),
        splits[0],
        n=2,
        steps=20,
        config=cfg,
        eval_data=splits[1],
        barriers=False,
    )
    assert res.budget == 40 and res.members == 2 and res.method == "independent"
    assert res.settings["seeds"] == [0, 1]
    assert res.diversity > 0
    assert res.member_accuracies == again.member_accuracies  # seeds fix init and data order


def test_errors(trained, splits):
    (model, _), _ = trained
    with pytest.raises(BasinscopeError, match="needs at least one model"):
        ensemble_metrics([], splits[1])
    with pytest.raises(BasinscopeError, match=r"unknown keyword arguments \['nmu_points'\]"):
        fge(model, splits[0], cycles=1, cycle_steps=4, lr_max=0.1, lr_min=0.0, nmu_points=3)
    with pytest.raises(BasinscopeError, match=r"start must be an update in \[0, steps\]"):
        swa(model, splits[0], steps=5, start=9, lr=0.1)
    with pytest.raises(BasinscopeError, match="seeds has 1 entries for n=2"):
        independent_ensemble(lambda: mlp(), splits[0], n=2, steps=3, seeds=(4,))
    with pytest.raises(BasinscopeError, match=r"factory must return an nn\.Module"):
        independent_ensemble(lambda: None, splits[0], n=1, steps=3)
    with pytest.raises(BasinscopeError, match="integer class labels"):
        ensemble_metrics([model], (splits[1][0], splits[1][1].float()))


def test_ensemble_runs_a_spec_as_the_method_does(trained, splits, tmp_path):
    """ensemble(spec=...) is swa/fge/independent_ensemble with the spec's settings; the
    result (models in memory only) is saved, loaded and drawn."""
    from basinscope.plotting import plot
    from basinscope.store import load, save

    (model, _), _ = trained
    spec = EnsembleSpec(method="swa", steps=8, start=4, every=2, batch_size=32, num_points=3)
    res = ensemble(model, splits[0], spec=spec, eval_data=splits[1], split="test")
    run = TrainConfig(steps=8, batch_size=32, lr=0.05)
    ref = swa(model, splits[0], steps=8, start=4, every=2, lr=0.05, config=run,
              eval_data=splits[1], num_points=3)  # fmt: skip
    assert res.spec == spec and res.kind == "ensemble" and res.member_names == ("sgd_final", "swa")
    assert res.member_accuracies == ref.member_accuracies and res.barriers == ref.barriers
    assert res.metrics["split"] == "test" and "Izmailov" in res.definition
    again = load(save(res, tmp_path / "run"))
    assert again.to_dict() == json.loads(json.dumps(res.to_dict())) and again.models == ()
    fig, ax = plot(res)
    assert ax in fig.axes
    indep = EnsembleSpec(method="independent", n=2, budget=10, barriers=False)
    assert indep.run_steps() == 5 and indep.config().steps == 5
    with pytest.raises(BasinscopeError, match="budget is for method independent"):
        EnsembleSpec(method="fge", budget=10)
    with pytest.raises(BasinscopeError, match="budget 1 is less than one update per member"):
        EnsembleSpec(method="independent", n=2, budget=1)
    with pytest.raises(BasinscopeError, match=r"start must be an update in \[0, steps\]"):
        EnsembleSpec(method="swa", steps=4, start=5)


def test_a_start_the_method_cannot_use_is_refused_and_members_are_saved(trained, splits, tmp_path):
    """fge/swa continue a trained model, independent builds its members; the summary
    lines and the members written by save_members."""
    (model, _), _ = trained
    with pytest.raises(BasinscopeError, match="method fge starts from a trained model"):
        ensemble(lambda seed: mlp(hidden=(16,)), splits[0], method="fge")
    with pytest.raises(BasinscopeError, match="method independent trains every member from"):
        ensemble(model, splits[0], method="independent")
    spec = EnsembleSpec(method="swa", steps=4, start=2, batch_size=32, num_points=3)
    res = ensemble(model, splits[0], spec=spec, eval_data=splits[1], split="test")
    saved = res.save_members(tmp_path / "models")
    assert [f.rsplit("/", 1)[1] for f in saved.member_files] == [
        "sgd_final.safetensors",
        "swa.safetensors",
    ]
    lines = saved.summary()
    assert lines[0].startswith("swa: SWA model accuracy") and "(budget 4 updates)" in lines[0]
    assert lines[1].startswith("  members: sgd_final ") and len(lines) == 4
