"""Maps of Hessian eigenvalues over a 2D surface (Li et al. 2018, Fig. 7).

At every grid point :math:`\\theta^* + \\alpha\\delta + \\beta\\eta` the extreme eigenvalues
of the Hessian of the full-dataset loss are computed by Lanczos, and the map of

.. math::  \\left|\\lambda_{\\min} / \\lambda_{\\max}\\right|

shows where the landscape is convex (ratio near 0: no negative curvature) and where it is
not. The points go through the engine's chunks (:func:`~basinscope.engine.evaluate_points`),
so a map resumes after an interruption and can be handed to other executors like a
surface. Within a chunk each point's Lanczos run is warm-started from the previous point's
eigenvectors; chunk boundaries are fixed, so a resumed map is bit-for-bit the same.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from basinscope.engine.points import PointBasis, points_dict

__all__ = ["CurvatureMapJob", "curvature_map_values"]

MAP_VARIABLES = ("lambda_max", "lambda_min", "ratio", "residual_max", "residual_min", "converged")


@dataclass(frozen=True)
class CurvatureMapJob:
    """The per-point work of a curvature map (the engine's job protocol: ``basis`` and ``build()``)."""

    model: nn.Module
    basis: PointBasis
    data: Any
    operator: str = "hessian"
    tol: float = 1e-4
    max_iter: int = 100
    batch_size: int = 1024
    seed: int = 0
    dtype: torch.dtype = torch.float64

    def build(self) -> _CurvatureWorker:
        return _CurvatureWorker(self)


class _CurvatureWorker:
    def __init__(self, job: CurvatureMapJob):
        from basinscope.engine.batches import as_batches

        self.job = job
        self.model = copy.deepcopy(job.model)
        self.batches = as_batches(job.data, batch_size=job.batch_size, dtype=job.dtype)
        self.strategy = "lanczos"
        self.trial: dict[str, Any] = {}
        self.names = [f"train_{v}" for v in MAP_VARIABLES]

    def choose_strategy(self, trial_coeffs) -> str:
        return self.strategy

    def evaluate_chunk(self, coeffs) -> dict[str, np.ndarray]:
        from basinscope.curvature.lanczos import lanczos_both_ends
        from basinscope.curvature.operators import EFOperator, GGNOperator, HessianOperator

        ops = {"hessian": HessianOperator, "ggn": GGNOperator, "ef": EFOperator}
        c = torch.as_tensor(np.asarray(coeffs), dtype=torch.float64)
        params, _ = self.job.basis.stacked(c, self.job.dtype, "cpu")
        out = {name: np.zeros(len(c)) for name in self.names}
        warm = None
        for i in range(len(c)):
            point = points_dict(params, i)
            with torch.no_grad():
                for name, p in self.model.named_parameters():
                    p.copy_(point[name].to(p.dtype))
            op = ops[self.job.operator](self.model, self.batches, dtype=self.job.dtype)
            top, bottom = lanczos_both_ends(
                op, 1, 1, tol=self.job.tol, max_iter=self.job.max_iter, seed=self.job.seed, v0=warm
            )
            warm = torch.cat([top.eigenvectors, bottom.eigenvectors], dim=1)
            lmax, lmin = float(top.eigenvalues[0]), float(bottom.eigenvalues[0])
            out["train_lambda_max"][i] = lmax
            out["train_lambda_min"][i] = lmin
            out["train_ratio"][i] = abs(lmin / lmax) if lmax != 0 else np.inf
            out["train_residual_max"][i] = float(top.residuals[0])
            out["train_residual_min"][i] = float(bottom.residuals[0])
            out["train_converged"][i] = float(bool(top.converged[0]) and bool(bottom.converged[0]))
        return out


def curvature_map_values(ds_values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rename the engine's ``train_*`` outputs to the map's variable names."""
    return {k.removeprefix("train_"): v for k, v in ds_values.items()}
