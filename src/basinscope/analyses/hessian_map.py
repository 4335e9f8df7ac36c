"""Maps of Hessian eigenvalues over a 2D surface (Li et al. 2018, Fig. 7).

At every grid point :math:`\\theta^* + \\alpha\\delta + \\beta\\eta` the extreme eigenvalues
of the Hessian of the full-dataset loss are computed by Lanczos, and the map of

.. math::  \\left|\\lambda_{\\min} / \\lambda_{\\max}\\right|

shows where the landscape is convex (ratio near 0: no negative curvature) and where it is
not. The points go through the engine's chunks (:func:`~basinscope.engine.evaluate_points`),
so a map resumes after an interruption and can be handed to other executors like a
surface. Within a chunk each point's Lanczos run is warm-started from the previous point's
eigenvectors; chunk boundaries are fixed, so a resumed map is bit-for-bit the same.

The model is run through the task (:class:`~basinscope.engine.task.Task`: any batch
layout, output and loss; recorded in the map's ``attrs["task"]``), on ``device`` in
``dtype`` (float32 or float64); a DataLoader is streamed at every product.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from basinscope.analyses.hessian import HessianSpec
from basinscope.curvature.loss import curvature_dtype, first_examples
from basinscope.engine.points import PointBasis, points_dict
from basinscope.engine.task import Task, as_task

__all__ = ["CurvatureMapJob", "curvature_map", "hessian_map"]

MAP_VARIABLES = ("lambda_max", "lambda_min", "ratio", "residual_max", "residual_min", "converged")


@dataclass(frozen=True)
class CurvatureMapJob:
    """The per-point work of a curvature map (the engine's job protocol: ``basis`` and
    ``build()``, whose worker has ``names``, ``strategy``, ``trial``, ``choose_strategy``,
    ``adopt`` and ``evaluate_chunk``)."""

    model: nn.Module
    basis: PointBasis
    data: Any
    operator: str = "hessian"
    tol: float = 1e-4
    max_iter: int = 100
    batch_size: int = 1024
    seed: int = 0
    dtype: torch.dtype = torch.float64
    hvp_method: str = "auto"
    device: str = "cpu"
    task: Task | None = None

    def build(self) -> _CurvatureWorker:
        return _CurvatureWorker(self)


class _CurvatureWorker:
    def __init__(self, job: CurvatureMapJob):
        from basinscope.engine.batches import as_batches

        self.job = job
        self.task = as_task(job.task)
        self.device = torch.device(job.device)
        # points are built in job.dtype, on the device
        self.model = copy.deepcopy(job.model).to(device=self.device, dtype=job.dtype)
        self.batches = as_batches(
            job.data,
            batch_size=job.batch_size,
            device=self.device,
            dtype=job.dtype,
            task=self.task,
        )
        self.strategy = "lanczos"
        self.trial: dict[str, Any] = {}
        self.names = [f"train_{v}" for v in MAP_VARIABLES]

    def choose_strategy(self, trial_coeffs, total_points: int | None = None) -> str:
        """Time the HVP methods once (at the first point) and fix the winner for the whole map.

        Re-choosing per point would make the map depend on timing noise; the recorded
        ``"lanczos/<method>"`` strategy is reused when the map resumes.
        """
        from basinscope.curvature.operators import HessianOperator

        if self.job.operator == "hessian":
            op = HessianOperator(
                self.model, self.batches, method=self.job.hvp_method, **self._loss_kwargs()
            )
            self.trial = dict(op.trial)
            self.strategy = f"lanczos/{op.method}"
        return self.strategy

    def adopt(self, strategy: str, trial: Mapping[str, Any]) -> None:
        """Compute as recorded (a resumed map's journal, or the driver's choice on a Ray
        worker): the HVP method of ``strategy`` and its trial."""
        self.strategy = strategy
        self.trial = dict(trial)

    def _loss_kwargs(self) -> dict[str, Any]:
        return {
            "dtype": self.job.dtype,
            "device": self.device,
            "task": self.task,
            "batch_size": self.job.batch_size,
        }

    def evaluate_chunk(self, coeffs) -> dict[str, np.ndarray]:
        from basinscope.curvature.lanczos import lanczos_both_ends
        from basinscope.curvature.operators import EFOperator, GGNOperator, HessianOperator

        ops = {"hessian": HessianOperator, "ggn": GGNOperator, "ef": EFOperator}
        c = torch.as_tensor(np.asarray(coeffs), dtype=torch.float64)
        params, _ = self.job.basis.stacked(c, self.job.dtype, self.device)
        out = {name: np.zeros(len(c)) for name in self.names}
        warm = None
        for i in range(len(c)):
            point = points_dict(params, i)
            with torch.no_grad():
                for name, p in self.model.named_parameters():
                    p.copy_(point[name].to(p.dtype))
            kwargs = {"method": self.strategy.split("/", 1)[1]} if "/" in self.strategy else {}
            op = ops[self.job.operator](self.model, self.batches, **self._loss_kwargs(), **kwargs)
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


def curvature_map(
    model: nn.Module,
    data: Any,
    *,
    seed: int = 0,
    normalization: str = "filter",
    bias_policy: str = "zero",
    directions=None,
    alphas=None,
    betas=None,
    operator: str = "hessian",
    tol: float = 1e-4,
    max_iter: int = 100,
    hvp_method: str = "auto",
    chunk_size: int = 8,
    run_dir=None,
    spec: Mapping[str, Any] | None = None,
    progress: bool = False,
    on_chunk=None,
    task: Task | None = None,
    dtype: str = "float64",
    device: str = "cpu",
    batch_size: int = 1024,
):
    """The map of :math:`|\\lambda_{\\min}/\\lambda_{\\max}|` (and both eigenvalues, their
    residuals and converged flags) on the plane of :func:`~basinscope.analyses.random_surface`.

    Returns a :class:`~basinscope.analyses.Landscape` whose variables are ``train_lambda_max``,
    ``train_lambda_min``, ``train_ratio``, ``train_residual_max``, ``train_residual_min`` and
    ``train_converged`` (1.0 where both ends met the tolerance).

    ``hvp_method="auto"`` times the HVP methods once at the first point and uses the winner
    everywhere (recorded as the run's strategy and reused on resume); pin it to compare two
    separate runs bit for bit.

    ``task`` says how the model is run and which loss (:class:`~basinscope.engine.task.Task`,
    recorded as ``attrs["task"]``); the curvature is computed on ``device`` in ``dtype``
    (``"float32"`` or ``"float64"``), ``batch_size`` examples per forward pass.
    """
    from basinscope.analyses.landscape import compute_landscape
    from basinscope.geometry import check_directions_fit, get_params, random_directions

    torch_dtype = curvature_dtype(dtype)
    dtype = str(torch_dtype).replace("torch.", "")
    task = as_task(task)
    params = get_params(model)
    if directions is not None:
        check_directions_fit(directions, params)
        dirs = [dict(d) for d in directions]
    else:
        dirs = random_directions(params, seed, 2, normalization, bias_policy)
    coords = {
        "alpha": np.linspace(-1, 1, 11) if alphas is None else np.asarray(alphas, dtype=np.float64),
        "beta": np.linspace(-1, 1, 11) if betas is None else np.asarray(betas, dtype=np.float64),
    }
    attrs = {
        "directions": "given" if directions is not None else "random",
        "normalization": normalization if directions is None else "given",
        "bias_policy": bias_policy,
        "seed": seed,
        "operator": operator,
        "tol": tol,
        "max_iter": max_iter,
        "hvp_method": hvp_method,
        "definition": f"ratio = |lambda_min / lambda_max| of the {operator} of the mean training "
        f"loss ({task.loss_name}; Lanczos, both ends)",
        "task": json.dumps(task.describe(), sort_keys=True),
    }
    return compute_landscape(
        model,
        params,
        dirs,
        coords,
        {"train": data},  # one split, whatever the form of the data (a dict of tensors)
        kind="curvature_map",
        attrs=attrs,
        chunk_size=chunk_size,
        run_dir=run_dir,
        spec=spec,
        progress=progress,
        on_chunk=on_chunk,
        dtype=dtype,
        device=str(device),
        batch_size=batch_size,
        strategy="loop",
        make_job=lambda basis: CurvatureMapJob(
            model,
            basis,
            data,
            operator,
            tol,
            max_iter,
            batch_size=batch_size,
            seed=seed,
            dtype=torch_dtype,
            hvp_method=hvp_method,
            device=str(device),
            task=task,
        ),
    )


def hessian_map(
    model: nn.Module,
    data: Any,
    spec: HessianSpec | None = None,
    *,
    alphas=None,
    betas=None,
    run_dir=None,
    identity: Mapping[str, Any] | None = None,
    progress: bool = False,
    task: Task | None = None,
):
    """:func:`curvature_map` with the settings of a :class:`~basinscope.analyses.hessian.HessianSpec`,
    as ``basinscope hessian --map`` computes it.

    The map is of the loss (of ``task``) on the first ``spec.subset`` examples of ``data``,
    with the spec's ``operator``, ``seed``, HVP ``method``, ``dtype``, ``device`` and
    ``batch_size``; at each point Lanczos stops at the relative
    residual ``max(spec.tol, 1e-8)`` or after ``spec.max_iter`` steps (default 100). The
    other settings of the spec (trace, density, per module, ...) do not apply to a map.
    Stored in ``run_dir``, the run's identity includes the spec's ``split`` and ``subset``
    and ``identity`` (e.g. the command line's model and data options).
    """
    spec = spec or HessianSpec()
    return curvature_map(
        model,
        first_examples(data, spec.subset),
        seed=spec.seed,
        operator=spec.operator,
        tol=max(spec.tol, 1e-8),
        max_iter=spec.max_iter or 100,
        alphas=alphas,
        betas=betas,
        hvp_method=spec.method,
        task=task,
        dtype=spec.dtype,
        device=spec.device,
        batch_size=spec.batch_size,
        run_dir=run_dir,
        spec={"split": spec.split, "subset": spec.subset, **(identity or {})},
        progress=progress,
    )
