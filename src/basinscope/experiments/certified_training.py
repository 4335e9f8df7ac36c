"""The certified-training study: is the loss landscape of an IBP-trained model smoother?

shared/talks/003, "Towards better understanding of training certifiably robust models
against adversarial examples": certified training minimises an upper bound of the
worst-case loss, and interval bound propagation (IBP), whose bounds are looser than those of
linear relaxations, trains better; the talk's explanation is the *smoothness of the loss
landscape*. On built-in data, two copies of one small CNN (no BatchNorm: every layer is one
IBP propagates, :mod:`basinscope.analyses.ibp`) are trained on scikit-learn's 8x8 digits
with the same initial weights, steps, minibatches and seeds:

- **standard**: Adam on the cross-entropy,
- **IBP**: Adam on :math:`\\kappa L_{\\text{nat}} + (1-\\kappa) L_{\\text{IBP}}(\\epsilon)` with
  Gowal et al.'s ramp (natural warm-up, then :math:`\\epsilon: 0 \\to \\epsilon_{\\text{train}}`
  and :math:`\\kappa: 1 \\to \\kappa_{\\text{final}}` linearly).

Around each solution the study measures the landscape of the **natural** training loss:
a filter-normalized 2D surface (the same seeded directions for both), the extreme Hessian
eigenvalues at the solution and a coarse :math:`|\\lambda_{\\min}/\\lambda_{\\max}|` map over the
same plane, two scale-invariant sharpness measures (adaptive worst-case sharpness with
:math:`\\eta = 0`, and Li et al.'s filter-normalized sharpness), and the certified accuracy
of both models at several :math:`\\epsilon` (IBP bounds on the test digits, clipped to
[0, 1]). The conclusion counts the measures by which the IBP model is flatter.

Settings are at the top; :mod:`basinscope.experiments.certified_training_report` builds the
report from the stored results.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from basinscope._checks import at_least, check_seed, finite_float, positive_float
from basinscope.errors import BasinscopeError
from basinscope.experiments.registry import StageCall, Study, StudyContext, register
from basinscope.experiments.stages import (
    DEFAULT_DEVICE,
    DEFAULT_DTYPE,
    StageLog,
    cached_stage,
    landscape_stage,
    model_stage,
    placement,
    stage_dir,
)

__all__ = ["DEFINITIONS", "STUDY", "CertifiedConfig", "build_cnn", "run"]

NAME = "certified-training"
STUDY_MAX_STEPS = 1_000_000
DATA_RANGE = (0.0, 1.0)  # the digits are images in [0, 1]
MODELS = ("standard", "ibp")


@dataclass(frozen=True)
class CertifiedConfig:
    """Settings of the certified-training study (steps are Adam updates; grids are points per axis)."""

    channels: tuple[int, int] = (16, 32)  # conv 3x3 (stride 1), conv 3x3 (stride 2)
    hidden: int = 64  # units of the hidden Linear layer before the 10 logits
    init_seed: int = 0  # initial weights (the same for both models)
    steps: int = 1000  # Adam steps for both models
    lr: float = 0.003  # Adam learning rate (constant)
    batch_size: int = 64  # minibatch size (the same seeded batches for both models)
    data_seed: int = 0  # minibatch order
    eps_train: float = 0.1  # IBP training radius (L-inf, input scale [0, 1])
    kappa: float = 0.5  # final weight of the natural loss in the IBP objective
    warmup: int = 100  # natural-loss steps before the ramp
    ramp: int = 500  # steps of the linear eps / kappa ramp
    # control for the loss level: the standard run keeps this many evenly spaced checkpoints,
    # and the one whose natural training loss is closest to the IBP model's is measured too
    # (0: no control)
    checkpoints: int = 20
    # radii of the certified accuracy (test digits, IBP bounds, ball clipped to [0, 1])
    epsilons: tuple[float, ...] = (0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2)
    grid: int = 25  # points per axis of each 2D surface of the natural loss
    span: float = 0.5  # surfaces and maps cover [-span, span]^2 in filter-normalized units
    direction_seed: int = 0  # seed of the two random directions (and of Lanczos, sharpness)
    surface_examples: int = 512  # first N training digits for the surfaces (0: all 1,347)
    map_grid: int = 7  # points per axis of the |lambda_min/lambda_max| maps (0: no map)
    hessian_examples: int = 128  # first N training digits for every Hessian eigenvalue
    hessian_tol: float = 1e-2  # Lanczos: relative residual tolerance of each eigenpair
    hessian_max_iter: int = 60  # Lanczos: at most this many steps per point
    sharpness_examples: int = 512  # first N training digits for both sharpness measures
    adaptive_rho: float = 0.02  # adaptive sharpness: max ||delta / |w| ||_inf (2% of each weight)
    sharpness_steps: int = 10  # adaptive sharpness: projected gradient-ascent steps
    fn_alpha: float = 0.2  # filter-normalized sharpness: step along each direction
    fn_directions: int = 10  # filter-normalized sharpness: random directions averaged
    eval_strategy: str = "loop"  # engine: "loop" or "vmap"; never timed
    device: str = DEFAULT_DEVICE  # where training and every evaluation compute
    dtype: str = DEFAULT_DTYPE  # precision of surfaces and sharpness (Hessians: float64)
    figure_formats: tuple[str, ...] = ("png", "pdf")  # files of each report figure

    def check(self) -> None:
        if len(self.channels) != 2:
            raise BasinscopeError(f"channels must be two numbers, got {list(self.channels)}")
        for c in self.channels:
            at_least("channels", c, 1, high=256)
        at_least("hidden", self.hidden, 1, high=4096)
        at_least("steps", self.steps, 1, high=STUDY_MAX_STEPS)
        for key in ("batch_size", "hessian_examples", "hessian_max_iter", "sharpness_steps"):
            at_least(key, getattr(self, key), 1)
        at_least("fn_directions", self.fn_directions, 1)
        for key in ("warmup", "ramp", "surface_examples", "sharpness_examples", "checkpoints"):
            at_least(key, getattr(self, key), 0)
        at_least("grid", self.grid, 3, high=201, high_why=" points per axis")
        if self.map_grid:
            at_least("map_grid", self.map_grid, 3, high=51, high_why=" points per axis")
        if self.warmup + self.ramp > self.steps:
            raise BasinscopeError(
                f"warmup + ramp ({self.warmup} + {self.ramp}) must fit in steps ({self.steps}), "
                "so that the IBP model trains at eps_train at the end"
            )
        positive_float("lr", self.lr, fix="e.g. lr=0.003")
        positive_float("span", self.span, fix="e.g. span=0.5")
        positive_float("eps_train", self.eps_train, fix="e.g. eps_train=0.1")
        positive_float("adaptive_rho", self.adaptive_rho, fix="e.g. adaptive_rho=0.02")
        positive_float("fn_alpha", self.fn_alpha, fix="e.g. fn_alpha=0.2")
        finite_float("kappa", self.kappa, low=0, high=1)
        finite_float("hessian_tol", self.hessian_tol, low=0, high=1, low_open=True, high_open=True)
        if not self.epsilons or any(not (0 <= e <= 1) for e in self.epsilons):
            raise BasinscopeError(
                f"epsilons must be radii in [0, 1] (the data range), got {list(self.epsilons)}"
            )
        for key in ("init_seed", "data_seed", "direction_seed"):
            check_seed(key, getattr(self, key))


DEFINITIONS = {
    "parameters": "number of trainable parameters",
    "train_seconds": "wall-clock seconds of training (null for the matched-loss checkpoint)",
    "checkpoint_step": "matched-loss control: the step of the standard run whose natural "
    "training loss is closest (in log) to the IBP model's",
    "train_loss": "mean cross-entropy on the 1,347 training digits at the solution",
    "train_accuracy": "fraction of the 1,347 training digits classified correctly",
    "test_loss": "mean cross-entropy on the 450 test digits",
    "test_accuracy": "fraction of the 450 test digits classified correctly",
    "certified_accuracy": "per eps: fraction of the 450 test digits whose true-class IBP lower "
    "bound exceeds every other class's IBP upper bound over the L-inf ball of radius eps, "
    "clipped to [0, 1]",
    "ibp_test_loss": "per eps: mean cross-entropy of the worst-case IBP logits on the test digits",
    "lambda_max": "largest Hessian eigenvalue of the mean natural training loss on the "
    "Hessian subset at the solution (Lanczos, float64)",
    "lambda_min": "smallest (most negative) Hessian eigenvalue, same loss and method",
    "ratio_center": "|lambda_min / lambda_max| at the solution",
    "hessian_converged": "1 if both eigenpairs met the residual tolerance, else 0",
    "adaptive_sharpness": "max over ||delta / |w| ||_inf <= adaptive_rho of L(w + delta) - L(w) "
    "(projected gradient ascent; eta = 0: invariant to ReLU rescalings)",
    "fn_sharpness": "mean over fn_directions filter-normalized random directions d of "
    "L(w + fn_alpha d) - L(w) (Li et al.; invariant to layer-wise rescaling)",
    "surface_center_loss": "f(0, 0): mean natural training loss on the surface subset",
    "surface_mean_rise": "mean over the surface grid of f(alpha, beta) - f(0, 0)",
    "surface_max_loss": "largest loss on the surface grid",
    "surface_nonconvex_fraction": "fraction of the surface's interior points where the 2x2 "
    "finite-difference Hessian of f(alpha, beta) has a negative eigenvalue",
    "map_ratio_mean": "mean over the map grid of |lambda_min / lambda_max| of the full Hessian; "
    "null without a map",
    "map_ratio_median": "median of the same ratio over the map grid",
    "map_converged_fraction": "fraction of map points where both Lanczos ends converged",
}

# measure -> (definition key, what "smoother/flatter" means: lower is flatter)
FLATNESS_MEASURES = (
    "lambda_max",
    "ratio_center",
    "map_ratio_mean",
    "adaptive_sharpness",
    "fn_sharpness",
    "surface_mean_rise",
    "surface_nonconvex_fraction",
)


def build_cnn(cfg: CertifiedConfig):
    """The study's CNN for 8x8 digits: an nn.Sequential IBP propagates through."""
    import torch
    from torch import nn

    c1, c2 = cfg.channels
    torch.manual_seed(cfg.init_seed)
    return nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(c1, c2, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(c2 * 4 * 4, cfg.hidden),
        nn.ReLU(),
        nn.Linear(cfg.hidden, 10),
    )


def _first(data, n: int, tag: str):
    return data if n <= 0 or n >= len(data) else data.subset(range(n), f"{data.name}-{tag}{n}")


def _train(model, train, cfg: CertifiedConfig, eps: float, keep: tuple[int, ...] = ()):
    from basinscope.analyses.ibp import ibp_train

    t0 = time.perf_counter()
    model = model.to(cfg.device)
    hist = ibp_train(
        model,
        train.x.to(cfg.device),
        train.y.to(cfg.device),
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        eps=eps,
        kappa=cfg.kappa,
        warmup=cfg.warmup,
        ramp=cfg.ramp,
        data_seed=cfg.data_seed,
        data_range=DATA_RANGE,
        record_every=max(1, cfg.steps // 200),
        record_eps=cfg.eps_train,  # both models' IBP loss recorded at the IBP run's radii
        checkpoint_steps=keep,
        checkpoints=(ckpts := {}),
    )
    model.cpu()
    return model, ckpts, {"history": hist, "train_seconds": time.perf_counter() - t0}


def checkpoint_steps(cfg: CertifiedConfig) -> tuple[int, ...]:
    """The standard run's checkpoints for the matched-loss control (evenly spaced, 1..steps)."""
    if not cfg.checkpoints:
        return ()
    return tuple(
        sorted(
            {max(1, round(cfg.steps * (i + 1) / cfg.checkpoints)) for i in range(cfg.checkpoints)}
        )
    )


def _load(template, state: dict):
    import copy

    model = copy.deepcopy(template)
    model.load_state_dict(state)
    return model.eval()


def _natural_loss(model, data) -> float:
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        return float(F.cross_entropy(model(data.x), data.y))


def matched_step(losses: dict[int, float], target: float) -> int:
    """The step whose loss is closest to ``target`` in log (ties: the earliest)."""
    return min(sorted(losses), key=lambda s: abs(np.log(losses[s]) - np.log(target)))


def _center(model, train, test, hess_data, sharp_data, cfg: CertifiedConfig) -> dict[str, Any]:
    import torch

    from basinscope.analyses.hessian import hessian_analysis
    from basinscope.analyses.ibp import certified_accuracy
    from basinscope.analyses.sharpness import adaptive_sharpness, filter_normalized_sharpness
    from basinscope.engine import evaluate_model

    ev = evaluate_model(model, {"train": train, "test": test}, **placement(cfg))
    cert = certified_accuracy(model, test, epsilons=cfg.epsilons)
    rep = hessian_analysis(
        model,
        hess_data,
        k_top=1,
        k_bottom=1,
        tol=cfg.hessian_tol,
        max_iter=cfg.hessian_max_iter,
        trace="none",
        seed=cfg.direction_seed,
        dtype=torch.float64,
        device=cfg.device,
    )
    where = placement(cfg)
    ada = adaptive_sharpness(
        model,
        sharp_data,
        rho=cfg.adaptive_rho,
        norm="linf",
        eta=0.0,
        kind="worst",
        steps=cfg.sharpness_steps,
        restarts=1,
        seed=cfg.direction_seed,
        **where,
    )
    fns = filter_normalized_sharpness(
        model,
        sharp_data,
        alpha=cfg.fn_alpha,
        num_directions=cfg.fn_directions,
        seed=cfg.direction_seed + 100,  # not the surface's two directions
        strategy=cfg.eval_strategy,
        **where,
    )
    lmax, lmin = float(rep.top.eigenvalues[0]), float(rep.bottom.eigenvalues[0])
    return {
        **{k: float(v) for k, v in ev.items()},
        "certified_accuracy": list(cert.certified_accuracy),
        "ibp_test_loss": list(cert.ibp_loss),
        "lambda_max": lmax,
        "lambda_min": lmin,
        "ratio_center": abs(lmin / lmax) if lmax else float("inf"),
        "hessian_converged": int(bool(rep.top.converged[0]) and bool(rep.bottom.converged[0])),
        "adaptive_sharpness": float(ada.value),
        "fn_sharpness": float(fns.value),
    }


def run(cfg: CertifiedConfig, ctx: StudyContext) -> dict[str, Any]:
    from basinscope.analyses import random_surface
    from basinscope.analyses.hessian_map import curvature_map
    from basinscope.data import load_digits
    from basinscope.experiments.skip_connections import nonconvex_fraction

    root, log = ctx.stages_root, ctx.log
    train, test = load_digits("train"), load_digits("test")
    surf_data = _first(train, cfg.surface_examples, "first")
    hess_data = _first(train, cfg.hessian_examples, "first")
    sharp_data = _first(train, cfg.sharpness_examples, "first")
    template = build_cnn(cfg)
    arch = {"model": "cnn", "channels": list(cfg.channels), "hidden": cfg.hidden}
    train_settings = {
        **arch,
        "init_seed": cfg.init_seed,
        "data": train.name,
        "steps": cfg.steps,
        "lr": cfg.lr,
        "batch_size": cfg.batch_size,
        "data_seed": cfg.data_seed,
        "optimizer": "adam",
        **placement(cfg, dtype=False),
    }
    ibp = {"eps_train": cfg.eps_train, "kappa": cfg.kappa, "warmup": cfg.warmup, "ramp": cfg.ramp}
    ibp["data_range"] = list(DATA_RANGE)
    eps_of = {"standard": 0.0, "ibp": cfg.eps_train}
    logs = {m: StageLog() for m in MODELS}

    # -- 1. train both models ---------------------------------------------------------------
    calls = []
    for name in MODELS:
        keep = () if name == "ibp" else checkpoint_steps(cfg)
        settings = {**train_settings, **(ibp if name == "ibp" else {"eps_train": 0.0})}
        if keep:
            settings["checkpoint_steps"] = list(keep)

        def train_call(lg, name=name, settings=settings, keep=keep):
            return model_stage(
                root,
                f"train-{name}",
                settings,
                template,
                lambda: _train(build_cnn(cfg), train, cfg, eps_of[name], keep),
                log=lg,
            )

        calls.append(StageCall(stage_dir(root, f"train-{name}", settings), train_call, logs[name]))
    trained = dict(
        zip(
            MODELS,
            ctx.run_stages(calls, what=f"[1/2] standard and IBP training ({cfg.steps} steps)"),
            strict=True,
        )
    )

    # the matched-loss control: the standard checkpoint at the IBP model's training loss
    entries = [(name, trained[name].model, trained[name].run_dir.name) for name in MODELS]
    matched = None
    if trained["standard"].checkpoints:
        target = _natural_loss(trained["ibp"].model, train)
        losses = {
            int(st): _natural_loss(_load(template, ck), train)
            for st, ck in trained["standard"].checkpoints.items()
        }
        step = matched_step(losses, target)
        matched = {"step": step, "losses": {str(k): v for k, v in sorted(losses.items())}}
        matched["target"] = target
        up = f"{trained['standard'].run_dir.name}@{step}"
        entries.append(("matched", _load(template, trained["standard"].checkpoints[step]), up))
        logs["matched"] = StageLog()

    # -- 2. each solution: accuracies, certified accuracy, Hessian, sharpness, surface, map --
    axis = np.linspace(-cfg.span, cfg.span, cfg.grid)
    map_axis = np.linspace(-cfg.span, cfg.span, max(cfg.map_grid, 1))
    plane = {"seed": cfg.direction_seed, "normalization": "filter", "bias_policy": "zero"}
    hess = {"examples": len(hess_data), "tol": cfg.hessian_tol, "max_iter": cfg.hessian_max_iter}
    where = placement(cfg)
    calls = []
    for name, m, up in entries:
        settings = {"train": up, **hess, "seed": cfg.direction_seed, **where}
        settings |= {
            "epsilons": list(cfg.epsilons),
            "sharpness_examples": len(sharp_data),
            "adaptive_rho": cfg.adaptive_rho,
            "sharpness_steps": cfg.sharpness_steps,
            "fn_alpha": cfg.fn_alpha,
            "fn_directions": cfg.fn_directions,
        }

        def center_call(lg, name=name, settings=settings, m=m):
            return cached_stage(
                root,
                f"center-{name}",
                settings,
                lambda d: _center(m, train, test, hess_data, sharp_data, cfg),
                log=lg,
            )

        calls.append(
            StageCall(stage_dir(root, f"center-{name}", settings), center_call, logs[name])
        )
        settings = {"train": up, "grid": cfg.grid, "span": cfg.span, "examples": len(surf_data)}
        settings |= plane | {"strategy": cfg.eval_strategy, **where}

        def surface_call(lg, name=name, settings=settings, m=m):
            def compute(d):
                return random_surface(
                    m,
                    surf_data,
                    **plane,
                    alphas=axis,
                    betas=axis,
                    run_dir=d,
                    attrs={"label_center": f"{name} solution"},
                    strategy=cfg.eval_strategy,
                    **where,
                )

            return landscape_stage(root, f"surface-{name}", settings, compute, log=lg)

        calls.append(
            StageCall(stage_dir(root, f"surface-{name}", settings), surface_call, logs[name])
        )
        if cfg.map_grid:
            settings = {"train": up, "grid": cfg.map_grid, "span": cfg.span, **plane, **hess}

            def map_call(lg, name=name, settings=settings, m=m):
                def compute(d):
                    return curvature_map(
                        m,
                        hess_data,
                        **plane,
                        alphas=map_axis,
                        betas=map_axis,
                        tol=cfg.hessian_tol,
                        max_iter=cfg.hessian_max_iter,
                        run_dir=d,
                    )

                return landscape_stage(root, f"curvature-map-{name}", settings, compute, log=lg)

            folder = stage_dir(root, f"curvature-map-{name}", settings)
            calls.append(StageCall(folder, map_call, logs[name]))
    done = iter(
        ctx.run_stages(
            calls,
            what=f"[2/2] certified accuracy, Hessians, sharpness, surfaces ({cfg.grid}x{cfg.grid})"
            + (f" and curvature maps ({cfg.map_grid}x{cfg.map_grid})" if cfg.map_grid else ""),
        )
    )
    for name, _, _ in entries:
        log.extend(logs[name])

    rows = {}
    for name, m, _ in entries:
        (center, center_dir), surface = next(done), next(done)
        cmap = next(done) if cfg.map_grid else None
        loss = surface.dataset["train_loss"].values
        c0 = float(loss[cfg.grid // 2, cfg.grid // 2]) if cfg.grid % 2 else float(np.nanmin(loss))
        info = trained["standard" if name == "matched" else name].info
        label = {
            "standard": "standard training",
            "ibp": f"IBP training (eps {cfg.eps_train:g})",
            "matched": f"standard, step {matched and matched['step']} (IBP's loss level)",
        }[name]
        row = {
            "model": name,
            "label": label,
            "eps_train": eps_of.get(name, 0.0),
            "parameters": sum(p.numel() for p in m.parameters()),
            "train_seconds": None if name == "matched" else info["train_seconds"],
            **center,
            "surface_center_loss": c0,
            "surface_mean_rise": float(np.nanmean(loss) - c0),
            "surface_max_loss": float(np.nanmax(loss)),
            "surface_nonconvex_fraction": nonconvex_fraction(loss, axis, axis),
            "map_ratio_mean": None,
            "map_ratio_median": None,
            "map_converged_fraction": None,
            "history": info["history"],
            "stages": {
                "train": trained["standard" if name == "matched" else name].run_dir.name,
                "center": center_dir.name,
                "surface": surface.run_dir.name,
            },
        }
        if cmap is not None:
            ratio = cmap.dataset["train_ratio"].values
            row.update(
                map_ratio_mean=float(np.mean(ratio)),
                map_ratio_median=float(np.median(ratio)),
                map_converged_fraction=float(cmap.dataset["train_converged"].values.mean()),
            )
            row["stages"]["map"] = cmap.run_dir.name
        if name == "matched":
            row["checkpoint_step"] = matched["step"]
            row["history"] = None  # the standard run's
        rows[name] = row
    return {
        "definitions": DEFINITIONS,
        "policies": {
            "batchnorm": "no BatchNorm: the CNN is an nn.Sequential of Conv2d, ReLU, Flatten and "
            "Linear layers, so IBP bounds every layer and every loss is a function of the "
            "weights alone",
            "directions": "two seeded Gaussian directions, filter-normalized (each conv filter "
            "and fc row scaled to the norm of the weights' filter), bias components zeroed; the "
            "same seed for both models",
            "surface_data": f"the first {len(surf_data)} of the 1,347 training digits",
            "hessian_data": f"the first {len(hess_data)} of the 1,347 training digits",
            "sharpness_data": f"the first {len(sharp_data)} of the 1,347 training digits",
            "training": f"Adam, {cfg.steps} steps of {cfg.batch_size} digits at lr {cfg.lr:g}, "
            f"the same initial weights (seed {cfg.init_seed}) and minibatches (seed "
            f"{cfg.data_seed}) for both; IBP: {cfg.warmup} natural steps, then eps 0 -> "
            f"{cfg.eps_train:g} and kappa 1 -> {cfg.kappa:g} over {cfg.ramp} steps, loss "
            "kappa * natural + (1 - kappa) * IBP (Gowal et al. 2018). A loop of its own "
            "(analyses.ibp.ibp_train): the library trainer's loss sees only the prediction "
            "and the targets, the IBP loss needs the model and the inputs",
            "precision": f"training in float32, surfaces and sharpness in {cfg.dtype}, Hessians "
            f"in float64, on {cfg.device}; the curvature maps in float64 on the CPU",
        },
        "epsilons": list(cfg.epsilons),
        "matched": matched,
        "models": rows,
        "comparison": compare(rows, cfg),
    }


def compare(rows: dict[str, dict[str, Any]], cfg: CertifiedConfig) -> dict[str, Any]:
    """Which flatness measures are lower for the IBP model than for the standard one (and
    than for the standard checkpoint at the IBP model's loss level, ``matched``), and the
    certified accuracies."""
    std, ibp = rows["standard"], rows["ibp"]
    i_train = min(range(len(cfg.epsilons)), key=lambda i: abs(cfg.epsilons[i] - cfg.eps_train))
    return {
        **_pair(std, ibp),
        "eps_closest_to_train": cfg.epsilons[i_train],
        "certified_standard": std["certified_accuracy"][i_train],
        "certified_ibp": ibp["certified_accuracy"][i_train],
        "clean_accuracy_cost": std["test_accuracy"] - ibp["test_accuracy"],
        "matched": _pair(rows["matched"], ibp) if "matched" in rows else None,
    }


def _pair(std: dict[str, Any], ibp: dict[str, Any]) -> dict[str, Any]:
    measures = {}
    for key in FLATNESS_MEASURES:
        a, b = std.get(key), ibp.get(key)
        if a is None or b is None:
            continue
        measures[key] = {
            "standard": a,
            "ibp": b,
            "ibp_flatter": bool(b < a),
            "verdict": "flatter" if b < a else "sharper" if b > a else "equal",
            "ratio": (b / a) if a else None,
        }
    flatter = sum(m["verdict"] == "flatter" for m in measures.values())
    sharper = sum(m["verdict"] == "sharper" for m in measures.values())
    return {
        "measures": measures,
        "ibp_flatter_count": flatter,
        "ibp_sharper_count": sharper,
        "measure_count": len(measures),
        # flatter by more measures than it is sharper by (ties count for neither)
        "ibp_flatter_overall": flatter > sharper,
    }


def _report(run_dir: Path, results: dict[str, Any]) -> Path:
    from basinscope.experiments.certified_training_report import write_report

    return write_report(run_dir, results)


STUDY = register(
    Study(
        name=NAME,
        summary="IBP (certified) training next to standard training of a small CNN on digits: "
        "certified accuracy at several eps, filter-normalized surfaces, |lambda_min/lambda_max| "
        "maps and scale-invariant sharpness of both",
        config=CertifiedConfig,
        run=run,
        report=_report,
        quick={
            "steps": 300,
            "warmup": 30,
            "ramp": 150,
            "grid": 11,
            "surface_examples": 256,
            "map_grid": 3,
            "hessian_examples": 64,
            "hessian_max_iter": 40,
            "sharpness_examples": 256,
            "fn_directions": 5,
        },
        smoke={
            "figure_formats": ("png",),
            "channels": (4, 8),
            "hidden": 16,
            "steps": 20,
            "warmup": 2,
            "ramp": 10,
            "checkpoints": 4,
            "epsilons": (0.0, 0.05, 0.1),
            "grid": 3,
            "surface_examples": 32,
            "map_grid": 3,
            "hessian_examples": 16,
            "hessian_max_iter": 10,
            "sharpness_examples": 32,
            "sharpness_steps": 2,
            "fn_directions": 2,
        },
    )
)
