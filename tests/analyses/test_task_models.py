"""The landscape and connectivity analyses on models that are not ``(x, y)`` classifiers.

(a) an ``nn.Sequential`` regression with ``Task(loss="mse")``; (b) a keyword token model
(``model(input_ids=..., attention_mask=...)`` returning ``{"logits", "loss"}``, like a
Hugging Face classifier) with cross-entropy and with the model's own loss. Every number is
checked against a brute-force float64 loop over the same points that calls the model as a
user would (``model(x)`` / ``model(**batch)``) and applies the stated loss by hand; the
same numbers come from a DataLoader (streamed), and each result records its task.
"""

from __future__ import annotations

import copy
import inspect
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from basinscope.analyses import (
    activation_matching,
    barrier,
    basin_test,
    evaluate_curve,
    init_curve,
    interpolate,
    module_criticality,
    random_line,
    random_surface,
    rewind,
    train_curve,
    weight_matching,
)
from basinscope.analyses.alignment import (
    PermutationSpec,
    apply_permutation,
    permutation_spec,
    random_permutation,
)
from basinscope.analyses.barrier import barrier_from_curve
from basinscope.engine import Task
from basinscope.errors import BasinscopeError
from basinscope.geometry import get_params
from task_models import TokenNet, token_data


# -- models and data (TokenNet and token_data as in tests/engine/test_task.py) ---------------
class TokenMLP(TokenNet):
    """TokenNet with a hidden layer: units that alignment can permute."""

    def __init__(self, vocab=11, dim=6, hidden=7, classes=3):
        super().__init__(vocab, dim, classes)
        self.fc = nn.Linear(dim, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, input_ids, attention_mask, labels=None):
        h = self.emb(input_ids) * attention_mask.unsqueeze(-1).to(self.emb.weight.dtype)
        logits = self.head(torch.relu(self.fc(h.sum(1) / attention_mask.sum(1, keepdim=True))))
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits, labels)
        return out


class Tokens(Dataset):
    """Token examples one by one: what a DataLoader reads and collates into dict batches."""

    def __init__(self, d):
        self.d = d

    def __len__(self):
        return len(self.d["labels"])

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.d.items()}


def regression_data(n=29, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g), torch.randn(n, 2, generator=g)


def regression_model(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2))


def token_model(seed):
    torch.manual_seed(seed)
    return TokenNet()


BATCH = 8
N = {"regression": 29, "tokens": 37}  # examples: the last batch is a short one


# -- the stated losses, by hand, in float64 ------------------------------------------------
def mse_sum(net, batch):
    x, y = batch
    return float(F.mse_loss(net(x.double()), y.double(), reduction="sum")) / y.shape[1]


def ce_sum(net, batch):
    logits = net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])["logits"]
    return float(F.cross_entropy(logits, batch["labels"], reduction="sum"))


def own_sum(net, batch):
    return float(net(**batch)["loss"]) * len(batch["labels"])  # a batch mean, by its size


CASES = {
    # name: (model maker, task, the data (dataset()), the loss summed over a batch by hand)
    "mse": (regression_model, Task(loss="mse"), "regression", mse_sum),
    "ce": (token_model, Task(), "tokens", ce_sum),
    "model": (token_model, Task(loss="model"), "tokens", own_sum),
}


def dataset(kind):
    """(data in memory, the same data as a DataLoader, the brute force's batches)."""
    if kind == "regression":
        x, y = regression_data()
        loader = DataLoader(TensorDataset(x, y), batch_size=BATCH)
        return (
            (x, y),
            loader,
            [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, len(x), BATCH)],
        )
    d = token_data()
    loader = DataLoader(Tokens(d), batch_size=BATCH)
    n = len(d["labels"])
    return d, loader, [{k: v[i : i + BATCH] for k, v in d.items()} for i in range(0, n, BATCH)]


def brute(model, points, batches, loss_sum):
    """The mean loss at every parameter point: float64, one point and one batch at a time."""
    out = []
    for p in points:
        net = copy.deepcopy(model).double().eval()
        with torch.no_grad():
            for k, v in net.named_parameters():
                v.copy_(p[k])
            total = sum(loss_sum(net, b) for b in batches)
        n = sum(len(b[1]) if isinstance(b, tuple) else len(b["labels"]) for b in batches)
        out.append(total / n)
    return np.array(out)


def along(a, b, alphas):
    pa, pb = get_params(a), get_params(b)
    return [{k: pa[k].double() + t * (pb[k].double() - pa[k].double()) for k in pa} for t in alphas]


def recorded(result):
    """The result as its result.json holds it."""
    return json.loads(json.dumps(result.to_dict()))


KW = dict(dtype="float64", batch_size=BATCH, metrics=("loss",))
KW_CURVE = dict(dtype="float64", batch_size=BATCH)


# -- surfaces, lines and barriers against the brute force -----------------------------------
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("source", ["memory", "loader"])
def test_a_random_surface_is_the_brute_force_loss_on_its_grid(case, source):
    make, task, kind, loss_sum = CASES[case]
    model = make(0)
    data, loader, batches = dataset(kind)
    grid = np.array([-0.5, 0.0, 0.75])
    land = random_surface(
        model,
        data if source == "memory" else loader,
        alphas=grid,
        betas=grid,
        task=task,
        strategy="vmap",
        **KW,
    )
    c, (d0, d1) = land.center, land.directions
    points = [
        {k: c[k].double() + a * d0[k].double() + b * d1[k].double() for k in c}
        for a in grid
        for b in grid
    ]
    want = brute(model, points, batches, loss_sum).reshape(3, 3)
    np.testing.assert_allclose(land.dataset["train_loss"].values, want, rtol=0, atol=1e-6)
    assert land.dataset.attrs["n_train"] == N[kind]
    told = recorded(land)["evaluation"]["task"]
    assert told == task.describe() and told["loss"] == task.loss_name
    assert land.dataset.attrs["metric_loss"] == task.loss_metric().definition


@pytest.mark.parametrize("case", sorted(CASES))
def test_interpolation_is_the_brute_force_loss_and_a_loader_gives_the_same_numbers(case):
    make, task, kind, loss_sum = CASES[case]
    a, b = make(0), make(1)
    data, loader, batches = dataset(kind)
    alphas = np.array([-0.5, 0.0, 0.3, 1.0, 1.5])
    lines = [
        interpolate(a, b, d, alphas=alphas, task=task, strategy="loop", **KW)
        for d in (data, loader)
    ]
    want = brute(a, along(a, b, alphas), batches, loss_sum)
    for line in lines:
        np.testing.assert_allclose(line.dataset["train_loss"].values, want, rtol=0, atol=1e-6)
        assert recorded(line)["evaluation"]["task"]["loss"] == task.loss_name
    np.testing.assert_allclose(*(ln.dataset["train_loss"].values for ln in lines), atol=1e-12)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("source", ["memory", "loader"])
def test_a_barrier_is_the_brute_force_barrier_of_its_curve(case, source):
    make, task, kind, loss_sum = CASES[case]
    a, b = make(0), make(1)
    data, loader, batches = dataset(kind)
    res = barrier(
        a,
        b,
        data if source == "memory" else loader,
        metric="loss",
        num_points=5,
        refine_points=3,
        refine_rounds=1,
        task=task,
        dtype="float64",
        batch_size=BATCH,
    )
    assert res.refined and len(res.alphas) > 5
    want = brute(a, along(a, b, res.alphas), batches, loss_sum)
    np.testing.assert_allclose(res.values, want, rtol=0, atol=1e-6)
    value, worst = barrier_from_curve(res.alphas, want, "linear")
    assert res.value == pytest.approx(value, abs=1e-6) and res.worst_alpha == worst
    assert res.num_examples == N[kind]
    assert recorded(res)["evaluation"]["task"] == task.describe()


def test_a_bootstrapped_barrier_of_the_models_own_loss_is_refused_by_the_engine():
    a, b = token_model(0), token_model(1)
    with pytest.raises(
        BasinscopeError,
        match=r"per-example values \(a barrier's bootstrap\) need a per-example loss, and "
        r"loss 'model' is one mean per batch",
    ):
        barrier(
            a, b, token_data(), metric="loss", num_points=3, bootstrap=5, task=Task(loss="model")
        )
    # the error (1 - accuracy) is per example under any classification loss
    res = barrier(
        a, b, token_data(), num_points=3, refine=False, bootstrap=5, task=Task(loss="model")
    )
    assert res.ci is not None and res.metric == "error"


def test_the_error_barrier_of_a_regression_says_to_use_the_loss():
    a, b = regression_model(0), regression_model(1)
    with pytest.raises(
        BasinscopeError,
        match=r"metric 'error' compares argmax\(prediction\) with class labels, and the loss "
        r"is mse .*: use metric='loss' \(--metric loss\)",
    ):
        barrier(a, b, regression_data(), task=Task(loss="mse"))


def test_a_regression_landscape_drops_accuracy_with_a_warning():
    with pytest.warns(UserWarning, match="accuracy not measured: defined for class labels only"):
        land = random_line(
            regression_model(0), regression_data(), alphas=[0.0, 1.0], task=Task(loss="mse")
        )
    assert list(land.dataset.data_vars) == ["train_loss"]


def test_mixed_precision_is_near_float32_and_recorded():
    model, data = token_model(0), token_data()
    kw = dict(alphas=[-1.0, 0.0, 1.0], metrics=("loss",), batch_size=BATCH)
    ref = random_line(model, data, **kw)
    low = random_line(model, data, dtype="bfloat16", **kw)
    np.testing.assert_allclose(
        low.dataset["train_loss"].values, ref.dataset["train_loss"].values, rtol=3e-2
    )
    assert low.dataset.attrs["dtype"] == "bfloat16" and low.spec.eval.dtype == "bfloat16"
    assert next(model.parameters()).dtype == torch.float32


def test_a_landscape_run_folder_records_a_task_and_keeps_runs_of_other_tasks_apart(tmp_path):
    from basinscope.store import paths

    model, (x, y) = regression_model(0), regression_data()
    kw = dict(alphas=[0.0, 1.0], metrics=("loss",), run_dir=tmp_path / "run")
    mse = random_line(model, (x, y), task=Task(loss="mse"), **kw)
    stored = json.loads((tmp_path / "run" / paths.RESULT).read_text())
    assert stored["evaluation"]["task"]["loss"] == "mse"
    assert stored["evaluation"]["task"]["definition"].startswith("mean squared error")
    with pytest.raises(BasinscopeError):  # the folder holds the MSE run, not another task's
        random_line(model, (x, y), task=Task(loss=lambda p, t: (p - t).abs().mean(1)), **kw)
    again = random_line(model, (x, y), task=Task(loss="mse"), **kw)  # found, not recomputed
    assert again.evaluation["seconds"] == mse.evaluation["seconds"]


# -- the other analyses take the task too ---------------------------------------------------
def test_rewind_and_criticality_of_a_regression_use_its_loss():
    final, init = regression_model(0), regression_model(1)
    (x, y) = regression_data()
    with pytest.warns(UserWarning, match="accuracy not measured"):
        r = rewind(final, init, (x, y), task=Task(loss="mse"), dtype="float64")
    want = brute(final, [{k: v.double() for k, v in get_params(final).items()}], [(x, y)], mse_sum)
    assert r.baseline == {"loss": pytest.approx(want[0], abs=1e-9)}
    assert r.task["loss"] == "mse" and recorded(r)["task"]["loss"] == "mse"
    assert "acc. drop" not in "\n".join(r.summary())
    c = module_criticality(
        final, init, (x, y), alphas=[0.0, 1.0], sigmas=[0.1], samples=2, task=Task(loss="mse")
    )
    assert c.baseline_loss == pytest.approx(want[0], abs=1e-5)
    assert recorded(c)["settings"]["task"]["loss"] == "mse"


def test_a_basin_test_of_a_token_model_reads_a_loader():
    models = [token_model(s) for s in range(2)]
    kw = dict(delta=0.1, samples=2, pairs=2, dtype="float64", batch_size=BATCH)
    data, loader, _ = dataset("tokens")
    r = basin_test(models, data, task=Task(loss="model"), **kw)
    s = basin_test(models, loader, task=Task(loss="model"), **kw)
    assert r.inside_losses == pytest.approx(s.inside_losses, abs=1e-12)
    assert recorded(r)["settings"]["task"]["loss"] == "model"


def test_a_curve_of_a_regression_on_the_line_is_the_line():
    a, b = regression_model(0), regression_model(1)
    data, loader, batches = dataset("regression")
    ts = np.array([0.0, 0.25, 1.0])
    for d in (data, loader):
        ev = evaluate_curve(
            a, init_curve(a, b), d, ts=ts, metrics=("loss",), task=Task(loss="mse"), **KW_CURVE
        )
        want = brute(a, along(a, b, ts), batches, mse_sum)
        np.testing.assert_allclose(ev.curve["train_loss"].values, want, rtol=0, atol=1e-6)
        np.testing.assert_allclose(ev.line["train_loss"].values, want, rtol=0, atol=1e-6)
        assert recorded(ev)["settings"]["task"]["loss"] == "mse"


@pytest.mark.skipif(
    "task" not in inspect.signature(__import__("basinscope.training").training.train).parameters,
    reason="basinscope.training.train(task=...) is not there yet",
)
def test_a_curve_trains_with_the_task():
    # the model's own loss is its cross-entropy: the same updates as basinscope's
    a, b = token_model(0), token_model(1)
    kw = dict(steps=3, batch_size=BATCH, lr=0.1)
    own = train_curve(a, b, token_data(), task=Task(loss="model"), **kw)
    ce = train_curve(a, b, token_data(), task=Task(), **kw)
    assert own.config["task"]["loss"] == "model" and len(own.history["loss"]) == 3
    np.testing.assert_allclose(own.history["loss"], ce.history["loss"], rtol=1e-6)
    for k, v in get_params(a).items():
        assert torch.equal(own.points[0][k], v)
    # a full batch of a regression: the first loss is the MSE at phi(t_1) on the line
    a, b = regression_model(0), regression_model(1)
    x, y = regression_data()
    res = train_curve(a, b, (x, y), steps=1, batch_size=len(x), task=Task(loss="mse"))
    t = res.history["t"][0]
    want = brute(a, along(a, b, [t]), [(x, y)], mse_sum)[0]
    assert res.history["loss"][0] == pytest.approx(want, rel=1e-6)
    assert res.config["task"]["loss"] == "mse" and res.config["batch_size"] == len(x)


# -- alignment with keyword inputs: traced graphs and hooks ----------------------------------
def _permuted_pair():
    torch.manual_seed(0)
    a = TokenMLP().eval()
    x = {k: v[:8] for k, v in token_data().items() if k != "labels"}
    spec = permutation_spec(a, x)
    assert dict(spec.sizes) == {"P_fc": 7}
    perms = random_permutation(spec, seed=3)
    return a, apply_permutation(a, spec, perms), spec, perms


@pytest.mark.parametrize("loss", ["cross_entropy", "model"])
def test_activation_matching_of_a_keyword_model_recovers_a_known_permutation(loss):
    a, b, _, perms = _permuted_pair()
    hooks = PermutationSpec.from_groups(
        {"P_fc": [("fc.weight", 0), ("fc.bias", 0), ("head.weight", 1)]},
        a,
        producers={"P_fc": ["fc"]},
    )
    for s in (None, hooks):  # the traced graph's sites, then forward hooks on modules
        res = activation_matching(a, b, token_data(), s, num_examples=32, task=Task(loss=loss))
        assert res.permutations["P_fc"] == torch.argsort(perms["P_fc"]).tolist()
        assert res.max_output_diff <= 1e-6 and recorded(res)["task"]["loss"] == loss
        for k, v in a.state_dict().items():
            assert torch.equal(res.model.state_dict()[k], v), k


def test_weight_matching_of_a_keyword_model_takes_keyword_inputs():
    a, b, _, perms = _permuted_pair()
    x = {k: v[:8] for k, v in token_data().items() if k != "labels"}
    res = weight_matching(a, b, example_input=x)
    assert res.permutations["P_fc"] == torch.argsort(perms["P_fc"]).tolist()
    with pytest.raises(
        BasinscopeError, match=r"TokenMLP.forward takes .* \(not arguments: \['ids'\]\)"
    ):
        permutation_spec(a, {"ids": x["input_ids"]})


def test_the_curve_module_calls_the_network_with_keyword_inputs():
    """What the trainer runs (train_curve): the network at phi(t), called as the task calls it."""
    from basinscope.analyses.curves import _CurvePath

    a, b = token_model(0), token_model(1)
    batch = {k: v[:8] for k, v in token_data().items()}
    path = _CurvePath(a, init_curve(a, b))
    for t, end in ((0.0, a), (1.0, b)):
        path.t = t
        with torch.no_grad():
            got, want = path(**batch), end(**batch)
        torch.testing.assert_close(got["logits"], want["logits"], rtol=0, atol=1e-6)
        torch.testing.assert_close(got["loss"], want["loss"], rtol=0, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_the_numbers_are_the_cpus():
    a, b = token_model(0), token_model(1)
    data, loader, _ = dataset("tokens")
    alphas = np.array([0.0, 0.5, 1.0])
    for d in (data, loader):
        kw = dict(alphas=alphas, task=Task(loss="model"), **KW)
        cpu = interpolate(a, b, d, **kw).dataset["train_loss"].values
        gpu = interpolate(a, b, d, device="cuda", **kw).dataset["train_loss"].values
        np.testing.assert_allclose(gpu, cpu, rtol=0, atol=1e-9)
        res = barrier(a, b, d, metric="loss", num_points=3, device="cuda", **KW_CURVE)
        assert res.evaluation["device"] == "cuda"
    low = interpolate(a, b, data, alphas=alphas, device="cuda", dtype="bfloat16", metrics=("loss",))
    np.testing.assert_allclose(low.dataset["train_loss"].values, cpu, rtol=3e-2)
