"""A token-sequence classification task made offline: which half of the vocabulary wins.

Each example is a sequence of token ids of varying length, the way a tokenizer hands them
to a transformer: ``[CLS]`` (id 1), then an odd number of content tokens (ids
``2..vocab_size-1``, drawn uniformly), then ``[PAD]`` (id 0) up to ``seq_len``, with an
``attention_mask`` of 1 on the real tokens and 0 on the padding. The label is 1 when most
content tokens lie in the upper half of the content vocabulary, else 0. The count is odd,
so there are no ties, and the two classes are equally likely. A 2-layer transformer
(:func:`basinscope.models.bert`) learns the rule in a few hundred steps, since it needs
attention over every position, not one token.

The data is drawn from a seeded generator per split, so the same arguments always give the
same tensors, with no download.
"""

from __future__ import annotations

import hashlib

import torch

from basinscope._checks import check_seed, positive_int
from basinscope.data.dictdata import DictData
from basinscope.data.digits import check_split
from basinscope.errors import BasinscopeError

__all__ = [
    "CLS_ID",
    "PAD_ID",
    "TOKENS_SEQ_LEN",
    "TOKENS_SIZES",
    "TOKENS_SPLITS",
    "TOKENS_VOCAB",
    "load_tokens",
    "tokens_label",
]

TOKENS_SPLITS = ("train", "test", "all")
#: Examples per split with the defaults (``"all"`` is both).
TOKENS_SIZES = {"train": 512, "test": 256}
#: The default vocabulary (ids 0..31) and padded length: the sizes
#: :func:`basinscope.models.bert` is built for by default.
TOKENS_VOCAB = 32
TOKENS_SEQ_LEN = 16
PAD_ID = 0
CLS_ID = 1
FIRST_CONTENT_ID = 2


def tokens_label(input_ids: torch.Tensor, attention_mask: torch.Tensor, vocab_size: int):
    """The rule: 1 where most content tokens are in the upper half of the content ids.

    Content ids are ``2..vocab_size-1``; the upper half is ``ids >= 2 + (vocab_size - 2) // 2``.
    ``[CLS]`` and padding are not counted.
    """
    half = FIRST_CONTENT_ID + (vocab_size - FIRST_CONTENT_ID) // 2
    content = attention_mask.bool() & (input_ids >= FIRST_CONTENT_ID)
    upper = (content & (input_ids >= half)).sum(1)
    return (2 * upper > content.sum(1)).long()


def _split_seed(seed: int, split: str) -> int:
    digest = hashlib.sha256(f"basinscope-tokens|{seed}|{split}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _draw(n: int, seq_len: int, vocab_size: int, seed: int, split: str) -> dict:
    g = torch.Generator().manual_seed(_split_seed(seed, split))
    longest = seq_len - 1 if (seq_len - 1) % 2 else seq_len - 2  # odd content lengths
    lengths = 2 * torch.randint(1, (longest - 1) // 2 + 1, (n,), generator=g) + 1  # 3, 5, ...
    content = torch.randint(FIRST_CONTENT_ID, vocab_size, (n, seq_len - 1), generator=g)
    positions = torch.arange(seq_len - 1)
    real = positions[None, :] < lengths[:, None]
    ids = torch.full((n, seq_len), PAD_ID, dtype=torch.long)
    ids[:, 0] = CLS_ID
    ids[:, 1:] = torch.where(real, content, torch.full_like(content, PAD_ID))
    mask = torch.zeros((n, seq_len), dtype=torch.long)
    mask[:, 0] = 1
    mask[:, 1:] = real.long()
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": tokens_label(ids, mask, vocab_size),
    }


def load_tokens(
    split: str = "train",
    *,
    n: int | None = None,
    seq_len: int = TOKENS_SEQ_LEN,
    vocab_size: int = TOKENS_VOCAB,
    seed: int = 0,
) -> DictData:
    """The token-sequence classification data (module docstring) as a :class:`DictData`.

    Args:
        split: ``"train"`` (512 examples by default), ``"test"`` (256) or ``"all"`` (both,
            train first).
        n: Examples in the split (``None``: the default size; with ``"all"``, ``n`` per
            part).
        seq_len: Padded length, ``[CLS]`` included (at least 4: up to ``seq_len - 1``
            content tokens, an odd number of at least 3).
        vocab_size: Token ids are ``0..vocab_size-1`` (0 padding, 1 ``[CLS]``); at least 4.
        seed: Draws another dataset (the splits stay disjoint draws).

    Returns:
        ``DictData`` with ``input_ids`` and ``attention_mask`` ``(n, seq_len)`` (int64) and
        ``labels`` ``(n,)`` in {0, 1}, named ``"tokens-<split>"`` (``-seed<k>`` appended
        for ``seed != 0``). A Hugging Face classifier takes it as
        ``model(input_ids=..., attention_mask=...)``, with ``labels`` for its own loss.
    """
    check_split(split, TOKENS_SPLITS, "the tokens dataset")
    positive_int("seq_len", seq_len, high=4096)
    positive_int("vocab_size", vocab_size, high=1_000_000)
    if n is not None:
        positive_int("n", n, high=10_000_000)
    check_seed("seed", seed)
    if seq_len < 4:
        raise BasinscopeError(
            f"the tokens dataset needs seq_len >= 4 ([CLS] and at least 3 content tokens), "
            f"found {seq_len}."
        )
    if vocab_size < 4:
        raise BasinscopeError(
            f"the tokens dataset needs vocab_size >= 4 (padding, [CLS] and two content ids, "
            f"one per half), found {vocab_size}."
        )
    parts = ("train", "test") if split == "all" else (split,)
    drawn = [
        _draw(TOKENS_SIZES[p] if n is None else n, seq_len, vocab_size, seed, p) for p in parts
    ]
    tensors = {k: torch.cat([d[k] for d in drawn]) for k in drawn[0]}
    name = f"tokens-{split}" + (f"-seed{seed}" if seed else "")
    return DictData(tensors, name=name)
