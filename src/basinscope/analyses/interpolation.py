"""1D landscapes: the line between two models and a random normalized line.

The line between two solutions (Goodfellow et al. 2015; Li et al. 2018, Fig. 2):

.. math::  f(\\alpha) = L((1 - \\alpha)\\theta_A + \\alpha\\theta_B),

evaluated on any grid of :math:`\\alpha`, including extrapolation outside :math:`[0, 1]`
(Neyshabur et al. 2020 use :math:`[-1, 2]`). A random line around one model is
:math:`f(\\alpha) = L(\\theta + \\alpha d)` with :math:`d` a normalized random direction.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from basinscope._checks import check_seed
from basinscope.analyses.landscape import (
    Landscape,
    LandscapeSpec,
    bias_policy_option,
    compute_landscape,
    grid_option,
    normalization_option,
)
from basinscope.engine import Task, warn_stored_bn
from basinscope.engine.precision import storage_dtype
from basinscope.geometry import (
    check_directions_fit,
    direction_between,
    get_buffers,
    get_params,
    load_directions,
    random_direction,
)
from basinscope.geometry.params import to as cast
from basinscope.spec import option, takes_spec

__all__ = ["InterpolationSpec", "RandomLineSpec", "interpolate", "line_from_files", "random_line"]


@dataclass(frozen=True)
class InterpolationSpec(LandscapeSpec):
    """The settings of :func:`interpolate`: the grid of alpha, the metrics, the evaluation."""

    alphas: tuple[float, ...] | None = grid_option(
        "alpha grid START:STOP:NUM (default -0.5:1.5:41).", "--xrange", cli=False
    )


@dataclass(frozen=True)
class RandomLineSpec(LandscapeSpec):
    """The settings of :func:`random_line` (and of ``basinscope interpolate``): the grid, the
    random direction (seed, normalization, bias policy), the metrics, the evaluation."""

    alphas: tuple[float, ...] | None = grid_option(
        "alpha grid START:STOP:NUM (default -1:1:41).", "--xrange", cli=False
    )
    seed: int = option(0, "Seed of the random directions.")
    normalization: str = normalization_option()
    bias_policy: str = bias_policy_option()

    def check(self) -> None:
        super().check()
        check_seed(self.name_of("seed"), self.seed)


def _grid(alphas: Any) -> tuple[float, ...]:
    return tuple(float(a) for a in np.asarray(alphas, dtype=np.float64).reshape(-1))


def _params_and_buffers(
    m: nn.Module | Mapping[str, Tensor], dtype: torch.dtype | None
) -> tuple[dict, dict | None]:
    """Parameters and buffers, floating-point ones cast to ``dtype`` (``None``: as they are)."""
    if isinstance(m, nn.Module):
        return cast(get_params(m), dtype=dtype), cast(get_buffers(m), dtype=dtype)
    return cast({k: v.detach() for k, v in m.items()}, dtype=dtype), None


@takes_spec(InterpolationSpec, forward=True)
def interpolate(
    model_a: nn.Module,
    model_b: nn.Module | Mapping[str, Tensor],
    data: Any,
    *,
    alphas=None,
    bn_policy: str = "stored",
    task: Task | None = None,
    **kwargs: Any,
) -> Landscape:
    """Metrics along :math:`(1 - \\alpha)\\theta_A + \\alpha\\theta_B` (default :math:`\\alpha \\in [-0.5, 1.5]`, 41 points).

    ``model_b`` may be a model of the same architecture or its parameter dict. With
    ``bn_policy="stored"`` BatchNorm running statistics are interpolated with the same
    :math:`\\alpha` (and a :class:`~basinscope.engine.BatchNormWarning` says why that can
    mislead); with ``"recompute"`` they are re-estimated at every point from ``bn_data``.
    ``task`` (:class:`~basinscope.engine.Task`) says how the model is run on a batch and
    what the loss is (default ``model(x)`` and cross-entropy). Other keyword arguments go
    to :func:`~basinscope.analyses.landscape.compute_landscape`;
    ``spec=InterpolationSpec(...)`` gives the settings at once.
    """
    alphas = np.linspace(-0.5, 1.5, 41) if alphas is None else np.asarray(alphas, dtype=np.float64)
    # both ends in the evaluation dtype *before* subtracting: a float64 run must evaluate
    # theta_A + alpha (theta_B - theta_A) exactly, not theta_A + alpha fl32(theta_B - theta_A)
    # (bfloat16/float16 are autocast over float32 parameters)
    dtype, _ = storage_dtype(kwargs.get("dtype", "float32"))
    pa, ba = _params_and_buffers(model_a, dtype)
    pb, bb = _params_and_buffers(model_b, dtype)
    direction = direction_between(pa, pb)
    buffer_dirs = None
    if bb is not None and ba:
        buffer_dirs = [{k: (bb[k] - ba[k]) if ba[k].is_floating_point() else ba[k] * 0 for k in ba}]
    if bn_policy == "stored":
        warn_stored_bn(model_a, "interpolation between two solutions")
    attrs = {"normalization": "none", "direction": "theta_B - theta_A", **kwargs.pop("attrs", {})}
    return compute_landscape(
        model_a,
        pa,
        [direction],
        {"alpha": alphas},
        data,
        kind="interpolation",
        attrs=attrs,
        center_buffers=ba,
        buffer_directions=buffer_dirs,
        bn_policy=bn_policy,
        settings=InterpolationSpec(alphas=_grid(alphas)),
        task=task,
        **kwargs,
    )


@takes_spec(RandomLineSpec, forward=True)
def random_line(
    model: nn.Module,
    data: Any,
    *,
    seed: int = 0,
    normalization: str = "filter",
    bias_policy: str = "zero",
    alphas=None,
    direction: Mapping[str, Tensor] | None = None,
    task: Task | None = None,
    **kwargs: Any,
) -> Landscape:
    """Metrics along :math:`\\theta + \\alpha d` for a normalized random direction :math:`d`
    (default :math:`\\alpha \\in [-1, 1]`, 41 points), or along a given ``direction``;
    ``task`` says how the model is run and what the loss is (:func:`interpolate`);
    ``spec=RandomLineSpec(...)`` gives the settings at once."""
    alphas = np.linspace(-1, 1, 41) if alphas is None else np.asarray(alphas, dtype=np.float64)
    params = get_params(model)
    d = (
        dict(direction)
        if direction is not None
        else random_direction(params, seed, normalization, bias_policy)
    )
    attrs = {
        "normalization": normalization if direction is None else "given",
        "bias_policy": bias_policy,
        "seed": seed,
        **kwargs.pop("attrs", {}),
    }
    settings = RandomLineSpec(
        alphas=_grid(alphas), seed=seed, normalization=normalization, bias_policy=bias_policy
    )
    return compute_landscape(
        model,
        params,
        [d],
        {"alpha": alphas},
        data,
        kind="random_line",
        attrs=attrs,
        settings=settings,
        task=task,
        **kwargs,
    )


def line_from_files(
    model: nn.Module,
    data: Any,
    spec: RandomLineSpec | None = None,
    *,
    to: str | Path | None = None,
    directions: str | Path | None = None,
    identity: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> Landscape:
    """The 1D landscape between two models, or along a random normalized direction.

    f(alpha) = L((1 - alpha) theta_A + alpha theta_B) with extrapolation outside [0, 1], A the
    model (--weights) and B the model of the weights file `to` (--to); without it,
    f(alpha) = L(theta + alpha d) around A for a filter-normalized random d, or the first
    direction of the file `directions` (--directions). The grid of alpha (--xrange) is
    -0.5:1.5:41 unless given. Figures: the line (figures/landscape), and line.png/.pdf/.html.

    In Python: `spec` holds the grid, the random direction, the metrics and the evaluation;
    the files join `identity` (what identifies the run folder), and other keyword arguments
    (run_dir, bn_data, ...) go to compute_landscape().
    """
    from basinscope.models import load_weights

    spec = spec or RandomLineSpec()
    alphas = spec.alphas or tuple(np.linspace(-0.5, 1.5, 41).tolist())
    identity = dict(identity or {})
    if to is not None:
        other = load_weights(copy.deepcopy(model), to)
        identity["to"] = str(to)
        line = InterpolationSpec(alphas=alphas, metrics=spec.metrics, eval=spec.eval)
        return interpolate(model, other, data, spec=line, identity=identity, **kwargs)
    direction = None
    if directions is not None:
        dirs, _ = load_directions(directions)
        check_directions_fit(dirs[:1], get_params(model), str(directions))
        direction, identity["directions"] = dirs[0], str(directions)
    line = spec.replace(alphas=alphas)
    return random_line(model, data, spec=line, direction=direction, identity=identity, **kwargs)
