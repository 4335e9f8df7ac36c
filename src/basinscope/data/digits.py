"""scikit-learn's 8x8 handwritten digits, with a fixed train/test split.

The 1,797 images ship inside the scikit-learn wheel, so this dataset is always available
offline. The split is stratified and fixed (``random_state=0``, 25% test), giving 1,347
training and 450 test images with every class on both sides.
"""

from __future__ import annotations

import functools
import gzip
import math
from pathlib import Path

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
    images, y = _digits_file_arrays()
    x = (images.astype(np.float32) / np.float32(16.0))[:, None, :, :]
    train, test = stratified_split(y, test_size=0.25, seed=0)
    out = {"train": (x[train], y[train]), "test": (x[test], y[test]), "all": (x, y)}
    for pair in out.values():
        for a in pair:
            a.flags.writeable = False
    return out


def _digits_file_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 images (float64, 0-16) and labels, read from the csv that ships inside
    the scikit-learn wheel without importing scikit-learn (about a second of imports,
    scipy's included); through ``sklearn.datasets.load_digits`` if the file is not there."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(roots[0]) / "datasets" / "data" / "digits.csv.gz" if roots else None
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits as sk_load_digits

        bunch = sk_load_digits()
        return bunch.images, bunch.target.astype(np.int64)
    with gzip.open(path, "rt", encoding="latin-1") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)


def stratified_split(y: np.ndarray, test_size: float | int, seed: int) -> tuple[np.ndarray, ...]:
    """``(train, test)`` indices of scikit-learn's
    ``train_test_split(..., test_size=test_size, random_state=seed, stratify=y)`` (a
    fraction, or a number of examples), the same indices in the same order (its
    StratifiedShuffleSplit, step for step; a test compares them), without importing
    scikit-learn."""
    n = len(y)
    if isinstance(test_size, float):
        n_test, n_train = math.ceil(test_size * n), math.floor((1.0 - test_size) * n)
    else:
        n_test, n_train = int(test_size), n - int(test_size)
    _, y_indices, class_counts = np.unique(y, return_inverse=True, return_counts=True)
    class_indices = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(class_counts)[:-1])
    rng = np.random.RandomState(seed)
    n_i = _approximate_mode(class_counts, n_train, rng)
    t_i = _approximate_mode(class_counts - n_i, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for i in range(len(class_counts)):
        perm = class_indices[i].take(rng.permutation(class_counts[i]), mode="clip")
        train.extend(perm[: n_i[i]])
        test.extend(perm[n_i[i] : n_i[i] + t_i[i]])
    return rng.permutation(train), rng.permutation(test)


def _approximate_mode(
    class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState
) -> np.ndarray:
    """Draws per class, proportional to ``class_counts``, the leftovers to the largest
    remainders, ties broken by ``rng`` (scikit-learn's ``_approximate_mode``)."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need_to_add)
            floored[rng.choice(inds, size=add_now, replace=False)] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)


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
