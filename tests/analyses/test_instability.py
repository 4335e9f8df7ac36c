"""Instability analysis (Frankle et al. 2020): seeds, spawning, schedules, the transfer variant."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from basinscope.analyses.instability import (
    InstabilityResult,
    InstabilitySpec,
    _child_config,
    instability,
    instability_sweep,
    transfer_instability,
)
from basinscope.errors import BasinscopeError
from basinscope.models import mlp
from basinscope.plotting import plot
from basinscope.training import TrainConfig, lr_at, train


@pytest.fixture(scope="module")
def splits(digits_xy):
    x, y = digits_xy
    return (x[:300], y[:300]), (x[300:500], y[300:500])


@pytest.fixture(scope="module")
def init():
    torch.manual_seed(0)
    return mlp(hidden=(16,))


CFG = TrainConfig(steps=30, batch_size=32, lr=0.1, momentum=0.9)


def _params(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_reproducible_from_seeds(init, splits):
    kw = dict(k=3, total_steps=30, config=CFG, eval_data=splits[1], num_points=7)
    a = instability(init, splits[0], **kw)
    b = instability(init, splits[0], **kw)
    assert isinstance(a, InstabilityResult)
    assert a.barriers == b.barriers and a.value == b.value  # bit-identical
    for ca, cb in zip(a.children, b.children):
        assert all(torch.equal(p, _params(cb)[n]) for n, p in _params(ca).items())
    c = instability(init, splits[0], **{**kw, "child_seeds": (1, 3)})
    assert not torch.equal(
        _params(c.children[1])["fc1.weight"], _params(a.children[1])["fc1.weight"]
    )


def test_children_spawned_at_the_end_are_identical(init, splits):
    res = instability(init, splits[0], k=30, total_steps=30, config=CFG, num_points=5)
    assert res.barriers == (0.0,) and res.value == 0.0 and res.max_value == 0.0
    a, b = (_params(c) for c in res.children)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert res.settings["child_configs"] == []


def test_k0_children_with_different_seeds(init, splits):
    res = instability(
        init, splits[0], k=0, total_steps=30, config=CFG, eval_data=splits[1], num_points=7
    )
    assert res.k == 0 and res.child_seeds == (1, 2) and res.parent_seed == 0
    assert res.value >= 0 and res.definition == "mean" and res.metric == "error"
    assert res.settings["parent_config"] is None
    assert res.settings["optimizer_state_copied"] is False  # no parent: nothing to copy
    assert [c["data_seed"] for c in res.settings["child_configs"]] == [1, 2]
    assert res.details[0]["definition"] == "mean"
    assert all(0 <= v <= 1 for v in res.child_values)
    d = res.to_dict()
    json.dumps(d)
    assert d["value"] == res.value and "children" not in d


def test_three_children_give_three_pairs(init, splits):
    res = instability(
        init,
        splits[0],
        k=2,
        total_steps=20,
        config=CFG,
        children=3,
        child_seeds=(1, 2, 3),
        definition="linear",
        metric="loss",
        num_points=5,
    )
    assert res.pairs == ((0, 1), (0, 2), (1, 2))
    assert res.value == pytest.approx(sum(res.barriers) / 3)
    assert res.max_value == max(res.barriers)


def test_spawned_full_batch_children_continue_the_parent_run(init, splits):
    """Full batches make the data order irrelevant: parent + child = one run (momentum copied)."""
    _, y = splits[0]
    cfg = TrainConfig(steps=12, batch_size=len(y), lr=0.1, momentum=0.9)
    full = train(init, splits[0], cfg).model
    copied = instability(init, splits[0], k=5, total_steps=12, config=cfg, num_points=3)
    fresh = instability(
        init, splits[0], k=5, total_steps=12, config=cfg, num_points=3, copy_optimizer_state=False
    )
    for name, p in _params(full).items():
        torch.testing.assert_close(_params(copied.children[0])[name], p, rtol=0, atol=1e-5)
    diff = (_params(fresh.children[0])["fc1.weight"] - _params(full)["fc1.weight"]).abs().max()
    assert diff > 1e-3  # resetting the momentum changes the run


@pytest.mark.parametrize(
    "cfg",
    [
        TrainConfig(steps=40, lr=0.1),
        TrainConfig(steps=40, lr=0.1, schedule="step", milestones=(5, 12, 30), gamma=0.5),
        TrainConfig(steps=40, lr=0.1, schedule="step", milestones=(12,), warmup_steps=4),
        TrainConfig(steps=40, lr=0.1, schedule="cyclic", cycle_steps=6, warmup_steps=2),
    ],
)
def test_continue_schedule_reproduces_one_run(cfg):
    k = 14 if cfg.schedule == "cyclic" else 12
    child = _child_config(cfg, k, cfg.steps, "continue")

    def rate(c, step):
        return lr_at(
            step,
            c.steps,
            c.lr,
            c.schedule,
            warmup_steps=c.warmup_steps,
            milestones=c.milestones,
            gamma=c.gamma,
            min_lr=c.min_lr,
            cycle_steps=c.cycle_steps,
        )

    for j in range(cfg.steps - k):
        assert rate(child, j) == pytest.approx(rate(cfg, k + j), rel=1e-12)


def test_schedule_errors_and_restart(init, splits):
    cosine = TrainConfig(steps=20, batch_size=32, lr=0.1, schedule="cosine")
    with pytest.raises(
        BasinscopeError, match=r"depends on the run length.*child_schedule='restart'"
    ):
        instability(init, splits[0], k=5, total_steps=20, config=cosine)
    res = instability(
        init, splits[0], k=5, total_steps=20, config=cosine, child_schedule="restart", num_points=3
    )
    assert res.settings["child_configs"][0]["steps"] == 15
    assert res.settings["parent_config"]["steps"] == 5
    with pytest.raises(BasinscopeError, match="cannot continue the warmup"):
        _child_config(replace(cosine, warmup_steps=8), 5, 20, "continue")
    with pytest.raises(BasinscopeError, match="middle of a cycle"):
        _child_config(TrainConfig(steps=20, schedule="cyclic", cycle_steps=4), 5, 20, "continue")


def test_argument_errors(init, splits):
    data = splits[0]
    with pytest.raises(BasinscopeError, match=r"child_seeds has 2 seeds for children=3"):
        instability(init, data, k=0, total_steps=5, config=CFG, children=3)
    with pytest.raises(BasinscopeError, match="k must be <= 5"):
        instability(init, data, k=6, total_steps=5, config=CFG)
    with pytest.raises(BasinscopeError, match="unknown barrier definition 'frankle'"):
        instability(init, data, k=0, total_steps=5, config=CFG, definition="frankle")
    with pytest.raises(BasinscopeError, match="unknown child_schedule 'resume'"):
        instability(init, data, k=0, total_steps=5, config=CFG, child_schedule="resume")
    with pytest.raises(BasinscopeError, match="config must be a TrainConfig"):
        instability(init, data, k=0, total_steps=5, config={"lr": 0.1})
    with pytest.raises(BasinscopeError, match="ks has repeated steps"):
        instability_sweep(init, data, (0, 0), total_steps=5, config=CFG)
    with pytest.raises(BasinscopeError, match="no figure is defined for results of kind None"):
        plot([0.1, 0.2])


def test_sweep_and_plot(init, splits):
    sweep = instability_sweep(
        init, splits[0], (20, 0, 2), total_steps=20, config=CFG, eval_data=splits[1], num_points=5
    )
    assert sweep.ks == (0, 2, 20)
    assert sweep.values == tuple(r.value for r in sweep.results)
    assert sweep.values[-1] == 0.0  # spawned at the end: identical children
    json.dumps(sweep.to_dict())
    fig, ax = plot(sweep)
    assert ax.get_xscale() == "symlog"
    assert ax.get_xlabel() == "spawning step k"
    fig2, _ = plot(sweep)
    assert fig2 is not fig


def test_transfer_instability_returns_both_barriers(init, splits):
    from basinscope.plotting import plot

    pretrained = train(init, splits[1], replace(CFG, steps=40)).model
    res = transfer_instability(
        pretrained, splits[0], steps=15, config=CFG, eval_data=splits[1], num_points=5
    )
    assert res.pretrained_barrier == res.pretrained.value >= 0
    assert res.scratch_barrier == res.scratch.value >= 0
    assert res.pretrained.k == res.scratch.k == 0
    assert res.definition == "mean" and res.metric == "error"
    assert res.kind == "transfer_instability" and res.spec.ks is None and res.config == CFG
    json.dumps(res.to_dict())
    fig, ax = plot(res)
    assert ax in fig.axes
    given = transfer_instability(
        pretrained, splits[0], steps=15, config=CFG, random_init=init, num_points=5
    )
    assert given.scratch.children[0] is not init
    with pytest.raises(BasinscopeError, match="drop k/total_steps"):
        transfer_instability(pretrained, splits[0], steps=5, config=CFG, k=2)


def test_spec_results_and_run_folders(init, splits, tmp_path):
    """A spec runs the sweep (ks=None: 0, 10, 50 within total_steps); every result is saved
    and loaded as the same typed object (the children stay in memory) and drawn."""
    from basinscope.plotting import plot
    from basinscope.store import load, save

    spec = InstabilitySpec(total_steps=12, children=3, num_points=3, definition="linear")
    sweep = instability_sweep(init, splits[0], config=CFG, eval_data=splits[1], spec=spec)
    assert sweep.ks == (0, 10) and sweep.spec == spec.replace(ks=(0, 10), child_seeds=(1, 2, 3))
    assert sweep.results[1].spec.ks == (10,) and sweep.config == CFG
    assert all(len(r.children) == 3 and len(r.pairs) == 3 for r in sweep.results)
    again = load(save(sweep, tmp_path / "sweep"))
    assert again.to_dict() == json.loads(json.dumps(sweep.to_dict()))
    assert again.config == CFG and again.results[1].children == ()
    assert again.results[0].pairs == sweep.results[0].pairs
    for r in (sweep, sweep.results[0]):
        fig, ax = plot(r)
        assert ax in fig.axes
    with pytest.raises(BasinscopeError, match=r"every ks must lie in \[0, total_steps\]"):
        InstabilitySpec(ks=(0, 20), total_steps=12)
    with pytest.raises(BasinscopeError, match="child_seeds has 1 seeds for children 2"):
        InstabilitySpec(child_seeds=(4,))


def test_instability_analysis_is_the_sweep_or_the_transfer_comparison(init, splits):
    """What the command runs: the sweep of a spec, or with pre-trained weights the transfer
    variant (which refuses ks); summaries give one line per k or the two barriers."""
    from basinscope.analyses.instability import InstabilityTraining, instability_analysis
    from basinscope.result import fmt

    spec = InstabilitySpec(ks=(0, 2), total_steps=4, num_points=3)
    training = InstabilityTraining(batch_size=32, lr=0.1)
    sweep = instability_analysis(init, splits[0], spec=spec, config=training)
    ref = instability_sweep(init, splits[0], config=training.config(4), spec=spec)
    assert sweep.values == ref.values and sweep.spec == ref.spec and sweep.config == ref.config
    assert [r.child_values for r in sweep.results] == [r.child_values for r in ref.results]
    assert len(sweep.summary()) == 2
    assert sweep.summary()[1].startswith("k=2      mean barrier of the error: ")
    pretrained = train(init, splits[1], replace(CFG, steps=5)).model
    with pytest.raises(BasinscopeError, match="pretrained spawns the children at k=0"):
        instability_analysis(init, splits[0], spec=spec, config=training, pretrained=pretrained)
    res = instability_analysis(
        None, splits[0], spec=spec.replace(ks=None), config=training, pretrained=pretrained
    )
    assert res.kind == "transfer_instability" and res.summary() == [
        f"mean barrier of the error: pre-trained start {fmt(res.pretrained_barrier)}, "
        f"random init {fmt(res.scratch_barrier)}"
    ]
