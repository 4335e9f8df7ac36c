"""SWA and FGE callbacks: where they collect, what they average, and that they only read."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import update_bn as torch_update_bn

from basinscope.errors import BasinscopeError
from basinscope.training import TrainConfig, lr_at, train
from basinscope.training.callbacks import FGE, SWA, update_bn


@pytest.fixture(scope="module")
def data(digits):
    x, y = digits
    return x[:256], y[:256]


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.mark.parametrize(("cycle", "warmup", "cycles"), [(6, 0, 4), (6, 3, 3), (5, 0, 3)])
def test_fge_collects_once_per_cycle_at_the_lowest_rate(models, data, cycle, warmup, cycles):
    steps = warmup + cycles * cycle
    cfg = TrainConfig(
        steps=steps,
        batch_size=32,
        lr=0.1,
        schedule="cyclic",
        cycle_steps=cycle,
        min_lr=0.002,
        warmup_steps=warmup,
        checkpoint_steps=tuple(range(steps + 1)),
    )
    fge = FGE.for_config(cfg)
    result = train(models.mlp(0), data, cfg, callbacks=[fge])
    expected = [warmup + j * cycle + cycle // 2 for j in range(cycles)]
    assert fge.steps == expected == fge.expected_steps(steps)
    lrs = result.history["lr"]
    for snap in fge.snapshots:
        k = snap["step"]
        start = warmup + ((k - warmup - 1) // cycle) * cycle  # updates start+1 .. start+cycle
        assert snap["lr"] == lrs[k - 1] == min(lrs[start : start + cycle])
        assert snap["lr"] == lr_at(
            k - 1, steps, 0.1, "cyclic", warmup_steps=warmup, min_lr=0.002, cycle_steps=cycle
        )
        for name, v in snap["params"].items():
            assert torch.equal(v, result.checkpoints[k][name])
    if cycle % 2 == 0:
        assert all(s["lr"] == 0.002 for s in fge.snapshots)
    members = fge.models(models.mlp(1))
    assert len(members) == cycles
    for member, snap in zip(members, fge.snapshots):
        assert all(torch.equal(p, snap["params"][n]) for n, p in member.named_parameters())


def test_fge_skip_cycles_and_errors(models, data):
    cfg = TrainConfig(steps=12, batch_size=32, lr=0.1, schedule="cyclic", cycle_steps=4)
    fge = FGE.for_config(cfg, skip_cycles=1)
    train(models.mlp(0), data, cfg, callbacks=[fge])
    assert fge.steps == [6, 10]
    with pytest.raises(BasinscopeError, match="cycle_steps must be an integer >= 2"):
        FGE(1)
    with pytest.raises(BasinscopeError, match="schedule is 'constant'"):
        FGE.for_config(TrainConfig(steps=5))
    with pytest.raises(BasinscopeError, match="FGE has no snapshots"):
        FGE(8).models(models.mlp(0))


@pytest.mark.parametrize(("start", "every"), [(5, 3), (0, 4), (1, 1)])
def test_swa_average_is_the_mean_of_the_collected_checkpoints(models, data, start, every):
    steps = 20
    expected = [k for k in range(1, steps + 1) if k >= start and (k - start) % every == 0]
    cfg = TrainConfig(steps=steps, batch_size=32, lr=0.05, checkpoint_steps=tuple(expected))
    swa = SWA(start, every)
    result = train(models.mlp(0), data, cfg, callbacks=[swa])
    assert swa.steps == expected
    assert swa.n_averaged == len(expected)
    avg = swa.average_params()
    for name, v in avg.items():
        ref = torch.stack([result.checkpoints[k][name].double() for k in expected]).mean(0)
        assert v.dtype == torch.float32
        torch.testing.assert_close(v.double(), ref, rtol=0, atol=1e-7)


def test_swa_never_changes_the_training_run_or_the_template(models, data):
    cfg = TrainConfig(steps=15, batch_size=32, lr=0.05)
    plain = train(models.mlp(0), data, cfg)
    swa = SWA(5)
    with_swa = train(models.mlp(0), data, cfg, callbacks=[swa])
    for name, p in plain.model.named_parameters():
        assert torch.equal(p, dict(with_swa.model.named_parameters())[name])
    before = _params(with_swa.model)
    averaged = swa.averaged_model(with_swa.model)
    assert averaged is not with_swa.model
    after = _params(with_swa.model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    avg = swa.average_params()
    assert all(torch.equal(p, avg[n]) for n, p in averaged.named_parameters())
    assert not all(torch.equal(avg[k], before[k]) for k in before)


def test_swa_recomputes_batchnorm_statistics_as_torch_update_bn(models, data):
    cfg = TrainConfig(steps=10, batch_size=32, lr=0.05)
    swa = SWA(3, 2)
    result = train(models.bn_mlp(0), data, cfg, callbacks=[swa])
    with pytest.raises(BasinscopeError, match="pass bn_data"):
        swa.averaged_model(result.model)
    averaged = swa.averaged_model(result.model, bn_data=data)
    reference = copy.deepcopy(result.model)
    reference.load_state_dict({**reference.state_dict(), **swa.average_params()})
    loader = [(data[0][i : i + 128], data[1][i : i + 128]) for i in range(0, 256, 128)]
    torch_update_bn(loader, reference)
    for (name, b), (_, ref) in zip(averaged.named_buffers(), reference.named_buffers()):
        torch.testing.assert_close(b, ref, msg=name)
    assert averaged.training == result.model.training
    # update_bn on a model without BatchNorm is a no-op
    plain = models.mlp(0)
    assert update_bn(plain, data) is plain


def test_swa_errors(models):
    with pytest.raises(BasinscopeError, match="SWA start_step must be an integer >= 0"):
        SWA(-1)
    with pytest.raises(BasinscopeError, match="SWA every must be an integer >= 1"):
        SWA(0, every=0)
    with pytest.raises(BasinscopeError, match="SWA has averaged no weights"):
        SWA(100).average_params()
