"""A dataset of named tensors: the batches of a keyword model (``input_ids``, ``labels``...).

A Hugging Face classifier is called as ``model(input_ids=..., attention_mask=...)`` and
its targets are ``labels``; such data is not an ``(x, y)`` pair but several equally long
tensors by name. :class:`DictData` holds them. It is a read-only
``Mapping[str, Tensor]``, so everything that reads a dict of tensors as a dataset (the
engine's :func:`~basinscope.engine.as_batches`, split by the task into the model's inputs
and the targets) reads it as it is, and it adds what a dataset needs: a name, the number
of examples, a fingerprint, batches, subsets and device moves.

``len()`` keeps its ``Mapping`` meaning (the number of keys); the number of examples is
:attr:`DictData.num_examples`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from basinscope.errors import BasinscopeError

__all__ = ["DictData"]


class DictData(Mapping[str, Tensor]):
    """Equally long tensors by name, with the examples along dim 0, and a name.

    Args:
        tensors: ``{key: tensor}``, every tensor of shape ``(N, ...)`` with the same ``N``
            (e.g. ``input_ids`` and ``attention_mask`` ``(N, L)``, ``labels`` ``(N,)``).
            Integer tensors (token ids, masks, class labels) keep their dtype; floating
            tensors must be finite.
        name: A short human-readable name used in logs and run folders.

    The tensors are not copied; treat them as read-only. ``len(d)`` is the number of keys
    (as for any mapping), ``d.num_examples`` the number of examples.
    """

    __slots__ = ("_name", "_tensors")

    def __init__(self, tensors: Mapping[str, Any], name: str = "") -> None:
        label = f"dataset {name!r}" if name else "dataset"
        if not isinstance(tensors, Mapping) or not tensors:
            found = (
                "an empty mapping"
                if isinstance(tensors, Mapping)
                else f"a {type(tensors).__name__}"
            )
            raise BasinscopeError(
                f"{label}: DictData needs a dict of tensors by name, found {found}. "
                "Pass e.g. {'input_ids': ids, 'attention_mask': mask, 'labels': labels}."
            )
        out: dict[str, Tensor] = {}
        for k, v in tensors.items():
            if not isinstance(k, str):
                raise BasinscopeError(
                    f"{label}: the keys of a DictData are names (str), found {k!r} "
                    f"({type(k).__name__}). Name each tensor, e.g. 'input_ids'."
                )
            if not isinstance(v, Tensor):
                raise BasinscopeError(
                    f"{label}: {k!r} must be a torch tensor, found {type(v).__name__}. "
                    "Convert with torch.as_tensor(...)."
                )
            if v.ndim == 0:
                raise BasinscopeError(
                    f"{label}: {k!r} is a 0-d tensor; every tensor needs the examples along "
                    "dim 0 (shape (N, ...)). Give one value per example."
                )
            if v.is_complex():
                raise BasinscopeError(
                    f"{label}: {k!r} has complex dtype {v.dtype}; use real tensors."
                )
            out[k] = v
        lengths = {k: int(v.shape[0]) for k, v in out.items()}
        if len(set(lengths.values())) != 1:
            raise BasinscopeError(
                f"{label}: every tensor must hold the same number of examples (dim 0), found "
                f"{lengths}. Check that they come from the same split."
            )
        n = next(iter(lengths.values()))
        if n == 0:
            raise BasinscopeError(
                f"{label} is empty: its tensors {sorted(out)} hold 0 examples. A dataset "
                "needs at least one; check the file or split that produced it."
            )
        for k, v in out.items():
            if v.is_floating_point():
                finite = torch.isfinite(v)
                if not bool(finite.all()):
                    bad = (~finite).reshape(n, -1).any(dim=1)
                    raise BasinscopeError(
                        f"{label}: {k!r} holds non-finite values (NaN or inf) in "
                        f"{int(bad.sum())} of {n} examples, the first at index "
                        f"{int(bad.nonzero()[0, 0])}. Clean them or drop those examples."
                    )
        self._tensors = out
        self._name = name

    # -- the mapping ------------------------------------------------------------------------
    def __getitem__(self, key: str) -> Tensor:
        try:
            return self._tensors[key]
        except KeyError:
            raise KeyError(key) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        """The number of keys (``Mapping`` semantics); see :attr:`num_examples`."""
        return len(self._tensors)

    def __eq__(self, other: object) -> bool:
        """Same keys in the same order holding equal tensors (the name is not compared)."""
        if not isinstance(other, Mapping):
            return NotImplemented
        return list(self) == list(other) and all(
            isinstance(other[k], Tensor)
            and v.shape == other[k].shape
            and v.dtype == other[k].dtype
            and torch.equal(v.cpu(), other[k].cpu())
            for k, v in self._tensors.items()
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}: {tuple(v.shape[1:])} {v.dtype}" for k, v in self.items())
        device = next(iter(self._tensors.values())).device
        return f"DictData(name={self._name!r}, n={self.num_examples}, {{{parts}}}, device={device})"

    # -- the dataset ------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._name

    @property
    def num_examples(self) -> int:
        """The number of examples (the tensors' common first dimension)."""
        return int(next(iter(self._tensors.values())).shape[0])

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of one example of each tensor (``shape[1:]``)."""
        return {k: tuple(v.shape[1:]) for k, v in self._tensors.items()}

    def fingerprint(self) -> str:
        """First 16 hex characters of a SHA-256 over the keys, shapes, dtypes and bytes.

        Two datasets with the same fingerprint hold identical tensors under the same keys in
        the same order; the name is not part of it (as :meth:`TensorData.fingerprint`).
        """
        h = hashlib.sha256(b"DictData|")
        for k, t in self._tensors.items():
            h.update(f"{k}|{tuple(t.shape)}|{t.dtype}|".encode())
            flat = t.detach().cpu().contiguous().reshape(-1)
            if flat.dtype == torch.bool:
                flat = flat.to(torch.uint8)
            h.update(flat.view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:16]

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int | None = None,
        drop_last: bool = False,
    ) -> Iterator[dict[str, Tensor]]:
        """Yield dict mini-batches (the same keys, ``batch_size`` examples each).

        As :meth:`TensorData.batches`: contiguous slices in order, or with ``shuffle`` a
        ``torch.randperm`` from ``torch.Generator().manual_seed(seed)`` (the global RNG when
        ``seed`` is None); ``drop_last`` drops a final smaller batch.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise BasinscopeError(
                f"batch_size must be a positive integer, found {batch_size!r}. "
                "Use e.g. batch_size=128."
            )
        n = self.num_examples
        stop = n - n % batch_size if drop_last else n
        if shuffle:
            gen = None if seed is None else torch.Generator().manual_seed(seed)
            perm = torch.randperm(n, generator=gen)
            for i in range(0, stop, batch_size):
                idx = perm[i : i + batch_size]
                yield {k: v[idx.to(v.device)] for k, v in self._tensors.items()}
        else:
            for i in range(0, stop, batch_size):
                yield {k: v[i : i + batch_size] for k, v in self._tensors.items()}

    def subset(self, indices: Sequence[int] | Tensor, name: str | None = None) -> DictData:
        """A new dataset with the examples at ``indices`` (integer indices or a boolean mask)."""
        n = self.num_examples
        idx = torch.as_tensor(indices)
        if idx.dtype != torch.bool:
            idx = idx.long()
            if idx.numel() and (int(idx.max()) >= n or int(idx.min()) < -n):
                raise BasinscopeError(
                    f"subset of dataset {self._name!r}: indices must lie in [0, {n}), found "
                    f"range [{int(idx.min())}, {int(idx.max())}]."
                )
        elif idx.shape != (n,):
            raise BasinscopeError(
                f"subset of dataset {self._name!r}: a boolean mask must have shape ({n},), "
                f"found {tuple(idx.shape)}."
            )
        return DictData(
            {k: v[idx.to(v.device)] for k, v in self._tensors.items()},
            self._name if name is None else name,
        )

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> DictData:
        """A new dataset on ``device``; floating tensors are cast to ``dtype``, integer
        tensors (token ids, masks, labels) keep theirs."""
        if dtype is not None and not dtype.is_floating_point:
            raise BasinscopeError(
                f"DictData.to: dtype must be a floating-point dtype, found {dtype}. Integer "
                "tensors keep their dtype; use e.g. torch.float32 or torch.float64."
            )
        return DictData(
            {
                k: v.to(device=device, dtype=dtype if v.is_floating_point() else None)
                for k, v in self._tensors.items()
            },
            self._name,
        )

    def with_name(self, name: str) -> DictData:
        """The same tensors under a different name."""
        return DictData(self._tensors, name)
