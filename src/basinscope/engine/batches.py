"""Turning whatever the user passes as data into a list of ``(inputs, targets)`` batches."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from basinscope.errors import BasinscopeError

__all__ = ["Batches", "as_batches", "plain_layout", "unpack_batch"]

INPUT_KEYS = ("x", "input", "inputs", "image", "images", "pixel_values")
TARGET_KEYS = ("y", "target", "targets", "label", "labels")

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


def unpack_batch(batch: Any) -> tuple[Tensor, Tensor]:
    """``(x, y)`` from a tuple/list batch or a dict batch (keys such as x/y, input/target)."""
    if isinstance(batch, Mapping):
        xk = next((k for k in INPUT_KEYS if k in batch), None)
        yk = next((k for k in TARGET_KEYS if k in batch), None)
        if xk is None or yk is None:
            raise BasinscopeError(
                f"a dict batch needs an input key (one of {INPUT_KEYS}) and a target key "
                f"(one of {TARGET_KEYS}); this one has keys {sorted(batch)}"
            )
        return batch[xk], batch[yk]
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise BasinscopeError(
        f"expected each batch to be (inputs, targets) or a dict, got {type(batch).__name__}"
        + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
    )


def as_batches(
    data: Any,
    *,
    batch_size: int = 1024,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Batches:
    """Materialize ``data`` once as a list of batches on ``device``.

    ``data`` may be an object with ``x``/``y`` tensors (e.g. :class:`basinscope.data.TensorData`),
    a pair of tensors ``(x, y)``, or any iterable of batches (a DataLoader, a list of tuples or
    dicts). Floating inputs are cast to ``dtype``. Keeping the batches in memory is what makes
    evaluating thousands of points fast: a DataLoader re-read per point is the first bottleneck
    of the tools users have today.
    """
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
    elif isinstance(data, Iterable):
        batches = [unpack_batch(b) for b in data]
    else:
        raise BasinscopeError(
            f"cannot read data of type {type(data).__name__}: pass a TensorData, an (x, y) pair "
            "of tensors, a DataLoader or any iterable of (inputs, targets) batches"
        )
    out: Batches = []
    for x, y in batches:
        x = torch.as_tensor(x)
        y = torch.as_tensor(y)
        if dtype is not None and x.is_floating_point():
            x = x.to(dtype)
        out.append((plain_layout(x.to(device)), y.to(device)))
    if not out or sum(len(y) for _, y in out) == 0:
        raise BasinscopeError(
            "the dataset is empty: there is nothing to evaluate on; check the data source and split"
        )
    return out
