"""The task adapter: any batch layout, any output, any loss, read in memory or streamed.

Every number is checked against a brute-force float64 loop that calls the model the way a
user would (``model(**batch)`` or ``model(x)``) and applies the stated loss by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from basinscope.engine import EvalJob, PointBasis, Task, as_batches, evaluate_model, evaluate_points
from basinscope.engine.batches import StreamingBatches
from basinscope.errors import BasinscopeError
from basinscope.geometry import get_buffers, get_params
from task_models import TokenNet, token_data


def dict_batches(d, size):
    n = len(d["input_ids"])
    return [{k: v[i : i + size] for k, v in d.items()} for i in range(0, n, size)]


def regression(n=29, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = torch.randn(n, 2, generator=g)
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)), x, y


def line_points(model, alphas, seed=1):
    p = get_params(model)
    g = torch.Generator().manual_seed(seed)
    d = {k: torch.randn(v.shape, generator=g) for k, v in p.items()}
    basis = PointBasis(p, (d,), get_buffers(model))
    pts = [{k: p[k].double() + a * d[k].double() for k in p} for a in alphas]
    return basis, pts


def brute(model, pts, batches, value):
    """Mean over examples of ``value(output, batch)`` at every point, a float64 loop."""
    m = type(model)() if isinstance(model, TokenNet) else None
    out = []
    for pt in pts:
        net = (m if m is not None else _copy(model)).double()
        net.load_state_dict({k: v for k, v in pt.items()}, strict=False)
        total, n = 0.0, 0
        with torch.no_grad():
            for b in batches:
                v, k = value(net, b)
                total += float(v) * k
                n += k
        out.append(total / n)
    return np.array(out)


def _copy(model):
    import copy

    return copy.deepcopy(model)


ALPHAS = np.linspace(-1.0, 1.0, 5)


@pytest.mark.parametrize("strategy", ["loop", "vmap", "compiled"])
def test_keyword_model_with_logits_in_a_dict_matches_a_brute_force_loop(strategy):
    torch.manual_seed(0)
    model = TokenNet()
    data = token_data()
    basis, pts = line_points(model, ALPHAS)
    job = EvalJob(
        model,
        basis,
        {"train": dict_batches(data, 8)},
        metrics=("loss", "accuracy"),
        dtype=torch.float64,
        strategy=strategy,
    )
    res = evaluate_points(job, ALPHAS[:, None], chunk_size=2)

    def ce(net, b):
        inputs = {k: b[k] for k in ("input_ids", "attention_mask")}
        return F.cross_entropy(net(**inputs)["logits"], b["labels"], reduction="sum") / len(
            b["labels"]
        ), len(b["labels"])

    def acc(net, b):
        inputs = {k: b[k] for k in ("input_ids", "attention_mask")}
        return (net(**inputs)["logits"].argmax(1) == b["labels"]).double().mean(), len(b["labels"])

    np.testing.assert_allclose(
        res.values["train_loss"], brute(model, pts, dict_batches(data, 8), ce), rtol=0, atol=1e-6
    )
    np.testing.assert_allclose(
        res.values["train_accuracy"],
        brute(model, pts, dict_batches(data, 8), acc),
        rtol=0,
        atol=1e-9,
    )


@pytest.mark.parametrize("strategy", ["loop", "vmap", "compiled"])
def test_the_models_own_loss_is_a_batch_mean_weighted_by_batch_size(strategy):
    torch.manual_seed(0)
    model = TokenNet()
    data = token_data()
    basis, pts = line_points(model, ALPHAS)
    job = EvalJob(
        model,
        basis,
        {"train": dict_batches(data, 8)},
        metrics=("loss",),
        dtype=torch.float64,
        strategy=strategy,
        task=Task(loss="model"),
    )
    res = evaluate_points(job, ALPHAS[:, None], chunk_size=3)

    def own(net, b):
        return net(**b)["loss"], len(b["labels"])

    np.testing.assert_allclose(
        res.values["train_loss"], brute(model, pts, dict_batches(data, 8), own), rtol=0, atol=1e-6
    )
    # the same numbers as cross-entropy computed by basinscope (the model's loss is CE)
    ce = evaluate_points(
        EvalJob(
            model,
            basis,
            {"train": dict_batches(data, 8)},
            metrics=("loss",),
            dtype=torch.float64,
            strategy=strategy,
        ),
        ALPHAS[:, None],
    )
    np.testing.assert_allclose(res.values["train_loss"], ce.values["train_loss"], rtol=0, atol=1e-9)


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_mse_regression_matches_a_brute_force_loop(strategy):
    model, x, y = regression()
    basis, pts = line_points(model, ALPHAS)
    job = EvalJob(
        model,
        basis,
        {"train": (x, y)},
        metrics=("loss",),
        batch_size=8,
        dtype=torch.float64,
        strategy=strategy,
        task=Task(loss="mse"),
    )
    res = evaluate_points(job, ALPHAS[:, None])
    batches = [(x[i : i + 8].double(), y[i : i + 8].double()) for i in range(0, len(x), 8)]

    def mse(net, b):
        return F.mse_loss(net(b[0]), b[1]), len(b[1])

    np.testing.assert_allclose(
        res.values["train_loss"], brute(model, pts, batches, mse), rtol=0, atol=1e-6
    )
    assert job.build().metrics[0].definition.startswith("mean squared error")


def test_accuracy_is_not_measured_for_a_regression_loss_and_the_warning_says_why():
    model, x, y = regression()
    with pytest.warns(
        UserWarning,
        match="accuracy not measured: defined for class labels only, and the loss is mse",
    ):
        values = evaluate_model(model, (x, y), task=Task(loss="mse"))
    assert set(values) == {"train_loss"}
    with pytest.raises(
        BasinscopeError,
        match=r"none of the metrics \['error'\] is defined for loss mse: ask for loss",
    ):
        with pytest.warns(UserWarning):
            evaluate_model(model, (x, y), metrics=("error",), task=Task(loss="mse"))


def huber_sum(pred, target):
    """A user's loss given per example."""
    return F.huber_loss(pred, target, reduction="none").sum(1)


def test_a_user_loss_per_example_or_batch_mean():
    model, x, y = regression()
    kw = dict(metrics=("loss",), dtype=torch.float64, batch_size=7)
    per = evaluate_model(model, (x, y), task=Task(loss=huber_sum), **kw)
    mean = evaluate_model(
        model, (x, y), task=Task(loss=lambda p, t: F.huber_loss(p, t).mul(2)), **kw
    )
    with torch.no_grad():
        ref = float(
            F.huber_loss(model.double()(x.double()), y.double(), reduction="none").sum(1).mean()
        )
    assert per["train_loss"] == pytest.approx(ref, abs=1e-9)
    assert mean["train_loss"] == pytest.approx(ref, abs=1e-9)  # 2 * mean over 2 outputs
    with pytest.raises(
        BasinscopeError, match=r"returned shape \(4, 2\): return one value per example"
    ):
        evaluate_model(model, (x, y), task=Task(loss=lambda p, t: (p - t) ** 2), **kw)


def test_a_user_loss_by_module_and_name(tmp_path, monkeypatch):
    (tmp_path / "mylosses.py").write_text(
        "import torch\ndef l1(pred, target):\n    return (pred - target).abs().mean(1)\n"
    )
    monkeypatch.chdir(tmp_path)
    model, x, y = regression()
    task = Task(loss="mylosses:l1")
    v = evaluate_model(model, (x, y), task=task, dtype=torch.float64, metrics=("loss",))
    with torch.no_grad():
        ref = float((model.double()(x.double()) - y.double()).abs().mean())
    assert v["train_loss"] == pytest.approx(ref, abs=1e-9)
    assert task.describe()["loss"] == "mylosses:l1"
    with pytest.raises(BasinscopeError, match=r"--loss 'nomod:l1': module 'nomod' not found"):
        evaluate_model(model, (x, y), task=Task(loss="nomod:l1"), metrics=("loss",))


def test_outputs_named_by_index_key_or_attribute():
    class Out:
        def __init__(self, z):
            self.scores = z

    class Multi(nn.Module):
        def __init__(self, kind):
            super().__init__()
            self.fc = nn.Linear(4, 3)
            self.kind = kind

        def forward(self, x):
            z = self.fc(x)
            return {"tuple": (z.sum(), z), "obj": Out(z), "dict": {"scores": z}}[self.kind]

    x = torch.randn(10, 4)
    y = torch.randint(0, 3, (10,))
    torch.manual_seed(0)
    ref = evaluate_model(Multi("obj"), (x, y), task=Task(output="scores"))
    for kind, key in (("tuple", 1), ("dict", "scores")):
        torch.manual_seed(0)
        assert evaluate_model(Multi(kind), (x, y), task=Task(output=key)) == ref
    with pytest.raises(
        BasinscopeError, match=r"has no 'logits': name where its prediction is with --output-key"
    ):
        evaluate_model(Multi("dict"), (x, y), task=Task(output="logits"))


class ShardedTokens(Dataset):
    """Token examples made on the fly: a dataset that is never held in memory."""

    def __init__(self, n):
        self.d = token_data(n)

    def __len__(self):
        return len(self.d["labels"])

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.d.items()}


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_a_dataloader_is_streamed_and_gives_the_numbers_of_the_same_batches_in_memory(strategy):
    torch.manual_seed(0)
    model = TokenNet()
    loader = DataLoader(ShardedTokens(37), batch_size=8)
    batches = as_batches(loader)
    assert isinstance(batches, StreamingBatches)
    assert batches.num_examples == 37 and len(batches) == 5
    basis, _ = line_points(model, ALPHAS)
    kw = dict(metrics=("loss", "accuracy"), dtype=torch.float64, strategy=strategy)
    streamed = evaluate_points(
        EvalJob(model, basis, {"train": loader}, **kw), ALPHAS[:, None], chunk_size=2
    )
    in_memory = evaluate_points(
        EvalJob(model, basis, {"train": list(loader)}, **kw), ALPHAS[:, None], chunk_size=2
    )
    for k, v in in_memory.values.items():
        np.testing.assert_array_equal(streamed.values[k], v)


def test_a_dict_of_tensors_is_a_dataset_not_a_set_of_splits():
    torch.manual_seed(0)
    model = TokenNet()
    data = token_data()
    whole = evaluate_model(model, data, dtype=torch.float64, batch_size=8)
    parts = evaluate_model(model, {"train": dict_batches(data, 8)}, dtype=torch.float64)
    assert whole == pytest.approx(parts, abs=1e-12)


def test_bad_batches_are_explained():
    model = TokenNet()
    data = token_data()
    del data["labels"]
    with pytest.raises(
        BasinscopeError,
        match=r"a dict batch needs a target key .*keys \['attention_mask', 'input_ids'\]\. Name it with Task\(targets=...\) or --targets-key",
    ):
        evaluate_model(model, dict_batches(data, 8))
    data = token_data()
    with pytest.raises(BasinscopeError, match=r"the batch has no input keys \['mask'\]"):
        evaluate_model(model, dict_batches(data, 8), task=Task(inputs=("input_ids", "mask")))
    with pytest.raises(
        BasinscopeError, match="unknown loss 'hinge': expected one of cross_entropy, mse, model"
    ):
        Task(loss="hinge")
    with pytest.raises(
        BasinscopeError, match=r"loss 'model' reads the model's own .loss, but its output"
    ):
        evaluate_model(
            nn.Linear(4, 3), (torch.randn(5, 4), torch.zeros(5).long()), task=Task(loss="model")
        )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mixed_precision_evaluates_near_float32_and_keeps_float32_weights(dtype):
    model, x, y = regression(n=64)
    ref = evaluate_model(model, (x, y), task=Task(loss="mse"), metrics=("loss",))
    low = evaluate_model(model, (x, y), task=Task(loss="mse"), metrics=("loss",), dtype=dtype)
    # a 16-bit matmul: about 3 significant digits (bfloat16 has 8 mantissa bits)
    assert low["train_loss"] == pytest.approx(ref["train_loss"], rel=3e-2)
    assert next(model.parameters()).dtype == torch.float32
    job = EvalJob(
        model,
        PointBasis(get_params(model), (), get_buffers(model)),
        {"t": (x, y)},
        dtype=dtype,
        task=Task(loss="mse"),
        metrics=("loss",),
    )
    ev = job.build()
    assert ev.dtype == torch.float32 and ev.autocast == dtype


def test_a_loss_that_does_not_fit_the_targets_is_named_before_any_work():
    from basinscope.engine import check_model_data

    x, labels = torch.randn(6, 4), torch.arange(6) % 3
    with pytest.raises(
        BasinscopeError,
        match=r"the loss mse cannot compare the model's prediction \(shape \(4, 3\)\) with the "
        r"targets of the data \(shape \(4,\), torch.int64\): .*class labels take --loss "
        r"cross_entropy",
    ):
        check_model_data(nn.Linear(4, 3), (x, labels), task=Task(loss="mse"))
    with pytest.raises(
        BasinscopeError,
        match=r"floating-point targets of shape \(6, 3\) \(regression targets\), but the loss "
        r"is cross-entropy on class labels: pass --loss mse",
    ):
        check_model_data(nn.Linear(4, 3), (x, torch.randn(6, 3)))
