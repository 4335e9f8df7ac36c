"""Basin-constrained fine-tuning: L2-SP and EWC strategies equal the trainer's penalties, the
trust region keeps the source-loss barrier below epsilon, masks freeze exactly the entries
they leave out, and the mask signals match their references (Hutchinson by convergence)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from basinscope.curvature import HessianOperator
from basinscope.curvature.fisher import diagonal_fisher
from basinscope.data import load_digits
from basinscope.errors import BasinscopeError
from basinscope.training import TrainConfig, finetune, train
from basinscope.training.constraints import TrustRegion, barrier_of, mask_scores, top_mask


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 10)).double()


@pytest.fixture(scope="module")
def tasks():
    src = load_digits("train").subset(torch.arange(120))
    x = torch.rot90(src.x, 1, (2, 3))  # the target: digits turned by 90 degrees
    tgt = type(src)(x, src.y, name="rot90")
    pre = train(mlp(), src, TrainConfig(steps=60, lr=0.1, batch_size=32)).model
    return pre, src, tgt


def flat(m):
    return torch.cat([p.detach().reshape(-1) for p in m.parameters()])


CFG = TrainConfig(steps=15, lr=0.1, batch_size=32, momentum=0.0)


def test_l2sp_and_ewc_strategies_are_the_trainers_penalties(tasks):
    pre, src, tgt = tasks
    r = finetune(pre, tgt, strategy="l2sp", config=CFG, penalty_strength=0.5, source_data=src)
    ref = train(
        pre, tgt, TrainConfig(**{**CFG.to_dict(), "penalty": "l2sp", "penalty_strength": 0.5})
    )
    torch.testing.assert_close(flat(r.model), flat(ref.model), rtol=0, atol=0)
    r = finetune(
        pre,
        tgt,
        strategy="ewc",
        config=CFG,
        penalty_strength=5.0,
        fisher_examples=50,
        source_data=src,
    )
    fisher = diagonal_fisher(pre, src, examples=50)
    c = TrainConfig(**{**CFG.to_dict(), "penalty": "ewc", "penalty_strength": 5.0})
    ref = train(pre, tgt, c, importance=fisher)
    torch.testing.assert_close(flat(r.model), flat(ref.model), rtol=0, atol=0)
    plain = finetune(pre, tgt, strategy="ft", config=CFG, source_data=src)
    # the penalty keeps the weights closer to the pre-trained ones
    d = lambda m: float((flat(m) - flat(pre)).norm())  # noqa: E731
    assert d(r.model) < d(plain.model)
    assert r.spec.penalty_strength == 5.0 and r.definition["strategy"].startswith("ewc: every")


def source_barrier(model, pre, src, points=9):
    tr = TrustRegion(src, 0.0, anchor=dict(pre.named_parameters()), points=points)
    return tr._curve(model, [1.0])[0]


def test_the_trust_region_keeps_the_source_barrier_below_epsilon(tasks):
    pre, src, tgt = tasks
    free = finetune(pre, tgt, strategy="ft", config=CFG, source_data=src)
    eps = 0.25 * source_barrier(free.model, pre, src)
    assert eps > 0
    r = finetune(
        pre,
        tgt,
        strategy="trust-region",
        config=CFG,
        source_data=src,
        trust_epsilon=eps,
        trust_every=5,
    )
    h = r.history
    assert h["trust_step"] == [5.0, 10.0, 15.0]
    assert min(h["trust_scale"]) < 1.0  # it had to project
    assert source_barrier(r.model, pre, src) <= eps + 1e-12  # the last check projected last
    assert r.definition["strategy"].startswith("trust-region: every parameter, projected")


def test_the_barrier_is_the_linear_definition():
    a = np.linspace(0, 1, 5)
    f = np.array([1.0, 2.0, 2.5, 1.5, 0.0])
    assert barrier_of(f, a, "linear") == pytest.approx(max(f - (1 - a) * 1.0))
    assert barrier_of(f, a, "rise") == 1.5 and barrier_of(f, a, "mean") == 2.0
    from basinscope.analyses.barrier import barrier_from_curve

    for d in ("linear", "mean"):
        assert barrier_of(f, a, d) == pytest.approx(barrier_from_curve(a, f, d)[0])
    with pytest.raises(BasinscopeError, match="unknown barrier definition 'max'"):
        barrier_of(f, a, "max")


def test_masks_freeze_exactly_the_entries_left_out(tasks):
    pre, _, tgt = tasks
    r = finetune(pre, tgt, strategy="mask", config=CFG, mask_signal="gradient", mask_fraction=0.1)
    n = sum(p.numel() for p in pre.parameters())
    changed = flat(r.model) != flat(pre)
    assert int(changed.sum()) <= int(np.ceil(0.1 * n)) == r.trainable_params
    scores = mask_scores(pre, tgt, "gradient")
    keep = torch.cat([m.reshape(-1) for m in top_mask(scores, 0.1).values()])
    assert not changed[~keep].any() and changed[keep].any()


def test_mask_signals_match_their_references(tasks):
    pre, _, tgt = tasks
    sub = tgt.subset(torch.arange(40))
    g = mask_scores(pre, sub, "gradient", examples=40)
    loss = nn.functional.cross_entropy(pre(sub.x.double()), sub.y)
    ref = torch.autograd.grad(loss, list(pre.parameters()))
    for v, r in zip(g.values(), ref):
        torch.testing.assert_close(v, r.abs(), rtol=1e-10, atol=1e-14)
    f = mask_scores(pre, sub, "fisher", examples=40)
    ref = diagonal_fisher(pre, sub)
    for k in f:
        torch.testing.assert_close(f[k], ref[k], rtol=1e-10, atol=1e-14)
    dense = torch.diagonal(HessianOperator(pre, sub, dtype=torch.float64).dense()).abs()
    errs = []
    for probes in (8, 256):
        h = mask_scores(pre, sub, "hessian", examples=40, probes=probes, seed=1)
        errs.append(float((torch.cat([v.reshape(-1) for v in h.values()]) - dense).abs().mean()))
    assert errs[1] < errs[0] / 2  # Hutchinson converges to the diagonal
    r = mask_scores(pre, sub, "random", seed=3)
    assert torch.equal(
        torch.cat([v.reshape(-1) for v in r.values()]),
        torch.cat([v.reshape(-1) for v in mask_scores(pre, sub, "random", seed=3).values()]),
    )


def test_top_mask_counts_and_bad_input():
    scores = {"a": torch.tensor([3.0, 1.0, 2.0]), "b": torch.tensor([[0.5, 4.0]])}
    m = top_mask(scores, 0.4)
    assert m["a"].tolist() == [True, False, False] and m["b"].tolist() == [[False, True]]
    with pytest.raises(BasinscopeError, match=r"fraction must be in \(0, 1\]"):
        top_mask(scores, 0.0)
    exact = top_mask(scores, count=3)
    assert sum(int(v.sum()) for v in exact.values()) == 3 and exact["a"].tolist() == [
        True,
        False,
        True,
    ]
    with pytest.raises(BasinscopeError, match="either fraction= or count="):
        top_mask(scores, 0.5, count=2)
    with pytest.raises(BasinscopeError, match="between 1 and the 5 entries, got 6"):
        top_mask(scores, count=6)
    with pytest.raises(BasinscopeError, match="unknown mask signal 'snip'"):
        mask_scores(mlp(), None, "snip")
    with pytest.raises(BasinscopeError, match="pass source_data="):
        finetune(
            mlp(),
            (torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)),
            strategy="ewc",
            config=CFG,
        )
    with pytest.raises(BasinscopeError, match="masks name parameters that are not trained"):
        train(
            mlp(),
            (torch.zeros(4, 1, 8, 8, dtype=torch.float64), torch.zeros(4, dtype=torch.long)),
            CFG,
            masks={"nope": torch.zeros(1, dtype=torch.bool)},
        )
