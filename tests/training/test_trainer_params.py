"""train(): frozen/trainable parameters, weight decay, optimizer state, BatchNorm modes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from basinscope.errors import BasinscopeError
from basinscope.geometry.params import get_buffers, get_params, norm, sub
from basinscope.training import TrainConfig, select_trainable, train


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "config",
    [
        TrainConfig(steps=15, frozen=("0.*",), weight_decay=1e-2),
        TrainConfig(steps=15, trainable=("2.*",), weight_decay=1e-2, optimizer="adam", lr=0.01),
    ],
)
def test_frozen_params_bit_identical(digits, models, config: TrainConfig) -> None:
    x, y = digits
    model = models.mlp()
    init = get_params(model)
    r = train(model, (x, y), config)
    after = get_params(r.model)
    assert torch.equal(after["0.weight"], init["0.weight"])
    assert torch.equal(after["0.bias"], init["0.bias"])
    assert not torch.equal(after["2.weight"], init["2.weight"])
    assert all(p.requires_grad for p in r.model.parameters())  # flags restored
    assert len(r.optimizer_state["param_groups"][0]["params"]) == 2


def test_frozen_glob_patterns_on_cnn(models) -> None:
    net = models.cnn()
    assert select_trainable(net, TrainConfig(frozen=("conv*", "bn1.*"))) == ["fc.weight", "fc.bias"]
    assert select_trainable(net, TrainConfig(trainable=("bn1.*",))) == ["bn1.weight", "bn1.bias"]
    net.fc.bias.requires_grad_(False)  # already frozen by the caller: never trained
    assert select_trainable(net, TrainConfig(frozen=("conv*",)))[-1] == "fc.weight"


def test_pattern_matching_nothing_lists_names(models) -> None:
    with pytest.raises(BasinscopeError, match=r"'features\.\*' matches no parameter") as e:
        train(
            models.mlp(),
            (torch.zeros(4, 64), torch.zeros(4, dtype=torch.long)),
            TrainConfig(steps=1, frozen=("features.*",)),
        )
    for name in ("0.weight", "0.bias", "2.weight", "2.bias"):
        assert name in str(e.value)


def test_everything_frozen_errors(models) -> None:
    with pytest.raises(BasinscopeError, match="no parameter is left to train"):
        select_trainable(models.mlp(), TrainConfig(frozen=("*",)))


def test_frozen_and_trainable_both_set_error() -> None:
    with pytest.raises(BasinscopeError, match="at most one of"):
        TrainConfig(frozen=("0.*",), trainable=("2.*",))


class _WithIdleParam(nn.Module):
    """An MLP plus a parameter that enters the loss with zero gradient."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        self.idle = nn.Parameter(torch.ones(10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + 0.0 * self.idle


def test_weight_decay_shrinks_norm(digits) -> None:
    x, y = digits
    model = _WithIdleParam()
    plain = train(model, (x, y), TrainConfig(steps=100, lr=0.1))
    decayed = train(model, (x, y), TrainConfig(steps=100, lr=0.1, weight_decay=0.05))
    # the idle parameter has zero loss gradient: only weight decay moves it, towards 0
    assert torch.equal(plain.model.idle, model.idle)
    assert decayed.model.idle.norm() < 0.7 * model.idle.norm()
    assert norm(get_params(decayed.model)) < norm(get_params(plain.model))
    adamw = train(
        model, (x, y), TrainConfig(steps=50, optimizer="adamw", lr=0.01, weight_decay=1.0)
    )
    assert adamw.model.idle.norm() < 0.7 * model.idle.norm()


def test_optimizer_state_spawn(digits, models) -> None:
    """Full-batch momentum SGD: 10 steps == 5 steps + 5 spawned with the copied state."""
    x, y = digits[0][:256], digits[1][:256]
    full = {"batch_size": 10_000, "lr": 0.05, "momentum": 0.9}
    model = models.mlp()
    straight = train(model, (x, y), TrainConfig(steps=10, **full))
    first = train(model, (x, y), TrainConfig(steps=5, checkpoint_steps=(5,), **full))
    spawn = models.mlp(seed=1)
    spawn.load_state_dict(first.checkpoints[5])
    cfg = TrainConfig(steps=5, **full)
    warm = train(spawn, (x, y), cfg, optimizer_state=first.optimizer_state)
    cold = train(spawn, (x, y), cfg)
    target = get_params(straight.model)
    assert float(norm(sub(get_params(warm.model), target))) < 1e-5
    assert float(norm(sub(get_params(cold.model), target))) > 1e-3
    # the next single step already differs (the momentum buffer is used)
    one = TrainConfig(steps=1, **full)
    a = train(spawn, (x, y), one, optimizer_state=first.optimizer_state)
    b = train(spawn, (x, y), one)
    assert not _equal(get_params(a.model), get_params(b.model))
    # the config's hyperparameters win over the loaded ones
    assert a.optimizer_state["param_groups"][0]["momentum"] == 0.9
    assert first.optimizer_state["state"][0]["momentum_buffer"] is not None


def test_incompatible_optimizer_state(digits, models) -> None:
    x, y = digits
    r = train(models.mlp(), (x, y), TrainConfig(steps=2, frozen=("0.*",)))
    with pytest.raises(BasinscopeError, match="optimizer_state does not fit"):
        train(models.mlp(), (x, y), TrainConfig(steps=2), optimizer_state=r.optimizer_state)


def test_bn_mode_eval_keeps_running_stats(digits, models) -> None:
    x, y = digits
    model = models.bn_mlp()
    with torch.no_grad():
        model[1].running_mean.fill_(0.3)
    buffers = get_buffers(model)
    r = train(model, (x, y), TrainConfig(steps=10, bn_mode="eval", checkpoint_steps=(10,)))
    assert _equal(get_buffers(r.model), buffers)
    assert _equal(r.buffers[10], buffers)
    assert not torch.equal(r.model[0].weight, model[0].weight)
    moved = train(model, (x, y), TrainConfig(steps=10, bn_mode="train"))
    assert not torch.equal(moved.model[1].running_mean, buffers["1.running_mean"])


def test_spawn_from_a_checkpoint_copies_or_resets_the_optimizer():
    import torch as _t

    from basinscope.training import TrainConfig as _Cfg
    from basinscope.training import spawn, train

    g = _t.Generator().manual_seed(0)
    x, y = _t.randn(64, 6, generator=g), _t.randint(0, 3, (64,), generator=g)
    _t.manual_seed(0)
    model = _t.nn.Sequential(_t.nn.Linear(6, 8), _t.nn.ReLU(), _t.nn.Linear(8, 3))
    full = train(
        model, (x, y), _Cfg(steps=10, batch_size=64, lr=0.1, momentum=0.9, checkpoint_steps=(5, 10))
    )
    assert set(full.optimizer_states) == {5, 10}
    rest = _Cfg(steps=5, batch_size=64, lr=0.1, momentum=0.9)
    copied = spawn(full, 5, (x, y), rest, optimizer="copy")
    reset = spawn(full, 5, (x, y), rest, optimizer="reset")
    for (
        k,
        v,
    ) in full.model.state_dict().items():  # full batch: copying the momentum reproduces the run
        _t.testing.assert_close(copied.model.state_dict()[k], v, rtol=1e-5, atol=1e-6)
    assert any(
        not _t.equal(reset.model.state_dict()[k], v) for k, v in full.model.state_dict().items()
    )
    with pytest.raises(
        BasinscopeError, match=r"no checkpoint at step 3; its checkpoints are \[5, 10\]"
    ):
        spawn(full, 3, (x, y), rest)
