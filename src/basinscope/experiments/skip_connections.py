"""The skip-connections study: do residual connections keep deep loss surfaces convex?

Li et al. (2018), "Visualizing the loss landscape of neural nets", Fig. 5-7, on built-in
data: small CIFAR-style ResNets (``basinscope.models.resnet``) with and without their
skip connections are trained at several depths on scikit-learn's 8x8 digits, and around
each solution :math:`\\theta^*` the study measures

1. the 2D surface :math:`f(\\alpha, \\beta) = L(\\theta^* + \\alpha\\delta + \\beta\\eta)` along
   two seeded Gaussian directions, filter-normalized, with their bias components zeroed
   (Li et al.'s "ignore biasbn"); the same seed gives every model the same kind of plane,
2. the extreme Hessian eigenvalues at the solution (Lanczos, both ends),
3. for the deepest pair, the map of :math:`|\\lambda_{\\min}/\\lambda_{\\max}|` of the Hessian
   over the same plane (Fig. 7: near 0 where the landscape is nearly convex).

BatchNorm policy: the networks are built *without* BatchNorm (``batchnorm=False``), so
every point of a surface or map is a function of the weights alone: no statistics policy
applies, and the surfaces and the Hessian maps measure the same function. (With BN the
surface needs ``bn_policy="recompute"`` per point while the Hessian operator uses stored
statistics.) Without BN, PyTorch's default initialization leaves deep plain networks
untrainable, so the convolutions get He initialization (``init="he"``).

Settings are at the top; :mod:`basinscope.experiments.skip_connections_report` builds the
report from the stored results.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
    placement,
    stage_dir,
    train_stage,
)

__all__ = ["DEFINITIONS", "STUDY", "SkipConfig", "run"]

INITS = ("he", "pytorch")
STUDY_MAX_STEPS = 1_000_000  # far more than any study needs: a larger value is a typo


@dataclass(frozen=True)
class SkipConfig:
    """Settings of the skip-connections study (steps are Adam updates; grids are points per axis)."""

    depths: tuple[int, ...] = (8, 14, 20)  # ResNet depths (6n+2); each with and without skips
    width: int = 4  # channels of the first stage (the stages have width, 2*width, 4*width)
    init: str = "he"  # "he": Kaiming-normal convolutions, zero biases; "pytorch": zoo default
    init_seed: int = 0  # seed of the initial weights (the same for every model)
    steps: int = 300  # Adam steps, cosine learning-rate decay to 0
    lr: float = 0.003  # peak Adam learning rate
    batch_size: int = 64  # minibatch size of training
    data_seed: int = 0  # minibatch order
    grid: int = 15  # points per axis of each 2D loss surface
    # surfaces and maps cover [-span, span]^2 in filter-normalized units; Li et al. use 1, but
    # without BatchNorm the loss beyond 0.5 is dominated by logits growing with depth
    span: float = 0.5
    direction_seed: int = 0  # seed of the two random directions (and of Lanczos)
    surface_examples: int = 512  # first N training images for the surfaces (0: all 1,347)
    map_grid: int = 7  # points per axis of the |lambda_min/lambda_max| maps
    map_depths: tuple[int, ...] = ()  # depths with a curvature map (empty: the deepest)
    hessian_examples: int = 64  # first N training images for all Hessian eigenvalues
    hessian_tol: float = 1e-2  # Lanczos: relative residual tolerance of each eigenpair
    hessian_max_iter: int = 60  # Lanczos: at most this many steps per point
    eval_strategy: str = "loop"  # engine: "loop" or "vmap" (slow for convolutions); never timed
    hvp_method: str = (
        "double-backward"  # or "forward-over-reverse", "reverse-over-forward"; never timed
    )
    # where training, evaluations, surfaces and Hessians at the solutions compute (cpu, cuda,
    # cuda:N, mps); the curvature maps run on the CPU
    device: str = DEFAULT_DEVICE
    # precision of the evaluations (accuracies, surfaces): float32 or float64; Hessians and
    # the curvature maps are always float64, training is float32
    dtype: str = DEFAULT_DTYPE
    figure_formats: tuple[str, ...] = ("png", "pdf")  # files of each report figure

    def check(self) -> None:
        bad = [d for d in self.depths if d < 8 or (d - 2) % 6]
        if not self.depths or bad:
            raise BasinscopeError(
                f"depths must be ResNet depths 6n+2 >= 8 (8, 14, 20, 26, ...), got {list(self.depths)}"
            )
        if missing := [d for d in self.map_depths if d not in self.depths]:
            raise BasinscopeError(
                f"map_depths {missing} are not among depths {list(self.depths)}; "
                "a curvature map needs the trained models of its depth"
            )
        if self.init not in INITS:
            raise BasinscopeError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        if max(self.depths) > 110:
            raise BasinscopeError(
                f"depths {list(self.depths)}: at most 110 (the deepest ResNet of Li et al.; "
                "deeper plain networks take hours on a CPU)"
            )
        at_least("width", self.width, 1, high=64, high_why=" channels in the first stage")
        at_least("steps", self.steps, 1, high=STUDY_MAX_STEPS)
        for key in ("batch_size", "hessian_examples", "hessian_max_iter"):
            at_least(key, getattr(self, key), 1)
        for key in ("grid", "map_grid"):
            at_least(key, getattr(self, key), 3, high=201, high_why=" points per axis")
        at_least("surface_examples", self.surface_examples, 0)
        positive_float("lr", self.lr, fix="e.g. lr=0.003")
        positive_float("span", self.span, fix="e.g. span=0.5")
        finite_float("hessian_tol", self.hessian_tol, low=0, high=1, low_open=True, high_open=True)
        for key in ("init_seed", "data_seed", "direction_seed"):
            check_seed(key, getattr(self, key))


# Every number a model row of the results holds, with its definition.
DEFINITIONS = {
    "depth": "ResNet depth 6n+2: stem conv, 3 stages of n two-conv blocks, fc",
    "width": "channels of the first stage (the stages have width, 2*width, 4*width)",
    "parameters": "number of trainable parameters",
    "train_loss": "mean cross-entropy on the 1,347 training digits at the solution",
    "train_accuracy": "fraction of the 1,347 training digits classified correctly",
    "test_loss": "mean cross-entropy on the 450 test digits",
    "test_accuracy": "fraction of the 450 test digits classified correctly",
    "lambda_max": "largest (algebraic) Hessian eigenvalue of the mean training loss on the "
    "Hessian subset at the solution (Lanczos, float64)",
    "lambda_min": "smallest (most negative) Hessian eigenvalue, same loss and method",
    "ratio_center": "|lambda_min / lambda_max| at the solution",
    "hessian_converged": "1 if both eigenpairs met the residual tolerance, else 0",
    "hessian_matvecs": "Hessian-vector products the Lanczos run at the solution used",
    "surface_center_loss": "f(0, 0): mean training loss on the surface subset at the solution",
    "surface_max_loss": "largest loss on the surface grid",
    "surface_nonconvex_fraction": "fraction of the surface's interior grid points where the "
    "2x2 finite-difference Hessian of f(alpha, beta) has a negative eigenvalue",
    "map_ratio_mean": "mean over the map grid of |lambda_min / lambda_max| of the full "
    "Hessian (Li et al. Fig. 7); null without a map",
    "map_ratio_median": "median of the same ratio over the map grid",
    "map_convex_fraction": "fraction of map points with ratio < 0.1 (nearly convex)",
    "map_converged_fraction": "fraction of map points where both Lanczos ends converged",
}

BN_POLICY = (
    "no BatchNorm: the ResNets are built with batchnorm=False, so each point's loss is a "
    "function of the weights alone and no statistics policy applies"
)


def _model(depth: int, skip: bool, cfg: SkipConfig):
    import torch
    from torch import nn

    from basinscope.models import build_model

    kwargs = {"depth": depth, "width": cfg.width, "skip": skip, "batchnorm": False}
    model = build_model("resnet", kwargs, init_seed=cfg.init_seed)
    if cfg.init == "he":  # Kaiming normal (fan_in, ReLU gain) on convolutions, zero biases
        gen = torch.Generator().manual_seed(cfg.init_seed)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.Conv2d):
                    m.weight.normal_(0.0, (2.0 / m.weight[0].numel()) ** 0.5, generator=gen)
                    if m.bias is not None:
                        m.bias.zero_()
    return model, kwargs


def _first(data, n: int, tag: str):
    return data if n <= 0 or n >= len(data) else data.subset(range(n), f"{data.name}-{tag}{n}")


def _center(model, train, test, hess_data, cfg: SkipConfig) -> dict[str, Any]:
    import torch

    from basinscope.analyses.hessian import hessian_analysis
    from basinscope.engine import evaluate_model

    ev = evaluate_model(model, {"train": train, "test": test}, **placement(cfg))
    rep = hessian_analysis(
        model,
        hess_data,
        k_top=1,
        k_bottom=1,
        tol=cfg.hessian_tol,
        max_iter=cfg.hessian_max_iter,
        trace="none",
        seed=cfg.direction_seed,
        dtype=torch.float64,  # whatever cfg.dtype (the evaluations' precision) says
        device=cfg.device,
        method=cfg.hvp_method,
    )
    lmax, lmin = float(rep.top.eigenvalues[0]), float(rep.bottom.eigenvalues[0])
    return {
        **{k: float(v) for k, v in ev.items()},
        "lambda_max": lmax,
        "lambda_min": lmin,
        "ratio_center": abs(lmin / lmax) if lmax else float("inf"),
        "hessian_converged": int(bool(rep.top.converged[0]) and bool(rep.bottom.converged[0])),
        "hessian_matvecs": int(rep.top.num_matvecs),
        "hvp_method": rep.semantics.get("method"),
        "hessian_semantics": rep.semantics,
    }


def nonconvex_fraction(loss: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> float:
    """Fraction of interior grid points where the central-difference 2x2 Hessian of the
    surface ``loss[alpha, beta]`` has a negative eigenvalue (non-finite points excluded)."""
    f = np.asarray(loss, dtype=np.float64)
    ha, hb = float(alpha[1] - alpha[0]), float(beta[1] - beta[0])
    faa = (f[2:, 1:-1] - 2 * f[1:-1, 1:-1] + f[:-2, 1:-1]) / ha**2
    fbb = (f[1:-1, 2:] - 2 * f[1:-1, 1:-1] + f[1:-1, :-2]) / hb**2
    fab = (f[2:, 2:] - f[2:, :-2] - f[:-2, 2:] + f[:-2, :-2]) / (4 * ha * hb)
    # smaller eigenvalue of [[faa, fab], [fab, fbb]]
    lo = (faa + fbb) / 2 - np.sqrt(((faa - fbb) / 2) ** 2 + fab**2)
    ok = np.isfinite(lo)
    return float(np.mean(lo[ok] < 0)) if ok.any() else float("nan")


def run(cfg: SkipConfig, ctx: StudyContext) -> dict[str, Any]:
    with _quiet():
        return _run(cfg, ctx)


@contextmanager
def _quiet() -> Iterator[None]:
    """torch's vmap fallback for pooling warns once per call: not a warning to the user."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="There is a performance drop")
        yield


def _quietly(compute: Callable) -> Callable:
    """``compute`` under :func:`_quiet`, also in a process of its own (a Ray task)."""

    def call(*args: Any) -> Any:
        with _quiet():
            return compute(*args)

    return call


def _run(cfg: SkipConfig, ctx: StudyContext) -> dict[str, Any]:
    from basinscope.analyses import random_surface
    from basinscope.analyses.hessian_map import curvature_map
    from basinscope.data import load_digits
    from basinscope.training import TrainConfig

    root, progress = ctx.stages_root, ctx.progress
    train, test = load_digits("train"), load_digits("test")
    surf_data = _first(train, cfg.surface_examples, "first")
    hess_data = _first(train, cfg.hessian_examples, "first")
    tcfg = TrainConfig(
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        optimizer="adam",
        lr=cfg.lr,
        schedule="cosine",
        data_seed=cfg.data_seed,
        checkpoint_steps=(0, cfg.steps),
    )
    map_depths = cfg.map_depths or (max(cfg.depths),)
    axis = np.linspace(-cfg.span, cfg.span, cfg.grid)
    map_axis = np.linspace(-cfg.span, cfg.span, cfg.map_grid)
    plane = {"seed": cfg.direction_seed, "normalization": "filter", "bias_policy": "zero"}
    hess = {"examples": len(hess_data), "tol": cfg.hessian_tol, "max_iter": cfg.hessian_max_iter}
    hess["hvp_method"] = cfg.hvp_method
    where, on_device = placement(cfg), placement(cfg, dtype=False)
    models = [(skip, depth) for skip in (True, False) for depth in cfg.depths]
    tags = [f"resnet{d}-{'skip' if s else 'noskip'}-w{cfg.width}" for s, d in models]
    # each model's stages are logged together, in the order of a run model by model
    logs = [StageLog() for _ in models]

    # -- 1. train every model (at once) -----------------------------------------------------
    calls = []
    for (skip, depth), tag, log in zip(models, tags, logs, strict=True):
        model, kwargs = _model(depth, skip, cfg)
        spec = {"model": "resnet", "model_kwargs": kwargs, "init": cfg.init}
        spec.update(init_seed=cfg.init_seed, data=train.name)
        folder = stage_dir(root, f"train-{tag}", {**spec, **tcfg.to_dict(), **on_device})

        def train_call(lg, folder=folder, model=model, spec=spec):
            return train_stage(
                folder, model, train, tcfg, spec, progress=progress, log=lg, device=cfg.device
            )

        calls.append(StageCall(folder, _quietly(train_call), log))
    depths = ", ".join(map(str, cfg.depths))
    trained = ctx.run_stages(
        calls, what=f"[1/2] training the ResNets of depth {depths}, with and without skips"
    )

    # -- 2. each solution's Hessian, its surface and (some depths) its curvature map --------
    calls = []
    for i, ((_, depth), tag, log) in enumerate(zip(models, tags, logs, strict=True)):
        m, up = trained[i].model, trained[i].run_dir.name
        settings = {"train": up, **hess, "seed": cfg.direction_seed, **where}

        def center_call(lg, name=f"center-{tag}", settings=settings, m=m):
            def compute(d):
                return _center(m, train, test, hess_data, cfg)

            return cached_stage(root, name, settings, compute, log=lg)

        calls.append(
            StageCall(stage_dir(root, f"center-{tag}", settings), _quietly(center_call), log)
        )
        settings = {"train": up, "grid": cfg.grid, "span": cfg.span, "examples": len(surf_data)}
        settings |= plane | {"strategy": cfg.eval_strategy, **where}

        def surface_call(lg, name=f"surface-{tag}", settings=settings, m=m):
            def compute(d):
                return random_surface(
                    m,
                    surf_data,
                    **plane,
                    alphas=axis,
                    betas=axis,
                    run_dir=d,
                    attrs={"label_center": "trained solution"},
                    strategy=cfg.eval_strategy,
                    **where,
                )

            return landscape_stage(root, name, settings, compute, log=lg)

        calls.append(
            StageCall(stage_dir(root, f"surface-{tag}", settings), _quietly(surface_call), log)
        )
        if depth in map_depths:
            settings = {"train": up, "grid": cfg.map_grid, "span": cfg.span, **plane, **hess}

            def map_call(lg, name=f"curvature-map-{tag}", settings=settings, m=m):
                def compute(d):
                    return curvature_map(
                        m,
                        hess_data,
                        **plane,
                        alphas=map_axis,
                        betas=map_axis,
                        tol=cfg.hessian_tol,
                        max_iter=cfg.hessian_max_iter,
                        hvp_method=cfg.hvp_method,
                        run_dir=d,
                    )

                return landscape_stage(root, name, settings, compute, log=lg)

            folder = stage_dir(root, f"curvature-map-{tag}", settings)
            calls.append(StageCall(folder, _quietly(map_call), log))
    maps = ", ".join(t for (_, d), t in zip(models, tags, strict=True) if d in map_depths)
    done = iter(
        ctx.run_stages(
            calls,
            what=f"[2/2] Hessians at the solutions, surfaces ({cfg.grid}x{cfg.grid} points) and "
            f"curvature maps of {maps} ({cfg.map_grid}x{cfg.map_grid} points)",
        )
    )
    for log in logs:
        ctx.log.extend(log)

    rows = []
    for i, (skip, depth) in enumerate(models):  # the values in the order of the calls
        (center, center_dir), surface = next(done), next(done)
        cmap = next(done) if depth in map_depths else None
        ds = surface.dataset
        loss = ds["train_loss"].values
        row = {
            "label": f"ResNet-{depth} {'with' if skip else 'without'} skips",
            "depth": depth,
            "width": cfg.width,
            "skip": skip,
            "parameters": sum(p.numel() for p in trained[i].model.parameters()),
            **center,
            "surface_center_loss": float(loss[cfg.grid // 2, cfg.grid // 2])
            if cfg.grid % 2
            else None,
            "surface_max_loss": float(np.nanmax(loss)),
            "surface_nonconvex_fraction": nonconvex_fraction(loss, axis, axis),
            "surface_strategy": surface.evaluation.get("strategy"),
            "stages": {
                "train": trained[i].run_dir.name,
                "center": center_dir.name,
                "surface": surface.run_dir.name,
            },
        }
        row.update(dict.fromkeys(("map_ratio_mean", "map_ratio_median"), None))
        row.update(dict.fromkeys(("map_convex_fraction", "map_converged_fraction"), None))
        if cmap is not None:
            ratio = cmap.dataset["train_ratio"].values
            row.update(
                map_ratio_mean=float(np.mean(ratio)),
                map_ratio_median=float(np.median(ratio)),
                map_convex_fraction=float(np.mean(ratio < 0.1)),
                map_converged_fraction=float(cmap.dataset["train_converged"].values.mean()),
            )
            row["stages"]["map"] = cmap.run_dir.name
        rows.append(row)
    return {
        "definitions": DEFINITIONS,
        "policies": {
            "batchnorm": BN_POLICY,
            "directions": "two seeded Gaussian directions, filter-normalized (each conv filter "
            "and fc row scaled to the norm of the weights' filter), bias components zeroed",
            "surface_data": f"the first {len(surf_data)} of the 1,347 training digits",
            "hessian_data": f"the first {len(hess_data)} of the 1,347 training digits",
            "precision": f"accuracies and surfaces in {cfg.dtype} on {cfg.device}; Hessians at "
            f"the solutions in float64 on {cfg.device}; training in float32 on {cfg.device}; the "
            "curvature maps in float64 on the CPU",
            "training": f"Adam, {cfg.steps} steps of {cfg.batch_size} images, cosine decay "
            f"from lr {cfg.lr:g}, "
            + ("He (Kaiming-normal) convolutions" if cfg.init == "he" else "PyTorch's default")
            + f" initialization (seed {cfg.init_seed})",
        },
        "map_depths": list(map_depths),
        "models": rows,
    }


def _report(run_dir: Path, results: dict[str, Any]) -> Path:
    from basinscope.experiments.skip_connections_report import write_report

    return write_report(run_dir, results)


STUDY = register(
    Study(
        name="skip-connections",
        summary="Li et al. 2018 Fig. 5-7: ResNets with and without skip connections at several "
        "depths on digits; filter-normalized 2D loss surfaces and |lambda_min/lambda_max| maps",
        config=SkipConfig,
        run=run,
        report=_report,
        quick={
            "depths": (8, 14),
            "steps": 60,
            "grid": 7,
            "surface_examples": 128,
            "map_grid": 3,
            "hessian_examples": 32,
            "hessian_max_iter": 30,
        },
        smoke={
            "figure_formats": ("png",),
            "depths": (8,),
            "steps": 10,
            "grid": 3,
            "surface_examples": 32,
            "map_grid": 3,
            "hessian_examples": 16,
            "hessian_max_iter": 10,
        },
    )
)
