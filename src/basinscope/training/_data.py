"""Private data plumbing for the trainer: any data -> two tensors -> seeded minibatches.

The trainer accepts

* a pair ``(x, y)`` of tensors (or anything ``torch.as_tensor`` takes) with the same
  first dimension;
* an object with tensor attributes ``x`` and ``y`` (such as ``basinscope.data.TensorData``);
* an object with a ``batches(batch_size, shuffle=..., seed=...)`` method yielding
  ``(x, y)`` tuples, read once in order (``shuffle=False``);
* a ``torch.utils.data.Dataset`` (``len`` and integer indexing, items ``(x, y)``),
  collated once with ``default_collate``.

Whatever comes in is turned into in-memory tensors ``X, Y`` **once**; minibatches are then
drawn by :class:`BatchStream` from a seeded permutation per epoch, so the data order
depends only on ``data_seed`` and never on how the data object shuffles.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import default_collate

from basinscope.engine.batches import plain_layout
from basinscope.errors import BasinscopeError

__all__ = ["BatchStream", "as_tensors", "epoch_permutation"]

_READ_BATCH = 4096


def as_tensors(data: Any, what: str = "data") -> tuple[Tensor, Tensor]:
    """Turn supported training data into two tensors ``(X, Y)`` of equal length."""
    if (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and not isinstance(data[0], (tuple, list))
    ):
        x, y = torch.as_tensor(data[0]), torch.as_tensor(data[1])
    elif isinstance(getattr(data, "x", None), Tensor) and isinstance(
        getattr(data, "y", None), Tensor
    ):
        x, y = data.x, data.y
    elif callable(getattr(data, "batches", None)):
        xs, ys = [], []
        for xb, yb in data.batches(_READ_BATCH, shuffle=False, seed=None):
            xs.append(torch.as_tensor(xb))
            ys.append(torch.as_tensor(yb))
        if not xs:
            raise BasinscopeError(f"{what}.batches(...) yielded no batches; the data is empty.")
        x, y = torch.cat(xs), torch.cat(ys)
    elif hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        n = len(data)
        if n == 0:
            raise BasinscopeError(f"{what} is an empty dataset.")
        items = [data[i] for i in range(n)]
        if not all(isinstance(it, (tuple, list)) and len(it) == 2 for it in items):
            raise BasinscopeError(
                f"{what} is indexable but its items are not (x, y) pairs "
                f"(item 0 is a {type(items[0]).__name__})."
            )
        x, y = default_collate(items)
        x, y = torch.as_tensor(x), torch.as_tensor(y)
    else:
        raise BasinscopeError(
            f"cannot read {what} of type {type(data).__name__}: pass a pair of tensors (x, y), "
            "an object with a batches(batch_size, shuffle=, seed=) method (e.g. "
            "basinscope.data.TensorData) or a torch.utils.data.Dataset of (x, y) items."
        )
    if x.ndim == 0 or y.ndim == 0 or x.shape[0] != y.shape[0]:
        raise BasinscopeError(
            f"{what}: x and y must have the same first (sample) dimension, got shapes "
            f"{tuple(x.shape)} and {tuple(y.shape)}."
        )
    if x.shape[0] == 0:
        raise BasinscopeError(f"{what} is empty (0 samples).")
    return plain_layout(x), y


def epoch_permutation(n: int, data_seed: int, epoch: int) -> Tensor:
    """The sample order of ``epoch`` (0-based): a permutation of ``range(n)``.

    The generator is seeded with a mix of ``data_seed`` and ``epoch`` (not their sum, so
    seed 0's second epoch is not seed 1's first).
    """
    seed = (data_seed * 1_000_003 + epoch * 7_919 + 12_345) % (2**63 - 1)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)


class BatchStream:
    """Endless minibatches of exactly ``min(batch_size, n)`` samples.

    The data is read as the concatenation of the epoch permutations
    (:func:`epoch_permutation`) and cut into consecutive chunks; a chunk may straddle two
    epochs. Hence every minibatch has the same size (no ragged last batch), every sample
    is seen exactly once per epoch, and a ``batch_size >= n`` gives full-batch training.
    """

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, data_seed: int) -> None:
        self.x, self.y = x, y
        self.n = int(x.shape[0])
        self.batch_size = min(batch_size, self.n)
        self.data_seed = data_seed
        self.epoch = 0  # the epoch of the next permutation to draw
        self._pending = torch.empty(0, dtype=torch.long)
        self.samples_seen = 0

    def _indices(self) -> Tensor:
        parts, have = [self._pending], self._pending.numel()
        while have < self.batch_size:
            perm = epoch_permutation(self.n, self.data_seed, self.epoch)
            self.epoch += 1
            parts.append(perm)
            have += perm.numel()
        idx = torch.cat(parts)
        self._pending = idx[self.batch_size :]
        return idx[: self.batch_size]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self

    def __next__(self) -> tuple[Tensor, Tensor]:
        idx = self._indices().to(self.x.device)
        self.samples_seen += self.batch_size
        return self.x[idx], self.y[idx]

    @property
    def epochs_done(self) -> float:
        """Passes over the data so far (fractional)."""
        return self.samples_seen / self.n


def iter_chunks(x: Tensor, y: Tensor, size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """``(x, y)`` in order, in chunks of at most ``size`` samples (for evaluation)."""
    for i in range(0, x.shape[0], size):
        yield x[i : i + size], y[i : i + size]
