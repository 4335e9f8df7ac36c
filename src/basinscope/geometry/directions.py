"""Directions in parameter space: random, between models, PCA of a trajectory, planes.

Every direction is a parameter dict keyed like ``named_parameters()``. Randomness is
seeded with a private ``torch.Generator`` so the caller's global RNG is never touched and
the same seed gives the same direction on any machine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from basinscope.errors import BasinscopeError
from basinscope.geometry.normalization import normalize_direction
from basinscope.geometry.params import (
    ParamDict,
    check_same_keys,
    dot,
    flatten,
    norm,
    sub,
    unflatten,
)

__all__ = [
    "PCADirections",
    "Projection",
    "direction_between",
    "orthogonalize",
    "pca_directions",
    "plane_through",
    "project_onto_plane",
    "random_direction",
    "random_directions",
]


def random_direction(
    params: Mapping[str, Tensor],
    seed: int,
    normalization: str = "filter",
    bias_policy: str = "zero",
) -> ParamDict:
    """A Gaussian direction with the shapes of ``params``, then normalized.

    Entries are drawn in ``params`` order from ``torch.Generator().manual_seed(seed)`` on
    the CPU in float64 (then cast), so the direction depends only on the seed and shapes.
    """
    gen = torch.Generator().manual_seed(int(seed))
    raw = {
        k: torch.randn(v.shape, generator=gen, dtype=torch.float64).to(v.dtype).to(v.device)
        for k, v in params.items()
    }
    return normalize_direction(raw, params, normalization, bias_policy)


def random_directions(
    params: Mapping[str, Tensor],
    seed: int,
    n: int = 2,
    normalization: str = "filter",
    bias_policy: str = "zero",
    orthogonal: bool = False,
) -> list[ParamDict]:
    """``n`` independent random directions (seeds ``seed``, ``seed + 1``, ...)."""
    dirs = [random_direction(params, seed + i, normalization, bias_policy) for i in range(n)]
    return orthogonalize(dirs) if orthogonal else dirs


def direction_between(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> ParamDict:
    """The unnormalized direction :math:`\\theta_B - \\theta_A`."""
    check_same_keys(a, b, "the two models' parameters")
    return sub(b, a)


def orthogonalize(
    dirs: Sequence[Mapping[str, Tensor]], *, keep_norm: bool = True
) -> list[ParamDict]:
    """Gram-Schmidt: each direction minus its projections on the earlier ones.

    With ``keep_norm`` (default) each result is rescaled to the norm it had before, so a
    normalized direction keeps its overall scale; the per-filter normalization then holds
    only approximately (for random directions in high dimension the change is tiny).
    """
    out: list[ParamDict] = []
    for d in dirs:
        v = {k: t.clone() for k, t in d.items()}
        n0 = norm(v)
        for u in out:
            coef = float(dot(v, u) / dot(u, u))
            v = {k: v[k] - coef * u[k] for k in v}
        n1 = norm(v)
        if float(n1) == 0:
            raise BasinscopeError(
                "cannot orthogonalize: a direction is a linear combination of the earlier ones "
                "(e.g. the same model given twice); pick distinct models or seeds"
            )
        if keep_norm:
            v = {k: t * float(n0 / n1) for k, t in v.items()}
        out.append(v)
    return out


@dataclass(frozen=True)
class PCADirections:
    """Top principal directions of a trajectory (Li et al. 2018, Sec. 7).

    ``directions`` are unit vectors (as parameter dicts); ``explained_variance_ratio``
    is the fraction of the variance of the trajectory's differences each one explains.
    """

    directions: list[ParamDict]
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray
    center: ParamDict


def pca_directions(
    trajectory: Sequence[Mapping[str, Tensor]],
    n_components: int = 2,
    center: Mapping[str, Tensor] | None = None,
) -> PCADirections:
    """PCA of the matrix :math:`M = [\\theta_i - \\theta^*]_i` of a trajectory.

    Following Li et al.'s released code, :math:`\\theta^*` is the final checkpoint unless
    ``center`` is given, the rows of :math:`M` are mean-centred (as scikit-learn's PCA
    does) and the components are the top right singular vectors, computed in float64.
    The sign of each component is fixed so that its largest-magnitude entry is positive.
    """
    if len(trajectory) < n_components + 1:
        raise BasinscopeError(
            f"a PCA plane of {n_components} components needs at least {n_components + 1} "
            f"checkpoints, got {len(trajectory)}; save more checkpoints "
            "(e.g. `basinscope train --checkpoint-every 10`)"
        )
    ref = dict(center) if center is not None else dict(trajectory[-1])
    for t in trajectory:
        check_same_keys(ref, t, "trajectory checkpoints")
    m = torch.stack([flatten(sub(t, ref)).double().cpu() for t in trajectory])
    m = m - m.mean(dim=0, keepdim=True)
    _, s, vh = torch.linalg.svd(m, full_matrices=False)
    var = (s**2) / max(len(trajectory) - 1, 1)
    total = var.sum()
    comps = []
    for i in range(n_components):
        v = vh[i]
        if v[v.abs().argmax()] < 0:
            v = -v
        like = {k: ref[k] for k in ref}
        comps.append(
            {k: t.to(ref[k].dtype).to(ref[k].device).clone() for k, t in unflatten(v, like).items()}
        )
    ratio = (var / total).numpy() if float(total) > 0 else np.zeros(len(var))
    return PCADirections(
        directions=comps,
        explained_variance=var[:n_components].numpy(),
        explained_variance_ratio=ratio[:n_components],
        center={k: v.clone() for k, v in ref.items()},
    )


@dataclass(frozen=True)
class Projection:
    """Coordinates of points in a plane and each point's distance from the plane."""

    alpha: np.ndarray
    beta: np.ndarray
    distance: np.ndarray


def project_onto_plane(
    points: Sequence[Mapping[str, Tensor]],
    center: Mapping[str, Tensor],
    d1: Mapping[str, Tensor],
    d2: Mapping[str, Tensor],
) -> Projection:
    """Least-squares coordinates :math:`(\\alpha, \\beta)` of ``points`` in the plane
    :math:`\\theta^* + \\alpha\\delta + \\beta\\eta`, with the residual norm as the distance.

    Exact for non-orthogonal directions (solves the 2x2 normal equations in float64).
    """
    keys = list(center)  # every dict flattened in the center's key order
    a = torch.stack([flatten(d1, keys).double().cpu(), flatten(d2, keys).double().cpu()], dim=1)
    gram = a.T @ a
    if float(torch.linalg.det(gram)) <= 1e-300:
        raise BasinscopeError("the two directions are parallel (or zero): they span no plane")
    c = flatten(center).double().cpu()
    alphas, betas, dists = [], [], []
    for p in points:
        check_same_keys(center, p, "trajectory checkpoint and plane center")
        r = flatten(p, keys).double().cpu() - c
        coef = torch.linalg.solve(gram, a.T @ r)
        resid = r - a @ coef
        alphas.append(float(coef[0]))
        betas.append(float(coef[1]))
        dists.append(float(resid.norm()))
    return Projection(np.array(alphas), np.array(betas), np.array(dists))


def plane_through(
    a: Mapping[str, Tensor],
    b: Mapping[str, Tensor],
    c: Mapping[str, Tensor],
    orthogonal: bool = True,
) -> tuple[list[ParamDict], np.ndarray]:
    """The plane through three models, centred at ``a``.

    Returns the two directions and the (3, 2) coordinates of ``a``, ``b``, ``c`` in it.
    With ``orthogonal`` (Garipov et al. 2018's construction) the directions are an
    orthonormal basis, so coordinates are Euclidean distances in parameter space;
    otherwise they are :math:`\\theta_B - \\theta_A` and :math:`\\theta_C - \\theta_A` and
    the models sit at (0, 0), (1, 0), (0, 1).
    """
    u = direction_between(a, b)
    v = direction_between(a, c)
    if orthogonal:
        un = float(norm(u))
        if un == 0:
            raise BasinscopeError("models A and B are identical: they define no plane")
        e1 = {k: t / un for k, t in u.items()}
        (e1, e2) = orthogonalize([e1, v], keep_norm=False)
        n2 = float(norm(e2))
        e2 = {k: t / n2 for k, t in e2.items()}
        coords = np.array(
            [
                [0.0, 0.0],
                [float(dot(u, e1)), float(dot(u, e2))],
                [float(dot(v, e1)), float(dot(v, e2))],
            ]
        )
        return [e1, e2], coords
    return [u, v], np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
