"""train(): loss goes down, determinism, data order, the caller's model, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from basinscope.errors import BasinscopeError
from basinscope.geometry.params import get_buffers, get_params
from basinscope.training import TrainConfig, TrainResult, train


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(("optimizer", "lr"), [("sgd", 0.1), ("adam", 0.01)])
def test_training_reduces_loss_on_digits(digits, models, optimizer: str, lr: float) -> None:
    x, y = digits
    config = TrainConfig(steps=200, optimizer=optimizer, lr=lr, eval_every=100)
    r = train(models.mlp(), (x, y), config, eval_data=(x, y))
    assert isinstance(r, TrainResult) and r.config is config
    loss = r.history["loss"]
    assert len(loss) == 200 and r.history["step"] == [float(s) for s in range(1, 201)]
    assert sum(loss[-20:]) / 20 < 0.5 * sum(loss[:20]) / 20
    assert r.history["eval_step"] == [0.0, 100.0, 200.0]
    assert r.history["eval_loss"][-1] < 0.5 * r.history["eval_loss"][0]
    assert r.history["eval_accuracy"][-1] > 0.85
    assert r.history["lr"] == [lr] * 200


def test_cnn_on_images_with_schedule(digits_images, models) -> None:
    x, y = digits_images
    config = TrainConfig(steps=60, lr=0.05, schedule="cosine", warmup_steps=5, eval_every=60)
    r = train(models.cnn(), (x, y), config, eval_data=(x[:300], y[:300]))
    assert r.history["eval_loss"][-1] < r.history["eval_loss"][0]
    assert r.history["lr"][0] == pytest.approx(0.01) and r.history["lr"][4] == pytest.approx(0.05)
    assert r.history["lr"][-1] < r.history["lr"][10]


def test_bit_identical_determinism_with_dropout_and_bn(digits, models) -> None:
    x, y = digits
    model = models.bn_mlp()
    config = TrainConfig(steps=40, batch_size=32, data_seed=3)
    a = train(model, (x, y), config)
    b = train(model, (x, y), config)
    assert _equal(get_params(a.model), get_params(b.model))
    assert _equal(get_buffers(a.model), get_buffers(b.model))
    assert a.history["loss"] == b.history["loss"]


def test_global_rng_untouched(digits, models) -> None:
    x, y = digits
    model = models.bn_mlp()
    before = torch.get_rng_state()
    train(model, (x, y), TrainConfig(steps=3))
    assert torch.equal(torch.get_rng_state(), before)


def test_data_seed_changes_order_not_init(digits, models) -> None:
    x, y = digits
    model = models.mlp()
    runs = [
        train(model, (x, y), TrainConfig(steps=20, data_seed=s, checkpoint_steps=(0,)))
        for s in (0, 1, 0)
    ]
    assert _equal(runs[0].checkpoints[0], runs[1].checkpoints[0])
    assert _equal(runs[0].checkpoints[0], get_params(model))
    assert not _equal(get_params(runs[0].model), get_params(runs[1].model))
    assert _equal(get_params(runs[0].model), get_params(runs[2].model))


def test_callers_model_untouched_including_bn_stats(digits, models) -> None:
    x, y = digits
    model = models.bn_mlp()
    model.eval()
    before = _state(model)
    flags = [m.training for m in model.modules()]
    r = train(model, (x, y), TrainConfig(steps=10))
    assert _equal(_state(model), before)
    assert [m.training for m in model.modules()] == flags
    assert all(p.grad is None for p in model.parameters())
    # the copy was trained (BN stats moved) and comes back in the caller's modes
    assert not torch.equal(r.model[1].running_mean, before["1.running_mean"])
    assert [m.training for m in r.model.modules()] == flags
    assert r.model is not model


def test_checkpoints_at_requested_steps(digits, models) -> None:
    x, y = digits
    model = models.bn_mlp()
    r = train(model, (x, y), TrainConfig(steps=12, checkpoint_steps=(12, 0, 5)))
    assert sorted(r.checkpoints) == [0, 5, 12] and sorted(r.buffers) == [0, 5, 12]
    assert _equal(r.checkpoints[0], get_params(model))
    assert _equal(r.buffers[0], get_buffers(model))
    assert _equal(r.checkpoints[12], get_params(r.model))
    assert _equal(r.buffers[12], get_buffers(r.model))
    assert not _equal(r.checkpoints[5], r.checkpoints[12])
    assert all(not v.requires_grad and v.device.type == "cpu" for v in r.checkpoints[5].values())
    saved = {k: v.clone() for k, v in r.checkpoints[12].items()}
    with torch.no_grad():  # checkpoints are clones, not views of the model
        r.model[0].weight.add_(1.0)
    assert _equal(r.checkpoints[12], saved)


def test_callbacks_called_each_step(digits, models) -> None:
    x, y = digits
    calls: list[tuple[int, float, float]] = []

    def cb(step: int, model: nn.Module, info: dict) -> None:
        assert isinstance(model, nn.Module) and "optimizer" in info
        model.eval()  # the trainer restores the training mode afterwards
        calls.append((step, info["lr"], info["epoch"]))

    config = TrainConfig(steps=7, batch_size=100, schedule="linear")
    r = train(models.bn_mlp(), (x, y), config, callbacks=[cb])
    assert [c[0] for c in calls] == list(range(1, 8))
    assert [c[1] for c in calls] == r.history["lr"]
    assert calls[-1][2] == pytest.approx(700 / len(x))


def test_steps_beyond_one_epoch_and_full_batch(digits, models) -> None:
    x, y = digits
    small = (x[:50], y[:50])
    r = train(models.mlp(), small, TrainConfig(steps=30, batch_size=16))  # ~10 epochs
    assert len(r.history["loss"]) == 30
    r = train(models.mlp(), small, TrainConfig(steps=5, batch_size=10_000))  # full batch
    assert len(r.history["loss"]) == 5


def test_custom_loss_regression_records_no_accuracy(models) -> None:
    torch.manual_seed(0)
    x = torch.randn(128, 64)
    y = torch.randn(128, 10)
    config = TrainConfig(steps=30, lr=0.01, eval_every=15)
    r = train(models.mlp(), (x, y), config, eval_data=(x, y), loss_fn=nn.functional.mse_loss)
    assert r.history["eval_loss"][-1] < r.history["eval_loss"][0]
    assert "eval_accuracy" not in r.history  # the targets are not class labels


def test_divergence_raises(digits, models) -> None:
    x, y = digits

    def exploding(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(out, target) * math.inf

    with pytest.raises(BasinscopeError, match=r"became inf at step 1.*lower the learning rate"):
        train(models.mlp(), (x, y), TrainConfig(steps=5), loss_fn=exploding)


def test_grad_clip_and_progress(digits, models) -> None:
    x, y = digits
    r = train(models.mlp(), (x, y), TrainConfig(steps=5, grad_clip=0.1), progress=False)
    assert len(r.history["loss"]) == 5


def test_rejects_a_non_config(digits, models) -> None:
    with pytest.raises(BasinscopeError, match="TrainConfig"):
        train(models.mlp(), digits, {"steps": 3})  # type: ignore[arg-type]
