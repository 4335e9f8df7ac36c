"""A user's own files beyond x/y classification: regression targets in an .npz, dict datasets
(named arrays such as input_ids/labels) in an .npz or from module:attr."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
import torch

from basinscope.data import DictData, TensorData, data_splits, load_npz, resolve_data
from basinscope.errors import BasinscopeError

RNG = np.random.default_rng(0)
X = RNG.standard_normal((10, 4)).astype(np.float32)
T = RNG.standard_normal((10, 3)).astype(np.float32)


# ------------------------------------------------------------------ regression targets
def test_float_targets_of_shape_n_k_load_as_regression(tmp_path):
    p = tmp_path / "reg.npz"
    np.savez(p, x_train=X[:7], y_train=T[:7], x_test=X[7:], y_test=T[7:])
    tr = resolve_data(str(p), "train")
    assert isinstance(tr, TensorData) and tr.regression
    assert tr.y.dtype == torch.float32 and tr.y.shape == (7, 3) and tr.target_shape == (3,)
    assert torch.equal(tr.y, torch.from_numpy(T[:7])) and torch.equal(tr.x, torch.from_numpy(X[:7]))
    assert "regression targets (3,) torch.float32" in repr(tr) and "num_classes" not in repr(tr)
    assert load_npz(p, "all").y.shape == (10, 3)
    assert data_splits(str(p)) == ("train", "test")
    with pytest.raises(BasinscopeError, match=r"regression targets .* no number of classes.*mse"):
        _ = tr.num_classes
    batches = list(tr.batches(4))
    assert [tuple(y.shape) for _, y in batches] == [(4, 3), (3, 3)]
    assert tr.subset([0, 2]).y.shape == (2, 3)
    assert tr.to(dtype=torch.float64).y.dtype == torch.float32  # targets keep their dtype


def test_float_targets_of_one_dim(tmp_path):
    p = tmp_path / "reg1.npz"
    np.savez(p, x=X, y=T[:, 0].astype(np.float64))
    d = load_npz(p)
    assert d.regression and d.y.dtype == torch.float64 and d.y.shape == (10,)
    # whole numbers in a float array are class labels, as before
    np.savez(p, x=X, y=(np.arange(10) % 3).astype(np.float32))
    labels = load_npz(p)
    assert not labels.regression and labels.y.dtype == torch.int64 and labels.num_classes == 3


def test_integer_targets_must_stay_one_dimensional(tmp_path):
    p = tmp_path / "bad.npz"
    np.savez(p, x=X, y=np.zeros((10, 2), dtype=np.int64))
    with pytest.raises(BasinscopeError, match=r"1-D label array \(N,\) of integers or floating"):
        load_npz(p)
    np.savez(p, x=X, y=np.where(np.arange(10) == 4, np.nan, 0.5))
    with pytest.raises(BasinscopeError, match=r"targets y hold non-finite .* index 4"):
        load_npz(p)


# ----------------------------------------------------------------- dict .npz files
def token_arrays(n=6, seq=5):
    ids = RNG.integers(0, 9, (n, seq))
    mask = np.ones((n, seq), dtype=np.int64)
    return ids, mask, np.arange(n) % 2


def test_a_file_without_x_y_is_a_dict_dataset(tmp_path):
    ids, mask, labels = token_arrays()
    p = tmp_path / "toks.npz"
    np.savez(p, input_ids=ids, attention_mask=mask, labels=labels)
    d = load_npz(p, "train")
    assert isinstance(d, DictData) and list(d) == ["input_ids", "attention_mask", "labels"]
    assert d.name == "toks-train" and d.num_examples == 6
    assert d["input_ids"].dtype == torch.int64 and torch.equal(
        d["input_ids"], torch.from_numpy(ids)
    )
    assert load_npz(p) == d and load_npz(p, "all") == d
    assert data_splits(str(p)) == ("train",)
    with pytest.raises(BasinscopeError, match=r"has no test arrays: it holds .*input_ids_test"):
        load_npz(p, "test")


def test_dict_files_with_splits(tmp_path):
    ids, _, labels = token_arrays(8)
    p = tmp_path / "split.npz"
    np.savez(
        p,
        input_ids_train=ids[:5],
        labels_train=labels[:5],
        input_ids_test=ids[5:],
        labels_test=labels[5:],
    )
    assert data_splits(str(p)) == ("train", "test")
    tr, te = resolve_data(str(p), "train"), resolve_data(str(p), "test")
    assert list(tr) == ["input_ids", "labels"] and tr.num_examples == 5 and te.num_examples == 3
    both = load_npz(p, "all")
    assert both.num_examples == 8 and torch.equal(both["input_ids"], torch.from_numpy(ids))
    only_test = tmp_path / "only_test.npz"
    np.savez(only_test, input_ids_test=ids, labels_test=labels)
    assert data_splits(str(only_test)) == ("test",)
    mismatched = tmp_path / "mismatched.npz"
    np.savez(mismatched, ids_train=ids, labels_train=labels, labels_test=labels)
    with pytest.raises(BasinscopeError, match="different names"):
        load_npz(mismatched, "all")


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"ids": np.zeros((3, 2)), "labels": np.zeros(4)}, "same number of examples"),
        ({"ids": np.array(["a", "b"]), "labels": np.zeros(2)}, r"numeric .* found 'ids' <U1"),
        ({"ids": np.float32(3.0), "label": np.zeros(2)}, r"numeric with the examples along dim 0"),
    ],
)
def test_dict_file_errors(tmp_path, arrays, match):
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays)
    with pytest.raises(BasinscopeError, match=match):
        load_npz(p)


def test_a_file_with_neither_x_y_nor_targets_by_name_says_what_to_save(tmp_path):
    p = tmp_path / "ab.npz"
    np.savez(p, a=np.zeros(3), b=np.zeros(3))
    with pytest.raises(
        BasinscopeError,
        match=r"lacks the arrays x and y; it holds \['a', 'b'\].*for a dict dataset .*"
        r"targets as target/targets/label/labels: np.savez\(path, input_ids=ids",
    ):
        load_npz(p)
    assert data_splits(str(p)) == ("train", "test")  # unreadable as data: reading says why
    empty = tmp_path / "empty.npz"
    np.savez(empty)
    with pytest.raises(BasinscopeError, match=r"lacks the arrays x and y; it holds \[\]"):
        load_npz(empty)


# --------------------------------------------------------------- dicts from module:attr
@pytest.fixture
def dict_module(tmp_path, monkeypatch):
    name = "bs_user_dict_mod"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            import torch
            from basinscope.data import DictData

            IDS = torch.arange(12).reshape(6, 2)
            LABELS = torch.arange(6) % 2
            fixed = {"input_ids": IDS, "labels": LABELS}
            made = DictData(fixed)

            def by_split(split="train"):
                rows = slice(0, 4) if split == "train" else slice(4, 6)
                return {"input_ids": IDS[rows], "labels": LABELS[rows]}
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_module_attr_dicts_are_dict_datasets(dict_module):
    fixed = resolve_data(f"{dict_module}:fixed")
    assert isinstance(fixed, DictData) and fixed.name == "fixed" and fixed.num_examples == 6
    made = resolve_data(f"{dict_module}:made")
    assert made.name == "made" and made == fixed
    te = resolve_data(f"{dict_module}:by_split", "test")
    assert te.name == "by_split-test" and te.num_examples == 2
    assert data_splits(f"{dict_module}:by_split") == ("train", "test")
    assert data_splits(f"{dict_module}:fixed") == ("train",)
