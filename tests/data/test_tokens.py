"""The built-in token data: padded sequences, masks and the majority rule, made offline and
the same on every call; reachable as ``--data tokens``."""

from __future__ import annotations

import pytest
import torch

from basinscope.data import (
    DictData,
    data_splits,
    load_tokens,
    resolve_data,
)
from basinscope.data.tokens import CLS_ID, PAD_ID, TOKENS_SIZES
from basinscope.errors import BasinscopeError


def brute_label(ids: list[int], vocab: int) -> int:
    """The rule by hand: count content tokens (>= 2) in the lower and upper halves."""
    half = 2 + (vocab - 2) // 2
    content = [t for t in ids if t >= 2]
    upper = sum(t >= half for t in content)
    return int(upper > len(content) - upper)


@pytest.mark.parametrize(("seq_len", "vocab"), [(16, 32), (8, 16), (5, 4)])
def test_layout_masks_and_labels(seq_len, vocab):
    d = load_tokens("train", n=200, seq_len=seq_len, vocab_size=vocab)
    assert isinstance(d, DictData) and list(d) == ["input_ids", "attention_mask", "labels"]
    ids, mask, labels = d["input_ids"], d["attention_mask"], d["labels"]
    assert ids.shape == mask.shape == (200, seq_len) and labels.shape == (200,)
    assert ids.dtype == mask.dtype == labels.dtype == torch.int64
    assert bool((ids[:, 0] == CLS_ID).all()) and bool((mask[:, 0] == 1).all())
    assert int(ids.min()) >= 0 and int(ids.max()) < vocab
    for row_ids, row_mask, label in zip(ids.tolist(), mask.tolist(), labels.tolist()):
        length = sum(row_mask)
        assert row_mask == [1] * length + [0] * (seq_len - length)  # padding on the right
        assert all(t == PAD_ID for t in row_ids[length:])
        assert all(t >= 2 for t in row_ids[1:length])
        content = length - 1
        assert content % 2 == 1 and 3 <= content <= seq_len - 1  # odd: no ties
        assert label == brute_label(row_ids[:length], vocab)
    assert len(set(mask.sum(1).tolist())) > 1 or seq_len < 6  # lengths vary


def test_classes_are_balanced_and_the_default_sizes():
    tr, te = load_tokens("train"), load_tokens("test")
    assert tr.num_examples == TOKENS_SIZES["train"] == 512
    assert te.num_examples == TOKENS_SIZES["test"] == 256
    assert 0.4 < float(tr["labels"].float().mean()) < 0.6
    assert 0.4 < float(te["labels"].float().mean()) < 0.6
    assert tr.name == "tokens-train" and te.name == "tokens-test"


def test_deterministic_and_the_splits_differ():
    assert load_tokens("train").fingerprint() == load_tokens("train").fingerprint()
    assert load_tokens("train").fingerprint() != load_tokens("test").fingerprint()
    other = load_tokens("train", seed=3)
    assert other.name == "tokens-train-seed3"
    assert other.fingerprint() != load_tokens("train").fingerprint()
    both = load_tokens("all")
    assert both.num_examples == 768
    for k in both:
        assert torch.equal(both[k], torch.cat([load_tokens("train")[k], load_tokens("test")[k]]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"split": "val"}, r"the tokens dataset has no split 'val'"),
        ({"seq_len": 3}, r"seq_len >= 4 \(\[CLS\] and at least 3 content tokens\), found 3"),
        ({"vocab_size": 3}, "vocab_size >= 4"),
        ({"n": 0}, "n must be a positive integer"),
        ({"seed": -1}, "seed"),
    ],
)
def test_errors(kwargs, match):
    with pytest.raises(BasinscopeError, match=match):
        load_tokens(**kwargs)


def test_resolve_data_and_data_splits_know_tokens():
    assert data_splits("tokens") == ("train", "test")
    d = resolve_data("tokens", "test")
    assert d == load_tokens("test") and d.name == "tokens-test"
    with pytest.raises(BasinscopeError, match=r"--rotation 10 do not apply"):
        resolve_data("tokens", rotation=10)
    with pytest.raises(BasinscopeError, match=r"'tokens' \(token sequences for a transformer\)"):
        resolve_data("tokenz")
