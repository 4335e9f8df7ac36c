"""2D landscapes: :math:`f(\\alpha, \\beta) = L(\\theta^* + \\alpha\\delta + \\beta\\eta)` (Li et al. 2018).

Three ways to choose the plane:

* ``random_surface``: two seeded Gaussian directions, normalized (filter-wise by default),
* ``pca_surface``: the top two principal directions of a training trajectory, centred at
  its final point (Li et al. 2018, Sec. 7), with the trajectory projected onto the plane,
* ``plane_surface``: the plane through three models (Garipov et al. 2018).

``project_trajectory`` gives any trajectory's coordinates in a plane and each point's
distance from it, so fine-tuning paths can be drawn on a surface honestly (a point far
from the plane is not where the contour says it is).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn

from basinscope._checks import check_seed
from basinscope.analyses.landscape import (
    Landscape,
    LandscapeSpec,
    TrajectoryProjection,
    bias_policy_option,
    compute_landscape,
    grid_option,
    normalization_option,
)
from basinscope.engine import Task, warn_stored_bn
from basinscope.errors import BasinscopeError
from basinscope.geometry import (
    check_checkpoints_fit,
    check_directions_fit,
    get_params,
    load_directions,
    pca_directions,
    plane_through,
    project_onto_plane,
    random_directions,
)
from basinscope.spec import Spec, option, takes_spec

__all__ = [
    "PCASurfaceSpec",
    "PlaneSurfaceSpec",
    "RandomSurfaceSpec",
    "SurfaceFiles",
    "TrajectoryProjection",
    "pca_surface",
    "plane_surface",
    "project_trajectory",
    "random_surface",
    "surface_from_files",
]

_BETA_HELP = "beta grid START:STOP:NUM."


@dataclass(frozen=True)
class RandomSurfaceSpec(LandscapeSpec):
    """The settings of :func:`random_surface` (and of ``basinscope surface``): the grid, the
    random directions, the metrics, the evaluation."""

    alphas: tuple[float, ...] | None = grid_option(
        "alpha grid START:STOP:NUM (default -1:1:21; for --pca/--plane: fitted to the models).",
        "--xrange",
    )
    betas: tuple[float, ...] | None = grid_option(_BETA_HELP, "--yrange")
    seed: int = option(0, "Seed of the random directions.")
    normalization: str = normalization_option()
    bias_policy: str = bias_policy_option()
    orthogonal: bool = option(
        False, "Gram-Schmidt the second random direction against the first.", flag="--orthogonal"
    )

    def check(self) -> None:
        super().check()
        check_seed(self.name_of("seed"), self.seed)


@dataclass(frozen=True)
class PCASurfaceSpec(LandscapeSpec):
    """The settings of :func:`pca_surface`: the grid (by default ``n`` points per axis
    covering the projected trajectory with a ``margin``), the metrics, the evaluation."""

    alphas: tuple[float, ...] | None = grid_option(
        "alpha grid START:STOP:NUM (default: fitted to the trajectory).", "--xrange"
    )
    betas: tuple[float, ...] | None = grid_option(_BETA_HELP, "--yrange")
    n: int = option(21, "Points per axis of a fitted grid.", low=1)
    margin: float = option(0.2, "Margin of a fitted grid, as a fraction of the trajectory's span.")


@dataclass(frozen=True)
class PlaneSurfaceSpec(LandscapeSpec):
    """The settings of :func:`plane_surface`: orthonormal axes or not, the grid (by default
    ``n`` points per axis covering the three models with a ``margin``), the metrics, the
    evaluation."""

    orthogonal: bool = option(
        True, "Orthonormal axes (distances) instead of theta_B - theta_A and theta_C - theta_A."
    )
    alphas: tuple[float, ...] | None = grid_option(
        "alpha grid START:STOP:NUM (default: fitted to the models).", "--xrange"
    )
    betas: tuple[float, ...] | None = grid_option(_BETA_HELP, "--yrange")
    n: int = option(21, "Points per axis of a fitted grid.", low=1)
    margin: float = option(0.25, "Margin of a fitted grid, as a fraction of the models' span.")


def _grid(values: Any) -> tuple[float, ...] | None:
    if values is None:
        return None
    return tuple(float(a) for a in np.asarray(values, dtype=np.float64).reshape(-1))


def _default_axis(values, n: int = 21) -> np.ndarray:
    return np.linspace(-1, 1, n) if values is None else np.asarray(values, dtype=np.float64)


@takes_spec(RandomSurfaceSpec, forward=True)
def random_surface(
    model: nn.Module,
    data: Any,
    *,
    seed: int = 0,
    normalization: str = "filter",
    bias_policy: str = "zero",
    orthogonal: bool = False,
    directions: Sequence[Mapping[str, Tensor]] | None = None,
    alphas=None,
    betas=None,
    task: Task | None = None,
    **kwargs: Any,
) -> Landscape:
    """The plane around ``model`` through two normalized random directions (or given ones);
    ``task`` (:class:`~basinscope.engine.Task`) says how the model is run on a batch and
    what the loss is; other keyword arguments go to
    :func:`~basinscope.analyses.compute_landscape`; ``spec=RandomSurfaceSpec(...)`` gives
    the settings at once."""
    params = get_params(model)
    if directions is not None:
        if len(directions) != 2:
            raise BasinscopeError(f"a surface needs exactly 2 directions, got {len(directions)}")
        check_directions_fit(directions, params)
        dirs = [dict(d) for d in directions]
        how = "given"
    else:
        dirs = random_directions(params, seed, 2, normalization, bias_policy, orthogonal)
        how = "random"
    attrs = {
        "directions": how,
        "normalization": normalization if how == "random" else "given",
        "bias_policy": bias_policy,
        "seed": seed,
        "orthogonal": int(orthogonal),
        **kwargs.pop("attrs", {}),
    }
    coords = {"alpha": _default_axis(alphas), "beta": _default_axis(betas)}
    settings = RandomSurfaceSpec(
        alphas=_grid(alphas),
        betas=_grid(betas),
        seed=seed,
        normalization=normalization,
        bias_policy=bias_policy,
        orthogonal=orthogonal,
    )
    return compute_landscape(
        model,
        params,
        dirs,
        coords,
        data,
        kind="surface",
        attrs=attrs,
        settings=settings,
        task=task,
        **kwargs,
    )


def project_trajectory(
    landscape: Landscape,
    checkpoints: Mapping[int, Mapping[str, Tensor]] | Sequence[Mapping[str, Tensor]],
    label: str = "trajectory",
) -> TrajectoryProjection:
    """Coordinates of ``checkpoints`` in ``landscape``'s plane (least squares) and distances."""
    if len(landscape.directions) != 2:
        raise BasinscopeError("trajectories can only be projected onto a 2D surface")
    if isinstance(checkpoints, Mapping):
        steps = np.array(sorted(checkpoints), dtype=np.int64)
        pts = [checkpoints[int(s)] for s in steps]
    else:
        pts = list(checkpoints)
        steps = np.arange(len(pts))
    check_checkpoints_fit(pts, landscape.center, f"trajectory {label!r}")
    keys = landscape.center.keys()
    pts = [{k: p[k] for k in keys} for p in pts]
    proj = project_onto_plane(
        pts, landscape.center, landscape.directions[0], landscape.directions[1]
    )
    return TrajectoryProjection(label, steps, proj.alpha, proj.beta, proj.distance)


@takes_spec(PCASurfaceSpec, forward=True)
def pca_surface(
    model: nn.Module,
    trajectory: Mapping[int, Mapping[str, Tensor]] | Sequence[Mapping[str, Tensor]],
    data: Any,
    *,
    alphas=None,
    betas=None,
    n: int = 21,
    margin: float = 0.2,
    task: Task | None = None,
    **kwargs: Any,
) -> tuple[Landscape, TrajectoryProjection]:
    """The plane of the top two PCA directions of ``trajectory``, centred at ``model``.

    ``model`` should hold the trajectory's final point. The PCA directions are unit vectors,
    so the coordinates are distances in parameter space; by default the grid covers the
    projected trajectory with a ``margin`` on each side. ``task`` says how the model is run
    and what the loss is (:func:`random_surface`). ``spec=PCASurfaceSpec(...)`` gives the
    settings at once.
    """
    params = get_params(model)
    pts = (
        [trajectory[k] for k in sorted(trajectory)]
        if isinstance(trajectory, Mapping)
        else list(trajectory)
    )
    check_checkpoints_fit(pts, params, "the PCA trajectory")
    pts = [{k: p[k] for k in params} for p in pts]
    pca = pca_directions(pts, 2, center=params)
    proj = project_onto_plane(pts, params, pca.directions[0], pca.directions[1])

    def axis(v, given):
        if given is not None:
            return np.asarray(given, dtype=np.float64)
        lo, hi = min(v.min(), 0.0), max(v.max(), 0.0)
        span = max(hi - lo, 1e-8)
        return np.linspace(lo - margin * span, hi + margin * span, n)

    attrs = {
        "directions": "pca",
        "normalization": "none",
        "x_label": f"PC1 ({100 * pca.explained_variance_ratio[0]:.1f}% of variance; unit vector)",
        "y_label": f"PC2 ({100 * pca.explained_variance_ratio[1]:.1f}% of variance; unit vector)",
        "explained_variance_ratio": [float(x) for x in pca.explained_variance_ratio],
        **kwargs.pop("attrs", {}),
    }
    coords = {"alpha": axis(proj.alpha, alphas), "beta": axis(proj.beta, betas)}
    settings = PCASurfaceSpec(alphas=_grid(alphas), betas=_grid(betas), n=n, margin=margin)
    land = compute_landscape(
        model,
        params,
        pca.directions,
        coords,
        data,
        kind="pca_surface",
        attrs=attrs,
        settings=settings,
        task=task,
        **kwargs,
    )
    steps = (
        np.array(sorted(trajectory), dtype=np.int64)
        if isinstance(trajectory, Mapping)
        else np.arange(len(pts))
    )
    return land, TrajectoryProjection("trajectory", steps, proj.alpha, proj.beta, proj.distance)


@takes_spec(PlaneSurfaceSpec, forward=True)
def plane_surface(
    model_a: nn.Module,
    model_b: nn.Module | Mapping[str, Tensor],
    model_c: nn.Module | Mapping[str, Tensor],
    data: Any,
    *,
    orthogonal: bool = True,
    alphas=None,
    betas=None,
    n: int = 21,
    margin: float = 0.25,
    task: Task | None = None,
    **kwargs: Any,
) -> tuple[Landscape, np.ndarray]:
    """The plane through three models, centred at ``model_a``; returns it and the models' (3, 2)
    coordinates. ``task`` says how the model is run and what the loss is
    (:func:`random_surface`). ``spec=PlaneSurfaceSpec(...)`` gives the settings at once."""
    pa = get_params(model_a)
    pb = get_params(model_b) if isinstance(model_b, nn.Module) else dict(model_b)
    pc = get_params(model_c) if isinstance(model_c, nn.Module) else dict(model_c)
    dirs, pos = plane_through(pa, pb, pc, orthogonal)
    if kwargs.get("bn_policy", "stored") == "stored":
        warn_stored_bn(model_a, "a plane through three solutions")

    def axis(v, given):
        if given is not None:
            return np.asarray(given, dtype=np.float64)
        lo, hi = v.min(), v.max()
        span = hi - lo
        return np.linspace(lo - margin * span, hi + margin * span, n)

    coords = {"alpha": axis(pos[:, 0], alphas), "beta": axis(pos[:, 1], betas)}
    attrs = {
        "directions": "plane through three models",
        "normalization": "orthonormal" if orthogonal else "none",
        "x_label": "distance along θ_B − θ_A" if orthogonal else "α (units of θ_B − θ_A)",
        "y_label": "distance along the orthogonalized θ_C − θ_A"
        if orthogonal
        else "β (units of θ_C − θ_A)",
        "model_coords": pos.reshape(-1).tolist(),
        **kwargs.pop("attrs", {}),
    }
    settings = PlaneSurfaceSpec(
        orthogonal=orthogonal, alphas=_grid(alphas), betas=_grid(betas), n=n, margin=margin
    )
    land = compute_landscape(
        model_a,
        pa,
        dirs,
        coords,
        data,
        kind="plane_surface",
        attrs=attrs,
        settings=settings,
        task=task,
        **kwargs,
    )
    return land, pos


@dataclass(frozen=True)
class SurfaceFiles(Spec):
    """The files that choose the plane of :func:`surface_from_files` (at most one way:
    ``directions``, ``pca`` or ``plane``; by default two random directions), and the
    trajectories drawn on it."""

    directions: Path | None = option(
        None,
        "Two directions from a .safetensors file (e.g. RUN/tensors/directions.safetensors).",
    )
    pca: Path | None = option(
        None,
        "Trajectory (.safetensors from `basinscope train`) whose top-2 PCA directions span "
        "the plane.",
    )
    plane: tuple[Path, ...] = option(
        (),
        "Weights of model B, then of model C (give --plane twice): the plane through A "
        "(--weights), B and C.",
    )
    trajectory: tuple[Path, ...] = option(
        (), "Trajectory file to project onto the plane and draw (repeatable)."
    )

    def check(self) -> None:
        plane = self.name_of("plane")
        if self.plane and len(self.plane) != 2:
            raise BasinscopeError(
                f"{plane} needs exactly two weight files (models B and C), got "
                f"{len(self.plane)}: {plane} B.safetensors {plane} C.safetensors"
            )
        chosen = [self.name_of(n) for n in ("directions", "pca", "plane") if getattr(self, n)]
        if len(chosen) > 1:
            raise BasinscopeError(f"choose one way to make the plane, got {' and '.join(chosen)}")


def surface_from_files(
    model: nn.Module,
    data: Any,
    spec: RandomSurfaceSpec | None = None,
    files: SurfaceFiles | None = None,
    *,
    identity: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> Landscape:
    """The 2D landscape f(alpha, beta) = L(theta* + alpha delta + beta eta).

    The plane: two filter-normalized random directions around the --weights (default), the
    top two PCA directions of a training trajectory (--pca), the plane through three models
    (--weights A, --plane B --plane C), or directions from a file (--directions). Trajectories
    (--trajectory) are projected onto the plane and drawn, with each point's distance from it.
    Figures: the contours of the first loss with the trajectories (figures/landscape), and per
    loss contour, filled, heatmap, 3d (.png/.pdf), an interactive surface (.html) and a
    ParaView .vtp file.

    In Python: `model` is A (the --weights), `files` the other models and files (B and C are
    loaded into copies of A), `spec` the grid, the random directions, the metrics and the
    evaluation (random_surface(), pca_surface(), plane_surface()); the files join `identity`
    (what identifies the run folder), and other keyword arguments (run_dir, bn_data, ...) go
    to compute_landscape().
    """
    from basinscope.models import load_weights
    from basinscope.training import load_trajectory

    s, files = spec or RandomSurfaceSpec(), files or SurfaceFiles()
    params = get_params(model)
    trajs = {str(p): load_trajectory(p) for p in files.trajectory}
    for path, ckpts in trajs.items():  # before the surface is computed, not after
        check_checkpoints_fit(ckpts, params, f"trajectory {path!r}")
    kwargs["identity"] = identity = {**(identity or {}), "trajectories": list(trajs)}
    grid = dict(alphas=s.alphas, betas=s.betas, metrics=s.metrics, eval=s.eval)
    projections = []
    if files.pca is not None:
        identity["pca"] = str(files.pca)
        land, proj = pca_surface(
            model, load_trajectory(files.pca), data, spec=PCASurfaceSpec(**grid), **kwargs
        )
        label = Path(files.pca).parent.name or "trajectory"
        projections.append(dataclasses.replace(proj, label=label))
    elif files.plane:
        b, c = (load_weights(copy.deepcopy(model), p) for p in files.plane)
        identity["plane"] = [str(p) for p in files.plane]
        land, _ = plane_surface(model, b, c, data, spec=PlaneSurfaceSpec(**grid), **kwargs)
    else:
        given = None
        if files.directions is not None:
            given, _ = load_directions(files.directions)
            check_directions_fit(given, params, str(files.directions))
            identity["directions"] = str(files.directions)
        land = random_surface(model, data, spec=s, directions=given, **kwargs)
    for path, ckpts in trajs.items():
        label = Path(path).parent.name or Path(path).stem
        projections.append(project_trajectory(land, ckpts, label))
    return dataclasses.replace(land, trajectories=tuple(projections))
