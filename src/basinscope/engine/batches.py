"""Turning whatever the user passes as data into a list of ``(inputs, targets)`` batches."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from basinscope.errors import BasinscopeError

__all__ = [
    "Batches",
    "StreamingBatches",
    "as_batches",
    "num_examples",
    "plain_layout",
    "streams",
    "unpack_batch",
]

Batches = list[tuple[Tensor, Tensor]]


def plain_layout(x: Tensor) -> Tensor:
    """``x`` with the plain row-major (NCHW) strides of its shape, copied only when needed.

    PyTorch runs a convolutional network in channels-last layout whenever its input is
    channels-last, *or ambiguous*: single-channel images ``(N, 1, H, W)`` often come with
    strides that fit both layouts. oneDNN's 1x1 strided convolution backward-weights kernels
    (ResNet shortcuts) write past their scratch buffer for channels-last inputs with fewer
    input channels than the kernel's block (8 on AVX2, 16 on AVX-512; oneDNN issue 6035):
    heap corruption that aborts with one thread on AVX2 CPUs. Every input basinscope feeds
    a model therefore gets plain strides, which also makes results independent of the
    layout the user's data happened to have.
    """
    if x.ndim < 3 or not x.is_floating_point():
        return x
    plain, step = [], 1
    for size in reversed(x.shape):
        plain.append(step)
        step *= size
    if tuple(reversed(plain)) == x.stride():
        return x
    return x.clone(memory_format=torch.contiguous_format)


def unpack_batch(batch: Any, task: Any = None) -> tuple[Any, Tensor]:
    """``(inputs, targets)`` of one batch: a tuple/list batch or a dict batch, split by the
    task (:meth:`basinscope.engine.task.Task.split`; default: keys such as x/y,
    input_ids/labels)."""
    from basinscope.engine.task import Task

    return (task or Task()).split(batch)


class StreamingBatches:
    """A DataLoader (or any re-iterable of batches) read batch by batch, every time.

    Each pass iterates the source again and moves one batch at a time to the device, so
    memory holds one batch, not the dataset: what the engine, the curvature operators and
    the trainer read when the user passes a loader. ``len()`` is the loader's; the number
    of examples is counted on the first pass.
    """

    def __init__(
        self,
        source: Iterable,
        *,
        device: Any = None,
        dtype: Any = None,
        task: Any = None,
        limit: int | None = None,
    ):
        from basinscope.engine.task import Task

        self.source, self.device, self.dtype = source, device, dtype
        self.task = task or Task()
        self.limit = limit
        self._examples: int | None = None

    def __iter__(self):
        from basinscope.engine.task import inputs_to

        n = 0
        for i, b in enumerate(self.source):
            if self.limit is not None and i >= self.limit:
                break
            x, y = self.task.split(b)
            y = torch.as_tensor(y)
            n += int(y.shape[0])
            yield inputs_to(x, self.device, self.dtype), y.to(self.device)
        if self.limit is None:
            self._examples = n

    def __len__(self) -> int:
        n = len(self.source)  # type: ignore[arg-type]
        return n if self.limit is None else min(n, self.limit)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice) and index.start in (None, 0) and index.step in (None, 1):
            return StreamingBatches(
                self.source,
                device=self.device,
                dtype=self.dtype,
                task=self.task,
                limit=index.stop
                if self.limit is None or index.stop is None
                else min(index.stop, self.limit),
            )
        if index == 0:
            return next(iter(self))
        raise TypeError("streamed batches are read in order: take [0] or [:n]")

    @property
    def num_examples(self) -> int:
        if self._examples is None:
            total = sum(int(y.shape[0]) for _, y in self)
            self._examples = total
        return self._examples


def streams(data: Any) -> bool:
    """Whether ``data`` is read batch by batch (a DataLoader or another re-iterable that is
    neither a sequence in memory nor a one-shot iterator)."""
    if isinstance(data, (list, tuple, Mapping, Tensor)) or hasattr(data, "x"):
        return False
    if not isinstance(data, Iterable):
        return False
    try:
        return iter(data) is not data  # a generator can be read once only: keep it in memory
    except TypeError:
        return False


def num_examples(batches: Any) -> int:
    """The number of examples in materialized or streamed batches."""
    if isinstance(batches, StreamingBatches):
        return batches.num_examples
    return sum(int(y.shape[0]) for _, y in batches)


def as_batches(
    data: Any,
    *,
    batch_size: int = 1024,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    task: Any = None,
    stream: bool | None = None,
) -> Batches:
    """``data`` as batches of ``(inputs, targets)`` on ``device``.

    ``data`` may be an object with ``x``/``y`` tensors (e.g. :class:`basinscope.data.TensorData`),
    a pair of tensors ``(x, y)``, a dict of equally long tensors (split by the task into
    inputs and targets), or any iterable of batches (a DataLoader, a list of tuples or
    dicts). Floating inputs are cast to ``dtype``; integer inputs (token ids) stay.

    Data in memory is materialized once on the device: keeping the batches there is what
    makes evaluating thousands of points fast. A DataLoader (any re-iterable that is not a
    list) is **streamed** (``stream=None`` decides so; ``True``/``False`` force it): every
    pass reads it again batch by batch, and memory is bounded by the batch size, not by
    the dataset (:class:`StreamingBatches`).
    """
    from basinscope.engine.task import Task, inputs_to

    task = task or Task()
    if stream is None:
        stream = streams(data)
    if stream and isinstance(data, Iterable) and not hasattr(data, "x"):
        out_stream = StreamingBatches(data, device=device, dtype=dtype, task=task)
        try:
            next(iter(out_stream))
        except StopIteration:
            raise BasinscopeError(
                "the dataset is empty: there is nothing to evaluate on; check the data source "
                "and split"
            ) from None
        return out_stream  # type: ignore[return-value]
    if hasattr(data, "x") and hasattr(data, "y") and isinstance(data.x, Tensor):
        x_all, y_all = data.x, data.y
        batches = [
            (x_all[i : i + batch_size], y_all[i : i + batch_size])
            for i in range(0, len(x_all), batch_size)
        ]
    elif isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        x_all, y_all = data
        if len(x_all) != len(y_all):
            raise BasinscopeError(
                f"inputs and targets differ in length: {len(x_all)} vs {len(y_all)}"
            )
        batches = [
            (x_all[i : i + batch_size], y_all[i : i + batch_size])
            for i in range(0, len(x_all), batch_size)
        ]
    elif isinstance(data, Mapping) and data and all(isinstance(v, Tensor) for v in data.values()):
        lengths = {k: len(v) for k, v in data.items()}
        if len(set(lengths.values())) != 1:
            raise BasinscopeError(f"the tensors of a dict dataset differ in length: {lengths}")
        n = next(iter(lengths.values()))
        batches = [
            task.split({k: v[i : i + batch_size] for k, v in data.items()})
            for i in range(0, n, batch_size)
        ]
    elif isinstance(data, Iterable):
        batches = [task.split(b) for b in data]
    else:
        raise BasinscopeError(
            f"cannot read data of type {type(data).__name__}: pass a TensorData, an (x, y) pair "
            "of tensors, a dict of tensors, a DataLoader or any iterable of (inputs, targets) "
            "batches"
        )
    out: Batches = []
    for x, y in batches:
        y = torch.as_tensor(y)
        out.append((inputs_to(x, device, dtype), y.to(device)))
    if not out or sum(len(y) for _, y in out) == 0:
        raise BasinscopeError(
            "the dataset is empty: there is nothing to evaluate on; check the data source and split"
        )
    return out
