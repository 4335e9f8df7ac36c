"""Datasets for loss-landscape experiments: in-memory tensors, built-in sets, shifts.

A dataset is a :class:`TensorData` (inputs ``x``, targets ``y``: integer class labels or
floating-point regression targets, a ``name``) or a :class:`DictData` (equally long
tensors by name, such as ``input_ids``, ``attention_mask`` and ``labels`` for a keyword
model; a ``Mapping[str, Tensor]`` with ``num_examples``). Built in: scikit-learn's 8x8
digits (:func:`load_digits`), 5,000 MNIST images (:func:`load_mnist5k`, needs
``basinscope[mnist]``) and a token-sequence classification task made offline
(:func:`load_tokens`, ``--data tokens``). User data comes from ``.npz`` files,
``module:attr`` specs or any dataset/loader (:func:`as_tensor_data`, :func:`as_dataset`);
:func:`resolve_data` maps a CLI spec to a dataset, and :func:`apply_shift` makes the
shifted variants (rotation, block shuffling, noise) used to study fine-tuning under
distribution shift.
"""

from basinscope.data.corruptions import label_noise, patch_data, patch_only_images
from basinscope.data.dictdata import DictData
from basinscope.data.digits import DIGITS_SPLITS, load_digits
from basinscope.data.loaders import (
    BUILTIN_DATA,
    as_dataset,
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
from basinscope.data.synthetic import (
    LinearTeacher,
    gaussian_inputs,
    low_rank_teacher,
    teacher_data,
)
from basinscope.data.tensordata import TensorData
from basinscope.data.tokens import TOKENS_SPLITS, load_tokens

__all__ = [
    "BUILTIN_DATA",
    "DIGITS_SPLITS",
    "MNIST5K_SPLITS",
    "TOKENS_SPLITS",
    "DictData",
    "LinearTeacher",
    "TensorData",
    "add_noise",
    "apply_shift",
    "as_dataset",
    "as_tensor_data",
    "block_permutation",
    "block_shuffle",
    "data_splits",
    "gaussian_inputs",
    "label_noise",
    "label_subset",
    "load_digits",
    "load_mnist5k",
    "load_npz",
    "load_object",
    "load_tokens",
    "low_rank_teacher",
    "mnist5k_path",
    "patch_data",
    "patch_only_images",
    "resolve_data",
    "rotate",
    "teacher_data",
]
