"""Real ecosystem models end to end through the command line: a Hugging Face BERT on token
sequences (dict batches, ``model(**batch)``, ``.logits`` or its own ``.loss``) and an
``nn.Sequential`` regression with MSE. Each command's numbers equal a brute-force float64
loop that calls the model the way a user would and applies the stated loss."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from basinscope.data import load_tokens, resolve_data
from basinscope.models import build_model, load_weights, save_weights

pytestmark = pytest.mark.slow

QUIET = ["--no-progress", "--no-plot"]
F64 = ["--dtype", "float64", "--strategy", "loop"]

REGNET = """
import torch
from torch import nn


def make(hidden=5):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 2))
"""


@pytest.fixture
def regression(tmp_path, monkeypatch):
    """A user's module and .npz of float targets (n, 2), in the working folder."""
    (tmp_path / "regnet.py").write_text(REGNET)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    g = np.random.default_rng(0)
    x = g.normal(size=(48, 4)).astype(np.float32)
    w = g.normal(size=(4, 2)).astype(np.float32)
    y = np.tanh(x @ w) + 0.1 * g.normal(size=(48, 2)).astype(np.float32)
    np.savez(tmp_path / "reg.npz", x=x[:32], y=y[:32], x_test=x[32:], y_test=y[32:])
    import regnet

    a = regnet.make()
    torch.manual_seed(1)
    b = regnet.make()
    with torch.no_grad():
        for p in b.parameters():
            p.add_(0.3 * torch.randn_like(p))
    files = [
        save_weights(a, tmp_path / "a.safetensors"),
        save_weights(b, tmp_path / "b.safetensors"),
    ]
    model = ["--model", "regnet:make", "--data", "reg.npz", "--loss", "mse"]
    return {"model": model, "files": files, "make": regnet.make, "tmp": tmp_path}


def _json(cli, *args):
    res = cli(*args, *QUIET, "--json")
    assert res.code == 0, res.err
    assert "Traceback" not in res.err
    return json.loads(res.out)


def _net(make, path):
    net = make()
    load_weights(net, path)
    return net.double().eval()


def _mse(net, data):
    with torch.no_grad():
        return float(F.mse_loss(net(data.x.double()), data.y.double()))


def _line(make, files, alphas, value):
    a, b = _net(make, files[0]), _net(make, files[1])
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    out = []
    for t in alphas:
        net = _net(make, files[0])
        with torch.no_grad():
            for k, p in net.named_parameters():
                p.copy_(pa[k] + t * (pb[k] - pa[k]))
        out.append(value(net))
    return np.array(out)


def test_regression_interpolate_surface_hessian_barrier(cli, regression):
    r, tmp = regression, regression["tmp"]
    a_file, b_file = r["files"]
    train, test = resolve_data("reg.npz", "train"), resolve_data("reg.npz", "test")
    # interpolate from A to B: train and test MSE at every alpha
    line = _json(cli, "interpolate", *r["model"], "--weights", a_file, "--to", b_file,
                 "--xrange", "0:1:5", *F64, "--out", tmp / "line")  # fmt: skip
    ds = line["dataset"]["data_vars"]
    alphas = np.linspace(0, 1, 5)
    for split, data in (("train", train), ("test", test)):
        ref = _line(r["make"], r["files"], alphas, lambda n, d=data: _mse(n, d))
        np.testing.assert_allclose(ds[f"{split}_loss"]["data"], ref, rtol=0, atol=1e-6)
    assert "train_accuracy" not in ds  # not defined for MSE
    # a surface: the centre is model A's loss
    surf = _json(cli, "surface", *r["model"], "--weights", a_file, "--xrange", "-1:1:3",
                 "--yrange", "-1:1:3", *F64, "--out", tmp / "surf")  # fmt: skip
    grid = np.asarray(surf["dataset"]["data_vars"]["train_loss"]["data"])
    assert grid.shape == (3, 3)
    assert grid[1, 1] == pytest.approx(_mse(_net(r["make"], a_file), train), abs=1e-9)
    # the Hessian's top eigenvalues against a dense float64 Hessian of the train MSE
    hess = _json(cli, "hessian", *r["model"], "--weights", a_file, "--split", "train",
                 "--top", "2", "--out", tmp / "hess")  # fmt: skip
    net = _net(r["make"], a_file)
    names = [k for k, _ in net.named_parameters()]
    shapes = [p.shape for _, p in net.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in net.parameters()])

    def loss(v):
        ps, i = {}, 0
        for k, s in zip(names, shapes):
            ps[k] = v[i : i + s.numel()].view(s)
            i += s.numel()
        out = torch.func.functional_call(net, ps, (train.x.double(),))
        return F.mse_loss(out, train.y.double())

    dense = torch.autograd.functional.hessian(loss, theta)
    top = torch.linalg.eigvalsh(dense).flip(0)[:2].numpy()
    np.testing.assert_allclose(sorted(hess["top"]["eigenvalues"], reverse=True), top, rtol=1e-6)
    # the barrier of the MSE on test between A and B
    bar = _json(cli, "barrier", *r["model"], "--weights", a_file, "--weights", b_file,
                "--metric", "loss", "--definition", "linear", "--num-points", "11", "--no-refine", "--split", "test",
                *F64, "--out", tmp / "bar")  # fmt: skip
    ts = np.linspace(0, 1, 11)
    ref = _line(r["make"], r["files"], ts, lambda n: _mse(n, test))
    np.testing.assert_allclose(bar["alphas"], ts, atol=1e-12)
    np.testing.assert_allclose(bar["values"], ref, rtol=0, atol=1e-6)
    expected = (ref - ((1 - ts) * ref[0] + ts * ref[-1])).max()
    assert bar["value"] == pytest.approx(expected, abs=1e-6)


def test_regression_similarity_and_finetune(cli, regression):
    r, tmp = regression, regression["tmp"]
    a_file, b_file = r["files"]
    sim = _json(cli, "similarity", *r["model"], "--weights", a_file, "--weights", b_file,
                "--layers-a", "1", "--layers-b", "1", "--method", "linear", "--out",
                tmp / "sim")  # fmt: skip
    test = resolve_data("reg.npz", "test")
    with torch.no_grad():
        ha = _net(r["make"], a_file)[:2](test.x.double())
        hb = _net(r["make"], b_file)[:2](test.x.double())
    from basinscope.analyses.cka import linear_cka

    assert np.asarray(sim["matrix"])[0, 0] == pytest.approx(linear_cka(ha, hb), abs=1e-6)
    ft = _json(cli, "finetune", *r["model"], "--weights", a_file, "--strategy", "lp",
               "--strategy", "ft", "--steps", "3", "--head", "2", "--eval-split", "test",
               "--out", tmp / "ft")  # fmt: skip
    start = _net(r["make"], a_file)
    lp = _net(r["make"], tmp / "ft" / "models" / "lp.safetensors")
    full = _net(r["make"], tmp / "ft" / "models" / "ft.safetensors")
    assert torch.equal(lp[0].weight, start[0].weight) and torch.equal(lp[0].bias, start[0].bias)
    assert not torch.equal(lp[2].weight, start[2].weight)
    assert not torch.equal(full[0].weight, start[0].weight)
    assert [s["strategy"] for s in ft["strategies"]] == ["lp", "ft"]


# -- a Hugging Face transformer ------------------------------------------------------------
transformers = pytest.importorskip("transformers")
KW = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
BERT = ["--model", "bert", "--model-kwargs", json.dumps(KW)]


@pytest.fixture
def bert(tmp_path):
    kw = KW
    a = build_model("bert", kw, init_seed=0)
    b = build_model("bert", kw, init_seed=1)
    files = [
        save_weights(a, tmp_path / "a.safetensors"),
        save_weights(b, tmp_path / "b.safetensors"),
    ]
    return {"files": files, "kw": kw, "tmp": tmp_path}


def _bert(path, kw):
    net = build_model("bert", kw, init_seed=0)
    load_weights(net, path)
    return net.double().eval()


def _bert_loss(net, data, own=False):
    with torch.no_grad():
        inputs = {k: v for k, v in data.items() if k != "labels"}
        if own:
            return float(net(**inputs, labels=data["labels"]).loss)
        return float(F.cross_entropy(net(**inputs).logits, data["labels"]))


@pytest.mark.parametrize("loss", ["cross_entropy", "model"])
def test_bert_interpolate_equals_a_loop_of_model_calls(cli, bert, loss):
    a_file, b_file = bert["files"]
    line = _json(cli, "interpolate", *BERT, "--data", "tokens", "--weights", a_file, "--to",
                 b_file, "--xrange", "0:1:3", "--loss", loss, *F64, "--splits", "test",
                 "--out", bert["tmp"] / f"line-{loss}")  # fmt: skip
    test = load_tokens("test")
    a, b = _bert(a_file, bert["kw"]), _bert(b_file, bert["kw"])
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    ref = []
    for t in (0.0, 0.5, 1.0):
        net = _bert(a_file, bert["kw"])
        with torch.no_grad():
            for k, p in net.named_parameters():
                p.copy_(pa[k] + t * (pb[k] - pa[k]))
        ref.append(_bert_loss(net, test, own=loss == "model"))
    got = line["dataset"]["data_vars"]["test_loss"]["data"]
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)


def test_bert_surface_barrier_similarity_hessian_and_finetune(cli, bert):
    a_file, b_file = bert["files"]
    tmp, data = bert["tmp"], ["--data", "tokens"]
    test = load_tokens("test")
    surf = _json(cli, "surface", *BERT, *data, "--weights", a_file, "--xrange", "-1:1:3",
                 "--yrange", "-1:1:3", *F64, "--out", tmp / "surf")  # fmt: skip
    grid = np.asarray(surf["dataset"]["data_vars"]["test_loss"]["data"])
    assert grid[1, 1] == pytest.approx(_bert_loss(_bert(a_file, bert["kw"]), test), abs=1e-6)
    bar = _json(cli, "barrier", *BERT, *data, "--weights", a_file, "--weights", b_file,
                "--metric", "loss", "--num-points", "3", "--definition", "linear", *F64,
                "--out", tmp / "bar")  # fmt: skip
    assert np.isfinite(bar["value"])
    sim = _json(cli, "similarity", *BERT, *data, "--weights", a_file, "--weights", a_file,
                "--layers-a", "bert.pooler", "--layers-b", "bert.pooler", "--method", "linear",
                "--out", tmp / "sim")  # fmt: skip
    assert np.asarray(sim["matrix"])[0, 0] == pytest.approx(1.0, abs=1e-6)
    hess = _json(cli, "hessian", *BERT, *data, "--weights", a_file, "--top", "1", "--subset",
                 "32", "--max-iter", "30", "--out", tmp / "hess")  # fmt: skip
    assert np.isfinite(hess["top"]["eigenvalues"][0])
    ft = _json(cli, "finetune", *BERT, *data, "--weights", a_file, "--strategy", "lp",
               "--strategy", "ft", "--steps", "2", "--head", "classifier", "--out",
               tmp / "ft")  # fmt: skip
    start = _bert(a_file, bert["kw"])
    lp = _bert(tmp / "ft" / "models" / "lp.safetensors", bert["kw"])
    frozen = [k for k, _ in start.named_parameters() if not k.startswith("classifier")]
    sa, sl = dict(start.named_parameters()), dict(lp.named_parameters())
    assert all(torch.equal(sa[k], sl[k]) for k in frozen)
    assert not torch.equal(sa["classifier.weight"], sl["classifier.weight"])
    assert [s["strategy"] for s in ft["strategies"]] == ["lp", "ft"]
