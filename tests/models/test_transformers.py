"""A Hugging Face transformer and an MSE regression model, end to end through the library.

The built-in BERT (``basinscope.models:bert``, made from a config, no download) on the
built-in token data, and an ``nn.Sequential`` regression on a float-target ``.npz``: the
engine's numbers (one model, and points along a line, with both strategies) equal a
brute-force float64 loop that calls the model the way a user would
(``model(**batch).logits`` with cross-entropy, ``model(**batch, labels=...).loss``,
``model(x)`` with the mean squared error), to 1e-6.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("transformers")

from basinscope.data import load_tokens, resolve_data
from basinscope.engine import (
    EvalJob,
    PointBasis,
    Task,
    evaluate_model,
    evaluate_points,
)
from basinscope.geometry import get_buffers, get_params
from basinscope.models import bert, build_model

ALPHAS = np.linspace(-1.0, 1.0, 5)
SEQ, VOCAB, N = 8, 16, 64


def tiny_bert(seed: int = 0) -> nn.Module:
    return build_model(
        "bert", {"vocab_size": VOCAB, "max_position_embeddings": SEQ}, init_seed=seed
    )


def tokens(split: str = "train"):
    return load_tokens(split, n=N, seq_len=SEQ, vocab_size=VOCAB)


def line(model: nn.Module, seed: int = 1, scale: float = 0.5):
    """A line through the model along a seeded random direction (every parameter moves)."""
    p = get_params(model)
    g = torch.Generator().manual_seed(seed)
    d = {k: scale * torch.randn(v.shape, generator=g) for k, v in p.items()}
    basis = PointBasis(p, (d,), get_buffers(model))
    points = [{k: p[k].double() + a * d[k].double() for k in p} for a in ALPHAS]
    return basis, points


def moved(model: nn.Module, seed: int = 2, scale: float = 0.5) -> nn.Module:
    """The model a seeded random step away from its initialization, where the freshly
    initialized BERT's near-uniform logits (loss ln 2 on any input) no longer hide a wrong
    reading of the inputs."""
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def brute(model: nn.Module, points, batches, value) -> np.ndarray:
    """Mean over examples of ``value(net, batch) -> (batch mean, batch size)``, in float64."""
    out = []
    for pt in points:
        net = copy.deepcopy(model).double().eval()
        net.load_state_dict(pt, strict=False)
        total, n = 0.0, 0
        with torch.no_grad():
            for b in batches:
                v, k = value(net, b)
                total += float(v) * k
                n += k
        out.append(total / n)
    return np.array(out)


def ce(net, b):
    logits = net(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    return F.cross_entropy(logits, b["labels"]), len(b["labels"])


def acc(net, b):
    logits = net(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    return (logits.argmax(1) == b["labels"]).double().mean(), len(b["labels"])


def own(net, b):
    return net(**b).loss, len(b["labels"])


# --------------------------------------------------------------------- the model itself
def test_bert_is_a_seeded_hf_classifier_that_functional_call_and_vmap_run():
    import transformers

    a, b = tiny_bert(0), tiny_bert(0)
    assert isinstance(a, transformers.BertForSequenceClassification)
    assert a.config.hidden_size == 32 and a.config.num_hidden_layers == 2
    assert a.config.num_attention_heads == 2 and a.config.num_labels == 2
    assert a.config._attn_implementation == "eager"
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["classifier.weight"], tiny_bert(1).state_dict()["classifier.weight"])
    n = sum(p.numel() for p in bert().parameters())
    assert n == 20_386  # the defaults, as the docstring says

    d = tokens()
    batch = {k: v[:6] for k, v in d.items()}
    a.eval()
    with torch.no_grad():
        direct = a(**batch)
        params = {k: v.detach() for k, v in a.named_parameters()}
        buffers = dict(a.named_buffers())
        called = torch.func.functional_call(a, (params, buffers), (), batch)
        stacked = {k: torch.stack([v, 1.1 * v]) for k, v in params.items()}

        def head(p):
            o = torch.func.functional_call(a, (p, buffers), (), batch)
            return o.logits, o.loss

        logits, losses = torch.func.vmap(head)(stacked)
        scaled = copy.deepcopy(a)
        scaled.load_state_dict({k: 1.1 * v for k, v in params.items()}, strict=False)
        second = scaled(**batch)
    assert torch.equal(called.logits, direct.logits) and torch.equal(called.loss, direct.loss)
    torch.testing.assert_close(logits[0], direct.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(logits[1], second.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(losses, torch.stack([direct.loss, second.loss]), rtol=0, atol=1e-5)


def test_bert_learns_the_token_task_in_a_few_dozen_steps():
    """The built-in data is learnable by the built-in model (what landscapes are made of)."""
    model = build_model("bert", init_seed=0)
    train, test = load_tokens("train"), load_tokens("test")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    steps = 0
    for epoch in range(20):
        for b in train.batches(64, shuffle=True, seed=epoch):
            loss = model(**b).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
        if steps >= 80:
            break
    before = evaluate_model(build_model("bert", init_seed=0), test)
    after = evaluate_model(model, test)
    assert before["train_accuracy"] < 0.7
    assert after["train_accuracy"] > 0.9 and after["train_loss"] < 0.3


# ------------------------------------------------------- the engine against a brute loop
@pytest.mark.parametrize("loss", ["cross_entropy", "model"])
def test_evaluate_model_on_bert_equals_a_brute_force_loop(loss):
    model, data = moved(tiny_bert()), tokens()
    got = evaluate_model(
        model,
        data,
        metrics=("loss", "accuracy"),
        dtype=torch.float64,
        batch_size=16,
        task=Task(loss=loss),
    )
    batches = list(data.batches(16))
    center = [{k: v.double() for k, v in get_params(model).items()}]
    want_loss = brute(model, center, batches, ce if loss == "cross_entropy" else own)[0]
    assert abs(got["train_loss"] - want_loss) < 1e-6
    assert abs(got["train_accuracy"] - brute(model, center, batches, acc)[0]) < 1e-12
    # the model's own loss is its cross-entropy: the two definitions agree
    assert abs(want_loss - brute(model, center, batches, ce)[0]) < 1e-9
    # and the reference reads the inputs: ignoring the padding mask changes the loss
    unmasked = [{**b, "attention_mask": torch.ones_like(b["attention_mask"])} for b in batches]
    assert abs(want_loss - brute(model, center, unmasked, ce)[0]) > 1e-3


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
@pytest.mark.parametrize("loss", ["cross_entropy", "model"])
def test_evaluate_points_on_bert_equals_a_brute_force_loop(strategy, loss):
    model, data = tiny_bert(), tokens("test")
    basis, points = line(model)
    job = EvalJob(
        model,
        basis,
        {"test": data},
        metrics=("loss", "accuracy"),
        batch_size=24,
        dtype=torch.float64,
        strategy=strategy,
        task=Task(loss=loss),
    )
    res = evaluate_points(job, ALPHAS[:, None], chunk_size=2)
    assert res.strategy == strategy
    batches = list(data.batches(24))  # 24, 24, 16: unequal batches weigh by their size
    want = brute(model, points, batches, ce if loss == "cross_entropy" else own)
    np.testing.assert_allclose(res.values["test_loss"], want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        res.values["test_accuracy"], brute(model, points, batches, acc), rtol=0, atol=1e-12
    )
    assert np.ptp(want) > 0.1  # the line really moves the loss


def test_auto_strategy_on_bert_has_both_strategies_working():
    model, data = tiny_bert(), tokens()
    basis, _ = line(model)
    job = EvalJob(model, basis, {"train": data}, metrics=("loss",), dtype=torch.float64)
    res = evaluate_points(job, ALPHAS[:, None], chunk_size=5)
    assert res.strategy in ("loop", "vmap")
    assert "vmap_error" not in res.trial and "loop_error" not in res.trial
    assert {"vmap_seconds", "loop_seconds"} <= res.trial.keys()


# ------------------------------------------------------------------ MSE regression
def regression_file(tmp_path, n=40, k=3):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 4)).astype(np.float32)
    w = rng.standard_normal((4, k)).astype(np.float32)
    y = (np.tanh(x @ w) + 0.1 * rng.standard_normal((n, k))).astype(np.float32)
    path = tmp_path / "reg.npz"
    np.savez(path, x_train=x[:30], y_train=y[:30], x_test=x[30:], y_test=y[30:])
    return path


def regression_model(k=3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, k))


def mse(net, b):
    x, y = b
    return ((net(x) - y.double()) ** 2).mean(), len(y)


def test_evaluate_model_on_an_mse_regression_equals_a_brute_force_loop(tmp_path):
    path = regression_file(tmp_path)
    train, test = resolve_data(str(path), "train"), resolve_data(str(path), "test")
    assert train.regression and train.y.shape == (30, 3)
    model = regression_model()
    got = evaluate_model(
        model,
        {"train": train, "test": test},
        metrics=("loss",),
        dtype=torch.float64,
        batch_size=8,
        task=Task(loss="mse"),
    )
    center = [{k: v.double() for k, v in get_params(model).items()}]
    for split, data in (("train", train), ("test", test)):
        batches = [(x.double(), y) for x, y in data.batches(8)]
        want = brute(model, center, batches, mse)[0]
        assert abs(got[f"{split}_loss"] - want) < 1e-6
    # accuracy is not defined for regression: dropped, with a warning that says why
    with pytest.warns(UserWarning, match="accuracy not measured: defined for class labels only"):
        only = evaluate_model(model, train, dtype=torch.float64, task=Task(loss="mse"))
    assert set(only) == {"train_loss"}


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_evaluate_points_on_an_mse_regression_equals_a_brute_force_loop(tmp_path, strategy):
    path = regression_file(tmp_path)
    data = resolve_data(str(path), "train")
    model = regression_model()
    basis, points = line(model, scale=0.5)
    job = EvalJob(
        model,
        basis,
        {"train": data},
        metrics=("loss",),
        batch_size=7,
        dtype=torch.float64,
        strategy=strategy,
        task=Task(loss="mse"),
    )
    res = evaluate_points(job, ALPHAS[:, None], chunk_size=3)
    batches = [(x.double(), y) for x, y in data.batches(7)]
    want = brute(model, points, batches, mse)
    np.testing.assert_allclose(res.values["train_loss"], want, rtol=0, atol=1e-6)
    assert np.ptp(want) > 1e-3
