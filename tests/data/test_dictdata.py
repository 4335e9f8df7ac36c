"""DictData: a Mapping of equally long tensors that is a dataset (keys, examples, fingerprint,
batches, subsets, moves) and that the engine reads as it is."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
import torch

from basinscope.data import DictData, apply_shift, as_dataset, label_subset
from basinscope.errors import BasinscopeError


def make(n: int = 10, name: str = "toks") -> DictData:
    ids = torch.arange(n * 4).reshape(n, 4)
    mask = torch.ones(n, 4, dtype=torch.long)
    return DictData(
        {"input_ids": ids, "attention_mask": mask, "labels": torch.arange(n) % 2}, name=name
    )


def test_mapping_semantics_and_number_of_examples():
    d = make(10)
    assert isinstance(d, Mapping)
    assert len(d) == 3 and list(d) == ["input_ids", "attention_mask", "labels"]
    assert d.num_examples == 10 and d.name == "toks"
    assert d.shapes == {"input_ids": (4,), "attention_mask": (4,), "labels": ()}
    assert dict(d)["labels"] is d["labels"]
    assert "input_ids" in d and "x" not in d
    with pytest.raises(KeyError, match="nope"):
        d["nope"]
    assert "n=10" in repr(d) and "input_ids: (4,) torch.int64" in repr(d)


def test_equality_compares_keys_and_tensors_not_names():
    assert make(5, "a") == make(5, "b")
    assert make(5) == dict(make(5))
    assert make(5) != make(6)
    other = dict(make(5))
    other["labels"] = other["labels"] + 1
    assert make(5) != other
    with pytest.raises(TypeError):
        hash(make(5))


def test_fingerprint_is_content_keys_and_order_not_name():
    a, b = make(8, "a"), make(8, "b")
    assert a.fingerprint() == b.fingerprint() and len(a.fingerprint()) == 16
    renamed = DictData({"ids": a["input_ids"], "mask": a["attention_mask"], "y": a["labels"]})
    assert renamed.fingerprint() != a.fingerprint()
    reordered = DictData({k: a[k] for k in reversed(list(a))})
    assert reordered.fingerprint() != a.fingerprint()
    changed = dict(a)
    changed["input_ids"] = a["input_ids"].clone()
    changed["input_ids"][3, 1] += 1
    assert DictData(changed).fingerprint() != a.fingerprint()
    flags = DictData({"m": torch.tensor([True, False]), "y": torch.tensor([0, 1])})
    assert len(flags.fingerprint()) == 16  # bool tensors too


def test_batches_in_order_and_shuffled_keep_the_examples_together():
    d = make(10)
    got = list(d.batches(4))
    assert [b["labels"].shape[0] for b in got] == [4, 4, 2]
    assert torch.equal(torch.cat([b["input_ids"] for b in got]), d["input_ids"])
    assert [b["labels"].shape[0] for b in d.batches(4, drop_last=True)] == [4, 4]
    a = [b["input_ids"] for b in d.batches(3, shuffle=True, seed=1)]
    b = [b["input_ids"] for b in d.batches(3, shuffle=True, seed=1)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    rows = torch.cat(a)
    assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, d["input_ids"].tolist()))
    for batch in d.batches(3, shuffle=True, seed=2):
        # labels follow their rows: row i holds 4i..4i+3 and label i % 2
        assert torch.equal(batch["labels"], batch["input_ids"][:, 0] // 4 % 2)
    with pytest.raises(BasinscopeError, match="batch_size must be a positive integer"):
        list(d.batches(0))


def test_subset_to_and_with_name():
    d = make(10)
    s = d.subset([1, 3], name="two")
    assert s.num_examples == 2 and s.name == "two"
    assert torch.equal(s["input_ids"], d["input_ids"][[1, 3]])
    m = d.subset(d["labels"] == 1)
    assert m.num_examples == 5 and m.name == "toks"
    with pytest.raises(BasinscopeError, match=r"indices must lie in \[0, 10\)"):
        d.subset([10])
    with pytest.raises(BasinscopeError, match=r"boolean mask must have shape \(10,\)"):
        d.subset(torch.ones(3, dtype=torch.bool))
    mixed = DictData({"x": torch.rand(3, 2), "ids": torch.arange(3), "y": torch.arange(3)})
    moved = mixed.to(dtype=torch.float64)
    assert moved["x"].dtype == torch.float64 and moved["ids"].dtype == torch.int64
    with pytest.raises(BasinscopeError, match="floating-point dtype"):
        mixed.to(dtype=torch.int32)
    assert d.with_name("z").name == "z" and d.with_name("z") == d


@pytest.mark.parametrize(
    ("tensors", "match"),
    [
        ({}, "needs a dict of tensors by name, found an empty mapping"),
        ([1, 2], "found a list"),
        ({"a": [1, 2]}, "'a' must be a torch tensor, found list"),
        ({1: torch.zeros(2)}, "keys of a DictData are names"),
        ({"a": torch.tensor(1)}, "'a' is a 0-d tensor"),
        ({"a": torch.zeros(3), "b": torch.zeros(4)}, r"same number of examples.*'a': 3, 'b': 4"),
        ({"a": torch.zeros(0, 2)}, "is empty"),
        ({"a": torch.tensor([1.0, float("inf")])}, "non-finite values .* in 1 of 2 examples"),
        ({"a": torch.zeros(2, dtype=torch.complex64)}, "complex dtype"),
    ],
)
def test_validation_errors(tensors, match):
    with pytest.raises(BasinscopeError, match=match):
        DictData(tensors, name="bad")


def test_shifts_do_not_apply_to_token_data():
    d = make(4)
    assert apply_shift(d) is d
    with pytest.raises(
        BasinscopeError,
        match=r"'toks' is a dict of tensors \(input_ids, attention_mask, labels\).*"
        r"--rotation 35, --noise 0.1 do not apply",
    ):
        apply_shift(d, rotation=35, noise=0.1)
    with pytest.raises(BasinscopeError, match="--block-shuffle 2 do not apply"):
        apply_shift(d, block_shuffle=2)
    with pytest.raises(BasinscopeError, match=r"needs integer class labels y.*a dict of tensors"):
        label_subset(d, [0])


def test_as_dataset_keeps_dicts_and_converts_pairs():
    d = make(4)
    assert as_dataset(d) is d and as_dataset(d, "new").name == "new"
    plain = as_dataset({"input_ids": d["input_ids"], "labels": d["labels"]}, "p")
    assert isinstance(plain, DictData) and plain.name == "p"
    xy = as_dataset({"x": torch.rand(4, 2), "y": torch.arange(4)})
    assert not isinstance(xy, DictData) and xy.x.shape == (4, 2)


def test_the_engine_reads_a_dict_dataset_as_it_is():
    from basinscope.engine import as_batches

    d = make(10)
    batches = as_batches(d, batch_size=4)
    assert len(batches) == 3
    x, y = batches[0]
    assert set(x) == {"input_ids", "attention_mask"} and torch.equal(y, d["labels"][:4])
