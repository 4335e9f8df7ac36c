"""Private data plumbing for the trainer: data in memory -> seeded minibatches; loaders streamed.

Data **in memory** is

* a pair ``(x, y)`` of tensors (or anything ``torch.as_tensor`` takes) with the same
  first dimension;
* an object with tensor attributes ``x`` and ``y`` (such as ``basinscope.data.TensorData``);
* an object with a ``batches(batch_size, shuffle=..., seed=...)`` method yielding
  ``(x, y)`` tuples, read once in order (``shuffle=False``);
* a ``torch.utils.data.Dataset`` (``len`` and integer indexing) of ``(x, y)`` items, or of
  dict items (``{"input_ids": ..., "labels": ...}``), collated once with ``default_collate``;
* a dict of equally long tensors (``{"input_ids", "attention_mask", "labels"}``), split
  into the model's inputs and the targets by the task
  (:meth:`basinscope.engine.task.Task.split`).

It is turned into in-memory inputs (a tensor, or a dict of tensors) and targets **once**;
minibatches are then drawn by :class:`BatchStream` from a seeded permutation per epoch
(every tensor of a dict indexed by the same permutation), so the data order depends only
on ``data_seed`` and never on how the data object shuffles.

A ``torch.utils.data.DataLoader`` (or any other re-iterable of batches that is not a list)
is **streamed** instead (:class:`LoaderStream`): read batch by batch, epoch after epoch,
in the loader's own order, never gathered in memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import default_collate

from basinscope.engine.batches import StreamingBatches, plain_layout, streams
from basinscope.errors import BasinscopeError

__all__ = [
    "DATA_ORDERS",
    "BatchStream",
    "LoaderStream",
    "as_examples",
    "as_tensors",
    "epoch_permutation",
    "examples_per_pass",
    "index_inputs",
    "iter_chunks",
    "streams",
    "targets_to",
]

_READ_BATCH = 4096

#: How a run's minibatches were ordered (``TrainResult.data_order``).
DATA_ORDERS = ("seeded permutation", "loader")


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
    elif (
        hasattr(data, "__getitem__") and hasattr(data, "__len__") and not isinstance(data, Mapping)
    ):
        items = _items(data, what)
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
            "basinscope.data.TensorData), a torch.utils.data.Dataset of (x, y) items, a dict "
            "of tensors, or a DataLoader (streamed)."
        )
    if x.ndim == 0 or y.ndim == 0 or x.shape[0] != y.shape[0]:
        raise BasinscopeError(
            f"{what}: x and y must have the same first (sample) dimension, got shapes "
            f"{tuple(x.shape)} and {tuple(y.shape)}."
        )
    if x.shape[0] == 0:
        raise BasinscopeError(f"{what} is empty (0 samples).")
    return plain_layout(x), y


def _items(data: Any, what: str) -> list[Any]:
    n = len(data)
    if n == 0:
        raise BasinscopeError(f"{what} is an empty dataset.")
    return [data[i] for i in range(n)]


def _dict_examples(d: Mapping[str, Any], what: str, task: Any) -> tuple[Any, Tensor]:
    tensors = {k: torch.as_tensor(v) for k, v in d.items()}
    lengths = {k: (int(v.shape[0]) if v.ndim else 0) for k, v in tensors.items()}
    if len(set(lengths.values())) != 1:
        raise BasinscopeError(
            f"the tensors of {what} (a dict) must have the same first (sample) dimension, "
            f"got lengths {lengths}."
        )
    if next(iter(lengths.values())) == 0:
        raise BasinscopeError(f"{what} is empty (0 samples).")
    x, y = task.split(tensors)
    if isinstance(x, Tensor):
        x = plain_layout(x)
    return x, torch.as_tensor(y)


def as_examples(data: Any, what: str = "data", task: Any = None) -> tuple[Any, Tensor]:
    """In-memory training data as ``(inputs, targets)``: ``inputs`` is a tensor (``model(x)``)
    or, for dict data, what the task gives the model (a dict for ``model(**inputs)``)."""
    from basinscope.engine.task import Task

    task = task or Task()
    if isinstance(data, Mapping):
        if not data or not all(isinstance(v, Tensor) for v in data.values()):
            raise BasinscopeError(
                f"{what} is a dict, but not of tensors: pass a dict of equally long tensors "
                f"(e.g. input_ids, attention_mask, labels); found keys {sorted(map(str, data))}."
            )
        return _dict_examples(data, what, task)
    if (
        hasattr(data, "__getitem__")
        and hasattr(data, "__len__")
        and not isinstance(data, (tuple, list, Tensor))
        and not isinstance(getattr(data, "x", None), Tensor)
        and not callable(getattr(data, "batches", None))
    ):
        items = _items(data, what)
        if all(isinstance(it, Mapping) for it in items):  # a Dataset of dict examples
            return _dict_examples(default_collate(items), what, task)
        if not all(isinstance(it, (tuple, list)) and len(it) == 2 for it in items):
            raise BasinscopeError(
                f"{what} is indexable but its items are not (x, y) pairs or dicts "
                f"(item 0 is a {type(items[0]).__name__})."
            )
        x, y = default_collate(items)
        return as_tensors((torch.as_tensor(x), torch.as_tensor(y)), what)
    return as_tensors(data, what)


def targets_to(y: Any, dev: Any, dtype: torch.dtype | None) -> Tensor:
    """Targets on ``dev`` (None: where they are); floating targets (regression) in the
    model's ``dtype``, integer labels as they are."""
    y = torch.as_tensor(y)
    if dtype is not None and y.is_floating_point() and y.dtype != dtype:
        y = y.to(dtype)
    return y.to(dev) if dev is not None else y


def index_inputs(x: Any, idx: Tensor) -> Any:
    """The examples ``idx`` of inputs that are a tensor, a tuple or a dict of tensors."""
    if isinstance(x, dict):
        return {k: v[idx] for k, v in x.items()}
    if isinstance(x, tuple):
        return tuple(v[idx] for v in x)
    return x[idx]


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
    ``x`` may be a tensor, a tuple or a dict of tensors: every tensor is indexed by the
    same permutation.
    """

    data_order = "seeded permutation"

    def __init__(self, x: Any, y: Tensor, batch_size: int, data_seed: int) -> None:
        self.x, self.y = x, y
        self.n = int(y.shape[0])
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

    def __iter__(self) -> Iterator[tuple[Any, Tensor]]:
        return self

    def __next__(self) -> tuple[Any, Tensor]:
        idx = self._indices().to(self.y.device)
        self.samples_seen += self.batch_size
        return index_inputs(self.x, idx), self.y[idx]

    @property
    def epochs_done(self) -> float:
        """Passes over the data so far (fractional)."""
        return self.samples_seen / self.n


class LoaderStream:
    """Endless minibatches read from a DataLoader (any re-iterable of batches), epoch after
    epoch, in the loader's own order; one batch at a time is on the device.

    ``batches`` is the :class:`~basinscope.engine.batches.StreamingBatches` of the loader
    (it splits each batch with the task and moves it to the device). :meth:`first` reads
    the first batch ahead (to check the model on it) without reading it twice.
    """

    data_order = "loader"

    def __init__(self, batches: StreamingBatches, what: str = "data") -> None:
        self.batches, self.what = batches, what
        self.epoch = 0  # passes over the loader completed
        self.samples_seen = 0
        self._it: Iterator[tuple[Any, Tensor]] | None = None
        self._ahead: tuple[Any, Tensor] | None = None
        self._in_pass = 0  # examples read in the current pass
        self._batches_in_pass = 0
        self._per_pass: int | None = examples_per_pass(batches.source)

    def _read(self) -> tuple[Any, Tensor]:
        if self._it is None:
            self._it = iter(self.batches)
        try:
            return next(self._it)
        except StopIteration:
            if self._batches_in_pass == 0:
                raise BasinscopeError(
                    f"{self.what} gave no batches: the DataLoader (or iterable) is empty; "
                    "check its dataset and sampler (drop_last with fewer examples than a batch "
                    "gives none)."
                ) from None
            self._per_pass = self._in_pass
            self.epoch += 1
            self._in_pass = self._batches_in_pass = 0
            self._it = iter(self.batches)
            return self._read()

    def first(self) -> tuple[Any, Tensor]:
        """The next batch, kept to be returned by the next ``next()`` as well."""
        if self._ahead is None:
            self._ahead = self._read()
            self._count(self._ahead)
        return self._ahead

    def _count(self, batch: tuple[Any, Tensor]) -> None:
        self._in_pass += int(batch[1].shape[0])
        self._batches_in_pass += 1

    def __iter__(self) -> Iterator[tuple[Any, Tensor]]:
        return self

    def __next__(self) -> tuple[Any, Tensor]:
        if self._ahead is not None:
            batch, self._ahead = self._ahead, None
        else:
            batch = self._read()
            self._count(batch)
        self.samples_seen += int(batch[1].shape[0])
        return batch

    @property
    def epochs_done(self) -> float:
        """Passes over the loader so far (fractional: the examples read in this pass over
        those of a pass, once that number is known)."""
        if self._per_pass:
            return self.epoch + self._in_pass / self._per_pass
        return float(self.epoch)


def examples_per_pass(source: Any) -> int | None:
    """The number of examples of a pass over a DataLoader, when its sampler says so."""
    sampler = getattr(source, "sampler", None)
    if sampler is None or getattr(source, "batch_size", None) is None:
        return None
    if getattr(source, "drop_last", False):
        return None
    try:
        return len(sampler)
    except TypeError:
        return None


def iter_chunks(x: Any, y: Tensor, size: int) -> Iterator[tuple[Any, Tensor]]:
    """``(x, y)`` in order, in chunks of at most ``size`` samples (for evaluation); ``x`` may
    be a tensor, a tuple or a dict of tensors."""
    for i in range(0, y.shape[0], size):
        idx = slice(i, i + size)
        if isinstance(x, dict):
            xb: Any = {k: v[idx] for k, v in x.items()}
        elif isinstance(x, tuple):
            xb = tuple(v[idx] for v in x)
        else:
            xb = x[idx]
        yield xb, y[idx]
