"""Curvature of any model through the task adapter, in memory and streamed.

Two models a user brings: an ``nn.Sequential`` regression with MSE and a keyword token
model (ids + mask (+ labels) -> {"logits", "loss"}, like a Hugging Face classifier) with
cross-entropy or its own loss. Every operator is checked against dense float64 references
built by hand: ``torch.autograd.functional`` Hessians and Jacobians of a function of the
flat parameter vector that calls the model the way a user would (``model(x)``,
``model(**batch)``) on the whole dataset at once and applies the stated loss.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.utils.data import DataLoader, Dataset, TensorDataset

from basinscope.analyses.hessian import HessianSpec, hessian_analysis
from basinscope.analyses.hessian_map import curvature_map, hessian_map
from basinscope.analyses.sharpness import average_sharpness, m_sharpness, worst_case_sharpness
from basinscope.curvature.loss import EmpiricalLoss, FirstExamples, first_examples
from basinscope.curvature.operators import EFOperator, GGNOperator, HessianOperator
from basinscope.engine import StreamingBatches, Task
from basinscope.errors import BasinscopeError
from task_models import TokenNet, token_data

METHODS = ("forward-over-reverse", "reverse-over-forward", "double-backward")


# -- the models and data (as in tests/engine/test_task.py) -----------------------------------
class CheckingTokenNet(TokenNet):
    """Data-dependent control flow, which ``vmap`` cannot batch."""

    def forward(self, input_ids, attention_mask, labels=None):
        if bool((attention_mask.sum(1) == 0).any()):
            raise ValueError("an example without tokens")
        return super().forward(input_ids, attention_mask, labels)


class Tokens(Dataset):
    """Token examples one at a time (a DataLoader collates them into dict batches); records
    which examples were read."""

    def __init__(self, n=37):
        self.d = token_data(n)
        self.read: set[int] = set()

    def __len__(self):
        return len(self.d["labels"])

    def __getitem__(self, i):
        self.read.add(int(i))
        return {k: v[i] for k, v in self.d.items()}


def regression(n=29, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = torch.randn(n, 2, generator=g)
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)), x, y


def token_model(cls=TokenNet):
    torch.manual_seed(0)
    return cls()


# -- dense float64 references ---------------------------------------------------------------
class Flat:
    """The model as a function of its flat float64 parameter vector, called as a user would
    on the whole dataset at once: ``prediction(theta)`` and ``loss(theta)``."""

    def __init__(self, model, call, loss_of_output, prediction_of_output):
        self.model = copy.deepcopy(model).double().eval()
        self.params = dict(self.model.named_parameters())
        self.theta = torch.cat([p.detach().reshape(-1) for p in self.params.values()])
        self.call, self.loss_of, self.pred_of = call, loss_of_output, prediction_of_output

    def _output(self, theta):
        ps, i = {}, 0
        for name, p in self.params.items():
            ps[name] = theta[i : i + p.numel()].view(p.shape)
            i += p.numel()
        return self.call(lambda *a, **k: functional_call(self.model, ps, a, k))

    def loss(self, theta):
        return self.loss_of(self._output(theta))

    def prediction(self, theta):
        return self.pred_of(self._output(theta))

    def hessian(self):
        return torch.autograd.functional.hessian(self.loss, self.theta)

    def ggn(self, loss_of_prediction):
        """``J^T H_out J``: J the Jacobian of every prediction, H_out the Hessian of the
        loss (over the whole dataset) in the predictions."""
        pred = self.prediction(self.theta).detach()
        jac = torch.autograd.functional.jacobian(self.prediction, self.theta)
        jac = jac.reshape(pred.numel(), -1)
        h_out = torch.autograd.functional.hessian(
            lambda p: loss_of_prediction(p.view(pred.shape)), pred.reshape(-1)
        )
        return jac.T @ h_out @ jac


def mse_case():
    model, x, y = regression()
    xd, yd = x.double(), y.double()
    flat = Flat(model, lambda f: f(xd), lambda out: F.mse_loss(out, yd), lambda out: out)
    return model, (x, y), flat, lambda p: F.mse_loss(p, yd)


def token_case(loss: str, cls=TokenNet):
    model = token_model(cls)
    data = token_data()
    inputs = {k: data[k] for k in ("input_ids", "attention_mask")}
    labels = data["labels"]
    if loss == "model":  # the labels go to the model, which returns its own loss
        flat = Flat(model, lambda f: f(**data), lambda out: out["loss"], lambda out: out["logits"])
    else:
        flat = Flat(
            model,
            lambda f: f(**inputs),
            lambda out: F.cross_entropy(out["logits"], labels),
            lambda out: out["logits"],
        )
    return model, data, flat, lambda p: F.cross_entropy(p, labels)


CASES = {
    "mse": (mse_case, Task(loss="mse")),
    "tokens-ce": (lambda: token_case("cross_entropy"), Task()),
    "tokens-model": (lambda: token_case("model"), Task(loss="model")),
}


def _loader(name, data):
    if name == "mse":
        return DataLoader(TensorDataset(*data), batch_size=8)
    return DataLoader(Tokens(), batch_size=8)


def assert_close(got, want, tol):
    """Every entry within ``tol`` of the reference's largest entry (float64 throughout)."""
    got, want = (
        torch.as_tensor(got, dtype=torch.float64),
        torch.as_tensor(want, dtype=torch.float64),
    )
    scale = max(1.0, float(want.abs().max()))
    err = float((got - want).abs().max())
    assert err <= tol * scale, f"max error {err:.3e} > {tol:.0e} * {scale:.3g}"


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    make, task = CASES[request.param]
    model, data, flat, loss_of_prediction = make()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # functorch's jit inside jacfwd
        h = flat.hessian()
    return request.param, model, data, task, flat, h, loss_of_prediction


# -- Hessian, GGN, Fisher ----------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_hvps_equal_the_dense_hessian_in_memory_and_streamed(case, method):
    name, model, data, task, flat, h, _ = case
    v = torch.randn(
        len(flat.theta), dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    for source in (data, _loader(name, data)):
        op = HessianOperator(model, source, task=task, method=method, batch_size=8)
        torch.testing.assert_close(op.empirical_loss.theta, flat.theta, rtol=0, atol=0)
        assert op.empirical_loss.value() == pytest.approx(float(flat.loss(flat.theta)), rel=1e-12)
        assert_close(op.matvec(v), h @ v, 1e-8)
        vs = torch.stack([v, -2 * v, v.flip(0)], 1)
        assert_close(op.matmat(vs), h @ vs, 1e-8)
        assert op.semantics["task"] == task.describe()
        assert op.num_examples == (29 if name == "mse" else 37)
    assert isinstance(op.batches, StreamingBatches)  # the loader is read batch by batch


def test_ggn_products_equal_dense_jacobians(case):
    name, model, data, task, flat, _, loss_of_prediction = case
    if task.model_loss:
        pytest.skip("the GGN needs a loss of the prediction (its error is tested below)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ref = flat.ggn(loss_of_prediction)
    v = torch.randn(
        len(flat.theta), dtype=torch.float64, generator=torch.Generator().manual_seed(2)
    )
    for source in (data, _loader(name, data)):
        op = GGNOperator(model, source, task=task, batch_size=8)
        assert_close(op.matvec(v), ref @ v, 1e-8)
    assert_close(op.dense(), ref, 1e-8)


def _ef_reference(flat, data, name):
    """``1/N sum_n g_n g_n^T``, g_n the gradient of example n's loss, one call per example."""
    if name == "mse":
        x, y = (t.double() for t in data)
        examples = [(lambda f, i=i: f(x[i : i + 1]), y[i : i + 1]) for i in range(len(y))]
        loss = F.mse_loss
    else:
        inputs = {k: data[k] for k in ("input_ids", "attention_mask")}
        examples = [
            (
                lambda f, i=i: f(**{k: v[i : i + 1] for k, v in inputs.items()}),
                data["labels"][i : i + 1],
            )
            for i in range(len(data["labels"]))
        ]
        loss = F.cross_entropy
    rows = []
    for call, target in examples:
        one = Flat(flat.model, call, lambda out, t=target: loss(flat.pred_of(out), t), flat.pred_of)
        rows.append(torch.autograd.functional.jacobian(one.loss, flat.theta))
    g = torch.stack(rows)
    return g.T @ g / len(rows)


def test_empirical_fisher_with_dict_inputs_by_vmap_and_by_a_loop():
    model, data, flat, _ = token_case("cross_entropy")
    ref = _ef_reference(flat, data, "tokens")
    v = torch.randn(
        len(flat.theta), dtype=torch.float64, generator=torch.Generator().manual_seed(3)
    )
    op = EFOperator(model, data, batch_size=8)
    assert_close(op.matvec(v), ref @ v, 1e-10)
    assert op.semantics["per_example"] == "vmap"
    # a model vmap cannot batch (data-dependent control flow): one example at a time
    loopy = CheckingTokenNet()
    loopy.load_state_dict(model.state_dict())
    op = EFOperator(loopy, _loader("tokens", data), batch_size=8)
    assert_close(op.matvec(v), ref @ v, 1e-10)
    assert op.semantics["per_example"] == "loop"


def test_empirical_fisher_of_a_regression():
    model, data, flat, _ = mse_case()
    ref = _ef_reference(flat, data, "mse")
    op = EFOperator(model, data, task=Task(loss="mse"), batch_size=8)
    assert_close(op.dense(), ref, 1e-10)


def test_the_models_own_loss_has_the_hessian_of_cross_entropy():
    model, data, _, _ = token_case("model")
    own = HessianOperator(model, data, task=Task(loss="model"), method="double-backward")
    ce = HessianOperator(model, data, method="double-backward")
    assert_close(own.dense(), ce.dense(), 1e-12)


# -- the analyses ---------------------------------------------------------------------------
def test_top_eigenvalues_equal_the_dense_hessian_in_memory_and_streamed(case):
    name, model, data, task, _, h, _ = case
    want = torch.linalg.eigvalsh(h).flip(0)[:3].numpy()
    reports = []
    for source in (data, _loader(name, data)):
        rep = hessian_analysis(
            model, source, task=task, k_top=3, k_bottom=0, tol=1e-10, trace="exact", batch_size=8
        )
        np.testing.assert_allclose(rep.top.eigenvalues, want, rtol=1e-6, atol=1e-10)
        assert rep.top.all_converged
        assert rep.trace.estimate == pytest.approx(float(torch.trace(h)), rel=1e-9, abs=1e-12)
        assert rep.semantics["task"] == task.describe()
        assert f"of {task.loss_name} over" in rep.summary()[0]
        reports.append(rep)
    np.testing.assert_allclose(reports[0].top.eigenvalues, reports[1].top.eigenvalues, rtol=1e-9)


def test_ggn_spectrum_and_per_module_blocks_through_the_task():
    model, data, flat, loss_of_prediction = mse_case()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ref = flat.ggn(loss_of_prediction)
    rep = hessian_analysis(
        model,
        _loader("mse", data),
        operator="ggn",
        task=Task(loss="mse"),
        k_top=2,
        k_bottom=0,
        tol=1e-10,
        trace="none",
        per_module=True,
    )
    want = torch.linalg.eigvalsh(ref).flip(0)[:2].numpy()
    np.testing.assert_allclose(rep.top.eigenvalues, want, rtol=1e-6)
    # the blocks' exact traces add up to the trace of the whole matrix
    total = sum(m.trace.estimate for m in rep.per_module)
    assert total == pytest.approx(float(torch.trace(ref)), rel=1e-9)
    assert all(m.trace.semantics["task"]["loss"] == "mse" for m in rep.per_module)


def test_curvature_map_center_through_the_task(tmp_path):
    model, data, flat, _ = token_case("cross_entropy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        evals = torch.linalg.eigvalsh(flat.hessian()).numpy()
    grid = dict(alphas=np.array([0.0, 0.3]), betas=np.array([0.0]))
    land = curvature_map(
        model, _loader("tokens", data), tol=1e-10, max_iter=200, task=Task(), **grid
    )
    ds = land.dataset
    assert ds["train_lambda_max"].values[0, 0] == pytest.approx(evals[-1], rel=1e-6)
    assert ds["train_lambda_min"].values[0, 0] == pytest.approx(evals[0], rel=1e-5, abs=1e-9)
    assert '"loss": "cross_entropy"' in ds.attrs["task"]
    spec = HessianSpec(subset=20, dtype="float32", method="double-backward")
    small = hessian_map(model, data, spec, alphas=np.array([0.0]), betas=np.array([0.0]))
    one = hessian_analysis(
        model,
        first_examples(data, 20),
        k_top=1,
        k_bottom=1,
        trace="none",
        tol=1e-6,
        dtype="float32",
        method="double-backward",
    )
    assert small.dataset["train_lambda_max"].values[0, 0] == pytest.approx(
        float(one.top.eigenvalues[0]), rel=1e-3
    )


def test_sharpness_through_the_task_equals_a_brute_force_loss():
    model, data, flat, _ = token_case("model")
    own = worst_case_sharpness(
        model, data, task=Task(loss="model"), steps=2, restarts=1, dtype="float64", batch_size=8
    )
    ce = worst_case_sharpness(model, data, steps=2, restarts=1, dtype="float64", batch_size=8)
    assert own.base_loss == pytest.approx(float(flat.loss(flat.theta)), rel=1e-12)
    assert own.value == pytest.approx(ce.value, rel=1e-9)
    assert own.semantics["task"]["loss"] == "model"
    streamed = average_sharpness(
        model, _loader("tokens", data), samples=3, dtype="float64", task=Task()
    )
    memory = average_sharpness(model, data, samples=3, dtype="float64", task=Task())
    assert streamed.base_loss == pytest.approx(float(flat.loss(flat.theta)), rel=1e-12)
    np.testing.assert_allclose(streamed.values, memory.values, rtol=1e-9)
    # m-sharpness gathers the examples of its batches from a stream as from memory
    a = m_sharpness(model, _loader("tokens", data), m=10, dtype="float64", seed=4)
    b = m_sharpness(model, data, m=10, dtype="float64", seed=4, batch_size=8)
    np.testing.assert_allclose(a.values, b.values, rtol=1e-9)
    mse_model, (x, y), mse_flat, _ = mse_case()
    r = worst_case_sharpness(mse_model, (x, y), task=Task(loss="mse"), dtype="float64", steps=1)
    assert r.base_loss == pytest.approx(float(mse_flat.loss(mse_flat.theta)), rel=1e-12)


# -- streamed data: subsets and memory ---------------------------------------------------------
def test_a_subset_of_a_stream_reads_only_its_first_batches():
    model = token_model()
    dataset = Tokens()
    loader = DataLoader(dataset, batch_size=8)
    loss = EmpiricalLoss(model, loader, subset=12)
    assert loss.num_examples == 12 and isinstance(loss.batches, StreamingBatches)
    assert max(dataset.read) < 16  # the first two batches, nothing after them
    data = token_data()
    ref = EmpiricalLoss(model, {k: v[:12] for k, v in data.items()})
    assert loss.value() == pytest.approx(ref.value(), rel=1e-12)
    # first_examples of a loader is streamed too, and cut alike
    firsts = first_examples(loader, 12)
    assert isinstance(firsts, FirstExamples)
    assert [len(b["labels"]) for b in firsts] == [8, 4] and len(firsts) == 2
    lst = first_examples(list(loader), 12)
    assert [len(b["labels"]) for b in lst] == [8, 4]
    assert torch.equal(first_examples(data, 5)["input_ids"], data["input_ids"][:5])


def test_the_operator_keeps_data_and_products_on_its_device():
    model, data, _, _ = token_case("cross_entropy")
    op = HessianOperator(model, _loader("tokens", data), device="cpu", dtype="float32")
    x, _ = next(iter(op.batches))
    assert x["input_ids"].dtype == torch.int64  # token ids stay integers
    assert op.matvec(torch.ones(op.n)).dtype == torch.float32
    assert op.semantics["device"] == "cpu" and op.semantics["dtype"] == "float32"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_on_a_gpu_the_numbers_are_those_of_the_cpu():
    model, data, _, _ = token_case("cross_entropy")
    kw = dict(k_top=2, k_bottom=1, tol=1e-10, trace="none", batch_size=8)
    cpu = hessian_analysis(model, _loader("tokens", data), **kw)
    gpu = hessian_analysis(model, _loader("tokens", data), device="cuda", **kw)
    np.testing.assert_allclose(gpu.top.eigenvalues, cpu.top.eigenvalues, rtol=1e-9)
    assert gpu.semantics["device"].startswith("cuda")


# -- errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [GGNOperator, EFOperator])
def test_ggn_and_fisher_refuse_the_models_own_loss_and_name_the_fix(cls):
    model, data, _, _ = token_case("model")
    with pytest.raises(
        BasinscopeError,
        match=r"needs the loss of each example as a function of the model's prediction, but "
        r"loss 'model' is the model's own loss.*use --loss cross_entropy",
    ):
        cls(model, data, task=Task(loss="model"))
    with pytest.raises(BasinscopeError, match="use --loss cross_entropy"):
        hessian_analysis(model, data, operator="ggn", task=Task(loss="model"), trace="none")


def test_a_task_and_a_loss_fn_together_are_refused():
    model, x, y = regression()
    with pytest.raises(
        BasinscopeError,
        match=r"pass either task= .* or loss_fn= .*not both: give a task its loss as "
        r"Task\(loss=loss_fn\)",
    ):
        HessianOperator(model, (x, y), task=Task(loss="mse"), loss_fn=F.mse_loss)
    with pytest.raises(BasinscopeError, match="not both"):
        worst_case_sharpness(model, (x, y), task=Task(loss="mse"), loss_fn=F.mse_loss)


@pytest.mark.parametrize("dtype", ["bfloat16", torch.float16])
def test_mixed_precision_is_refused_with_why(dtype):
    model, x, y = regression()
    match = (
        r"for curvature and sharpness: \w+ is mixed precision for evaluating points .* need "
        r"float32 or float64"
    )
    with pytest.raises(BasinscopeError, match=match):
        HessianOperator(model, (x, y), task=Task(loss="mse"), dtype=dtype)
    with pytest.raises(BasinscopeError, match=match):
        hessian_analysis(model, (x, y), task=Task(loss="mse"), dtype=dtype)
    with pytest.raises(
        BasinscopeError,
        match=r"unknown dtype 'bfloat16' for curvature and sharpness: bfloat16 is mixed precision",
    ):
        HessianSpec(dtype="bfloat16")
