"""An in-memory dataset: two tensors (inputs and labels or regression targets) and a name.

Every data source in basinscope (the built-in digits and MNIST subsets, ``.npz`` files,
user datasets and loaders) ends up as a :class:`TensorData`. Loss-landscape evaluation
revisits the same data thousands of times, so holding it in memory as two tensors (and
batching by slicing) is both the simplest and the fastest representation.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from basinscope.errors import BasinscopeError

__all__ = ["TensorData"]


@dataclass(frozen=True)
class TensorData:
    """An in-memory dataset of inputs ``x`` and targets ``y``: class labels or regression
    targets.

    Args:
        x: Floating-point inputs with the samples along the first dimension: images
            ``(N, C, H, W)`` or feature vectors ``(N, D)``.
        y: Integer class labels ``(N,)`` (any integer dtype is converted to ``int64``), or
            floating-point regression targets ``(N,)`` or ``(N, K, ...)`` (kept as they
            are; :attr:`regression` is then true, for a loss such as MSE).
        name: A short human-readable name used in logs and run folders
            (e.g. ``"digits-train-rot35"``).

    The tensors are not copied; treat them as read-only.
    """

    x: Tensor
    y: Tensor
    name: str = ""

    def __post_init__(self) -> None:
        label = f"dataset {self.name!r}" if self.name else "dataset"
        if not isinstance(self.x, Tensor) or not isinstance(self.y, Tensor):
            raise BasinscopeError(
                f"{label}: x and y must be torch tensors, found {type(self.x).__name__} and "
                f"{type(self.y).__name__}. Convert with torch.as_tensor(...)."
            )
        if self.x.ndim < 2:
            raise BasinscopeError(
                f"{label}: x must have the samples along dim 0 and at least one feature "
                f"dim ((N, D) or (N, C, H, W)), found shape {tuple(self.x.shape)}. "
                "Reshape single-feature data with x.unsqueeze(1)."
            )
        if not self.x.is_floating_point():
            raise BasinscopeError(
                f"{label}: x must be floating point, found dtype {self.x.dtype}. "
                "Convert with x.float() (and scale images to [0, 1])."
            )
        if self.y.is_complex() or self.y.dtype == torch.bool:
            raise BasinscopeError(
                f"{label}: y must hold integer class indices or floating-point regression "
                f"targets, found dtype {self.y.dtype}. Convert class labels with y.long() and "
                "regression targets with y.float()."
            )
        if self.y.is_floating_point():
            if self.y.ndim == 0:
                raise BasinscopeError(
                    f"{label}: regression targets y need the samples along dim 0 ((N,) or "
                    f"(N, K)), found a 0-d tensor. Give one target per sample."
                )
        elif self.y.ndim != 1:
            raise BasinscopeError(
                f"{label}: y must be a 1-D tensor of class indices, found shape "
                f"{tuple(self.y.shape)}. One-hot labels can be converted with y.argmax(1); "
                "regression targets must be floating point (y.float())."
            )
        if not self.y.is_floating_point() and self.y.dtype != torch.int64:
            object.__setattr__(self, "y", self.y.long())
        if self.x.shape[0] != self.y.shape[0]:
            raise BasinscopeError(
                f"{label}: x and y must have the same number of samples, found "
                f"{self.x.shape[0]} inputs and {self.y.shape[0]} labels. Check that the "
                "inputs and labels come from the same split."
            )
        if self.y.numel() == 0:
            raise BasinscopeError(
                f"{label} is empty: x has shape {tuple(self.x.shape)}. A dataset needs at "
                "least one sample; check the file, split or label filter that produced it."
            )
        finite = torch.isfinite(self.x)
        if not bool(finite.all()):
            bad = (~finite).reshape(len(self.x), -1).any(dim=1)
            first = int(bad.nonzero()[0, 0])
            raise BasinscopeError(
                f"{label}: x holds non-finite values (NaN or inf) in {int(bad.sum())} of "
                f"{len(self.x)} samples, the first at index {first}. Every loss and metric "
                "would be NaN: clean the inputs (e.g. np.nan_to_num) or drop those samples."
            )
        if self.y.is_floating_point():
            finite_y = torch.isfinite(self.y)
            if not bool(finite_y.all()):
                bad = (~finite_y).reshape(len(self.y), -1).any(dim=1)
                raise BasinscopeError(
                    f"{label}: the regression targets y hold non-finite values (NaN or inf) in "
                    f"{int(bad.sum())} of {len(self.y)} samples, the first at index "
                    f"{int(bad.nonzero()[0, 0])}. Clean them or drop those samples."
                )
        elif int(self.y.min()) < 0:
            raise BasinscopeError(
                f"{label}: labels must be class indices >= 0, found minimum "
                f"{int(self.y.min())}. Remap labels to 0..num_classes-1."
            )

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __repr__(self) -> str:
        if self.regression:
            targets = f"regression targets {tuple(self.y.shape[1:])} {self.y.dtype}"
        else:
            targets = f"num_classes={self.num_classes}"
        return (
            f"TensorData(name={self.name!r}, n={len(self)}, x={tuple(self.x.shape)} "
            f"{self.x.dtype}, {targets}, device={self.x.device})"
        )

    @property
    def regression(self) -> bool:
        """Whether ``y`` holds regression targets (floating point) rather than class labels."""
        return self.y.is_floating_point()

    @property
    def target_shape(self) -> tuple[int, ...]:
        """Shape of one target (``y.shape[1:]``): ``()`` for labels or scalar targets."""
        return tuple(self.y.shape[1:])

    @property
    def num_classes(self) -> int:
        """Number of classes, taken as the largest label plus one (class labels only)."""
        if self.regression:
            raise BasinscopeError(
                f"dataset {self.name!r} holds regression targets y of shape "
                f"{tuple(self.y.shape)} ({self.y.dtype}), not class labels, so it has no "
                "number of classes. Use a regression loss (--loss mse)."
            )
        return int(self.y.max()) + 1

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input (``x.shape[1:]``)."""
        return tuple(self.x.shape[1:])

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int | None = None,
        drop_last: bool = False,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield ``(x, y)`` mini-batches.

        Without ``shuffle`` the batches are contiguous slices in order. With ``shuffle``
        the order is ``torch.randperm`` drawn from ``torch.Generator().manual_seed(seed)``
        (so the same seed always gives the same batches) or from the global RNG when
        ``seed`` is None. ``drop_last`` drops a final batch smaller than ``batch_size``.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise BasinscopeError(
                f"batch_size must be a positive integer, found {batch_size!r}. "
                "Use e.g. batch_size=128."
            )
        n = len(self)
        stop = n - n % batch_size if drop_last else n
        if shuffle:
            gen = None if seed is None else torch.Generator().manual_seed(seed)
            perm = torch.randperm(n, generator=gen).to(self.x.device)
            for i in range(0, stop, batch_size):
                idx = perm[i : i + batch_size]
                yield self.x[idx], self.y[idx]
        else:
            for i in range(0, stop, batch_size):
                yield self.x[i : i + batch_size], self.y[i : i + batch_size]

    def subset(self, indices: Sequence[int] | Tensor, name: str | None = None) -> TensorData:
        """A new dataset with the samples at ``indices`` (integer indices or a boolean mask)."""
        idx = torch.as_tensor(indices)
        if idx.dtype != torch.bool:
            idx = idx.long()
            if idx.numel() and (int(idx.max()) >= len(self) or int(idx.min()) < -len(self)):
                raise BasinscopeError(
                    f"subset of dataset {self.name!r}: indices must lie in "
                    f"[0, {len(self)}), found range [{int(idx.min())}, {int(idx.max())}]."
                )
        elif idx.shape != (len(self),):
            raise BasinscopeError(
                f"subset of dataset {self.name!r}: a boolean mask must have shape "
                f"({len(self)},), found {tuple(idx.shape)}."
            )
        idx = idx.to(self.x.device)
        return TensorData(self.x[idx], self.y[idx], self.name if name is None else name)

    def fingerprint(self) -> str:
        """First 16 hex characters of a SHA-256 over shapes, dtypes and the raw bytes.

        Two datasets with the same fingerprint hold identical tensors; the name is not
        part of it.
        """
        h = hashlib.sha256()
        for t in (self.x, self.y):
            h.update(f"{tuple(t.shape)}|{t.dtype}|".encode())
            flat = t.detach().cpu().contiguous().reshape(-1)
            h.update(flat.view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:16]

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> TensorData:
        """A new dataset on ``device``; only ``x`` is cast to ``dtype`` (labels stay int64,
        regression targets keep their dtype)."""
        if dtype is not None and not dtype.is_floating_point:
            raise BasinscopeError(
                f"TensorData.to: dtype must be a floating-point dtype for x, found {dtype}. "
                "Use e.g. torch.float32 or torch.float64."
            )
        return dataclasses.replace(
            self, x=self.x.to(device=device, dtype=dtype), y=self.y.to(device=device)
        )

    def with_name(self, name: str) -> TensorData:
        """The same tensors under a different name."""
        return dataclasses.replace(self, name=name)
