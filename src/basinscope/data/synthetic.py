"""Synthetic data for solvable models: Gaussian inputs made with a recorded seed, a low-rank
linear teacher with chosen singular values, and regression targets of any teacher.

Every name records how the data was made (``gauss-n512-d8-seed0-white``), so a stage that
trains on it is stored by that name and the same seed gives the same tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from basinscope._checks import check_seed, positive_int
from basinscope.data.tensordata import TensorData
from basinscope.errors import BasinscopeError

__all__ = ["LinearTeacher", "gaussian_inputs", "low_rank_teacher", "teacher_data"]


def gaussian_inputs(
    n: int, dim: int, seed: int, *, whiten: bool = False, dtype: torch.dtype = torch.float32
) -> Tensor:
    """``n`` inputs of ``dim`` i.i.d. standard normal entries from a private generator seeded
    with ``seed``. ``whiten=True`` makes the empirical second moment exactly the identity,
    :math:`X^\\top X / n = I` (the samples multiplied by :math:`(X^\\top X/n)^{-1/2}`, computed
    in float64; needs ``n >= dim``): the assumption of Saxe et al.'s solution."""
    positive_int("n", n, high=None)
    positive_int("dim", dim, high=None)
    check_seed("seed", seed)
    gen = torch.Generator().manual_seed(int(seed))
    x = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    if whiten:
        if n < dim:
            raise BasinscopeError(
                f"whitening needs at least as many samples as dimensions, got n={n} < dim={dim}"
            )
        evals, evecs = torch.linalg.eigh(x.T @ x / n)
        x = x @ (evecs * evals.rsqrt()) @ evecs.T
    return x.to(dtype)


@dataclass(frozen=True)
class LinearTeacher:
    """A linear map ``y = matrix @ x`` with ``matrix = U diag(s) V^T`` (``U``: out x r and
    ``V``: in x r with orthonormal columns, ``s`` the singular values as given)."""

    matrix: Tensor
    U: Tensor
    V: Tensor
    singular_values: tuple[float, ...]
    seed: int

    def __call__(self, x: Tensor) -> Tensor:
        return x @ self.matrix.to(x.dtype).T


def low_rank_teacher(
    in_features: int, out_features: int, singular_values: Sequence[float], seed: int
) -> LinearTeacher:
    """A rank-``len(singular_values)`` linear teacher with those singular values and Haar-random
    singular vectors (QR of Gaussian matrices from a generator seeded with ``seed``), in
    float64."""
    s = [float(v) for v in singular_values]
    r = len(s)
    if r < 1 or any(not v > 0 for v in s):
        raise BasinscopeError(f"singular_values must be positive numbers, got {list(s)}")
    if r > min(in_features, out_features):
        raise BasinscopeError(
            f"rank {r} (the number of singular values) exceeds min(in_features, "
            f"out_features) = {min(in_features, out_features)}"
        )
    check_seed("seed", seed)
    gen = torch.Generator().manual_seed(int(seed))

    def orth(d: int) -> Tensor:
        q, rr = torch.linalg.qr(torch.randn(d, r, generator=gen, dtype=torch.float64))
        return q * torch.sign(torch.diagonal(rr))  # a unique (Haar) choice of signs

    u, v = orth(out_features), orth(in_features)
    mat = u @ torch.diag(torch.tensor(s, dtype=torch.float64)) @ v.T
    return LinearTeacher(mat, u, v, tuple(s), int(seed))


def teacher_data(
    x: Tensor,
    teacher: Callable[[Tensor], Tensor],
    name: str,
    *,
    noise: float = 0.0,
    noise_seed: int = 0,
) -> TensorData:
    """Regression data ``y = teacher(x) + noise * xi`` with :math:`\\xi` standard normal from a
    generator seeded with ``noise_seed`` (drawn only when ``noise > 0``); the targets keep the
    teacher's output shape (a scalar teacher's ``(n, 1)`` output stays ``(n, 1)``) and the
    dtype of ``x``. ``name`` should say how ``x`` and the teacher were made; the noise is
    appended to it."""
    if not noise >= 0:
        raise BasinscopeError(f"noise must be >= 0, got {noise!r}")
    with torch.no_grad():
        y = teacher(x).to(x.dtype)
    if noise > 0:
        check_seed("noise_seed", noise_seed)
        gen = torch.Generator().manual_seed(int(noise_seed))
        y = y + noise * torch.randn(y.shape, generator=gen, dtype=torch.float64).to(x.dtype)
        name = f"{name}-noise{noise:g}-seed{noise_seed}"
    return TensorData(x, y.detach(), name)
