"""Datasets for loss-landscape experiments: in-memory tensors, built-in sets, shifts.

Everything is a :class:`TensorData` (inputs ``x``, integer labels ``y``, a ``name``).
Built in: scikit-learn's 8x8 digits (:func:`load_digits`) and 5,000 MNIST images
(:func:`load_mnist5k`, needs ``basinscope[mnist]``). User data comes from ``.npz`` files,
``module:attr`` specs or any dataset/loader (:func:`as_tensor_data`);
:func:`resolve_data` maps a CLI spec to a dataset, and :func:`apply_shift` makes the
shifted variants (rotation, block shuffling, noise) used to study fine-tuning under
distribution shift.
"""

from basinscope.data.digits import DIGITS_SPLITS, load_digits
from basinscope.data.loaders import (
    as_tensor_data,
    data_splits,
    load_npz,
    load_object,
    resolve_data,
)
from basinscope.data.mnist import MNIST5K_SPLITS, load_mnist5k, mnist5k_path
from basinscope.data.shifts import (
    add_noise,
    apply_shift,
    block_permutation,
    block_shuffle,
    label_subset,
    rotate,
)
from basinscope.data.tensordata import TensorData

__all__ = [
    "DIGITS_SPLITS",
    "MNIST5K_SPLITS",
    "TensorData",
    "add_noise",
    "apply_shift",
    "as_tensor_data",
    "block_permutation",
    "block_shuffle",
    "data_splits",
    "label_subset",
    "load_digits",
    "load_mnist5k",
    "load_npz",
    "load_object",
    "mnist5k_path",
    "resolve_data",
    "rotate",
]
