"""scikit-learn's 8x8 handwritten digits, with a fixed train/test split.

The 1,797 images ship inside the scikit-learn wheel, so this dataset is always available
offline. The split is stratified and fixed (``random_state=0``, 25% test), giving 1,347
training and 450 test images with every class on both sides.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from basinscope.data.tensordata import TensorData
from basinscope.errors import BasinscopeError

__all__ = ["DIGITS_SPLITS", "load_digits"]

DIGITS_SPLITS = ("train", "test", "all")


def check_split(split: str, valid: tuple[str, ...], what: str) -> None:
    """Raise a :class:`BasinscopeError` unless ``split`` is one of ``valid``."""
    if split not in valid:
        raise BasinscopeError(
            f"{what} has no split {split!r}; the valid splits are "
            + ", ".join(repr(s) for s in valid)
            + "."
        )


@functools.cache
def _digits_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    x = (bunch.images.astype(np.float32) / np.float32(16.0))[:, None, :, :]
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    out = {"train": (x_tr, y_tr), "test": (x_te, y_te), "all": (x, y)}
    for pair in out.values():
        for a in pair:
            a.flags.writeable = False
    return out


def load_digits(split: str = "train") -> TensorData:
    """The scikit-learn digits as images ``(N, 1, 8, 8)`` in [0, 1] with labels 0-9.

    Args:
        split: ``"train"`` (1,347 images), ``"test"`` (450) or ``"all"`` (1,797).

    Returns:
        A :class:`TensorData` named ``"digits-<split>"``. The arrays are read once per
        process and cached; each call returns fresh tensors.
    """
    check_split(split, DIGITS_SPLITS, "the digits dataset")
    x, y = _digits_arrays()[split]
    return TensorData(torch.tensor(x), torch.tensor(y), name=f"digits-{split}")
