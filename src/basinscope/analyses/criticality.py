"""Module criticality (and, re-exported from :mod:`basinscope.analyses.rewind`, module
rewinding).

**Module criticality** (Chatterji, Neyshabur & Sedghi 2020, *The intriguing role of module
criticality in the generalization of deep networks*; used by Neyshabur, Sedghi & Zhang 2020
for transfer): with :math:`\\theta_i^\\alpha = (1-\\alpha)\\theta_i^0 + \\alpha\\theta_i^F`,

.. math::

    \\mu_i(\\epsilon) = \\min_{\\alpha, \\sigma \\in [0, 1]}
        \\frac{\\alpha^2 \\lVert \\theta_i^F - \\theta_i^0 \\rVert_F^2}{\\sigma_\\text{eff}^2}
    \\quad \\text{s.t.} \\quad
    \\mathbb{E}_{u \\sim \\mathcal N(0, \\sigma_\\text{eff}^2 I)}
        L(\\theta_i^\\alpha + u, \\theta_{-i}^F) \\le \\epsilon,

and the network criticality is :math:`\\sum_i \\mu_i(\\epsilon)`. The minimum is taken over
the ``alphas x sigmas`` grid (infinite where no grid point is feasible). ``noise`` picks
:math:`\\sigma_\\text{eff}`:

``absolute``   :math:`\\sigma_\\text{eff} = \\sigma` (per-entry standard deviation);
``frobenius``  :math:`\\sigma_\\text{eff} = \\sigma \\lVert \\theta_i^F \\rVert_F / \\sqrt{n_i}`
               (the noise's expected norm is :math:`\\sigma \\lVert \\theta_i^F \\rVert_F`: noise
               relative to the module's size, as in the transfer analysis).

The expectation is a Monte-Carlo mean over ``samples`` noise draws, shared by all grid
points of a module (common random numbers); with ``antithetic=True`` (default) the draws
come in pairs :math:`u, -u`, which removes the odd-order terms of the noise exactly. Every
grid point is a point of the engine: the origin is the final model, direction 0 is
:math:`\\theta_i^0 - \\theta_i^F` (zero outside module :math:`i`, coefficient
:math:`1 - \\alpha`) and direction :math:`1 + s` is the :math:`s`-th standard-normal draw
(zero outside module :math:`i`, coefficient :math:`\\sigma_\\text{eff}`).

``theta^0`` may be the initialization or pre-trained weights (transfer), and ``theta^F``
any checkpoint along the optimization path: pass them as ``model_init``/``model_final``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from basinscope._checks import MAX_SEED, grid_range
from basinscope.analyses.distance import MODULES_HELP, group_by_module
from basinscope.analyses.landscape import basis_on, eval_batches
from basinscope.analyses.rewind import (
    REWIND_DEFINITION,
    EngineOptions,
    RewindResult,
    RewindSpec,
    _init_params,
    _one_split,
    _restricted,
    _torch_dtype,
    rewind,
)
from basinscope.engine import EvalJob, PointBasis, Task, as_task, evaluate_points
from basinscope.engine.metrics import Metric
from basinscope.errors import BasinscopeError
from basinscope.geometry.params import get_buffers, get_params
from basinscope.result import Result, fmt
from basinscope.spec import Spec, group, option, takes_spec

__all__ = [
    "CRITICALITY_DEFINITION",
    "NOISE_DEFINITIONS",
    "NOISE_VARIANTS",
    "REWIND_DEFINITION",
    "CriticalityResult",
    "CriticalitySpec",
    "EngineOptions",
    "ModuleCriticality",
    "RewindResult",
    "RewindSpec",
    "criticality_along_path",
    "module_criticality",
    "rewind",
]

#: The noise variants of module criticality: name -> sigma_eff (see the module docstring).
NOISE_DEFINITIONS: dict[str, str] = {
    "absolute": "sigma_eff = sigma (per-entry standard deviation)",
    "frobenius": "sigma_eff = sigma ||theta_i^F||_F / sqrt(n_i) (noise relative to the "
    "module's size)",
}
NOISE_VARIANTS = tuple(NOISE_DEFINITIONS)
DEFAULT_EPSILON_MARGIN = 0.1
CRITICALITY_DEFINITION = (
    "mu_i(eps) = min over (alpha, sigma) grid of alpha^2 ||theta_i^F - theta_i^0||^2"
    " / sigma_eff^2 s.t. E_u L(theta_i^alpha + u, rest final) <= eps; "
    "network criticality = sum_i mu_i"
)


def _valley_grid(flag: str, example: str) -> Callable[[str], tuple[float, ...]]:
    """The command line's START:STOP:NUM grid of a valley axis (at least 2 values)."""

    def parse(text: str) -> tuple[float, ...]:
        grid = grid_range(text, flag)
        if len(grid) < 2:
            raise BasinscopeError(
                f"{flag} {text} gives {len(grid)} value; the valley plot needs a grid of at "
                f"least 2, e.g. {flag} {example}"
            )
        return tuple(float(v) for v in grid)

    return parse


@dataclass(frozen=True)
class CriticalitySpec(Spec):
    """Module criticality and network criticality (Chatterji, Neyshabur & Sedghi 2020).

    For module i, theta_i^alpha = (1 - alpha) theta_i^0 + alpha theta_i^F interpolates
    between its initial value (--init, alpha = 0) and its final value (--weights, alpha = 1)
    with the rest final; mu_i(epsilon) is the minimum over the grid of --alphas x --sigmas
    of alpha^2 ||theta_i^F - theta_i^0||^2 / sigma_eff^2 subject to E_u L(theta_i^alpha + u)
    <= epsilon, u ~ N(0, sigma_eff^2 I) (--samples antithetic draws, an even number).
    --noise-variant absolute: sigma_eff = sigma; frobenius: sigma_eff = sigma ||theta_i^F|| /
    sqrt(n_i). --epsilon defaults to the final model's loss + 0.1. The network criticality
    is the sum of mu_i; an infeasible module has mu "inf". figures/criticality shows mu per
    module and each module's mean loss over the grid, with the loss = epsilon boundary and
    the minimiser.

    Library: ``module_criticality(model_final, model_init, data, spec=CriticalitySpec(...))``;
    the fields are its keyword arguments, except that the noise variant is ``noise_variant``
    here and ``noise`` there (on the command line ``--noise`` is the data's input noise;
    :meth:`kwargs` maps it). ``split=None`` takes the data's first split (a single dataset
    is called ``train``).
    """

    kind: ClassVar[str] = "criticality"

    modules: tuple[str, ...] = option((), MODULES_HELP)
    epsilon: float | None = option(None, "Loss threshold (default: the final model's loss + 0.1).")
    alphas: tuple[float, ...] = option(
        tuple(float(a) for a in np.linspace(0.0, 1.0, 11)),
        "START:STOP:NUM grid of alpha (default: 0:1:11).",
        parse=_valley_grid("--alphas", "0:1:11"),
        metavar="START:STOP:NUM",
    )
    sigmas: tuple[float, ...] = option(
        tuple(float(s) for s in np.linspace(0.05, 1.0, 10)),
        "START:STOP:NUM grid of sigma > 0 (default: 0.05:1:10).",
        parse=_valley_grid("--sigmas", "0.05:1:10"),
        metavar="START:STOP:NUM",
    )
    samples: int = option(4, "Noise draws per grid point (even).", low=1)
    noise_variant: str = option(
        "absolute",
        "Noise scale: absolute or frobenius (per module).",
        choices=NOISE_VARIANTS,
    )
    antithetic: bool = option(True, "Draw the noise in pairs u, -u.", cli=False)
    seed: int = option(0, "Seed of the noise draws.", low=0, high=MAX_SEED)
    metric: str = option("loss", "The loss L that is thresholded.", cli=False)
    split: str | None = option(None, "Split whose loss L is thresholded.")
    engine: EngineOptions = group(EngineOptions)

    def check(self) -> None:
        if not self.alphas or not self.sigmas:
            raise BasinscopeError(
                f"{self.name_of('alphas')} and {self.name_of('sigmas')} need at least one "
                "value each"
            )
        if min(self.sigmas) <= 0:
            raise BasinscopeError(
                f"every sigma must be > 0 (mu divides by sigma^2): {self.name_of('sigmas')} "
                f"starts at {min(self.sigmas):g}"
            )
        if self.antithetic and self.samples % 2:
            raise BasinscopeError(
                f"{self.name_of('samples')} must be an even number >= 2 (antithetic pairs), "
                f"got {self.samples}"
            )

    def kwargs(self) -> dict[str, Any]:
        out = super().kwargs()
        out["noise"] = out.pop("noise_variant")
        return out


@dataclass(frozen=True)
class ModuleCriticality(Result, kind="module_criticality"):
    """One module's valley: mean loss over the ``alphas x sigmas`` grid and its criticality."""

    module: str
    loss: np.ndarray  # (len(alphas), len(sigmas))
    feasible: np.ndarray
    mu: float
    alpha_star: float
    sigma_star: float
    delta_sq_norm: float
    weight_norm: float
    numel: int
    noise_scale: float  # sigma_eff / sigma
    noise_sq_norm: float  # mean over draws of ||u||^2 / numel (standard-normal draws)


@dataclass(frozen=True)
class CriticalityResult(Result, kind="criticality"):
    """Module criticality of every module, the network criticality (the sum of the modules'
    ``mu``), and the settings. ``definition`` names the criticality and the noise variant."""

    modules: dict[str, ModuleCriticality]
    alphas: np.ndarray
    sigmas: np.ndarray
    epsilon: float
    baseline_loss: float
    settings: dict[str, Any] = field(default_factory=dict)
    network_criticality: float | None = None
    definition: dict[str, str] | None = None
    spec: CriticalitySpec | None = None

    def __post_init__(self) -> None:
        if self.network_criticality is None:
            nc = float(sum(m.mu for m in self.modules.values()))
            object.__setattr__(self, "network_criticality", nc)
        if self.definition is None:
            noise = self.settings.get("noise", "absolute")
            definition = {
                "module_criticality": CRITICALITY_DEFINITION,
                "noise": f"{noise}: {NOISE_DEFINITIONS.get(noise, '?')}",
            }
            object.__setattr__(self, "definition", definition)

    @property
    def mu(self) -> dict[str, float]:
        return {k: m.mu for k, m in self.modules.items()}

    def summary(self) -> list[str]:
        """The threshold, each module's mu and minimiser, and the network criticality."""
        lines = [
            f"epsilon {fmt(self.epsilon)} (final {self.settings['split']} loss "
            f"{fmt(self.baseline_loss)}); noise {self.settings['noise']}",
            f"{'module':<20} {'mu':>10} {'alpha*':>8} {'sigma*':>8}",
        ]
        lines += [
            f"{name:<20} {fmt(m.mu):>10} {fmt(m.alpha_star):>8} {fmt(m.sigma_star):>8}"
            for name, m in self.modules.items()
        ]
        return [*lines, f"network criticality: {fmt(self.network_criticality)}"]


@takes_spec(CriticalitySpec)
def module_criticality(
    model_final: nn.Module,
    model_init: nn.Module | Mapping[str, Tensor],
    data: Any,
    *,
    modules: Sequence[str] | None = None,
    epsilon: float | None = None,
    alphas: Sequence[float] | np.ndarray = np.linspace(0.0, 1.0, 11),
    sigmas: Sequence[float] | np.ndarray = np.linspace(0.05, 1.0, 10),
    samples: int = 4,
    noise: str = "absolute",
    antithetic: bool = True,
    seed: int = 0,
    metric: str | Metric = "loss",
    split: str | None = None,
    batch_size: int = 1024,
    dtype: torch.dtype | str = torch.float32,
    device: str = "cpu",
    strategy: str = "auto",
    chunk_size: int = 64,
    task: Task | None = None,
) -> CriticalityResult:
    """Module criticality :math:`\\mu_i(\\epsilon)` of each module; see the module docstring.

    ``epsilon`` defaults to the final model's loss plus ``0.1`` (the papers threshold the
    loss; an additive margin keeps the definition meaningful at near-zero training loss).
    ``metric`` is the loss ``L`` (a built-in name or a :class:`~basinscope.engine.Metric`).
    ``strategy`` is the engine's (``"vmap"``, ``"loop"``, or ``"auto"``: timed once, at the
    baseline, and kept for every module); the one used is recorded in ``settings``. The two
    agree to rounding only: pin it to compare separate runs bit for bit. ``dtype`` is a
    torch dtype or its name (``"float64"``; ``"bfloat16"``/``"float16"``: autocast).
    ``task`` (:class:`~basinscope.engine.Task`) says how the model is run on a batch and
    what the loss is (recorded in ``settings["task"]``). The data in memory is put on
    ``device`` once and read by every engine call; a DataLoader is streamed.
    """
    dtype = _torch_dtype(dtype)
    task = as_task(task)
    if noise not in NOISE_VARIANTS:
        raise BasinscopeError(
            f"unknown noise variant {noise!r}: expected one of {', '.join(NOISE_VARIANTS)}"
        )
    alphas = np.asarray(alphas, dtype=np.float64)
    sigmas = np.asarray(sigmas, dtype=np.float64)
    if alphas.ndim != 1 or sigmas.ndim != 1 or not len(alphas) or not len(sigmas):
        raise BasinscopeError("alphas and sigmas must be non-empty 1-D arrays")
    if (sigmas <= 0).any():
        raise BasinscopeError(
            f"every sigma must be > 0 (mu divides by sigma^2), got min {sigmas.min()}"
        )
    if samples < 1 or (antithetic and samples % 2):
        raise BasinscopeError(
            f"samples must be >= 1 (and even with antithetic=True), got {samples}; "
            "pass an even number or antithetic=False"
        )
    final = get_params(model_final)
    init = _init_params(model_init, final)
    groups = group_by_module(list(final), modules)
    split, d = _one_split(data, split)
    batches = eval_batches(d, batch_size=batch_size, device=device, dtype=dtype, task=task)
    _, targets = next(iter(batches))
    (metric_obj,) = task.resolve_metrics([metric], targets)
    buffers = get_buffers(model_final)
    gen = torch.Generator().manual_seed(seed)
    used = [strategy]  # "auto" is timed once, at the first engine call, and then kept

    def run(basis: PointBasis, coeffs: np.ndarray) -> np.ndarray:
        job = EvalJob(
            model_final,
            basis_on(basis, device),
            {split: batches},
            metrics=(metric_obj,),
            batch_size=batch_size,
            dtype=dtype,
            device=device,
            strategy=used[0],
            task=task,
        )
        res = evaluate_points(job, coeffs, chunk_size=chunk_size)
        used[0] = res.strategy
        return res.values[f"{split}_{metric_obj.name}"]

    zero = {k: torch.zeros_like(v) for k, v in final.items()}
    baseline = float(run(PointBasis(final, (zero,), buffers), np.zeros((1, 1)))[0])
    eps = baseline + DEFAULT_EPSILON_MARGIN if epsilon is None else float(epsilon)

    out: dict[str, ModuleCriticality] = {}
    for name, keys in groups.items():
        delta = _restricted({k: init[k] - final[k] for k in final}, keys)
        n_draws = samples // 2 if antithetic else samples
        draws = [
            {k: torch.randn(final[k].shape, generator=gen, dtype=torch.float64) for k in keys}
            for _ in range(n_draws)
        ]
        if antithetic:
            draws = [w for u in draws for w in (u, {k: -v for k, v in u.items()})]
        noise_dirs = tuple(
            {k: (u[k].to(v.dtype) if k in u else torch.zeros_like(v)) for k, v in final.items()}
            for u in draws
        )
        numel = int(sum(final[k].numel() for k in keys))
        weight_norm = math.sqrt(sum(float((final[k].double() ** 2).sum()) for k in keys))
        delta_sq = sum(float((delta[k].double() ** 2).sum()) for k in keys)
        scale = weight_norm / math.sqrt(numel) if noise == "frobenius" else 1.0
        noise_sq = float(np.mean([sum(float((u[k] ** 2).sum()) for k in keys) for u in draws]))
        noise_sq /= numel
        basis = PointBasis(final, (delta, *noise_dirs), buffers)
        rows = []
        for a in alphas:
            for s in sigmas:
                for j in range(samples):
                    c = np.zeros(1 + samples)
                    c[0] = 1.0 - a
                    c[1 + j] = s * scale
                    rows.append(c)
        vals = run(basis, np.asarray(rows)).reshape(len(alphas), len(sigmas), samples)
        loss = vals.mean(axis=2)
        feasible = loss <= eps
        sig_eff = sigmas * scale
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = (alphas[:, None] ** 2) * delta_sq / (sig_eff[None, :] ** 2)
        ratio = np.where(feasible & ~np.isnan(ratio), ratio, np.inf)
        if np.isfinite(ratio).any():
            ia, js = np.unravel_index(int(np.argmin(ratio)), ratio.shape)
            mu, a_star, s_star = float(ratio[ia, js]), float(alphas[ia]), float(sigmas[js])
        else:
            mu, a_star, s_star = math.inf, math.nan, math.nan
        out[name] = ModuleCriticality(
            module=name,
            loss=loss,
            feasible=feasible,
            mu=mu,
            alpha_star=a_star,
            sigma_star=s_star,
            delta_sq_norm=delta_sq,
            weight_norm=weight_norm,
            numel=numel,
            noise_scale=scale,
            noise_sq_norm=noise_sq,
        )
    return CriticalityResult(
        modules=out,
        alphas=alphas,
        sigmas=sigmas,
        epsilon=eps,
        baseline_loss=baseline,
        settings={
            "epsilon_rule": (
                "given" if epsilon is not None else f"baseline loss + {DEFAULT_EPSILON_MARGIN}"
            ),
            "noise": noise,
            "samples": samples,
            "antithetic": antithetic,
            "seed": seed,
            "metric": metric_obj.name,
            "metric_definition": metric_obj.definition,
            "split": split,
            "strategy": used[0],
            "task": task.describe(),
        },
        spec=CriticalitySpec(
            modules=tuple(modules or ()),
            epsilon=epsilon,
            alphas=tuple(float(a) for a in alphas),
            sigmas=tuple(float(s) for s in sigmas),
            samples=samples,
            noise_variant=noise,
            antithetic=antithetic,
            seed=seed,
            metric=metric_obj.name,
            split=split,
            engine=EngineOptions.of(batch_size, dtype, device, strategy, chunk_size),
        ),
    )


def criticality_along_path(
    model_final: nn.Module,
    checkpoints: Mapping[int, Mapping[str, Tensor]],
    data: Any,
    **kwargs: Any,
) -> dict[int, CriticalityResult]:
    """Module criticality with :math:`\\theta^0` taken at each checkpoint of a training path.

    The variant of Chatterji et al. (2020) and Neyshabur et al. (2020, Sec. 5) that asks how
    critical each module is relative to where it was at step ``s`` of the optimization (for
    instance a trajectory saved by :func:`basinscope.training.train`). Returns
    ``{step: CriticalityResult}``; keyword arguments go to :func:`module_criticality` (the
    same ``seed`` gives every step the same noise draws, so steps compare on equal terms).
    """
    if not checkpoints:
        raise BasinscopeError(
            "no checkpoints given: pass {step: parameter dict}, e.g. TrainResult.checkpoints"
        )
    return {
        int(s): module_criticality(model_final, checkpoints[s], data, **kwargs)
        for s in sorted(checkpoints)
    }
