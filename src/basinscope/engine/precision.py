"""Precision of a computation: the dtype parameters and data are stored in, and autocast.

``float32`` and ``float64`` store the model's parameters, the directions and the data in
that dtype. ``bfloat16`` and ``float16`` are **mixed precision for evaluation**: the
parameters stay in float32 and the forward passes run under :func:`torch.autocast` in the
lower precision (matmuls and convolutions in 16 bits, reductions such as the loss in
float32); the engine still accumulates every metric in float64. ``float16`` autocast needs
a GPU (or a CPU build that supports it); ``bfloat16`` runs on CPUs too.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from basinscope.errors import BasinscopeError

__all__ = ["AUTOCAST", "PRECISIONS", "autocast", "storage_dtype", "to_dtype"]

PRECISIONS = ("float32", "float64", "bfloat16", "float16")
_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
AUTOCAST = (torch.bfloat16, torch.float16)


def to_dtype(dtype: Any) -> torch.dtype:
    """A dtype given by name (``"float64"``) or as a ``torch.dtype``."""
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise BasinscopeError(f"unknown dtype {dtype}: expected one of {', '.join(PRECISIONS)}")
        return dtype
    name = str(dtype).replace("torch.", "")
    if name not in _DTYPES:
        raise BasinscopeError(f"unknown dtype {dtype!r}: expected one of {', '.join(PRECISIONS)}")
    return _DTYPES[name]


def storage_dtype(dtype: Any) -> tuple[torch.dtype, torch.dtype | None]:
    """``(dtype parameters and data are stored in, autocast dtype or None)``."""
    d = to_dtype(dtype)
    if d in AUTOCAST:
        return torch.float32, d
    return d, None


def autocast(device: Any, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on ``device``'s type in ``dtype``, or nothing when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    kind = torch.device(device).type
    try:
        return torch.autocast(device_type=kind, dtype=dtype)
    except RuntimeError as e:  # e.g. float16 autocast on a CPU build without it
        raise BasinscopeError(
            f"mixed precision {str(dtype).replace('torch.', '')} is not available on {kind} "
            f"({e}); use --dtype bfloat16 or float32"
        ) from None
