"""Fine-tuning strategies: what each one trains, what it leaves bit-identical, the metrics."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from basinscope.data import TensorData, apply_shift, load_digits
from basinscope.errors import BasinscopeError
from basinscope.models.zoo import lenet, mlp
from basinscope.training import TrainConfig, train
from basinscope.training.finetune import (
    FinetuneResult,
    compare_strategies,
    finetune,
    head_parameters,
    module_ranking,
    table,
)

FT = TrainConfig(steps=15, batch_size=64, lr=0.05)


def _subset(d: TensorData, n: int, start: int = 0) -> TensorData:
    return TensorData(d.x[start : start + n], d.y[start : start + n], name=d.name)


@pytest.fixture(scope="module")
def source() -> TensorData:
    return _subset(load_digits("train"), 400)


@pytest.fixture(scope="module")
def target(source) -> TensorData:
    return apply_shift(source, rotation=60.0)


@pytest.fixture(scope="module")
def held_out() -> TensorData:
    return apply_shift(_subset(load_digits("test"), 100), rotation=60.0)


def _pretrain(model: nn.Module, data: TensorData) -> nn.Module:
    return train(model, data, TrainConfig(steps=50, batch_size=64, lr=0.05)).model


@pytest.fixture(scope="module")
def net(source) -> nn.Module:
    torch.manual_seed(0)
    return _pretrain(lenet(), source)


@pytest.fixture(scope="module")
def bn_net(source) -> nn.Module:
    torch.manual_seed(1)
    return _pretrain(lenet(batchnorm=True), source)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _changed(before: nn.Module, after: nn.Module) -> set[str]:
    a, b = _state(before), _state(after)
    return {k for k in a if not torch.equal(a[k], b[k])}


def _params(model: nn.Module) -> set[str]:
    return {n for n, _ in model.named_parameters()}


def test_head_parameters(net) -> None:
    assert head_parameters(net) == ["fc2.weight", "fc2.bias"]
    assert head_parameters(net, "fc1") == ["fc1.weight", "fc1.bias"]
    assert head_parameters(mlp(64, (8,), 10)) == ["fc2.weight", "fc2.bias"]
    with pytest.raises(BasinscopeError, match=r"no module 'head'.*conv1"):
        head_parameters(net, "head")
    with pytest.raises(BasinscopeError, match=r"no nn\.Linear"):
        head_parameters(nn.Sequential(nn.Conv2d(1, 2, 3)))


@pytest.mark.parametrize("which", ["net", "bn_net"])
def test_lp_leaves_backbone_bit_identical(which, request, target) -> None:
    model = request.getfixturevalue(which)
    original = _state(model)
    r = finetune(model, target, strategy="lp", config=FT)
    assert _changed(model, r.model) == {"fc2.weight", "fc2.bias"}
    assert r.trainable == ("fc2.weight", "fc2.bias")
    assert all(torch.equal(v, _state(model)[k]) for k, v in original.items())  # caller's model
    if which == "bn_net":  # running statistics included
        assert any(k.startswith("bn1.running") for k in original)


def test_surgical_updates_only_named_blocks(net, target) -> None:
    r = finetune(net, target, strategy="surgical", blocks=["conv1"], config=FT)
    assert _changed(net, r.model) == {"conv1.weight", "conv1.bias"}
    r2 = finetune(net, target, strategy="surgical", blocks=["conv*", "fc2"], config=FT)
    assert _changed(net, r2.model) == _params(net) - {"fc1.weight", "fc1.bias"}


def test_ft_changes_all(net, target) -> None:
    r = finetune(net, target, strategy="ft", config=FT)
    assert _changed(net, r.model) == _params(net)
    assert len(r.history["loss"]) == FT.steps


def test_lp_ft_runs_lp_then_ft(net, target) -> None:
    r = finetune(net, target, strategy="lp-ft", lp_steps=5, config=FT)
    assert len(r.runs) == 2 and len(r.history["loss"]) == 5 + FT.steps
    assert r.history["phase"] == [0.0] * 5 + [1.0] * FT.steps
    assert r.history["step"] == [float(s) for s in range(1, 21)]
    assert _changed(net, r.runs[0].model) == {"fc2.weight", "fc2.bias"}
    assert _changed(r.runs[0].model, r.model) == _params(net)


def test_dfr_trains_head_on_dfr_data_only(net, held_out, target) -> None:
    r = finetune(net, None, strategy="dfr", dfr_data=held_out, config=FT, eval_target=target)
    assert _changed(net, r.model) == {"fc2.weight", "fc2.bias"}
    other = apply_shift(_subset(load_digits("test"), 100, start=200), rotation=60.0)
    r2 = finetune(net, target, strategy="dfr", dfr_data=other, config=FT)
    assert not torch.equal(r.model.fc2.weight, r2.model.fc2.weight)
    # target_data is ignored: same dfr_data, different target_data, identical head
    r3 = finetune(net, target, strategy="dfr", dfr_data=held_out, config=FT)
    assert torch.equal(r.model.fc2.weight, r3.model.fc2.weight)
    # without re-initialisation the head starts from the pretrained one
    r4 = finetune(net, None, strategy="dfr", dfr_data=held_out, config=FT, dfr_reinit=False)
    assert not torch.equal(r.model.fc2.weight, r4.model.fc2.weight)
    assert r4.runs[0].history["loss"][0] != r.runs[0].history["loss"][0]


@pytest.mark.parametrize("signal", ["gradient_norm", "relative_gradient_norm"])
def test_guided_ranks_modules_and_trains_top_k(net, target, signal) -> None:
    r = finetune(net, target, strategy="guided", guided_signal=signal, guided_top_k=2, config=FT)
    assert r.signal == signal and r.ranking is not None
    modules = [m for m, _ in r.ranking]
    assert sorted(modules) == ["conv1", "conv2", "fc1", "fc2"]
    values = [v for _, v in r.ranking]
    assert values == sorted(values, reverse=True) and all(v > 0 for v in values)
    top = set(modules[:2])
    assert _changed(net, r.model) == {n for n in _params(net) if n.split(".")[0] in top}
    assert r.ranking == tuple(module_ranking(net, target, signal))


def test_gradient_norm_signal_matches_autograd(net, target) -> None:
    ranking = dict(module_ranking(net, target, "gradient_norm"))
    ref = copy.deepcopy(net).eval()
    loss = nn.functional.cross_entropy(ref(target.x), target.y)
    grads = torch.autograd.grad(loss, [ref.fc1.weight, ref.fc1.bias])
    expected = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
    assert ranking["fc1"] == pytest.approx(float(expected), rel=1e-5)


def test_guided_curvature_signal(source) -> None:
    torch.manual_seed(0)
    small = mlp(64, (4,), 10)
    data = TensorData(source.x[:60].flatten(1), source.y[:60], name="flat")
    ranking = module_ranking(small, data, "curvature")
    assert sorted(m for m, _ in ranking) == ["fc1", "fc2"]


def test_metrics_before_after_and_arithmetic(net, source, target) -> None:
    r = finetune(net, target, strategy="ft", config=FT, source_data=source)
    for when in (r.before, r.after):
        assert set(when) == {"source", "target"}
        assert set(when["source"]) == {"loss", "accuracy"}
    assert r.forgetting == pytest.approx(
        r.before["source"]["accuracy"] - r.after["source"]["accuracy"]
    )
    assert r.adaptation == pytest.approx(
        r.after["target"]["accuracy"] - r.before["target"]["accuracy"]
    )
    assert r.adaptation > 0  # the rotated digits are learned
    d = r.to_dict()
    assert d["strategy"] == "ft" and d["config"]["steps"] == FT.steps
    lp = finetune(net, target, strategy="lp", config=FT)
    assert lp.forgetting is None and lp.before.keys() == {"target"}


def test_compare_strategies_and_table(net, source, target) -> None:
    results = compare_strategies(
        net, target, ("lp", "surgical"), config=FT, blocks=["conv1"], eval_source=source
    ).strategies
    assert all(isinstance(r, FinetuneResult) for r in results)
    rows = table(results)
    assert [row["strategy"] for row in rows] == ["lp", "surgical"]
    assert rows[0]["trainable_params"] == net.fc2.weight.numel() + net.fc2.bias.numel()
    assert rows[1]["modules"] == ["conv1"]
    assert rows[0]["forgetting"] == results[0].forgetting


def test_errors(net, target) -> None:
    with pytest.raises(BasinscopeError, match=r"unknown fine-tuning strategy 'xx'.*'lp-ft'"):
        finetune(net, target, strategy="xx", config=FT)
    with pytest.raises(BasinscopeError, match=r"'nope' matches no module.*conv1, conv2, fc1, fc2"):
        finetune(net, target, strategy="surgical", blocks=["nope"], config=FT)
    with pytest.raises(BasinscopeError, match="needs blocks"):
        finetune(net, target, strategy="surgical", config=FT)
    with pytest.raises(BasinscopeError, match="pass dfr_data"):
        finetune(net, target, strategy="dfr", config=FT)
    with pytest.raises(BasinscopeError, match="needs target_data"):
        finetune(net, None, strategy="ft", config=FT)
    with pytest.raises(BasinscopeError, match="unknown guided_signal 'hess'"):
        finetune(net, target, strategy="guided", guided_signal="hess", config=FT)
