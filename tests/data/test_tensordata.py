"""TensorData: validation, batching, subsets, fingerprints, device/dtype moves."""

from __future__ import annotations

import pytest
import torch

from basinscope.data import TensorData
from basinscope.errors import BasinscopeError


def make(n: int = 10, name: str = "toy") -> TensorData:
    x = torch.arange(n * 4, dtype=torch.float32).reshape(n, 1, 2, 2)
    return TensorData(x, torch.arange(n) % 3, name=name)


def test_len_num_classes_and_shape():
    d = make(10)
    assert len(d) == 10
    assert d.num_classes == 3
    assert d.input_shape == (1, 2, 2)
    assert "toy" in repr(d)


def test_integer_labels_become_int64():
    d = TensorData(torch.zeros(3, 2), torch.tensor([0, 1, 2], dtype=torch.int32))
    assert d.y.dtype == torch.int64


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        (torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), "is empty"),
        (torch.zeros(3, 2), torch.zeros(4, dtype=torch.long), "3 inputs and 4 labels"),
        (torch.zeros(3), torch.zeros(3, dtype=torch.long), "at least one feature dim"),
        (torch.zeros(3, 2, dtype=torch.long), torch.zeros(3, dtype=torch.long), "floating"),
        (torch.zeros(3, 2), torch.zeros(3, dtype=torch.bool), "integer class indices or"),
        (torch.zeros(3, 2), torch.tensor(1.0), "regression targets y need the samples"),
        (torch.zeros(2, 2), torch.tensor([0.0, float("nan")]), "targets y hold non-finite"),
        (torch.zeros(3, 2), torch.zeros(3, 2, dtype=torch.long), "1-D tensor"),
        (torch.zeros(3, 2), torch.tensor([0, -1, 2]), ">= 0"),
        ([[0.0]], torch.zeros(1, dtype=torch.long), "must be torch tensors"),
    ],
)
def test_validation_errors(x, y, match):
    with pytest.raises(BasinscopeError, match=match):
        TensorData(x, y, name="bad")


def test_empty_message_names_the_dataset():
    with pytest.raises(BasinscopeError, match=r"dataset 'void' is empty: .*at least one"):
        TensorData(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), name="void")


def test_batches_in_order_cover_everything():
    d = make(10)
    got = list(d.batches(4))
    assert [len(b[1]) for b in got] == [4, 4, 2]
    assert torch.equal(torch.cat([b[0] for b in got]), d.x)
    assert [len(b[1]) for b in d.batches(4, drop_last=True)] == [4, 4]


def test_shuffled_batches_are_seeded():
    d = make(50)
    a = torch.cat([y for _, y in d.batches(8, shuffle=True, seed=1)])
    b = torch.cat([y for _, y in d.batches(8, shuffle=True, seed=1)])
    c = torch.cat([x[:, 0, 0, 0] for x, _ in d.batches(8, shuffle=True, seed=2)])
    first = torch.cat([x[:, 0, 0, 0] for x, _ in d.batches(8, shuffle=True, seed=1)])
    assert torch.equal(a, b)
    assert not torch.equal(first, c)
    # a permutation: every sample exactly once, inputs and labels kept together
    assert torch.equal(first.sort().values, d.x[:, 0, 0, 0])
    for x, y in d.batches(8, shuffle=True, seed=3):
        assert torch.equal((x[:, 0, 0, 0] / 4).long() % 3, y)


def test_shuffle_without_seed_uses_global_rng():
    d = make(30)
    torch.manual_seed(5)
    a = torch.cat([x for x, _ in d.batches(7, shuffle=True)])
    torch.manual_seed(5)
    b = torch.cat([x for x, _ in d.batches(7, shuffle=True)])
    assert torch.equal(a, b)


@pytest.mark.parametrize("bs", [0, -1, 2.5, True])
def test_bad_batch_size(bs):
    with pytest.raises(BasinscopeError, match="batch_size must be a positive integer"):
        next(make().batches(bs))


def test_subset_by_indices_and_mask():
    d = make(10)
    s = d.subset([1, 3])
    assert torch.equal(s.x, d.x[[1, 3]]) and s.name == "toy"
    m = d.subset(d.y == 0, name="zeros")
    assert m.name == "zeros" and bool((m.y == 0).all()) and len(m) == 4


def test_subset_errors():
    d = make(10)
    with pytest.raises(BasinscopeError, match=r"indices must lie in \[0, 10\)"):
        d.subset([0, 10])
    with pytest.raises(BasinscopeError, match="boolean mask must have shape"):
        d.subset(torch.ones(3, dtype=torch.bool))
    with pytest.raises(BasinscopeError, match="is empty"):
        d.subset([])


def test_fingerprint():
    d = make(10)
    fp = d.fingerprint()
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert make(10, name="other").fingerprint() == fp  # name is not part of it
    assert TensorData(d.x.clone(), d.y.clone()).fingerprint() == fp
    x2 = d.x.clone()
    x2[3, 0, 1, 1] += 1e-3
    assert TensorData(x2, d.y).fingerprint() != fp
    assert TensorData(d.x.reshape(10, 4), d.y).fingerprint() != fp  # shape matters
    assert TensorData(d.x.double(), d.y).fingerprint() != fp  # dtype matters


def test_to_casts_only_x():
    d = make(4)
    e = d.to("cpu", torch.float64)
    assert e.x.dtype == torch.float64 and e.y.dtype == torch.int64 and e.name == "toy"
    assert d.x.dtype == torch.float32  # the original is untouched
    assert d.with_name("z").name == "z"
    with pytest.raises(BasinscopeError, match="floating-point dtype"):
        d.to(dtype=torch.int32)
