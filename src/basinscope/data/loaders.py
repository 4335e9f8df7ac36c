"""Turning what the user has into a :class:`TensorData` or a :class:`DictData`.

* :func:`load_npz` reads ``x``/``y`` (or ``x_<split>``/``y_<split>``) arrays from a file,
  or, in a file without them, every array by name (``input_ids``, ``labels``...) as a
  :class:`DictData`;
* :func:`load_object` imports ``"module:attr"``;
* :func:`as_tensor_data` converts a torch ``Dataset``, a ``DataLoader`` or any iterable of
  ``(input, target)`` pairs or dict batches;
* :func:`resolve_data` maps a CLI data spec to a dataset and applies the shifts.
"""

from __future__ import annotations

import dataclasses
import inspect
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from basinscope._imports import import_attr
from basinscope.data.dictdata import DictData
from basinscope.data.digits import load_digits
from basinscope.data.mnist import load_mnist5k
from basinscope.data.shifts import apply_shift
from basinscope.data.tensordata import TensorData
from basinscope.data.tokens import load_tokens
from basinscope.errors import BasinscopeError

__all__ = [
    "BUILTIN_DATA",
    "DICT_KEYS",
    "as_dataset",
    "as_tensor_data",
    "data_splits",
    "load_npz",
    "load_object",
    "resolve_data",
]

#: Key pairs accepted for dict batches/items, tried in this order.
DICT_KEYS = (("x", "y"), ("input", "target"), ("inputs", "labels"))

_NPZ_HOW = "np.savez(path, x=inputs, y=labels)"
_NPZ_DICT_HOW = "np.savez(path, input_ids=ids, attention_mask=mask, labels=labels)"

#: The built-in data specs of :func:`resolve_data` (each has a train and a test split).
BUILTIN_DATA = ("digits", "mnist", "mnist5k", "tokens")

#: Target names that make an ``.npz`` without x/y arrays a dict dataset: the names the
#: default task reads targets from (``basinscope.engine.task.TARGET_KEYS``).
DICT_TARGET_KEYS = ("y", "target", "targets", "label", "labels")

#: Split names recognised as a suffix ``_<split>`` of an array's name in a dict ``.npz``.
NPZ_SPLITS = ("train", "test", "val", "valid", "validation", "all")


def _finish(x: Tensor, y: Tensor, name: str) -> TensorData:
    """Common conversions: float inputs, a channel dim for (N, H, W); floating targets that
    are 1-D whole numbers become class labels, other floating targets stay regression
    targets."""
    if not x.is_floating_point():
        x = x.float()
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if y.is_floating_point() and y.ndim == 1 and bool(torch.all(y == y.round())):
        y = y.long()
    return TensorData(x, y, name=name)


def load_npz(path: str | Path, split: str | None = None) -> TensorData | DictData:
    """Read a dataset from an ``.npz`` file.

    With ``split=None`` the file must hold arrays ``x`` (inputs) and ``y`` (targets). With
    a split, ``x_<split>``/``y_<split>`` are used when present; otherwise ``x``/``y`` serve
    the ``"train"`` (and ``"all"``) split, and ``"all"`` also accepts the concatenation of
    ``x_train`` and ``x_test``. Integer inputs are cast to float32 (not rescaled), and 3-D
    inputs ``(N, H, W)`` get a channel dim: ``(N, 1, H, W)``. Targets are integer class
    labels ``(N,)`` (1-D floats holding whole numbers are read as labels too) or
    floating-point regression targets ``(N,)`` / ``(N, K)``: a :class:`TensorData` with
    ``regression`` true, for ``--loss mse``.

    A file with no ``x``/``y`` arrays and its targets under a usual name (``labels``,
    ``label``, ``targets`` or ``target``) is a dict dataset (:class:`DictData`): its arrays
    by name, e.g. ``input_ids``, ``attention_mask``, ``labels``, serve the ``"train"``
    split, and ``<name>_<split>`` arrays (``input_ids_test``) the named split, the suffix
    removed. Arrays keep their dtypes (token ids stay integers).
    """
    path = Path(path)
    if not path.is_file():
        raise BasinscopeError(
            f"data file {str(path)!r} does not exist. Pass the path of an .npz file written "
            f"with {_NPZ_HOW}."
        )
    with open(path, "rb") as fh:
        head = fh.read(8)
    if not zipfile.is_zipfile(path) and not head.startswith(b"\x93NUMPY"):
        raise BasinscopeError(
            f"could not read {str(path)!r} as an .npz file: it is not a zip archive of .npy "
            f"arrays (it starts with {head!r}). Expected a numpy archive written with {_NPZ_HOW}."
        )
    try:
        # open the file ourselves: np.load leaks the handle when a zip is truncated
        with open(path, "rb") as fh:
            loaded = np.load(fh, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise ValueError(f"it holds a single {type(loaded).__name__}, not named arrays")
            with loaded as f:
                arrays = {k: f[k] for k in f.files}
    except ValueError as e:
        if "pickle" not in str(e):
            raise _npz_error(path, e) from e
        raise BasinscopeError(
            f"could not read {str(path)!r} as an .npz file: it holds object arrays (pickled "
            "Python objects), which are not loaded because unpickling can run code. Save numeric "
            f"arrays only: {_NPZ_HOW} with x.astype(np.float32) and y.astype(np.int64)."
        ) from e
    except (OSError, EOFError, zipfile.BadZipFile, KeyError, zlib.error) as e:
        raise _npz_error(path, e) from e

    have = sorted(arrays)
    if _dict_file(arrays.keys()):
        return _npz_dict(path, arrays, split)
    if split is not None and {f"x_{split}", f"y_{split}"} <= arrays.keys():
        keys = [(f"x_{split}", f"y_{split}")]
    elif split in (None, "train", "all") and {"x", "y"} <= arrays.keys():
        keys = [("x", "y")]
    elif split == "all" and {"x_train", "y_train", "x_test", "y_test"} <= arrays.keys():
        keys = [("x_train", "y_train"), ("x_test", "y_test")]
    elif split is not None and {"x", "y"} <= arrays.keys():
        raise BasinscopeError(
            f"{str(path)!r} has no {split} arrays: it holds {have}, and plain x/y serve "
            f"only the 'train' split. Save the {split} data in the same file as "
            f"x_{split}/y_{split}: np.savez(path, x_train=..., y_train=..., x_{split}=..., "
            f"y_{split}=...), or point the {split} data at a separate file; or evaluate the "
            "train split instead (on the command line: --split train, or --splits train)."
        )
    else:
        want = "x and y" if split is None else f"x_{split} and y_{split} (or x and y)"
        raise BasinscopeError(
            f"{str(path)!r} lacks the arrays {want}; it holds {have}. Write it with "
            f"{_NPZ_HOW} or np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...); "
            "or, for a dict dataset (a keyword model), name the arrays as the model's "
            f"arguments with the targets as {'/'.join(DICT_TARGET_KEYS[1:])}: {_NPZ_DICT_HOW}."
        )
    xs, ys = [], []
    for kx, ky in keys:
        x, y = arrays[kx], arrays[ky]
        labels_ok = y.dtype.kind in "iu" and y.ndim == 1
        targets_ok = y.dtype.kind == "f" and y.ndim >= 1
        if x.dtype.kind not in "biuf" or x.ndim < 1 or not (labels_ok or targets_ok):
            raise BasinscopeError(
                f"{str(path)!r}: {kx} must be a numeric array (N, ...) and {ky} a 1-D label "
                f"array (N,) of integers or floating-point regression targets (N,) or (N, K), "
                f"found {kx} {x.dtype} {x.shape} and {ky} {y.dtype} {y.shape}."
            )
        if x.shape[0] != y.shape[0]:
            raise BasinscopeError(
                f"{str(path)!r}: {kx} and {ky} must have the same length, found {x.shape[0]} "
                f"inputs and {y.shape[0]} labels. Save matching arrays."
            )
        xs.append(x)
        ys.append(y)
    x, y = np.concatenate(xs), np.concatenate(ys)
    name = path.stem if split is None else f"{path.stem}-{split}"
    if y.shape[0] == 0:
        raise BasinscopeError(
            f"dataset {name!r} is empty: {str(path)!r} holds 0 samples in "
            f"{[k for pair in keys for k in pair]}. Save at least one sample."
        )
    if x.ndim == 1:
        x = x[:, None]
    return _finish(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y), name)


def _dict_file(keys: Iterable[str]) -> bool:
    """Whether an ``.npz`` is a dict dataset: no x/y arrays (``x``, ``y``, ``x_<split>``,
    ``y_<split>``), and targets under a usual name (``labels``, ``labels_test``...)."""
    keys = list(keys)
    if any(k in ("x", "y") or k.startswith(("x_", "y_")) for k in keys):
        return False
    bases = {k if s is None else k[: -len(s) - 1] for k in keys for s in [_split_of(k, None)]}
    return bool(bases & set(DICT_TARGET_KEYS))


def _split_of(key: str, split: str | None) -> str | None:
    """The split an array of a dict ``.npz`` belongs to (its ``_<split>`` suffix), or None."""
    for s in (*NPZ_SPLITS, *(() if split is None else (split,))):
        if key.endswith(f"_{s}") and len(key) > len(s) + 1:
            return s
    return None


def _npz_dict(path: Path, arrays: dict[str, np.ndarray], split: str | None) -> DictData:
    """The arrays of a dict ``.npz`` (no x/y) for ``split`` as a :class:`DictData`."""
    by_split: dict[str | None, dict[str, np.ndarray]] = {}
    for k, v in arrays.items():
        s = _split_of(k, split)
        by_split.setdefault(s, {})[k if s is None else k[: -len(s) - 1]] = v
    have = sorted(arrays)
    if split is not None and split in by_split:
        parts = [by_split[split]]
    elif split in (None, "train", "all") and None in by_split:
        parts = [by_split[None]]
    elif split == "all" and {"train", "test"} <= by_split.keys():
        parts = [by_split["train"], by_split["test"]]
        if list(parts[0]) != list(parts[1]):
            raise BasinscopeError(
                f"{str(path)!r}: the train and test arrays have different names "
                f"({sorted(parts[0])} and {sorted(parts[1])}), so the 'all' split cannot join "
                "them. Save the same arrays for each split."
            )
    else:
        raise BasinscopeError(
            f"{str(path)!r} has no {split or 'train'} arrays: it holds {have}, a dict dataset "
            f"whose plain names serve the 'train' split and <name>_<split> arrays (e.g. "
            f"input_ids_{split or 'test'}) the named split. Save the {split} arrays in the same "
            "file, or evaluate a split it has (on the command line: --split or --splits)."
        )
    for part in parts:
        for k, v in part.items():
            if v.dtype.kind not in "biuf" or v.ndim < 1:
                raise BasinscopeError(
                    f"{str(path)!r}: every array of a dict dataset must be numeric with the "
                    f"examples along dim 0 (N, ...), found {k!r} {v.dtype} {v.shape}. Save "
                    f"numeric arrays only, e.g. {_NPZ_DICT_HOW}."
                )
    name = path.stem if split is None else f"{path.stem}-{split}"
    joined = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return DictData(
        {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in joined.items()}, name=name
    )


def _npz_error(path: Path, e: Exception) -> BasinscopeError:
    return BasinscopeError(
        f"could not read {str(path)!r} as an .npz file ({type(e).__name__}: {e}). "
        f"Expected a numpy archive written with {_NPZ_HOW} (object arrays are not allowed)."
    )


def load_object(spec: str) -> Any:
    """Import ``"module:attr"`` (``attr`` may be dotted) and return the attribute."""
    return import_attr(spec, "mypkg.data:train_set")


def _pair(item: Any, where: str) -> tuple[Any, Any]:
    if isinstance(item, Mapping):
        for kx, ky in DICT_KEYS:
            if kx in item and ky in item:
                return item[kx], item[ky]
        raise BasinscopeError(
            f"{where} is a dict with keys {sorted(map(str, item))}; expected one of the key "
            f"pairs {[f'{a}/{b}' for a, b in DICT_KEYS]}."
        )
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return item[0], item[1]
    found = type(item).__name__
    if isinstance(item, (tuple, list)):
        found += f" of length {len(item)}"
    elif isinstance(item, Tensor):
        found += f" of shape {tuple(item.shape)}"
    raise BasinscopeError(
        f"{where} is a {found}; expected an (input, target) pair or a dict with keys "
        f"{'/'.join(DICT_KEYS[0])}. Wrap the data so that each item or batch yields "
        "(input, target)."
    )


def as_tensor_data(obj: Any, name: str = "") -> TensorData:
    """Convert a dataset-like object into a :class:`TensorData` by reading all of it.

    Accepted: a :class:`TensorData` (renamed if ``name`` is given); a pair of tensors
    ``(x, y)``; a map-style dataset (``len`` and integer indexing, e.g. a torch
    ``Dataset``) whose items are ``(input, target)``; or any iterable, such as a
    ``DataLoader`` or a list, of such items or of batches. Items and batches (and ``obj``
    itself, as a single batch) may also be dicts with keys ``x``/``y``, ``input``/``target`` or ``inputs``/``labels``. A 0-d
    target marks a single sample, a 1-D target a batch. Inputs become floating point and
    3-D inputs ``(N, H, W)`` get a channel dim.
    """
    if isinstance(obj, TensorData):
        return dataclasses.replace(obj, name=name) if name else obj
    if (
        isinstance(obj, tuple)
        and len(obj) == 2
        and all(isinstance(t, Tensor) for t in obj)
        and obj[1].ndim == 1
    ):
        return _finish(obj[0], obj[1], name)
    if isinstance(obj, Mapping):
        items: Iterable[Any] = [obj]  # one dict batch
    elif hasattr(obj, "__len__") and hasattr(obj, "__getitem__") and not hasattr(obj, "__iter__"):
        items = (obj[i] for i in range(len(obj)))
    elif isinstance(obj, Iterable) and not isinstance(obj, (str, bytes, Tensor)):
        items = obj
    else:
        raise BasinscopeError(
            f"cannot use an object of type {type(obj).__name__} as a dataset"
            f"{f' ({name!r})' if name else ''}; "
            "expected a TensorData, a torch Dataset, a DataLoader or an iterable of "
            "(input, target) pairs or batches."
        )
    xs, ys = [], []
    for i, item in enumerate(items):
        x, y = _pair(item, f"item {i} of {name or type(obj).__name__}")
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        if y.ndim == 0:
            x, y = x.unsqueeze(0), y.unsqueeze(0)
        elif y.ndim != 1 or x.ndim == 0 or x.shape[0] != y.shape[0]:
            raise BasinscopeError(
                f"item {i} of {name or type(obj).__name__}: expected an input with a "
                "matching batch dim and a target that is a class index (0-d) or a batch of "
                f"them (1-D), found input {tuple(x.shape)} and target {tuple(y.shape)}."
            )
        xs.append(x)
        ys.append(y)
    if not xs:
        raise BasinscopeError(
            f"dataset {name or type(obj).__name__!r} is empty: it yielded no items. "
            "Check that it is built over the right split/folder."
        )
    try:
        x, y = torch.cat(xs), torch.cat(ys)
    except (RuntimeError, TypeError) as e:
        shapes = sorted({tuple(t.shape[1:]) for t in xs})
        raise BasinscopeError(
            f"dataset {name!r}: inputs have different shapes {shapes[:5]} and cannot be "
            "stacked; resize them to one shape (e.g. with a transform)."
        ) from e
    return _finish(x, y, name)


def as_dataset(obj: Any, name: str = "") -> TensorData | DictData:
    """``obj`` as a dataset: a :class:`DictData` stays one (renamed if ``name`` is given),
    a dict of equally long tensors (or arrays) without an ``x``/``y``-style key pair
    becomes one; anything else goes through :func:`as_tensor_data`."""
    if isinstance(obj, DictData):
        return obj.with_name(name) if name else obj
    if (
        isinstance(obj, Mapping)
        and obj
        and all(isinstance(v, (Tensor, np.ndarray)) for v in obj.values())
        and not any(kx in obj and ky in obj for kx, ky in DICT_KEYS)
    ):
        return DictData({k: torch.as_tensor(v) for k, v in obj.items()}, name=name)
    return as_tensor_data(obj, name)


def data_splits(spec: str) -> tuple[str, ...]:
    """Which of the usual splits (``train``, ``test``) the data ``spec`` of
    :func:`resolve_data` provides: both for the built-in data and for a function of
    ``split``; ``train`` only for a fixed dataset object; for an ``.npz`` file, ``train`` when
    it holds ``x``/``y`` or ``x_train``/``y_train`` and ``test`` when it holds
    ``x_test``/``y_test`` (for a dict ``.npz``: ``train`` when it has arrays without a split
    suffix or ``<name>_train`` arrays, ``test`` when it has ``<name>_test`` arrays). A file
    that cannot be read answers both, and reading it says why.
    """
    if spec in BUILTIN_DATA:
        return ("train", "test")
    if spec.lower().endswith(".npz"):
        try:
            with zipfile.ZipFile(spec) as z:
                names = {n.removesuffix(".npy") for n in z.namelist()}
        except (OSError, zipfile.BadZipFile):
            return ("train", "test")
        if _dict_file(names):
            found = {_split_of(n, None) for n in names}
            dict_have = {"train"} if None in found else set()
            dict_have |= {s for s in ("train", "test") if s in found}
            return tuple(s for s in ("train", "test") if s in dict_have) or ("train", "test")
        have = {s for s in ("train", "test") if {f"x_{s}", f"y_{s}"} <= names}
        if {"x", "y"} <= names:
            have.add("train")
        return tuple(s for s in ("train", "test") if s in have) or ("train", "test")
    if ":" in spec and not spec.startswith(":"):
        obj = load_object(spec)
        return ("train", "test") if callable(obj) and not _is_data(obj) else ("train",)
    return ("train", "test")


def resolve_data(
    spec: str,
    split: str = "train",
    *,
    rotation: float = 0.0,
    block_shuffle: int | None = None,
    noise: float = 0.0,
    seed: int = 0,
) -> TensorData | DictData:
    """Resolve a CLI data spec to a dataset and apply the requested shifts.

    ``spec`` is one of:

    * ``"digits"``: scikit-learn's 8x8 digits (:func:`~basinscope.data.load_digits`);
    * ``"mnist"`` or ``"mnist5k"``: 5,000 MNIST digits (:func:`load_mnist5k`);
    * ``"tokens"``: the built-in token-sequence classification data
      (:func:`~basinscope.data.load_tokens`, a :class:`DictData` for a keyword model such as
      ``basinscope.models:bert``);
    * a path ending in ``.npz`` (:func:`load_npz` with ``split``);
    * ``"module:attr"``: a TensorData, DictData, dict of tensors, Dataset, DataLoader or
      iterable (the ``"train"`` split only), or a callable called as ``attr(split=split)``
      that returns one.

    The shifts are applied with :func:`~basinscope.data.apply_shift` (images only: a
    :class:`DictData` refuses them).
    """
    if spec == "digits":
        data = load_digits(split)
    elif spec in ("mnist", "mnist5k"):
        data = load_mnist5k(split)
    elif spec == "tokens":
        data = load_tokens(split)
    elif spec.lower().endswith(".npz"):
        data = load_npz(spec, split)
    elif ":" in spec and not spec.startswith(":"):
        obj = load_object(spec)
        attr = spec.rsplit(":", 1)[1]
        if callable(obj) and not _is_data(obj):
            try:
                inspect.signature(obj).bind(split=split)
            except TypeError as e:
                raise BasinscopeError(
                    f"{spec!r} is callable, so it is called as {attr}(split={split!r}), but "
                    f"its signature {_signature(obj)} does not accept split=. Give it a "
                    "'split' parameter, or point the spec at a dataset object."
                ) from e
            except ValueError:
                pass  # no signature available (a builtin); just call it
            obj = _user_call(spec, f"calling {attr}(split={split!r})", lambda: obj(split=split))
            name = f"{attr}-{split}"
        else:
            if split != "train":
                raise BasinscopeError(
                    f"{spec!r} is a fixed dataset object with no splits, so it cannot provide the "
                    f"{split!r} split. Point the spec at a function taking split= (e.g. "
                    f"def {attr}(split): ...), or evaluate only the training split (--splits train)."
                )
            name = attr
        data = _user_call(spec, "reading its items", lambda: as_dataset(obj, name))
    else:
        raise BasinscopeError(
            f"unknown data spec {spec!r}. Accepted: 'digits', 'mnist' (5,000 MNIST images), "
            "'tokens' (token sequences for a transformer), a path to an .npz file with arrays "
            "x/y or x_train/y_train/x_test/y_test (or named arrays such as input_ids/labels), "
            "or 'module:attr' naming a TensorData, a dict of tensors, a Dataset, a DataLoader "
            "or a function of split."
        )
    return apply_shift(data, rotation=rotation, block_shuffle=block_shuffle, noise=noise, seed=seed)


def _user_call(spec: str, doing: str, fn: Callable[[], Any]) -> Any:
    """``fn()``, which runs the user's code: its exceptions become a BasinscopeError."""
    try:
        return fn()
    except BasinscopeError:
        raise
    except Exception as e:
        text = " ".join(str(e).split())[:300]
        raise BasinscopeError(
            f"the data {spec!r} raised {type(e).__name__} while {doing}: {text}. It is your "
            "code: fix it (running it in Python shows the full traceback) and run the command "
            "again."
        ) from e


def _is_data(obj: Any) -> bool:
    return isinstance(
        obj, (TensorData, DictData, torch.utils.data.Dataset, torch.utils.data.DataLoader)
    )


def _signature(obj: Any) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(?)"
