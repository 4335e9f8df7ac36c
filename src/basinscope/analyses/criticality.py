"""Module rewinding and module criticality.

**Rewinding** (Zhang, Bengio & Singer 2019, *Are all layers created equal?*): reset the
parameters of one module to their initial (or pre-trained) values, keep every other
module at its final values, and measure how the metrics change. The result records
``change = rewound - baseline`` for every metric (a loss that rises has a positive change,
an accuracy that drops a negative one).

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
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from basinscope.analyses.distance import group_by_module
from basinscope.analyses.landscape import as_splits
from basinscope.engine import EvalJob, PointBasis, as_batches, evaluate_points
from basinscope.engine.metrics import Metric, resolve_metrics
from basinscope.errors import BasinscopeError
from basinscope.geometry.params import check_same_keys, get_buffers, get_params

__all__ = [
    "NOISE_VARIANTS",
    "CriticalityResult",
    "ModuleCriticality",
    "RewindResult",
    "criticality_along_path",
    "module_criticality",
    "plot_valley",
    "rewind",
]

NOISE_VARIANTS = ("absolute", "frobenius")
DEFAULT_EPSILON_MARGIN = 0.1


def _init_params(model_init, final: Mapping[str, Tensor]) -> dict[str, Tensor]:
    if isinstance(model_init, nn.Module):
        p = get_params(model_init)
    elif isinstance(model_init, Mapping):
        p = {k: v.detach().clone() for k, v in model_init.items()}
    else:
        raise BasinscopeError(
            f"model_init must be an nn.Module or a parameter dict, got {type(model_init).__name__}"
        )
    check_same_keys(
        final, p, "final and initial parameters", "Pass the same architecture's weights."
    )
    return {k: v.to(dtype=final[k].dtype, device=final[k].device) for k, v in p.items()}


def _one_split(data: Any, split: str | None) -> tuple[str, Any]:
    """A ``{split: data}`` mapping picks that split; a single dataset is labelled ``split``."""
    splits = as_splits(data)
    if split is not None and splits.get("train") is data:
        return split, splits["train"]  # one dataset given: ``split`` only names it
    if split is None:
        split = next(iter(splits))
    if split not in splits:
        raise BasinscopeError(f"unknown split {split!r}: data has splits {list(splits)}")
    return split, splits[split]


def _restricted(delta: Mapping[str, Tensor], keys: Sequence[str]) -> dict[str, Tensor]:
    ks = set(keys)
    return {k: (v if k in ks else torch.zeros_like(v)) for k, v in delta.items()}


# -- rewinding ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RewindResult:
    """Metrics with one module rewound at a time, against the final model's."""

    baseline: dict[str, float]
    rewound: dict[str, dict[str, float]]
    change: dict[str, dict[str, float]]
    split: str
    definition: str = "change = metric(module rewound to init, rest final) - metric(final)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline": dict(self.baseline),
            "rewound": {k: dict(v) for k, v in self.rewound.items()},
            "change": {k: dict(v) for k, v in self.change.items()},
            "split": self.split,
            "definition": self.definition,
        }


def rewind(
    model_final: nn.Module,
    model_init: nn.Module | Mapping[str, Tensor],
    data: Any,
    *,
    modules: Sequence[str] | None = None,
    metrics: Sequence[str | Metric | Callable] = ("loss", "accuracy"),
    split: str | None = None,
    batch_size: int = 1024,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    strategy: str = "auto",
    chunk_size: int = 64,
) -> RewindResult:
    """Rewind each module to ``model_init``'s values (rest final) and evaluate; see module doc.

    One engine call evaluates the final model and every rewound model; inputs are never
    mutated. Buffers stay at the final model's values.
    """
    final = get_params(model_final)
    init = _init_params(model_init, final)
    groups = group_by_module(list(final), modules)
    delta = {k: init[k] - final[k] for k in final}
    basis = PointBasis(
        final,
        tuple(_restricted(delta, ks) for ks in groups.values()),
        get_buffers(model_final),
    )
    split, d = _one_split(data, split)
    job = EvalJob(
        model_final,
        basis,
        {split: as_batches(d, batch_size=batch_size, device="cpu")},
        metrics=tuple(resolve_metrics(metrics)),
        batch_size=batch_size,
        dtype=dtype,
        device=device,
        strategy=strategy,
    )
    coeffs = np.vstack([np.zeros((1, len(groups))), np.eye(len(groups))])
    res = evaluate_points(job, coeffs, chunk_size=chunk_size)
    names = [m.name for m in resolve_metrics(metrics)]
    baseline = {n: float(res.values[f"{split}_{n}"][0]) for n in names}
    rewound = {
        m: {n: float(res.values[f"{split}_{n}"][1 + j]) for n in names}
        for j, m in enumerate(groups)
    }
    change = {m: {n: v[n] - baseline[n] for n in names} for m, v in rewound.items()}
    return RewindResult(baseline=baseline, rewound=rewound, change=change, split=split)


# -- criticality -------------------------------------------------------------------------


@dataclass(frozen=True)
class ModuleCriticality:
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "mu": self.mu if math.isfinite(self.mu) else str(self.mu),
            "alpha_star": self.alpha_star,
            "sigma_star": self.sigma_star,
            "delta_sq_norm": self.delta_sq_norm,
            "weight_norm": self.weight_norm,
            "numel": self.numel,
            "noise_scale": self.noise_scale,
            "noise_sq_norm": self.noise_sq_norm,
            "loss": self.loss.tolist(),
            "feasible": self.feasible.tolist(),
        }


@dataclass(frozen=True)
class CriticalityResult:
    """Module criticality of every module, the network criticality, and the settings."""

    modules: dict[str, ModuleCriticality]
    alphas: np.ndarray
    sigmas: np.ndarray
    epsilon: float
    baseline_loss: float
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def network_criticality(self) -> float:
        return float(sum(m.mu for m in self.modules.values()))

    @property
    def mu(self) -> dict[str, float]:
        return {k: m.mu for k, m in self.modules.items()}

    def to_dict(self) -> dict[str, Any]:
        nc = self.network_criticality
        return {
            "definition": (
                "mu_i(eps) = min over (alpha, sigma) grid of alpha^2 ||theta_i^F - theta_i^0||^2"
                " / sigma_eff^2 s.t. E_u L(theta_i^alpha + u, rest final) <= eps; "
                "network criticality = sum_i mu_i"
            ),
            "epsilon": self.epsilon,
            "baseline_loss": self.baseline_loss,
            "network_criticality": nc if math.isfinite(nc) else str(nc),
            "alphas": self.alphas.tolist(),
            "sigmas": self.sigmas.tolist(),
            "settings": dict(self.settings),
            "modules": {k: m.to_dict() for k, m in self.modules.items()},
        }


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
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    strategy: str = "auto",
    chunk_size: int = 64,
) -> CriticalityResult:
    """Module criticality :math:`\\mu_i(\\epsilon)` of each module; see the module docstring.

    ``epsilon`` defaults to the final model's loss plus ``0.1`` (the papers threshold the
    loss; an additive margin keeps the definition meaningful at near-zero training loss).
    ``metric`` is the loss ``L`` (a built-in name or a :class:`~basinscope.engine.Metric`).
    ``strategy`` is the engine's (``"vmap"``, ``"loop"``, or ``"auto"``: timed once, at the
    baseline, and kept for every module); the one used is recorded in ``settings``. The two
    agree to rounding only: pin it to compare separate runs bit for bit.
    """
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
    (metric_obj,) = resolve_metrics([metric])
    split, d = _one_split(data, split)
    batches = as_batches(d, batch_size=batch_size, device="cpu")
    buffers = get_buffers(model_final)
    gen = torch.Generator().manual_seed(seed)
    used = [strategy]  # "auto" is timed once, at the first engine call, and then kept

    def run(basis: PointBasis, coeffs: np.ndarray) -> np.ndarray:
        job = EvalJob(
            model_final,
            basis,
            {split: batches},
            metrics=(metric_obj,),
            batch_size=batch_size,
            dtype=dtype,
            device=device,
            strategy=used[0],
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
        },
    )


def plot_valley(result: CriticalityResult, module: str, ax=None, *, levels: int = 20):
    """Filled contour of the mean loss over ``alpha x sigma`` with the ``loss = epsilon``
    boundary of the feasible region; returns ``(fig, ax)``."""
    if module not in result.modules:
        raise BasinscopeError(
            f"no module {module!r} in this result: modules are {list(result.modules)}"
        )
    if len(result.alphas) < 2 or len(result.sigmas) < 2:
        raise BasinscopeError(
            f"a valley plot needs at least 2 alphas and 2 sigmas, got {len(result.alphas)} and "
            f"{len(result.sigmas)}: evaluate a grid, e.g. alphas=np.linspace(0, 1, 11)"
        )
    m = result.modules[module]
    if ax is None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(4.5, 3.6))
        ax = fig.add_subplot(1, 1, 1)
    else:
        fig = ax.figure
    A, S = np.meshgrid(result.alphas, result.sigmas, indexing="ij")
    finite = np.isfinite(m.loss)
    z = np.where(finite, m.loss, np.max(m.loss[finite]) if finite.any() else 0.0)
    cs = ax.contourf(A, S, z, levels=levels)
    fig.colorbar(cs, ax=ax, label=result.settings.get("metric", "loss"))
    if z.min() < result.epsilon < z.max() and len(result.alphas) > 1 and len(result.sigmas) > 1:
        ax.contour(A, S, z, levels=[result.epsilon], colors="white", linewidths=1.5)
    if math.isfinite(m.mu):
        ax.plot([m.alpha_star], [m.sigma_star], "r*", markersize=10)
    ax.set_xlabel("alpha")
    relative = result.settings.get("noise") == "frobenius"
    ax.set_ylabel("sigma" + (" (x ||theta_F|| / sqrt(n))" if relative else ""))
    mu = f"{m.mu:.3g}" if math.isfinite(m.mu) else "inf"
    ax.set_title(f"{module}: mu={mu}, eps={result.epsilon:.3g}")
    return fig, ax


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
