"""Points in parameter space as linear combinations: :math:`\\theta(c) = \\theta_0 + \\sum_d c_d v_d`.

A line between two models is :math:`\\theta_A + \\alpha(\\theta_B - \\theta_A)`, a plane is
:math:`\\theta^* + \\alpha\\delta + \\beta\\eta`, a Bezier curve is a combination of control
points: every analysis hands the engine an origin, a few basis dicts and a coefficient
matrix. Buffers (BatchNorm running statistics) may follow the same combination (for a
line between two models with stored statistics) or stay at the origin's values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from basinscope.errors import BasinscopeError
from basinscope.geometry.params import ParamDict, check_same_keys

__all__ = ["PointBasis", "chunk_slices"]


@dataclass(frozen=True)
class PointBasis:
    """Origin, basis directions, and optionally how buffers move with the coefficients."""

    origin: ParamDict
    basis: tuple[ParamDict, ...]
    buffers: ParamDict = field(default_factory=dict)
    buffer_basis: tuple[ParamDict, ...] | None = None

    def __post_init__(self) -> None:
        for i, b in enumerate(self.basis):
            check_same_keys(self.origin, b, f"basis direction {i} and origin")
        if self.buffer_basis is not None:
            if len(self.buffer_basis) != len(self.basis):
                raise ValueError("buffer_basis needs one entry per basis direction")
            for b in self.buffer_basis:
                check_same_keys(self.buffers, b, "buffer basis and buffers")

    @property
    def dim(self) -> int:
        return len(self.basis)

    def stacked(
        self, coeffs: Tensor, dtype: torch.dtype, device
    ) -> tuple[ParamDict, ParamDict | None]:
        """Parameters (and moving buffers) of ``K`` points stacked along a new dim 0."""
        c = coeffs.to(dtype=dtype, device=device)
        params = {
            k: _combine(v, [b[k] for b in self.basis], c, dtype, device)
            for k, v in self.origin.items()
        }
        bufs = None
        if self.buffer_basis is not None:
            bufs = {}
            for k, v in self.buffers.items():
                if v.is_floating_point():
                    bufs[k] = _combine(v, [b[k] for b in self.buffer_basis], c, dtype, device)
                else:
                    bufs[k] = v.to(device).expand(c.shape[0], *v.shape).clone()
        return params, bufs


def _combine(origin: Tensor, basis: Sequence[Tensor], c: Tensor, dtype, device) -> Tensor:
    out = origin.to(dtype=dtype, device=device).expand(c.shape[0], *origin.shape).clone()
    for d, v in enumerate(basis):
        out += c[:, d].reshape((-1,) + (1,) * origin.dim()) * v.to(dtype=dtype, device=device)
    return out


def chunk_slices(n_points: int, chunk_size: int) -> list[slice]:
    """Consecutive slices of at most ``chunk_size`` points covering ``range(n_points)``."""
    if chunk_size < 1:
        raise BasinscopeError(f"chunk size must be >= 1, got {chunk_size}")
    return [slice(i, min(i + chunk_size, n_points)) for i in range(0, n_points, chunk_size)]


def as_coeff_matrix(coeffs, dim: int) -> np.ndarray:
    c = np.asarray(coeffs, dtype=np.float64)
    if c.ndim == 1 and dim == 1:
        c = c[:, None]
    if c.ndim != 2 or c.shape[1] != dim:
        raise BasinscopeError(f"coefficients must have shape (n_points, {dim}), got {c.shape}")
    if c.shape[0] == 0:
        raise BasinscopeError("no points to evaluate: the coefficient grid is empty")
    return c


def points_dict(params: Mapping[str, Tensor], i: int) -> ParamDict:
    return {k: v[i] for k, v in params.items()}
