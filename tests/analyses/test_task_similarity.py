"""CKA, mistakes and ensembles through the task adapter: a keyword token model (ids + mask ->
{"logits"}) read from dicts or a DataLoader, against brute-force float64 loops that call
``model(**batch)`` by hand."""

from __future__ import annotations

import copy
import itertools
from typing import ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from basinscope.analyses.distance import MistakeSpec, mistake_analysis
from basinscope.analyses.ensembles import EnsembleSpec, ensemble, ensemble_metrics
from basinscope.analyses.instability import InstabilitySpec
from basinscope.analyses.similarity import CKASpec, cka_matrix
from basinscope.engine import Task
from basinscope.errors import BasinscopeError
from task_models import TokenNet, token_data

INPUTS = ("input_ids", "attention_mask")


class Block(nn.Module):
    """Returns a tuple, as a Hugging Face ``BertLayer`` does: ``(hidden_states,)``."""

    def __init__(self, dim=6):
        super().__init__()
        self.lin = nn.Linear(dim, dim)

    def forward(self, h):
        return (torch.tanh(self.lin(h)),)


class TupleNet(TokenNet):
    """TokenNet with a block between the embedding and the head that returns a tuple."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.block = Block(self.emb.embedding_dim)

    def forward(self, input_ids, attention_mask, labels=None):
        m = attention_mask.unsqueeze(-1).to(self.emb.weight.dtype)
        h = self.block(self.emb(input_ids))[0] * m
        return {"logits": self.head(h.sum(1) / attention_mask.sum(1, keepdim=True))}


def dict_batches(d, size):
    n = len(d["input_ids"])
    return [{k: v[i : i + size] for k, v in d.items()} for i in range(0, n, size)]


class Rows(Dataset):
    def __init__(self, d):
        self.d = d

    def __len__(self):
        return len(self.d["labels"])

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.d.items()}


def nets(cls=TokenNet, seeds=(0, 1)):
    out = []
    for s in seeds:
        torch.manual_seed(s)
        out.append(cls())
    return out


# -- brute-force float64 references ----------------------------------------------------------
def captured(model, data, names, size):
    """Each named module's output on every batch, captured by hand with ``model(**batch)``
    in float64: the first tensor of a tuple, (batch, tokens, dim) averaged over the tokens
    of the attention mask, flattened."""
    net = copy.deepcopy(model).double().eval()
    mods = dict(net.named_modules())
    rows = {n: [] for n in names}
    for b in dict_batches(data, size):
        seen = {}
        hooks = [
            mods[n].register_forward_hook(lambda _m, _i, o, n=n, seen=seen: seen.__setitem__(n, o))
            for n in names
        ]
        with torch.no_grad():
            net(**{k: b[k] for k in INPUTS})
        for h in hooks:
            h.remove()
        w = b["attention_mask"].double()
        for n in names:
            t = seen[n][0] if isinstance(seen[n], tuple) else seen[n]
            if t.ndim == 3:
                t = (t * w[..., None]).sum(1) / w.sum(1, keepdim=True)
            rows[n].append(t.reshape(len(t), -1))
    return {n: torch.cat(v) for n, v in rows.items()}


def linear_cka_ref(x, y):
    """Biased linear CKA from the N x N Grams: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))."""
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    k, ell = h @ x @ x.T @ h, h @ y @ y.T @ h
    return float((k * ell).sum() / torch.sqrt((k * k).sum() * (ell * ell).sum()))


def hsic1(k, ell):
    n = k.shape[0]
    kt, lt = k - torch.diag(torch.diag(k)), ell - torch.diag(torch.diag(ell))
    one = torch.ones(n, dtype=torch.float64)
    v = (
        torch.trace(kt @ lt)
        + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * (one @ kt @ lt @ one)
    )
    return float(v / (n * (n - 3)))


def minibatch_ref(xs, ys, size):
    """Nguyen et al.'s minibatch CKA over batches of ``size`` (a final batch < 4 dropped)."""
    sxy = sxx = syy = 0.0
    for i in range(0, len(xs), size):
        x, y = xs[i : i + size], ys[i : i + size]
        if len(x) < 4:
            continue
        k, ell = x @ x.T, y @ y.T
        sxy, sxx, syy = sxy + hsic1(k, ell), sxx + hsic1(k, k), syy + hsic1(ell, ell)
    return sxy / np.sqrt(sxx * syy)


LAYERS = ["emb", "head"]


@pytest.mark.parametrize("method", ["linear", "minibatch"])
def test_cka_between_named_submodules_of_a_keyword_model_matches_a_hand_loop(method):
    a, b = nets()
    data = token_data()
    got = cka_matrix(
        a, b, data, layers_a=LAYERS, layers_b=LAYERS, method=method, batch_size=9, dtype="float64"
    )
    acts_a = captured(a, data, LAYERS, 9)
    acts_b = captured(b, data, LAYERS, 9)
    for (i, u), (j, v) in itertools.product(enumerate(LAYERS), enumerate(LAYERS)):
        x, y = acts_a[u], acts_b[v]
        ref = linear_cka_ref(x, y) if method == "linear" else minibatch_ref(x, y, 9)
        assert got.matrix[i, j] == pytest.approx(ref, abs=1e-8)
    # minibatch drops the final batch of one example
    assert got.sequence == "masked_mean" and got.num_examples == (37 if method == "linear" else 36)
    assert got.spec.dtype == "float64" and got.spec.device == "cpu"
    assert got.task["call"] == "auto" and got.task["loss"] == "cross_entropy"
    assert next(a.parameters()).dtype == torch.float32  # the caller's models are not cast


def test_cka_from_a_dataloader_equals_cka_from_dict_data():
    a, b = nets()
    data = token_data()
    kw = dict(layers_a=LAYERS, layers_b=LAYERS, method="linear", dtype="float64")
    in_memory = cka_matrix(a, b, data, batch_size=8, **kw)
    loader = DataLoader(Rows(data), batch_size=8)
    streamed = cka_matrix(a, b, loader, **kw)
    np.testing.assert_allclose(streamed.matrix, in_memory.matrix, rtol=0, atol=1e-12)
    assert streamed.num_examples == 37
    ref = linear_cka_ref(
        captured(a, data, ["emb"], 8)["emb"], captured(b, data, ["head"], 8)["head"]
    )
    assert streamed.matrix[0, 1] == pytest.approx(ref, abs=1e-8)


def test_a_block_returning_a_tuple_uses_its_first_tensor():
    a, b = nets(TupleNet)
    data = token_data()
    got = cka_matrix(
        a,
        b,
        data,
        layers_a=["block"],
        layers_b=["block"],
        method="linear",
        dtype="float64",
        batch_size=10,
    )
    x = captured(a, data, ["block"], 10)["block"]
    y = captured(b, data, ["block"], 10)["block"]
    assert got.matrix[0, 0] == pytest.approx(linear_cka_ref(x, y), abs=1e-8)


def test_sequence_rules_mean_and_flatten_are_named_in_the_result():
    a, b = nets()
    data = token_data()
    kw = dict(layers_a=["emb"], layers_b=["emb"], method="linear", dtype="float64", batch_size=37)
    flat = cka_matrix(a, b, data, sequence="flatten", **kw)
    assert flat.sequence == "flatten"
    with torch.no_grad():
        ids = data["input_ids"]
        ea, eb = (copy.deepcopy(m.emb).double() for m in (a, b))
        ref = linear_cka_ref(ea(ids).reshape(37, -1), eb(ids).reshape(37, -1))
    assert flat.matrix[0, 0] == pytest.approx(ref, abs=1e-8)
    # a tuple batch (tensor inputs): auto flattens, as before tasks existed
    x = torch.randint(0, 11, (37, 5))
    emb_a, emb_b = nn.Sequential(a.emb), nn.Sequential(b.emb)
    auto = cka_matrix(
        emb_a,
        emb_b,
        (x, data["labels"]),
        layers_a=["0"],
        layers_b=["0"],
        method="linear",
        dtype="float64",
        batch_size=37,
    )
    assert auto.sequence == "flatten"
    mean = cka_matrix(
        emb_a,
        emb_b,
        (x, data["labels"]),
        layers_a=["0"],
        layers_b=["0"],
        method="linear",
        dtype="float64",
        batch_size=37,
        sequence="mean",
    )
    assert mean.sequence == "mean"
    with torch.no_grad():
        ref = linear_cka_ref(a.emb(x).double().mean(1), b.emb(x).double().mean(1))
    assert mean.matrix[0, 0] == pytest.approx(ref, abs=1e-8)


# -- devices and precision -----------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.device_count() > 7, reason="needs a machine without cuda:7")
def test_an_absent_device_is_a_clear_error():
    a, b = nets()
    data = token_data()
    msg = r"device 'cuda:7' is not available here \(.*\); use device cpu"
    with pytest.raises(BasinscopeError, match=msg):
        cka_matrix(a, b, data, layers_a=LAYERS, layers_b=LAYERS, device="cuda:7")
    with pytest.raises(BasinscopeError, match=msg):
        mistake_analysis(a, b, data, device="cuda:7")
    with pytest.raises(BasinscopeError, match=msg):
        ensemble_metrics([a, b], data, device="cuda:7", barriers=False)
    for spec in (CKASpec, MistakeSpec, EnsembleSpec, InstabilitySpec):
        with pytest.raises(BasinscopeError, match=msg):
            spec(device="cuda:7")


def test_specs_carry_device_and_dtype():
    for spec in (CKASpec, MistakeSpec, EnsembleSpec, InstabilitySpec):
        s = spec()
        assert (s.device, s.dtype) == ("cpu", "float32")
        assert s.replace(dtype="bfloat16").dtype == "bfloat16"
        with pytest.raises(BasinscopeError, match="unknown dtype 'float8'"):
            spec(dtype="float8")


# -- mistakes ------------------------------------------------------------------------------
def mistakes_by_hand(a, b, data, size, autocast=None):
    """The counts of :func:`mistake_analysis`, from ``model(**inputs)["logits"]`` by hand."""
    nets_ = [copy.deepcopy(m).eval() for m in (a, b)]
    if autocast is None:
        nets_ = [m.double() for m in nets_]
    preds = [[], []]
    for bt in dict_batches(data, size):
        with torch.no_grad(), torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
            for i, m in enumerate(nets_):
                preds[i].append(m(**{k: bt[k] for k in INPUTS})["logits"].argmax(1))
    pa, pb, y = torch.cat(preds[0]), torch.cat(preds[1]), data["labels"]
    ra, rb, same = pa == y, pb == y, pa == pb
    return {
        "both_right": int((ra & rb).sum()),
        "both_wrong_same": int((~ra & ~rb & same).sum()),
        "both_wrong_different": int((~ra & ~rb & ~same).sum()),
        "only_a_wrong": int((~ra & rb).sum()),
        "only_b_wrong": int((ra & ~rb).sum()),
        "agreement": float(same.double().mean()),
        "accuracy_a": float(ra.double().mean()),
        "accuracy_b": float(rb.double().mean()),
    }


def counts(r):
    return {
        "both_right": r.both_right,
        "both_wrong_same": r.both_wrong_same,
        "both_wrong_different": r.both_wrong_different,
        "only_a_wrong": r.only_a_wrong,
        "only_b_wrong": r.only_b_wrong,
        "agreement": r.agreement,
        **r.extra,
    }


def test_mistakes_of_a_keyword_model_match_a_hand_loop_in_memory_and_streamed():
    a, b = nets(seeds=(2, 5))
    data = token_data(n=60, seed=3)
    ref = mistakes_by_hand(a, b, data, 16)
    assert 0 < ref["agreement"] < 1 and ref["only_a_wrong"] + ref["only_b_wrong"] > 0
    got = mistake_analysis(a, b, data, batch_size=16, dtype="float64", split="test")
    assert counts(got) == ref and got.n == 60
    assert got.spec.dtype == "float64" and got.task["loss"] == "cross_entropy"
    streamed = mistake_analysis(a, b, DataLoader(Rows(data), batch_size=16), dtype="float64")
    assert counts(streamed) == ref
    # the model's own loss: the labels go into the call, the prediction is still .logits
    own = mistake_analysis(a, b, dict_batches(data, 16), task=Task(loss="model"), dtype="float64")
    assert counts(own) == ref


def test_mistakes_under_bfloat16_autocast_match_a_hand_autocast_loop():
    a, b = nets(seeds=(2, 5))
    data = token_data(n=60, seed=3)
    got = mistake_analysis(a, b, data, batch_size=16, dtype="bfloat16")
    assert counts(got) == mistakes_by_hand(a, b, data, 16, autocast=torch.bfloat16)
    assert got.spec.dtype == "bfloat16"
    assert next(a.parameters()).dtype == torch.float32


def test_mistakes_need_class_labels():
    torch.manual_seed(0)
    a, b = nn.Linear(4, 2), nn.Linear(4, 2)
    x, y = torch.randn(10, 4), torch.randn(10, 2)
    with pytest.raises(BasinscopeError, match=r"targets are torch.float32 values \(loss mse\)"):
        mistake_analysis(a, b, (x, y), task=Task(loss="mse"))


# -- ensembles -----------------------------------------------------------------------------
def test_ensemble_metrics_of_keyword_models_match_a_hand_loop():
    members = nets(seeds=(1, 2, 3))
    data = token_data(n=50, seed=4)
    y = data["labels"]
    with torch.no_grad():
        logits = [
            copy.deepcopy(m).double().eval()(**{k: data[k] for k in INPUTS})["logits"]
            for m in members
        ]
    probs = torch.stack([F.softmax(z, 1) for z in logits]).mean(0)
    preds = [z.argmax(1) for z in logits]
    loader = DataLoader(Rows(data), batch_size=16)
    for source in (data, loader):
        out = ensemble_metrics(members, source, barriers=False, dtype="float64", batch_size=16)
        assert out["ensemble_accuracy"] == pytest.approx(
            float((probs.argmax(1) == y).double().mean()), abs=1e-12
        )
        assert out["ensemble_nll"] == pytest.approx(float(F.nll_loss(probs.log(), y)), abs=1e-12)
        for i, z in enumerate(logits):
            assert out["member_nll"][i] == pytest.approx(float(F.cross_entropy(z, y)), abs=1e-12)
            assert out["member_accuracies"][i] == float((preds[i] == y).double().mean())
        for i, j in itertools.combinations(range(3), 2):
            d = float((preds[i] != preds[j]).double().mean())
            assert out["pairwise_disagreement"][i][j] == out["pairwise_disagreement"][j][i] == d
        assert out["n_examples"] == 50 and out["dtype"] == "float64" and out["device"] == "cpu"
        assert 0 < out["disagreement"] < 1


class Probe(TokenNet):
    """Records the dtype of its weights at every call (a class attribute: copies share it)."""

    seen: ClassVar[list] = []

    def forward(self, input_ids, attention_mask, labels=None):
        Probe.seen.append(self.emb.weight.dtype)
        return super().forward(input_ids, attention_mask, labels)


def test_dtype_float64_runs_float32_models_in_float64_on_copies():
    torch.manual_seed(0)
    a, b = Probe(), Probe()
    data = token_data()
    for run in (
        lambda: cka_matrix(a, b, data, layers_a=LAYERS, layers_b=LAYERS, dtype="float64"),
        lambda: mistake_analysis(a, b, data, dtype="float64"),
        lambda: ensemble_metrics([a, b], data, barriers=False, dtype="float64"),
    ):
        Probe.seen.clear()
        run()
        assert Probe.seen and set(Probe.seen) == {torch.float64}
    assert a.emb.weight.dtype == b.emb.weight.dtype == torch.float32


def test_a_regression_ensemble_is_refused_with_what_is_supported():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2))
    x, y = torch.randn(20, 4), torch.randn(20, 2)
    msg = (
        r"ensemble metrics are those of a classifier.*integer class labels.*the task's loss is "
        r"mse\. Regression ensembles are not supported"
    )
    with pytest.raises(BasinscopeError, match=msg):  # before any training
        ensemble(model, (x, y), method="fge", cycles=1, cycle_steps=2, task=Task(loss="mse"))
    with pytest.raises(BasinscopeError, match=msg):
        ensemble_metrics([model], (x, y), task=Task(loss="mse"))
    with pytest.raises(
        BasinscopeError, match=r"loss is cross_entropy with float32 targets of shape \(20, 2\)"
    ):
        ensemble_metrics([model], (x, y))


def test_train_receives_the_task_device_and_dtype_that_change_something():
    from basinscope.analyses.instability import train_options

    net = nn.Linear(2, 2)
    assert train_options(net, None, None, None) == {"device": None}
    assert train_options(net, Task(), "cpu", "float32") == {"device": "cpu"}
    task = Task(loss="model")
    assert train_options(net, task, None, "float64") == {
        "device": None,
        "task": task,
        "dtype": "float64",
    }
    assert train_options(net, None, None, "bfloat16")["dtype"] == "bfloat16"
    with pytest.raises(BasinscopeError, match="device 'cuda:7' is not available here"):
        train_options(net, None, "cuda:7", None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_numbers_equal_the_cpu_ones_and_the_sums_stay_there():
    from basinscope.analyses.cka import MinibatchCKA, StreamingLinearCKA

    a, b = nets()
    data = token_data()
    kw = dict(layers_a=LAYERS, layers_b=LAYERS, dtype="float64", batch_size=9)
    for method in ("linear", "minibatch"):
        cpu = cka_matrix(a, b, data, method=method, **kw)
        gpu = cka_matrix(
            a, b, DataLoader(Rows(data), batch_size=9), method=method, device="cuda", **kw
        )
        np.testing.assert_allclose(gpu.matrix, cpu.matrix, rtol=0, atol=1e-10)
        assert gpu.spec.device == "cuda"
    assert counts(mistake_analysis(a, b, data, device="cuda", dtype="float64")) == counts(
        mistake_analysis(a, b, data, dtype="float64")
    )
    on_gpu = ensemble_metrics([a, b], data, barriers=False, device="cuda", dtype="float64")
    on_cpu = ensemble_metrics([a, b], data, barriers=False, dtype="float64")
    for k in ("ensemble_accuracy", "ensemble_nll", "member_nll", "disagreement"):
        np.testing.assert_allclose(on_gpu[k], on_cpu[k], rtol=0, atol=1e-10)
    assert next(a.parameters()).device.type == "cpu"  # the caller's models stay where they were
    x = torch.randn(8, 3, device="cuda")
    for acc in (MinibatchCKA(1, 1), StreamingLinearCKA(1, 1)):
        acc.update([x], [x * 2])
        sums = acc._xy if isinstance(acc, MinibatchCKA) else acc._xy[0, 0]
        assert sums.device.type == "cuda"
