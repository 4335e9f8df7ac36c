"""The trainer and fine-tuning through the task adapter: any model and loss, data in memory
or streamed from a DataLoader, any device and precision.

Every update is checked against a hand-written float64 step (``w - lr * grad`` of the
stated loss, computed by autograd on ``model(**batch)`` or ``model(x)``); a streamed run
against the same batches given in memory, to the bit.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

import basinscope.training.trainer as trainer_module
from basinscope.engine import Task
from basinscope.errors import BasinscopeError
from basinscope.training import (
    FinetuneResult,
    FinetuneSpec,
    TrainConfig,
    TrainRun,
    compare_strategies,
    finetune,
    module_ranking,
    train,
    update_bn,
)
from basinscope.training._data import epoch_permutation
from task_models import TokenNet, token_data

# -- models and data (TokenNet and token_data as in tests/engine/test_task.py) ------------


def token_net(seed=0):
    torch.manual_seed(seed)
    return TokenNet()


def regression(n=29, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = torch.randn(n, 2, generator=g)
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)), x, y


class CountingDicts(Dataset):
    """A Dataset of dict examples that counts how often each example is read."""

    def __init__(self, data):
        self.data = data
        self.reads = torch.zeros(len(next(iter(data.values()))), dtype=torch.long)

    def __len__(self):
        return len(self.reads)

    def __getitem__(self, i):
        self.reads[i] += 1
        return {k: v[i] for k, v in self.data.items()}


def sgd(steps=1, batch_size=64, lr=0.1, **kw):
    return TrainConfig(steps=steps, batch_size=batch_size, lr=lr, momentum=0.0, **kw)


def loss_value(model, loss_of):
    """``loss_of`` of a float64 copy of ``model``, as a float."""
    with torch.no_grad():
        return float(loss_of(copy.deepcopy(model).double()))


def hand_step(model, lr, loss_of):
    """``w - lr * grad`` of ``loss_of(net)`` in float64, by autograd (a float64 copy)."""
    net = copy.deepcopy(model).double()
    params = dict(net.named_parameters())
    grads = torch.autograd.grad(loss_of(net), list(params.values()))
    return {k: (p - lr * g).detach() for (k, p), g in zip(params.items(), grads)}


def assert_params_close(model, expected, atol=1e-10):
    got = dict(model.named_parameters())
    assert set(got) == set(expected)
    for k, v in expected.items():
        assert got[k].dtype == torch.float64
        torch.testing.assert_close(got[k].detach(), v, rtol=0, atol=atol)


def subset(d, idx):
    return {k: v[idx] for k, v in d.items()}


# -- one SGD step equals a hand-written float64 step ------------------------------------------


def test_one_mse_step_on_a_sequential_regression_equals_a_float64_hand_step():
    model, x, y = regression()
    r = train(model, (x, y), sgd(lr=0.1), task=Task(loss="mse"), dtype="float64")
    expected = hand_step(model, 0.1, lambda net: F.mse_loss(net(x.double()), y.double()))
    assert_params_close(r.model, expected)
    assert r.dtype == "float64" and r.data_order == "seeded permutation"
    assert r.task["loss"] == "mse" and r.device == "cpu"


@pytest.mark.parametrize("loss", ["cross_entropy", "model"])
def test_one_step_on_a_keyword_token_model_equals_a_float64_hand_step(loss):
    """A minibatch of 8 of 37: every tensor of the dict is indexed by the same seeded
    permutation (the first 8 of epoch 0's), and the model is called with **batch."""
    model, data = token_net(), token_data()
    r = train(
        model, data, sgd(batch_size=8, lr=0.5, data_seed=3), task=Task(loss=loss), dtype="float64"
    )
    batch = subset(data, epoch_permutation(37, 3, 0)[:8])

    def stated(net):
        if loss == "model":
            return net(**batch)["loss"]  # the model's own loss, given its labels
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
        return F.cross_entropy(net(**inputs)["logits"], batch["labels"])

    assert_params_close(r.model, hand_step(model, 0.5, stated))
    assert r.history["loss"][0] == pytest.approx(loss_value(model, stated), abs=1e-12)


def test_a_user_loss_giving_per_example_values_is_averaged_over_the_minibatch():
    model, x, y = regression()

    def l1(pred, target):
        return (pred - target).abs().sum(dim=1)  # one value per example

    r = train(model, (x, y), sgd(lr=0.05), task=Task(loss=l1), dtype="float64")
    expected = hand_step(
        model, 0.05, lambda net: (net(x.double()) - y.double()).abs().sum(1).mean()
    )
    assert_params_close(r.model, expected)


def test_loss_fn_is_task_with_that_loss_and_gives_the_same_weights():
    model, x, y = regression()
    a = train(model, (x, y), sgd(steps=3, batch_size=10), loss_fn=F.mse_loss)
    b = train(model, (x, y), sgd(steps=3, batch_size=10), task=Task(loss=F.mse_loss))
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))


# -- evaluation history through the task ---------------------------------------------------


def test_eval_history_uses_the_task_loss_and_records_accuracy_for_labels_only():
    model, x, y = regression()
    cfg = sgd(steps=2, batch_size=10, eval_every=1)
    r = train(model, (x, y), cfg, eval_data=(x, y), task=Task(loss="mse"), dtype="float64")
    assert "eval_accuracy" not in r.history and r.history["eval_step"] == [0.0, 1.0, 2.0]
    initial = loss_value(model, lambda net: F.mse_loss(net(x.double()), y.double()))
    assert r.history["eval_loss"][0] == pytest.approx(initial, abs=1e-12)

    net, data = token_net(), token_data()
    r = train(net, data, sgd(steps=2, batch_size=8, eval_every=2), eval_data=data, dtype="float64")
    with torch.no_grad():
        logits = copy.deepcopy(net).double()(data["input_ids"], data["attention_mask"])["logits"]
    assert r.history["eval_loss"][0] == pytest.approx(
        float(F.cross_entropy(logits, data["labels"])), abs=1e-12
    )
    acc = float((logits.argmax(1) == data["labels"]).double().mean())
    assert r.history["eval_accuracy"][0] == pytest.approx(acc, abs=1e-15)


def test_a_streamed_eval_loader_gives_the_values_of_the_same_data_in_memory():
    net, data = token_net(), token_data()
    loader = DataLoader(CountingDicts(data), batch_size=5)
    cfg = sgd(steps=2, batch_size=8, eval_every=1)
    a = train(net, data, cfg, eval_data=data, dtype="float64")
    b = train(net, data, cfg, eval_data=loader, dtype="float64")
    for k in ("eval_loss", "eval_accuracy"):
        assert b.history[k] == pytest.approx(a.history[k], abs=1e-12)


# -- streaming ---------------------------------------------------------------------------------


def test_a_dataloader_is_streamed_never_materialised_each_example_read_once_per_epoch(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a DataLoader must not be read into memory")

    monkeypatch.setattr(trainer_module, "as_examples", refuse)
    data = token_data(n=40)
    ds = CountingDicts(data)
    # 12 steps of batches of 8 = 2 full epochs of 5 batches, then 2 batches of the third
    r = train(token_net(), DataLoader(ds, batch_size=8), sgd(steps=12, batch_size=8))
    assert r.data_order == "loader" and len(r.history["loss"]) == 12
    expected = torch.full((40,), 2)
    expected[:16] = 3
    assert torch.equal(ds.reads, expected)


def test_a_streamed_epoch_gives_the_weights_of_the_same_batches_in_memory():
    """Data in memory laid out so that the seeded permutation of epoch 0 gives exactly the
    loader's batches, in the loader's order: the two runs are bit-identical."""
    n, b = 40, 8
    data = token_data(n=n)
    cfg = TrainConfig(steps=n // b, batch_size=b, lr=0.3, momentum=0.9, data_seed=5)
    perm = epoch_permutation(n, 5, 0)
    in_memory = subset(data, torch.argsort(perm))  # in_memory[perm[i]] = data[i]
    assert torch.equal(subset(in_memory, perm[:b])["input_ids"], data["input_ids"][:b])
    model = token_net()
    streamed = train(model, DataLoader(CountingDicts(data), batch_size=b), cfg)
    memory = train(model, in_memory, cfg)
    assert streamed.history["loss"] == memory.history["loss"]
    for (k, p), q in zip(streamed.model.named_parameters(), memory.model.parameters()):
        assert torch.equal(p, q), k


def test_streaming_across_epochs_equals_a_hand_loop_over_the_loaders_batches():
    data = token_data(n=21)  # batches of 8, 8, 5: a ragged last batch is a step of its own
    loader = DataLoader(CountingDicts(data), batch_size=8)
    model = token_net()
    cfg = TrainConfig(steps=7, batch_size=8, lr=0.2, momentum=0.9)
    r = train(model, loader, cfg, task=Task(loss="model"))

    net = copy.deepcopy(model)
    opt = torch.optim.SGD(net.parameters(), lr=0.2, momentum=0.9)
    batches = [subset(data, slice(i, i + 8)) for i in range(0, 21, 8)]
    for step in range(7):
        opt.zero_grad()
        net(**batches[step % 3])["loss"].backward()
        opt.step()
    for (k, p), q in zip(r.model.named_parameters(), net.parameters()):
        assert torch.equal(p, q.detach()), k


def test_a_loader_batch_size_other_than_the_configs_is_used_with_a_warning():
    loader = DataLoader(CountingDicts(token_data()), batch_size=8)
    with pytest.warns(UserWarning, match=r"config.batch_size=64 does not apply to a DataLoader"):
        r = train(token_net(), loader, TrainConfig(steps=2, batch_size=64))
    assert len(r.history["loss"]) == 2


def test_callbacks_see_fractional_epochs_of_a_loader():
    epochs = []
    loader = DataLoader(CountingDicts(token_data(n=20)), batch_size=5)
    train(
        token_net(),
        loader,
        sgd(steps=6, batch_size=5),
        callbacks=[lambda s, m, i: epochs.append(i["epoch"])],
    )
    assert epochs == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.25, 1.5])


# -- fine-tuning -------------------------------------------------------------------------------


def _same(a, b):
    return torch.equal(a.detach().cpu(), b.detach().cpu())


@pytest.mark.parametrize("streamed", [False, True])
def test_lp_keeps_all_but_the_head_bit_identical_and_ft_changes_them(streamed):
    model, data = token_net(), token_data()
    target = DataLoader(CountingDicts(data), batch_size=8) if streamed else data
    cfg = TrainConfig(steps=6, batch_size=8, lr=0.5)
    lp = finetune(model, target, strategy="lp", config=cfg, eval_target=data)
    ft = finetune(model, target, strategy="ft", config=cfg, eval_target=data)
    assert lp.trainable == ("head.weight", "head.bias")
    assert _same(lp.model.emb.weight, model.emb.weight)
    assert not _same(lp.model.head.weight, model.head.weight)
    assert not _same(ft.model.emb.weight, model.emb.weight)
    assert not _same(ft.model.head.weight, model.head.weight)
    assert lp.data_order == ("loader" if streamed else "seeded permutation")
    assert set(lp.before["target"]) == {"loss", "accuracy"}
    assert lp.spec.device == "cpu" and lp.spec.dtype == "float32"
    assert lp.task["loss"] == "cross_entropy"


def test_lp_ft_and_surgical_with_the_models_own_loss_on_a_loader():
    model, data = token_net(), token_data()
    loader = DataLoader(CountingDicts(data), batch_size=8)
    cfg = TrainConfig(steps=4, batch_size=8, lr=0.5)
    task = Task(loss="model")
    res = compare_strategies(
        model, loader, ("lp-ft", "surgical"), config=cfg, blocks=["emb"], lp_steps=2, task=task
    )
    lpft, surgical = res.strategies
    assert lpft.history["phase"] == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    assert not _same(lpft.model.emb.weight, model.emb.weight)
    assert _same(surgical.model.head.weight, model.head.weight)
    assert _same(surgical.model.head.bias, model.head.bias)
    assert not _same(surgical.model.emb.weight, model.emb.weight)
    assert lpft.task["loss"] == "model"


def test_finetune_a_regression_measures_losses_and_no_accuracy():
    model, x, y = regression()
    r = finetune(
        model,
        (x, y),
        strategy="lp",
        config=sgd(steps=3, batch_size=10),
        source_data=(x[:10], y[:10]),
        task=Task(loss="mse"),
        dtype="float64",
    )
    assert set(r.before["source"]) == {"loss"} and set(r.after["target"]) == {"loss"}
    assert r.forgetting is None and r.adaptation is None
    assert _same(r.model[0].weight, model[0].weight.double())
    initial = loss_value(model, lambda net: F.mse_loss(net(x.double()), y.double()))
    assert r.before["target"]["loss"] == pytest.approx(initial, abs=1e-12)
    back = FinetuneResult.from_dict(r.to_dict())
    assert back.spec.dtype == "float64" and back.task == r.task


def test_guided_gradient_norm_follows_the_task_loss_in_memory_and_streamed():
    model, x, y = regression()
    task = Task(loss="mse")
    ranking = dict(module_ranking(model, (x, y), "gradient_norm", task=task, dtype="float64"))
    net = copy.deepcopy(model).double()
    grads = torch.autograd.grad(F.mse_loss(net(x.double()), y.double()), list(net.parameters()))
    expected = {
        "0": float(torch.sqrt(sum((g**2).sum() for g in grads[:2]))),
        "2": float(torch.sqrt(sum((g**2).sum() for g in grads[2:]))),
    }
    assert ranking == pytest.approx(expected, abs=1e-12)
    loader = DataLoader(list(zip(x, y)), batch_size=7)
    streamed = dict(module_ranking(model, loader, "gradient_norm", task=task, dtype="float64"))
    assert streamed == pytest.approx(expected, abs=1e-12)


def test_guided_curvature_is_the_top_eigenvalue_of_each_blocks_hessian_of_the_task_loss():
    model, x, y = regression()
    ranking = dict(module_ranking(model, (x, y), "curvature", task=Task(loss="mse")))
    net = copy.deepcopy(model).double()
    names = dict(net.named_parameters())
    expected = {}
    for module in ("0", "2"):
        keys = [f"{module}.weight", f"{module}.bias"]
        flat = torch.cat([names[k].detach().reshape(-1) for k in keys])

        def loss(theta, keys=keys):
            params, i = {}, 0
            for k in keys:
                params[k] = theta[i : i + names[k].numel()].reshape(names[k].shape)
                i += names[k].numel()
            out = torch.func.functional_call(net, params, (x.double(),))
            return F.mse_loss(out, y.double())

        hess = torch.autograd.functional.hessian(loss, flat)
        expected[module] = float(torch.linalg.eigvalsh(hess)[-1])
    assert ranking == pytest.approx(expected, rel=1e-6)


def test_dfr_examples_cut_from_dict_data_and_refused_for_a_loader():
    model, data = token_net(), token_data()
    cfg = TrainConfig(steps=2, batch_size=8)
    (r,) = compare_strategies(model, data, ("dfr",), config=cfg, dfr_examples=10).strategies
    assert r.trainable == ("head.weight", "head.bias")
    loader = DataLoader(CountingDicts(data), batch_size=8)
    with pytest.raises(BasinscopeError, match=r"target_data is a DataLoader.*pass dfr_data="):
        compare_strategies(model, loader, ("dfr",), config=cfg, dfr_examples=10)


# -- devices and precision ------------------------------------------------------------------


def test_float64_trains_in_float64_and_records_it():
    model, x, y = regression()
    r = train(
        model, (x, y), sgd(steps=2, checkpoint_steps=(0, 2)), task=Task(loss="mse"), dtype="float64"
    )
    assert all(p.dtype == torch.float64 for p in r.model.parameters())
    assert all(v.dtype == torch.float64 for v in r.checkpoints[2].values())
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is untouched
    assert r.dtype == "float64"


def test_bfloat16_is_autocast_over_float32_weights():
    model, data = token_net(), token_data()
    seen = []
    model.head.register_forward_hook(lambda m, i, o: seen.append(o.dtype) if m.training else None)
    r = train(model, data, sgd(steps=2, batch_size=8), dtype="bfloat16")
    assert all(p.dtype == torch.float32 for p in r.model.parameters())
    assert set(seen) == {torch.bfloat16}  # the training steps ran the head under autocast
    assert r.dtype == "bfloat16"


def test_an_absent_device_is_refused_clearly():
    model, x, y = regression()
    with pytest.raises(
        BasinscopeError, match=r"device 'cuda:7' is not available here.*use device cpu"
    ):
        train(model, (x, y), sgd(), task=Task(loss="mse"), device="cuda:7")
    with pytest.raises(BasinscopeError, match=r"device 'cuda:7' is not available here"):
        FinetuneSpec(device="cuda:7")
    with pytest.raises(BasinscopeError, match=r"unknown dtype 'float8'"):
        FinetuneSpec(dtype="float8")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_one_float64_step_equals_the_hand_step_and_float16_uses_a_grad_scaler():
    model, data = token_net(), token_data()
    r = train(model, data, sgd(batch_size=64, lr=0.5), dtype="float64", device="cuda")
    assert r.device.startswith("cuda") and next(r.model.parameters()).is_cuda
    inputs = {k: data[k] for k in ("input_ids", "attention_mask")}
    expected = hand_step(
        model, 0.5, lambda net: F.cross_entropy(net(**inputs)["logits"], data["labels"])
    )
    assert_params_close(r.model.cpu(), expected)
    half = train(model, data, sgd(steps=3, batch_size=8), dtype="float16", device="cuda")
    assert half.dtype == "float16"
    assert all(p.dtype == torch.float32 for p in half.model.parameters())
    loader = DataLoader(CountingDicts(data), batch_size=8)
    lp = finetune(model, loader, strategy="lp", config=sgd(steps=3, batch_size=8), device="cuda")
    assert _same(lp.model.emb.weight, model.emb.weight) and lp.spec.device.startswith("cuda")


# -- errors ------------------------------------------------------------------------------------


def test_task_and_loss_fn_together_are_refused():
    model, x, y = regression()
    with pytest.raises(BasinscopeError, match=r"both task= and loss_fn=: give one"):
        train(model, (x, y), sgd(), task=Task(loss="mse"), loss_fn=F.mse_loss)


@pytest.mark.parametrize("streamed", [False, True])
def test_a_dict_batch_without_a_target_key_is_refused(streamed):
    data = token_data()
    data["answer"] = data.pop("labels")
    source = DataLoader(CountingDicts(data), batch_size=8) if streamed else data
    with pytest.raises(BasinscopeError, match=r"needs a target key.*Task\(targets=...\)"):
        train(token_net(), source, TrainConfig(steps=1, batch_size=8))
    r = train(token_net(), source, TrainConfig(steps=1, batch_size=8), task=Task(targets="answer"))
    assert len(r.history["loss"]) == 1


def test_a_user_loss_of_the_wrong_shape_and_an_empty_loader_are_refused():
    model, x, y = regression()
    with pytest.raises(BasinscopeError, match=r"returned shape \(4, 2\): return one value per"):
        train(model, (x, y), sgd(), task=Task(loss=lambda p, t: (p - t) ** 2))
    empty = DataLoader(
        CountingDicts(subset(token_data(), slice(0, 3))), batch_size=8, drop_last=True
    )
    with pytest.raises(BasinscopeError, match=r"gave no batches: the DataLoader .* is empty"):
        train(token_net(), empty, TrainConfig(steps=1, batch_size=8))


# -- the other modules route through the task ----------------------------------------------


class KeywordBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.bn = nn.BatchNorm1d(4)

    def forward(self, features, scale):
        return self.bn(self.lin(features) * scale)


def test_update_bn_calls_a_keyword_model_through_the_task():
    torch.manual_seed(0)
    model = KeywordBN()
    g = torch.Generator().manual_seed(1)
    data = {
        "features": torch.randn(30, 3, generator=g),
        "scale": torch.rand(30, 1, generator=g) + 0.5,
        "labels": torch.randint(0, 4, (30,), generator=g),
    }
    update_bn(model, data, batch_size=64, task=Task())
    with torch.no_grad():
        h = (model.lin(data["features"]) * data["scale"]).double()
    torch.testing.assert_close(model.bn.running_mean.double(), h.mean(0), rtol=0, atol=1e-6)
    torch.testing.assert_close(model.bn.running_var.double(), h.var(0), rtol=0, atol=1e-6)


def test_a_train_run_records_the_order_device_precision_and_task():
    model, x, y = regression()
    r = train(model, (x, y), sgd(steps=2, checkpoint_steps=(0, 2)), task=Task(loss="mse"))
    run = TrainRun.of(r).evaluated(model, r.model, {"train": (x, y)}, task=Task(loss="mse"))
    assert (run.data_order, run.device, run.dtype) == ("seeded permutation", "cpu", "float32")
    assert run.task["loss"] == "mse" and set(run.final) == {"train_loss"}
    back = TrainRun.from_dict(run.to_dict())
    assert back.task == run.task and back.dtype == "float32"
