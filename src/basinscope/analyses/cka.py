"""The CKA estimators: centered kernel alignment between two representations.

"CKA" is computed differently in different papers. Each estimator is a named option,
defined once here in :data:`CKA_ESTIMATORS` (name -> formula and paper);
:func:`basinscope.analyses.similarity.cka_matrix` takes the name, and every
:class:`~basinscope.analyses.similarity.CKAResult` records which one produced its numbers
(``method`` and ``definition``):

* ``"linear"`` -- linear CKA of Kornblith et al. (2019), "Similarity of Neural Network
  Representations Revisited", computed in feature space on centered features:

  .. math::
      \\mathrm{CKA}(X, Y) = \\frac{\\lVert Y^\\top X \\rVert_F^2}
      {\\lVert X^\\top X \\rVert_F \\, \\lVert Y^\\top Y \\rVert_F},

  which equals :math:`\\mathrm{HSIC}(K, L) / \\sqrt{\\mathrm{HSIC}(K, K)\\mathrm{HSIC}(L, L)}`
  with :math:`K = XX^\\top`, :math:`L = YY^\\top` and the biased estimator
  :math:`\\mathrm{HSIC}(K, L) = \\mathrm{tr}(KHLH) / (n - 1)^2`.
* ``"debiased"`` -- the same ratio with the unbiased HSIC estimator of Song et al. (2012)
  (see :func:`unbiased_hsic`), needing at least 4 examples.
* ``"rbf"`` -- CKA with Gaussian kernels :math:`k(x, x') = \\exp(-\\lVert x - x'\\rVert^2 /
  (2\\sigma^2))`, :math:`\\sigma` a multiple (``sigma_factor``, default 0.8 as in Kornblith et
  al.) of the median pairwise distance between examples.
* ``"minibatch"`` -- minibatch CKA of Nguyen, Raghu and Kornblith (2021), "Do Wide and Deep
  Networks Learn the Same Things?": unbiased HSIC of linear Grams summed over batches,

  .. math::
      \\mathrm{CKA}_{mb} = \\frac{\\sum_i \\mathrm{HSIC}_1(K_i, L_i)}
      {\\sqrt{\\sum_i \\mathrm{HSIC}_1(K_i, K_i)} \\sqrt{\\sum_i \\mathrm{HSIC}_1(L_i, L_i)}},

  so the number of examples is not limited by memory. Accumulation is in float64.

All computations are in float64. Inputs of shape ``(N, ...)`` are flattened to ``(N, p)``.
The functions compute on the CPU; the streaming accumulators (:class:`MinibatchCKA`,
:class:`StreamingLinearCKA`) stay on the device of the activations they are given (float64
there; an MPS device, which has no float64, accumulates on the CPU), so a model on a GPU
sends nothing back per batch: the matrix is read once, by ``result()``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from basinscope.errors import BasinscopeError

__all__ = [
    "CKA_ESTIMATORS",
    "METHODS",
    "MIN_EXAMPLES_UNBIASED",
    "MinibatchCKA",
    "StreamingLinearCKA",
    "debiased_cka",
    "linear_cka",
    "rbf_cka",
    "unbiased_hsic",
]

#: The named CKA estimators: name -> formula and paper. ``cka_matrix(method=...)`` takes a
#: name, and its result records it with this formula (``CKAResult.definition``).
CKA_ESTIMATORS: dict[str, str] = {
    "minibatch": "sum_i HSIC_1(K_i, L_i) / sqrt(sum_i HSIC_1(K_i, K_i) * sum_i HSIC_1(L_i, L_i)) "
    "over batches i, linear Grams K_i = X_i X_i^T, unbiased HSIC_1 (Nguyen, Raghu & "
    "Kornblith 2021)",
    "linear": "||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F) on centered features of "
    "all examples (Kornblith et al. 2019), exact, streamed",
    "debiased": "HSIC_1(K, L) / sqrt(HSIC_1(K, K) HSIC_1(L, L)), linear Grams of all examples, "
    "unbiased HSIC_1 (Song et al. 2012; Kornblith et al. 2019)",
    "rbf": "HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), Gaussian Grams exp(-||x - x'||^2 / "
    "(2 sigma^2)) with sigma = sigma_factor x the median pairwise distance, biased HSIC "
    "(Kornblith et al. 2019)",
}
METHODS = tuple(CKA_ESTIMATORS)
MIN_EXAMPLES_UNBIASED = 4


# --------------------------------------------------------------------------- helpers


def _as_matrix(x: Tensor | np.ndarray, name: str) -> Tensor:
    t = torch.as_tensor(x)
    if t.ndim < 1:
        raise BasinscopeError(f"{name} must have shape (N, features...), got a scalar")
    return t.detach().reshape(t.shape[0], -1).to(device="cpu", dtype=torch.float64)


def _on_device(x: Tensor, name: str) -> Tensor:
    """``x`` as a float64 ``(N, p)`` matrix on its own device (the CPU for MPS, which has no
    float64): what the streaming accumulators keep."""
    t = torch.as_tensor(x).detach()
    if t.ndim < 1:
        raise BasinscopeError(f"{name} must have shape (N, features...), got a scalar")
    if t.device.type == "mps":
        t = t.cpu()
    return t.reshape(t.shape[0], -1).to(torch.float64)


def _pair(x: Tensor | np.ndarray, y: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    xm, ym = _as_matrix(x, "x"), _as_matrix(y, "y")
    if xm.shape[0] != ym.shape[0]:
        raise BasinscopeError(
            f"x and y must hold the same examples: x has {xm.shape[0]} rows, y has "
            f"{ym.shape[0]}; pass the activations of both layers on the same inputs"
        )
    if xm.shape[0] < 2:
        raise BasinscopeError(f"CKA needs at least 2 examples, got {xm.shape[0]}")
    return xm, ym


def _check_unbiased(n: int, what: str) -> None:
    if n < MIN_EXAMPLES_UNBIASED:
        raise BasinscopeError(
            f"{what} needs at least {MIN_EXAMPLES_UNBIASED} examples per batch, got {n}: the "
            "unbiased HSIC estimator divides by n(n-3) and (n-1)(n-2), so smaller batches give "
            "NaN or infinity; use a larger batch size (or drop the final short batch)"
        )


def _ratio(hxy: float, hxx: float, hyy: float) -> float:
    denom = math.sqrt(hxx * hyy) if hxx > 0 and hyy > 0 else 0.0
    if denom == 0.0:
        raise BasinscopeError(
            "CKA is undefined: one representation has zero (or negative estimated) "
            "self-similarity, e.g. a constant layer output; check that the activations vary "
            "across examples"
        )
    return float(hxy / denom)


def _center_gram(k: Tensor) -> Tensor:
    return k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()


def unbiased_hsic(k: Tensor, ell: Tensor) -> float:
    """Unbiased HSIC estimator of Song et al. (2012) on ``(n, n)`` Gram matrices, ``n >= 4``.

    .. math::
        \\mathrm{HSIC}_1(K, L) = \\frac{1}{n(n-3)}\\Big[\\mathrm{tr}(\\tilde K \\tilde L)
        + \\frac{\\mathbf 1^\\top \\tilde K \\mathbf 1 \\, \\mathbf 1^\\top \\tilde L
        \\mathbf 1}{(n-1)(n-2)} - \\frac{2}{n-2} \\mathbf 1^\\top \\tilde K \\tilde L
        \\mathbf 1\\Big],

    where :math:`\\tilde K, \\tilde L` are the Grams with their diagonals set to zero.
    """
    return float(_hsic1(k, ell))


def _hsic1(k: Tensor, ell: Tensor) -> Tensor:
    """:func:`unbiased_hsic` as a 0-d float64 tensor on the Grams' device."""
    n = k.shape[0]
    _check_unbiased(n, "the unbiased HSIC estimator")
    kt = k.to(torch.float64).clone()
    lt = ell.to(torch.float64).clone()
    kt.fill_diagonal_(0.0)
    lt.fill_diagonal_(0.0)
    trace = (kt * lt).sum()  # tr(K L) for symmetric L
    ksum, lsum = kt.sum(), lt.sum()
    cross = kt.sum(0) @ lt.sum(1)
    value = trace + ksum * lsum / ((n - 1) * (n - 2)) - 2.0 * cross / (n - 2)
    return value / (n * (n - 3))


# --------------------------------------------------------------------------- functional core


def linear_cka(x: Tensor | np.ndarray, y: Tensor | np.ndarray, *, debiased: bool = False) -> float:
    """Linear CKA between representations ``x`` (N, p) and ``y`` (N, q).

    The biased estimator uses the feature-space formula (no N x N Gram) when the feature
    dimensions are smaller than N; ``debiased=True`` uses :func:`unbiased_hsic` on the
    linear Grams and needs N >= 4.
    """
    xm, ym = _pair(x, y)
    if debiased:
        return debiased_cka(xm, ym)
    n, p, q = xm.shape[0], xm.shape[1], ym.shape[1]
    xc = xm - xm.mean(0, keepdim=True)
    yc = ym - ym.mean(0, keepdim=True)
    if max(p, q) <= n:
        hxy = torch.linalg.matrix_norm(yc.T @ xc) ** 2
        hxx = torch.linalg.matrix_norm(xc.T @ xc)
        hyy = torch.linalg.matrix_norm(yc.T @ yc)
        return _ratio(float(hxy), float(hxx) ** 2, float(hyy) ** 2)
    k, ell = xc @ xc.T, yc @ yc.T
    return _ratio(float((k * ell).sum()), float((k * k).sum()), float((ell * ell).sum()))


def debiased_cka(x: Tensor | np.ndarray, y: Tensor | np.ndarray) -> float:
    """Linear CKA with the unbiased HSIC estimator (Song et al. 2012); needs N >= 4."""
    xm, ym = _pair(x, y)
    _check_unbiased(xm.shape[0], "debiased CKA")
    k, ell = xm @ xm.T, ym @ ym.T
    return _ratio(unbiased_hsic(k, ell), unbiased_hsic(k, k), unbiased_hsic(ell, ell))


def _rbf_gram(x: Tensor, sigma_factor: float) -> Tensor:
    sq = torch.cdist(x, x).pow(2)
    n = x.shape[0]
    off = sq[~torch.eye(n, dtype=torch.bool)]
    median = float(off.median().sqrt()) if off.numel() else 0.0
    if median == 0.0:
        raise BasinscopeError(
            "the RBF bandwidth is zero: the median pairwise distance between examples is 0 "
            "(most examples have identical representations); use linear CKA instead"
        )
    sigma = sigma_factor * median
    return torch.exp(-sq / (2.0 * sigma**2))


def rbf_cka(
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    *,
    sigma_factor: float = 0.8,
    debiased: bool = False,
) -> float:
    """CKA with Gaussian kernels, bandwidth ``sigma_factor`` x the median pairwise distance.

    The default ``sigma_factor=0.8`` follows Kornblith et al. (2019). Builds N x N Grams.
    """
    if not sigma_factor > 0:
        raise BasinscopeError(f"sigma_factor must be positive, got {sigma_factor}")
    xm, ym = _pair(x, y)
    k, ell = _rbf_gram(xm, sigma_factor), _rbf_gram(ym, sigma_factor)
    if debiased:
        _check_unbiased(xm.shape[0], "debiased RBF CKA")
        return _ratio(unbiased_hsic(k, ell), unbiased_hsic(k, k), unbiased_hsic(ell, ell))
    kc, lc = _center_gram(k), _center_gram(ell)
    return _ratio(float((kc * lc).sum()), float((kc * kc).sum()), float((lc * lc).sum()))


# --------------------------------------------------------------------------- minibatch


class StreamingLinearCKA:
    """Exact full-data linear CKA, accumulated batch by batch in float64.

    Keeps, per layer, the sums :math:`\\sum_n x_n` and :math:`X^\\top X`, and per layer pair
    :math:`X^\\top Y`; the centred cross-covariances follow as
    :math:`C_{xy} = X^\\top Y - \\tfrac1N (\\sum x)(\\sum y)^\\top`, and

    .. math::  \\mathrm{CKA}(X, Y) = \\frac{\\lVert C_{xy}\\rVert_F^2}{\\lVert C_{xx}\\rVert_F\\,\\lVert C_{yy}\\rVert_F}.

    Memory is independent of the number of examples :math:`N` (it grows with the feature
    dimensions, :math:`p \\times q` per pair), and the value equals :func:`linear_cka` on the
    concatenated activations. The sums live on the device of the first batch's activations.
    """

    def __init__(self, num_x_layers: int, num_y_layers: int) -> None:
        self.shape = (num_x_layers, num_y_layers)
        self.n = 0
        self._sx: list[Tensor] = []
        self._sy: list[Tensor] = []
        self._xx: list[Tensor] = []
        self._yy: list[Tensor] = []
        self._xy: dict[tuple[int, int], Tensor] = {}

    def update(self, xs: Sequence[Tensor], ys: Sequence[Tensor]) -> None:
        if len(xs) != self.shape[0] or len(ys) != self.shape[1]:
            raise BasinscopeError(
                f"expected {self.shape[0]} and {self.shape[1]} layers, got {len(xs)} and {len(ys)}"
            )
        xs = [_on_device(x, "x") for x in xs]
        ys = [_on_device(y, "y") for y in ys]
        sizes = {len(m) for m in xs + ys}
        if len(sizes) != 1:
            raise BasinscopeError(
                f"all layers must see the same batch, got batch sizes {sorted(sizes)}"
            )
        if self._sx:
            dev = self._sx[0].device
            xs = [x.to(dev) for x in xs]
            ys = [y.to(dev) for y in ys]
        if not self._sx:
            self._sx = [x.sum(0) for x in xs]
            self._sy = [y.sum(0) for y in ys]
            self._xx = [x.T @ x for x in xs]
            self._yy = [y.T @ y for y in ys]
            self._xy = {(i, j): x.T @ y for i, x in enumerate(xs) for j, y in enumerate(ys)}
        else:
            for i, x in enumerate(xs):
                self._sx[i] += x.sum(0)
                self._xx[i] += x.T @ x
            for j, y in enumerate(ys):
                self._sy[j] += y.sum(0)
                self._yy[j] += y.T @ y
            for (i, j), m in self._xy.items():
                m += xs[i].T @ ys[j]
        self.n += len(xs[0])

    def result(self) -> np.ndarray:
        if self.n < 2:
            raise BasinscopeError(f"linear CKA needs at least 2 examples, got {self.n}")
        n = self.n
        cxx = torch.stack(
            [
                torch.linalg.matrix_norm(xx - torch.outer(s, s) / n)
                for xx, s in zip(self._xx, self._sx)
            ]
        )
        cyy = torch.stack(
            [
                torch.linalg.matrix_norm(yy - torch.outer(s, s) / n)
                for yy, s in zip(self._yy, self._sy)
            ]
        )
        cxy = torch.stack(
            [
                torch.stack(
                    [
                        torch.linalg.matrix_norm(
                            self._xy[i, j] - torch.outer(self._sx[i], self._sy[j]) / n
                        )
                        for j in range(self.shape[1])
                    ]
                )
                for i in range(self.shape[0])
            ]
        )
        xx, yy, xy = (t.cpu().numpy() for t in (cxx, cyy, cxy))  # the one transfer
        out = np.empty(self.shape)
        for i, j in np.ndindex(*self.shape):
            out[i, j] = _ratio(float(xy[i, j]) ** 2, float(xx[i]) ** 2, float(yy[j]) ** 2)
        return out


class MinibatchCKA:
    """Streaming minibatch CKA (Nguyen et al. 2021) between two lists of layers.

    Call :meth:`update` with the activations of every layer on one batch (the same examples
    for all layers, at least 4 of them), then :meth:`result` for the ``(L1, L2)`` matrix.
    The HSIC sums live on the device of the first batch's activations.
    """

    def __init__(self, num_x_layers: int, num_y_layers: int) -> None:
        if num_x_layers < 1 or num_y_layers < 1:
            raise BasinscopeError(
                f"need at least one layer on each side, got {num_x_layers} and {num_y_layers}"
            )
        self.num_x_layers = num_x_layers
        self.num_y_layers = num_y_layers
        self._xy: Tensor | None = None
        self._xx: Tensor | None = None
        self._yy: Tensor | None = None
        self.num_batches = 0
        self.num_examples = 0

    def update(self, xs: Sequence[Tensor], ys: Sequence[Tensor]) -> None:
        """Add one batch: ``xs`` the activations of the x layers, ``ys`` of the y layers."""
        if len(xs) != self.num_x_layers or len(ys) != self.num_y_layers:
            raise BasinscopeError(
                f"expected {self.num_x_layers} x layers and {self.num_y_layers} y layers, got "
                f"{len(xs)} and {len(ys)}"
            )
        xm = [_on_device(a, "x") for a in xs]
        ym = [_on_device(a, "y") for a in ys]
        sizes = {m.shape[0] for m in xm + ym}
        if len(sizes) != 1:
            raise BasinscopeError(
                f"all layers must see the same batch, got batch sizes {sorted(sizes)}"
            )
        n = sizes.pop()
        _check_unbiased(n, "minibatch CKA")
        if self._xy is None:
            dev = xm[0].device
            self._xy = torch.zeros(
                self.num_x_layers, self.num_y_layers, dtype=torch.float64, device=dev
            )
            self._xx = torch.zeros(self.num_x_layers, dtype=torch.float64, device=dev)
            self._yy = torch.zeros(self.num_y_layers, dtype=torch.float64, device=dev)
        assert self._xx is not None and self._yy is not None
        dev = self._xy.device
        kx = [m.to(dev) @ m.to(dev).T for m in xm]
        ky = [m.to(dev) @ m.to(dev).T for m in ym]
        for i, k in enumerate(kx):
            self._xx[i] += _hsic1(k, k)
            for j, ell in enumerate(ky):
                self._xy[i, j] += _hsic1(k, ell)
        for j, ell in enumerate(ky):
            self._yy[j] += _hsic1(ell, ell)
        self.num_batches += 1
        self.num_examples += n

    def result(self) -> np.ndarray:
        """The ``(L1, L2)`` CKA matrix from the batches seen so far."""
        if self.num_batches == 0 or self._xy is None:
            raise BasinscopeError("MinibatchCKA.result() called before any update()")
        assert self._xx is not None and self._yy is not None
        xy, xx, yy = (t.cpu().numpy() for t in (self._xy, self._xx, self._yy))
        return np.array(
            [
                [_ratio(xy[i, j], xx[i], yy[j]) for j in range(self.num_y_layers)]
                for i in range(self.num_x_layers)
            ]
        )
