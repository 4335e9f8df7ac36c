"""npz files, module:attr specs, dataset conversion and the CLI resolver."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from basinscope.data import (
    TensorData,
    as_tensor_data,
    load_digits,
    load_npz,
    load_object,
    resolve_data,
    rotate,
)
from basinscope.errors import BasinscopeError

RNG = np.random.default_rng(0)
X = RNG.random((12, 5, 5)).astype(np.float32)
Y = np.arange(12) % 4


# --------------------------------------------------------------------------- npz files


def test_npz_round_trip_adds_channel(tmp_path):
    p = tmp_path / "toy.npz"
    np.savez(p, x=X, y=Y)
    d = load_npz(p)
    assert d.x.shape == (12, 1, 5, 5) and d.name == "toy"
    assert torch.equal(d.x[:, 0], torch.from_numpy(X)) and torch.equal(d.y, torch.from_numpy(Y))
    assert load_npz(p, "train").name == "toy-train"


def test_npz_converts_integer_inputs_and_features(tmp_path):
    p = tmp_path / "u8.npz"
    np.savez(p, x=(X * 255).astype(np.uint8).reshape(12, 25), y=Y.astype(np.float64))
    d = load_npz(p)
    assert d.x.dtype == torch.float32 and d.x.shape == (12, 25) and d.y.dtype == torch.int64


def test_npz_splits(tmp_path):
    p = tmp_path / "both.npz"
    np.savez(p, x_train=X[:8], y_train=Y[:8], x_test=X[8:], y_test=Y[8:])
    assert len(load_npz(p, "train")) == 8
    te = load_npz(p, "test")
    assert len(te) == 4 and te.name == "both-test"
    assert len(load_npz(p, "all")) == 12
    with pytest.raises(BasinscopeError, match=r"lacks the arrays x and y; it holds \['x_test'"):
        load_npz(p)


def test_npz_without_test_arrays(tmp_path):
    p = tmp_path / "plain.npz"
    np.savez(p, x=X, y=Y)
    with pytest.raises(BasinscopeError, match=r"has no test arrays.*x_test/y_test"):
        load_npz(p, "test")


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"inputs": X, "y": Y}, r"lacks the arrays x and y; it holds \['inputs', 'y'\]"),
        ({"x": X, "y": Y[:5]}, "same length, found 12 inputs and 5 labels"),
        ({"x": X[:0], "y": Y[:0]}, "is empty"),
        ({"x": X, "y": Y.reshape(3, 4)}, "1-D label array"),
        ({"x": X, "y": np.linspace(0, 1, 12) * 1j}, "floating-point regression targets"),
        ({"x": np.array(["a"] * 12), "y": Y}, "numeric array"),
    ],
)
def test_npz_content_errors(tmp_path, arrays, match):
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays)
    with pytest.raises(BasinscopeError, match=match):
        load_npz(p)


def test_npz_missing_and_corrupt_files(tmp_path):
    with pytest.raises(BasinscopeError, match="does not exist"):
        load_npz(tmp_path / "nope.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"this is not a zip archive at all")
    with pytest.raises(BasinscopeError, match=r"could not read .* as an \.npz file"):
        load_npz(junk)
    good = tmp_path / "good.npz"
    np.savez(good, x=X, y=Y)
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[:300])
    with pytest.raises(BasinscopeError, match="could not read"):
        load_npz(cut)
    single = tmp_path / "single.npz"
    with open(single, "wb") as f:
        np.save(f, X)
    with pytest.raises(BasinscopeError, match="single ndarray, not named arrays"):
        load_npz(single)


# ------------------------------------------------------------------ dataset conversion


class Pairs(torch.utils.data.Dataset):
    """A map-style dataset returning numpy inputs and int targets."""

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int):
        return X[i], int(Y[i])


def test_as_tensor_data_from_map_style_datasets():
    d = as_tensor_data(Pairs(), "pairs")
    assert d.x.shape == (6, 1, 5, 5) and torch.equal(d.y, torch.from_numpy(Y[:6]))
    t = as_tensor_data(TensorDataset(torch.from_numpy(X), torch.from_numpy(Y)))
    assert len(t) == 12 and torch.equal(t.x[:, 0], torch.from_numpy(X))


def test_as_tensor_data_from_loaders_and_batches():
    ds = TensorDataset(torch.from_numpy(X).unsqueeze(1), torch.from_numpy(Y))
    d = as_tensor_data(DataLoader(ds, batch_size=5), "dl")
    assert d.x.shape == (12, 1, 5, 5) and torch.equal(d.y, torch.from_numpy(Y))
    for kx, ky in [("x", "y"), ("input", "target"), ("inputs", "labels")]:
        batches = [
            {kx: torch.from_numpy(X[i : i + 4]), ky: torch.from_numpy(Y[i : i + 4])}
            for i in range(0, 12, 4)
        ]
        assert torch.equal(as_tensor_data(batches).y, torch.from_numpy(Y))
    td = TensorData(torch.rand(3, 2), torch.arange(3), name="a")
    assert as_tensor_data(td) is td and as_tensor_data(td, "b").name == "b"
    pair = as_tensor_data((torch.rand(3, 2), torch.arange(3)))
    assert len(pair) == 3
    one = as_tensor_data({"inputs": torch.rand(3, 2), "labels": torch.arange(3)})
    assert len(one) == 3


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        ([], "is empty: it yielded no items"),
        ([torch.rand(4, 3)], r"item 0 .* is a Tensor of shape \(4, 3\); expected an \(input"),
        ([(1, 2, 3)], "is a tuple of length 3"),
        ([{"image": 1, "label": 2}], r"dict with keys \['image', 'label'\]; expected"),
        (42, "cannot use an object of type int as a dataset"),
        ([(torch.rand(4, 3), torch.zeros(3))], r"input \(4, 3\) and target \(3,\)"),
        ([(torch.rand(3), 0), (torch.rand(4), 1)], "different shapes"),
    ],
)
def test_as_tensor_data_errors(obj, match):
    with pytest.raises(BasinscopeError, match=match):
        as_tensor_data(obj, "thing")


# ------------------------------------------------------------- module:attr and resolver


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    name = "bs_user_data_mod"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch.utils.data import DataLoader, TensorDataset
            from basinscope.data import TensorData

            X = torch.rand(10, 1, 4, 4)
            Y = torch.arange(10) % 2
            tensordata = TensorData(X, Y, name="mine")
            dataset = TensorDataset(X, Y)
            loader = DataLoader(dataset, batch_size=3)
            dict_batches = [{"input": X[:5], "target": Y[:5]}, {"input": X[5:], "target": Y[5:]}]
            not_data = 3

            class Holder:
                data = dataset

            def by_split(split="train"):
                return TensorData(X[:6] if split == "train" else X[6:],
                                  Y[:6] if split == "train" else Y[6:])

            def no_split():
                return dataset
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


@pytest.mark.parametrize("attr", ["tensordata", "dataset", "loader", "dict_batches", "Holder.data"])
def test_resolve_module_attr_objects(user_module, attr):
    d = resolve_data(f"{user_module}:{attr}")
    mod = sys.modules[user_module]
    assert torch.equal(d.x, mod.X) and torch.equal(d.y, mod.Y)
    assert d.name == attr


def test_fixed_objects_have_no_test_split(user_module):
    with pytest.raises(
        BasinscopeError, match=r"fixed dataset object with no splits.*--splits train"
    ):
        resolve_data(f"{user_module}:tensordata", "test")


def test_resolve_callable_gets_split(user_module):
    tr = resolve_data(f"{user_module}:by_split", "train")
    te = resolve_data(f"{user_module}:by_split", "test", rotation=90)
    assert len(tr) == 6 and len(te) == 4
    assert tr.name == "by_split-train" and te.name == "by_split-test-rot90"
    mod = sys.modules[user_module]
    assert torch.allclose(te.x, rotate(mod.X[6:], 90))


def test_resolve_callable_without_split(user_module):
    with pytest.raises(BasinscopeError, match=r"called as no_split\(split='train'\).*\(\)"):
        resolve_data(f"{user_module}:no_split")


def test_load_object_errors(user_module):
    with pytest.raises(BasinscopeError, match="expected module:attr"):
        load_object("no_colon_here")
    with pytest.raises(BasinscopeError, match="expected module:attr"):
        load_object(f"{user_module}:")
    with pytest.raises(BasinscopeError, match=r"module 'surely_missing_mod_xyz' .* not found"):
        load_object("surely_missing_mod_xyz:data")
    with pytest.raises(BasinscopeError, match=r"has no attribute 'nope'.*dataset, dict_batches"):
        load_object(f"{user_module}:nope")
    with pytest.raises(BasinscopeError, match=r"'bs_user_data_mod.Holder' has no attribute 'x'"):
        load_object(f"{user_module}:Holder.x")
    with pytest.raises(BasinscopeError, match="cannot use an object of type int as a dataset"):
        resolve_data(f"{user_module}:not_data")


def test_resolve_builtins_and_shifts():
    d = resolve_data("digits", "test", rotation=35, block_shuffle=4, noise=0.05, seed=1)
    assert d.name == "digits-test-rot35-block4-noise0.05-seed1" and len(d) == 450
    assert not torch.equal(d.x, load_digits("test").x)
    assert resolve_data("mnist", "test").name == "mnist5k-test"
    assert resolve_data("digits").fingerprint() == load_digits().fingerprint()


def test_resolve_npz(tmp_path):
    p = tmp_path / "set.npz"
    np.savez(p, x=X, y=Y)
    assert len(resolve_data(str(p))) == 12
    with pytest.raises(BasinscopeError, match="has no test arrays"):
        resolve_data(str(p), "test")


def test_resolve_unknown_spec():
    with pytest.raises(BasinscopeError, match=r"unknown data spec 'cifar10'.*'digits', 'mnist'"):
        resolve_data("cifar10")
    with pytest.raises(BasinscopeError, match="no split 'val'"):
        resolve_data("digits", "val")


def test_data_splits_name_the_splits_each_kind_of_data_has(tmp_path, user_module):
    from basinscope.data import data_splits

    rng = np.random.default_rng(0)
    x, y = rng.random((6, 4)).astype(np.float32), np.arange(6) % 2
    np.savez(tmp_path / "xy.npz", x=x, y=y)
    np.savez(tmp_path / "both.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    np.savez(tmp_path / "xy_test.npz", x=x, y=y, x_test=x, y_test=y)
    np.savez(tmp_path / "test_only.npz", x_test=x, y_test=y)
    np.savez(tmp_path / "half.npz", x=x, y=y, x_test=x)  # no y_test: no test split
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    assert data_splits("digits") == data_splits("mnist") == ("train", "test")
    assert data_splits(str(tmp_path / "xy.npz")) == ("train",)
    assert data_splits(str(tmp_path / "both.npz")) == ("train", "test")
    assert data_splits(str(tmp_path / "xy_test.npz")) == ("train", "test")
    assert data_splits(str(tmp_path / "test_only.npz")) == ("test",)
    assert data_splits(str(tmp_path / "half.npz")) == ("train",)
    # unreadable or absent: both, so that reading the split says what is wrong
    assert data_splits(str(tmp_path / "broken.npz")) == ("train", "test")
    assert data_splits(str(tmp_path / "absent.npz")) == ("train", "test")
    assert data_splits(f"{user_module}:tensordata") == ("train",)
    assert data_splits(f"{user_module}:by_split") == ("train", "test")
    for spec in ("digits", str(tmp_path / "xy.npz"), f"{user_module}:by_split"):
        for split in data_splits(spec):
            assert len(resolve_data(spec, split)) > 0  # every split named can be read
