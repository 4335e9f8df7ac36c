"""The lr-and-width study: does a large learning rate find a wider minimum, and which
patterns does each learning rate learn?

Li, Wei & Ma (2019), "Towards explaining the regularization effect of initial large learning
rate in training neural networks", on built-in data: scikit-learn's 8x8 digits, patch-
augmented (:func:`basinscope.data.patch_data`): every class gets a fixed random
``patch_size x patch_size`` patch of standard deviation ``patch_scale`` in the top-left
corner; 20% of the training images keep only the patch (the image blanked: a pattern that is
hard to fit, with a small norm, and easy to generalize), 20% only the image, 60% both. A
small BatchNorm network (a LeNet with BatchNorm, or an MLP with BatchNorm) is trained from
the same initialization with the same minibatch order and number of SGD steps, three ways:

``small``     a small learning rate ``small_lr`` throughout,
``large``     a large learning rate ``large_lr`` throughout,
``annealed``  ``large_lr``, dropped to ``small_lr`` after ``anneal_at`` of the steps.

During training a :class:`~basinscope.analyses.tracking.Tracker` records, every
``track_every`` steps, the weight norm, the effective learning rate of the scale-invariant
(BatchNorm-fed) layers, train/test loss and error, λmax of the Hessian (warm-started
Lanczos), the filter-normalized sharpness and the gradient noise scale; the study adds the
error on the patch-only test images and on each group of the training set. At each solution
it measures λmax, the filter-normalized and the adaptive sharpness (both invariant to
rescaling the layers), the 1D path between every pair of solutions (BatchNorm statistics
recomputed at every point) and a filter-normalized 2D loss surface around each.

Settings are at the top; :mod:`basinscope.experiments.lr_and_width_report` builds the report
from the stored results.
"""

from __future__ import annotations

import copy
import math
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
)

__all__ = ["DEFINITIONS", "RUNS", "STUDY", "LrWidthConfig", "path_barrier", "run"]

MODELS = ("lenet", "mlp")
RUNS = ("small", "large", "annealed")
PAIRS = (("small", "large"), ("small", "annealed"), ("large", "annealed"))
GROUPS = ("both", "patch_only", "image_only")  # basinscope.data.corruptions.PATCH_GROUPS
STUDY_MAX_STEPS = 1_000_000


@dataclass(frozen=True)
class LrWidthConfig:
    """Settings of the lr-and-width study (steps are SGD updates; grids are points per axis)."""

    model: str = "lenet"  # "lenet": conv-BN-ReLU-pool x2, fc, fc; "mlp": fc-BN-ReLU layers
    width: int = 1  # lenet: multiplier of its channels (6w, 16w) and fc (64w)
    hidden: tuple[int, ...] = (64, 64)  # mlp: widths of its hidden layers (each with BN)
    init_seed: int = 0  # the initial weights, the same for the three runs
    patch_only: float = 0.2  # fraction of training images with only their class's patch
    image_only: float = 0.2  # fraction with only the image; the rest have both
    patch_size: int = 3  # side of the square patch (pixels of the 8x8 images)
    patch_scale: float = 0.1  # standard deviation of the patches' Gaussian pixels
    patch_seed: int = 0  # the patches and which image is in which group
    steps: int = 600  # SGD steps of each run
    batch_size: int = 64
    small_lr: float = 0.01
    large_lr: float = 0.2
    anneal_at: float = 0.5  # the annealed run drops to small_lr after this fraction of steps
    momentum: float = 0.9
    weight_decay: float = 5e-4
    data_seed: int = 0  # the minibatch order, the same for the three runs
    track_every: int = 20  # the Tracker records every this many steps (and the last)
    # first N training images for lambda_max, sharpness and the noise scale (tracked and at
    # the solutions)
    curvature_examples: int = 512
    hessian_tol: float = 1e-2  # Lanczos: relative residual tolerance
    hessian_max_iter: int = 40  # Lanczos: at most this many steps
    sharpness_directions: int = 16  # filter-normalized sharpness: random directions
    sharpness_alpha: float = 0.1  # filter-normalized sharpness: step along each direction
    adaptive_rho: float = 0.05  # adaptive sharpness (at the solutions): radius of the ball
    ascent_steps: int = 10  # adaptive sharpness: projected gradient ascent steps
    path_points: int = 31  # points of each 1D path between two solutions
    path_range: tuple[float, float] = (-0.25, 1.25)  # alpha range of the paths
    grid: int = 21  # points per axis of each 2D surface
    span: float = 1.0  # surfaces cover [-span, span]^2 in filter-normalized units
    surface_examples: int = 0  # first N training images for the surfaces (0: all 1,347)
    direction_seed: int = 0  # the surfaces' random directions, the sharpness and Lanczos
    learned: float = 0.8  # a run "learned" a pattern once its accuracy reaches this
    eval_strategy: str = "loop"  # engine: "loop" or "vmap"; never timed
    hvp_method: str = "double-backward"  # or "forward-over-reverse", "reverse-over-forward"
    # where training, evaluations, paths, surfaces and Hessians compute (cpu, cuda, mps)
    device: str = DEFAULT_DEVICE
    # precision of the evaluations, paths and surfaces: float32 or float64; Hessians and
    # the tracked quantities are float64 or the model's float32 as the Tracker defines
    dtype: str = DEFAULT_DTYPE
    figure_formats: tuple[str, ...] = ("png", "pdf")

    def check(self) -> None:
        if self.model not in MODELS:
            raise BasinscopeError(
                f"model must be one of {', '.join(MODELS)} (both with BatchNorm), got {self.model!r}"
            )
        at_least("width", self.width, 1, high=16, high_why=" (a multiplier of LeNet's widths)")
        if not self.hidden:
            raise BasinscopeError("hidden must list at least one width, e.g. hidden=[64, 64]")
        for h in self.hidden:
            at_least("hidden widths", h, 1, high=4096)
        finite_float("patch_only", self.patch_only, low=0, high=1)
        finite_float("image_only", self.image_only, low=0, high=1)
        if self.patch_only + self.image_only > 1:
            raise BasinscopeError(
                f"patch_only + image_only must be at most 1 (the rest have both), got "
                f"{self.patch_only} + {self.image_only}"
            )
        at_least("patch_size", self.patch_size, 1, high=8, high_why=" (the images are 8x8)")
        positive_float("patch_scale", self.patch_scale, fix="e.g. patch_scale=0.1")
        at_least("steps", self.steps, 2, high=STUDY_MAX_STEPS)
        at_least("batch_size", self.batch_size, 1)
        positive_float("small_lr", self.small_lr, fix="e.g. small_lr=0.01")
        positive_float("large_lr", self.large_lr, fix="e.g. large_lr=0.2")
        if not self.large_lr > self.small_lr:
            raise BasinscopeError(
                f"large_lr ({self.large_lr:g}) must be larger than small_lr ({self.small_lr:g})"
            )
        finite_float("anneal_at", self.anneal_at, low=0, high=1, low_open=True, high_open=True)
        finite_float("momentum", self.momentum, low=0, high=1, high_open=True)
        finite_float("weight_decay", self.weight_decay, low=0)
        at_least("track_every", self.track_every, 1, high=STUDY_MAX_STEPS)
        at_least("curvature_examples", self.curvature_examples, 2, why=" (the noise scale)")
        at_least("hessian_max_iter", self.hessian_max_iter, 1)
        finite_float("hessian_tol", self.hessian_tol, low=0, high=1, low_open=True, high_open=True)
        at_least("sharpness_directions", self.sharpness_directions, 1, high=1000)
        positive_float("sharpness_alpha", self.sharpness_alpha, fix="e.g. sharpness_alpha=0.1")
        positive_float("adaptive_rho", self.adaptive_rho, fix="e.g. adaptive_rho=0.05")
        at_least("ascent_steps", self.ascent_steps, 1, high=1000)
        at_least("path_points", self.path_points, 2, high=1001)
        lo, hi = self.path_range
        finite_float("path_range[0]", lo, high=0)
        finite_float("path_range[1]", hi, low=1)
        at_least("grid", self.grid, 3, high=201, high_why=" points per axis")
        positive_float("span", self.span, fix="e.g. span=1.0")
        at_least("surface_examples", self.surface_examples, 0)
        finite_float("learned", self.learned, low=0, high=1)
        for key in ("init_seed", "patch_seed", "data_seed", "direction_seed"):
            check_seed(key, getattr(self, key))

    def __post_init__(self) -> None:
        if len(self.path_range) != 2:
            raise BasinscopeError(
                f"path_range must be two numbers [low, high] with low <= 0 and high >= 1, got "
                f"{list(self.path_range)}"
            )

    @property
    def anneal_step(self) -> int:
        """The first update (1-based) of the annealed run at ``small_lr``."""
        return max(1, min(self.steps - 1, round(self.anneal_at * self.steps))) + 1


# Every number of a solution row, with its definition.
DEFINITIONS = {
    "train_loss": "mean cross-entropy on the 1,347 patch-augmented training images",
    "train_accuracy": "fraction of the 1,347 patch-augmented training images classified correctly",
    "test_loss": "mean cross-entropy on the 450 clean test digits (no patch)",
    "test_accuracy": "fraction of the 450 clean test digits (no patch) classified correctly",
    "patch_only_loss": "mean cross-entropy on the patch-only test images (each test label's "
    "patch on a blank image)",
    "patch_only_accuracy": "fraction of the patch-only test images classified correctly (the "
    "images of a class are identical, so it moves in steps of about 1/10)",
    "train_both_accuracy": "accuracy on the training images that have both the image and the patch",
    "train_patch_only_accuracy": "accuracy on the training images that have only the patch",
    "train_image_only_accuracy": "accuracy on the training images that have only the image",
    "weight_norm": "||theta||_2 of all parameters at the solution",
    "lambda_max": "largest Hessian eigenvalue of the mean training loss on the curvature "
    "subset at the solution (Lanczos, float64, BatchNorm running statistics)",
    "lambda_max_converged": "1 if the Lanczos eigenpair met the residual tolerance, else 0",
    "sharpness_filter_normalized": "mean over random filter-normalized directions d_i of "
    "L(theta + alpha d_i) - L(theta) on the curvature subset (Li et al. 2018; invariant to "
    "rescaling a filter)",
    "sharpness_filter_normalized_se": "standard error of that mean over the directions",
    "sharpness_adaptive": "max over ||delta / |theta| ||_2 <= rho of L(theta + delta) - L(theta) "
    "on the curvature subset (Kwon et al. 2021 with eta = 0, projected gradient ascent; "
    "invariant to rescaling a layer)",
}

BN_POLICY = (
    "the network has BatchNorm: every evaluation at a solution, the Hessians and the sharpness "
    "use its stored running statistics; the 2D surfaces too (the statistics of the centre at "
    "every point, as Li et al.); the 1D paths between two solutions recompute them from the "
    "training images at every point"
)


def _kwargs(cfg: LrWidthConfig) -> dict[str, Any]:
    if cfg.model == "mlp":
        return {"hidden": list(cfg.hidden), "batchnorm": True}
    return {"width": cfg.width, "batchnorm": True}


def _train_config(cfg: LrWidthConfig, run: str):
    from basinscope.training import TrainConfig

    common = dict(
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        optimizer="sgd",
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        data_seed=cfg.data_seed,
    )
    if run == "small":
        return TrainConfig(lr=cfg.small_lr, **common)
    if run == "large":
        return TrainConfig(lr=cfg.large_lr, **common)
    # lr_at's milestones are 0-based update indices: update anneal_step (1-based) is the first
    return TrainConfig(
        lr=cfg.large_lr,
        schedule="step",
        milestones=(cfg.anneal_step - 1,),
        gamma=cfg.small_lr / cfg.large_lr,
        **common,
    )


def tracked_steps(cfg: LrWidthConfig) -> list[int]:
    return sorted({*range(cfg.track_every, cfg.steps + 1, cfg.track_every), cfg.steps})


def _first(data, n: int, tag: str):
    return data if n <= 0 or n >= len(data) else data.subset(range(n), f"{data.name}-{tag}{n}")


@dataclass
class Data:
    """The study's data: the patch-augmented training set, its groups, the clean test set and
    the patch-only test images."""

    train: Any
    group: Any
    test: Any
    patch_only: Any

    def groups(self) -> dict[str, Any]:
        import torch

        out = {}
        for i, g in enumerate(GROUPS):
            idx = torch.nonzero(self.group == i).flatten()
            if len(idx):
                out[f"train_{g}"] = self.train.subset(idx, f"{self.train.name}-{g}")
        return out


def load_data(cfg: LrWidthConfig) -> Data:
    from basinscope.data import load_digits, patch_data, patch_only_images

    train, test = load_digits("train"), load_digits("test")
    patched = patch_data(
        train,
        patch_only=cfg.patch_only,
        image_only=cfg.image_only,
        size=cfg.patch_size,
        scale=cfg.patch_scale,
        seed=cfg.patch_seed,
    )
    return Data(patched.data, patched.group, test, patch_only_images(test, patched))


class Evaluations:
    """A training callback: the accuracy and loss of ``splits`` at ``steps`` (BatchNorm
    running statistics)."""

    def __init__(self, steps, splits: dict[str, Any], where: dict[str, str]) -> None:
        self.steps, self.splits, self.where = set(steps), splits, where
        self.rows: list[dict[str, float]] = []

    def __call__(self, step: int, model, info=None) -> None:
        if step in self.steps:
            from basinscope.engine import evaluate_model

            self.rows.append(evaluate_model(model, self.splits, **self.where))


EXTRA_DEFINITIONS = {
    "patch_only_test_error": "1 - accuracy on the patch-only test images (the patch of each "
    "test label on a blank image), BatchNorm running statistics",
    **{
        f"train_{g}_error": f"1 - accuracy on the training images of group {g!r} "
        "(both: image and patch; patch_only: the patch alone; image_only: the image alone)"
        for g in GROUPS
    },
}


def _train(cfg: LrWidthConfig, run: str, init, data: Data, folder: Path):
    """Train run ``run``, tracking; store the weights in ``folder`` and return the Tracking
    (with the errors on the patch-only test images and on each training group)."""
    from basinscope.analyses.tracking import Tracker, Tracking
    from basinscope.models import save_weights
    from basinscope.store import paths
    from basinscope.training import train

    steps = tracked_steps(cfg)
    tracker = Tracker(
        steps,
        train_data=data.train,
        test_data=data.test,
        examples=cfg.curvature_examples,
        hessian_tol=cfg.hessian_tol,
        hessian_max_iter=cfg.hessian_max_iter,
        sharpness="filter_normalized",
        sharpness_kwargs={
            "num_directions": cfg.sharpness_directions,
            "alpha": cfg.sharpness_alpha,
        },
        seed=cfg.direction_seed,
    )
    splits = {"patch_only_test": data.patch_only, **data.groups()}
    evals = Evaluations(steps, splits, placement(cfg))
    result = train(
        init, data.train, _train_config(cfg, run), callbacks=[tracker, evals], device=cfg.device
    )
    model = result.model.cpu()
    save_weights(model, folder / paths.WEIGHTS)
    tracking = tracker.result()
    ds = tracking.dataset
    extra = {
        f"{s}_error": ("step", np.array([1.0 - r[f"{s}_accuracy"] for r in evals.rows]))
        for s in splits
    }
    ds = ds.assign(**extra)
    definition = {**tracking.definition, **{k: EXTRA_DEFINITIONS[k] for k in extra}}
    settings = {**tracking.settings, "run": run, "lr": _train_config(cfg, run).to_dict()}
    return Tracking(ds, tracking.measures, definition, settings)


def _solution(cfg: LrWidthConfig, model, data: Data, curv) -> dict[str, Any]:
    """Every number of DEFINITIONS at a solution."""
    import torch

    from basinscope.analyses import adaptive_sharpness, filter_normalized_sharpness
    from basinscope.analyses.hessian import hessian_analysis
    from basinscope.engine import evaluate_model
    from basinscope.geometry import get_params, norm

    splits = {"train": data.train, "test": data.test, "patch_only": data.patch_only}
    ev = evaluate_model(model, {**splits, **data.groups()}, **placement(cfg))
    rep = hessian_analysis(
        model,
        curv,
        k_top=1,
        k_bottom=0,
        tol=cfg.hessian_tol,
        max_iter=cfg.hessian_max_iter,
        trace="none",
        seed=cfg.direction_seed,
        dtype=torch.float64,
        device=cfg.device,
        method=cfg.hvp_method,
    )
    fn = filter_normalized_sharpness(
        model,
        curv,
        alpha=cfg.sharpness_alpha,
        num_directions=cfg.sharpness_directions,
        seed=cfg.direction_seed,
        strategy=cfg.eval_strategy,
        **placement(cfg),
    )
    ad = adaptive_sharpness(
        model,
        curv,
        rho=cfg.adaptive_rho,
        norm="l2",
        eta=0.0,
        kind="worst",
        steps=cfg.ascent_steps,
        restarts=1,
        seed=cfg.direction_seed,
        strategy=cfg.eval_strategy,
        **placement(cfg),
    )
    out = {k: float(v) for k, v in ev.items() if k in DEFINITIONS}
    return {
        **out,
        "weight_norm": float(norm(get_params(model))),
        "lambda_max": float(rep.top.eigenvalues[0]),
        "lambda_max_converged": int(bool(rep.top.converged[0])),
        "sharpness_filter_normalized": float(fn.value),
        "sharpness_filter_normalized_se": fn.std_error,
        "sharpness_adaptive": float(ad.value),
        "hessian_semantics": rep.semantics,
    }


def path_barrier(loss: np.ndarray, alphas: np.ndarray) -> float:
    """max over alpha in [0, 1] of L(alpha) - max(L(0), L(1)) (0 when the path never rises
    above its higher end); the ends are the grid points nearest 0 and 1."""
    loss, alphas = np.asarray(loss, dtype=np.float64), np.asarray(alphas, dtype=np.float64)
    i0, i1 = int(np.argmin(np.abs(alphas))), int(np.argmin(np.abs(alphas - 1)))
    inside = loss[i0 : i1 + 1]
    return float(max(0.0, np.nanmax(inside) - max(loss[i0], loss[i1])))


def first_reaching(steps, accuracy, level: float) -> int | None:
    """The first tracked step whose accuracy is at least ``level`` (None: never)."""
    for s, a in zip(steps, accuracy, strict=True):
        if a >= level:
            return int(s)
    return None


def run(cfg: LrWidthConfig, ctx: StudyContext) -> dict[str, Any]:
    with _quiet():
        return _run(cfg, ctx)


@contextmanager
def _quiet() -> Iterator[None]:
    """torch's vmap fallback warns once per call: not a warning to the user."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="There is a performance drop")
        yield


def _quietly(compute: Callable) -> Callable:
    """``compute`` under :func:`_quiet`, also in a process of its own (a Ray task)."""

    def call(*args: Any) -> Any:
        with _quiet():
            return compute(*args)

    return call


def _run(cfg: LrWidthConfig, ctx: StudyContext) -> dict[str, Any]:
    from basinscope.analyses import interpolate, random_surface
    from basinscope.models import build_model, load_weights
    from basinscope.store import load, paths

    root = ctx.stages_root
    data = load_data(cfg)
    curv = _first(data.train, cfg.curvature_examples, "first")
    surf_data = _first(data.train, cfg.surface_examples, "first")
    init = build_model(cfg.model, _kwargs(cfg), init_seed=cfg.init_seed)
    where = placement(cfg)
    patch = {
        "patch_only": cfg.patch_only,
        "image_only": cfg.image_only,
        "patch_size": cfg.patch_size,
        "patch_scale": cfg.patch_scale,
        "patch_seed": cfg.patch_seed,
    }
    track = {
        "steps": tracked_steps(cfg),
        "examples": len(curv),
        "hessian_tol": cfg.hessian_tol,
        "hessian_max_iter": cfg.hessian_max_iter,
        "sharpness_directions": cfg.sharpness_directions,
        "sharpness_alpha": cfg.sharpness_alpha,
        "seed": cfg.direction_seed,
    }
    model_spec = {"model": cfg.model, "model_kwargs": _kwargs(cfg), "init_seed": cfg.init_seed}
    logs = {r: StageLog() for r in RUNS} | {"paths": StageLog()}

    # -- 1. the three trainings, tracked (at once) ------------------------------------------
    calls = []
    for r in RUNS:
        settings = {
            **model_spec,
            "data": "digits-train",
            "patch": patch,
            "train": _train_config(cfg, r).to_dict(),
            "track": track,
            **where,
        }

        def train_call(lg, r=r, settings=settings):
            return cached_stage(
                root,
                f"train-{r}-lr",
                settings,
                lambda d: _train(cfg, r, init, data, d),
                log=lg,
            )

        folder = stage_dir(root, f"train-{r}-lr", settings)
        calls.append(StageCall(folder, _quietly(train_call), logs[r]))
    trained = ctx.run_stages(
        calls,
        what=f"[1/2] training with a small ({cfg.small_lr:g}), a large ({cfg.large_lr:g}) and "
        f"an annealed learning rate ({cfg.steps} steps each, tracked every {cfg.track_every})",
    )
    folders = {r: d for r, (_, d) in zip(RUNS, trained, strict=True)}
    models = {r: load_weights(copy.deepcopy(init), folders[r] / paths.WEIGHTS) for r in RUNS}
    trackings = {r: load(folders[r]) for r in RUNS}

    # -- 2. each solution; the paths between them; a surface around each (at once) ----------
    calls = []
    for r in RUNS:
        settings = {"train": folders[r].name, **{k: v for k, v in track.items() if k != "steps"}}
        settings |= {"adaptive_rho": cfg.adaptive_rho, "ascent_steps": cfg.ascent_steps}
        settings |= {"hvp_method": cfg.hvp_method, "strategy": cfg.eval_strategy, **where}

        def solution_call(lg, r=r, settings=settings):
            return cached_stage(
                root,
                f"solution-{r}-lr",
                settings,
                lambda d: _solution(cfg, models[r], data, curv),
                log=lg,
            )

        calls.append(
            StageCall(
                stage_dir(root, f"solution-{r}-lr", settings), _quietly(solution_call), logs[r]
            )
        )
    axis = np.linspace(-cfg.span, cfg.span, cfg.grid)
    plane = {"seed": cfg.direction_seed, "normalization": "filter", "bias_policy": "zero"}
    for r in RUNS:
        settings = {"train": folders[r].name, "grid": cfg.grid, "span": cfg.span}
        settings |= {"examples": len(surf_data), **plane, "strategy": cfg.eval_strategy, **where}

        def surface_call(lg, r=r, settings=settings):
            return landscape_stage(
                root,
                f"surface-{r}-lr",
                settings,
                lambda d: random_surface(
                    models[r],
                    surf_data,
                    **plane,
                    alphas=axis,
                    betas=axis,
                    run_dir=d,
                    attrs={"label_center": f"{r} learning rate solution"},
                    strategy=cfg.eval_strategy,
                    **where,
                ),
                log=lg,
            )

        calls.append(
            StageCall(stage_dir(root, f"surface-{r}-lr", settings), _quietly(surface_call), logs[r])
        )
    alphas = np.linspace(*cfg.path_range, cfg.path_points)
    splits = {"train": data.train, "test": data.test, "patch_only": data.patch_only}
    for a, b in PAIRS:
        settings = {"a": folders[a].name, "b": folders[b].name, "alphas": alphas.tolist()}
        settings |= {"bn_policy": "recompute", "strategy": cfg.eval_strategy, **where}

        def path_call(lg, a=a, b=b, settings=settings):
            return landscape_stage(
                root,
                f"path-{a}-{b}-lr",
                settings,
                lambda d: interpolate(
                    models[a],
                    models[b],
                    splits,
                    alphas=alphas,
                    bn_policy="recompute",
                    bn_data=data.train,
                    run_dir=d,
                    attrs={"label_a": f"{a} LR", "label_b": f"{b} LR"},
                    strategy=cfg.eval_strategy,
                    **where,
                ),
                log=lg,
            )

        folder = stage_dir(root, f"path-{a}-{b}-lr", settings)
        calls.append(StageCall(folder, _quietly(path_call), logs["paths"]))
    done = iter(
        ctx.run_stages(
            calls,
            what=f"[2/2] λmax and sharpness at the three solutions, their {cfg.grid}x{cfg.grid} "
            f"surfaces and the {len(PAIRS)} paths between them ({cfg.path_points} points)",
        )
    )
    for log in logs.values():
        ctx.log.extend(log)

    solutions = {r: next(done) for r in RUNS}
    surfaces = {r: next(done) for r in RUNS}
    lines = {pair: next(done) for pair in PAIRS}

    rows = {}
    for r in RUNS:
        value, d = solutions[r]
        ds = trackings[r].dataset
        steps = ds["step"].values
        surf = surfaces[r].dataset["train_loss"].values
        rows[r] = {
            "run": r,
            "label": {"small": "small LR", "large": "large LR", "annealed": "large LR, annealed"}[
                r
            ],
            "lr": _train_config(cfg, r).to_dict()["lr"],
            **{k: v for k, v in value.items() if k != "hessian_semantics"},
            "surface_center_loss": float(surf[cfg.grid // 2, cfg.grid // 2])
            if cfg.grid % 2
            else None,
            "surface_max_loss": float(np.nanmax(surf)),
            "first_step_patch_only_learned": first_reaching(
                steps, 1 - ds["patch_only_test_error"].values, cfg.learned
            ),
            "first_step_test_learned": first_reaching(
                steps, 1 - ds["test_error"].values, cfg.learned
            ),
            "stages": {
                "train": folders[r].name,
                "solution": d.name,
                "surface": surfaces[r].run_dir.name,
            },
        }
        rows[r]["hessian_semantics"] = value["hessian_semantics"]
    paths_out = []
    for (a, b), line in lines.items():
        ds = line.dataset
        al = ds["alpha"].values
        paths_out.append(
            {
                "a": a,
                "b": b,
                "train_loss_barrier": path_barrier(ds["train_loss"].values, al),
                "test_loss_barrier": path_barrier(ds["test_loss"].values, al),
                "min_test_accuracy": float(
                    np.nanmin(ds["test_accuracy"].values[(al >= 0) & (al <= 1)])
                ),
                "stage": line.run_dir.name,
            }
        )
    return {
        "definitions": {
            **DEFINITIONS,
            "surface_center_loss": "f(0, 0) of the surface: mean training loss on the surface subset",
            "surface_max_loss": "largest loss on the surface grid",
            "first_step_patch_only_learned": "first tracked step at which the accuracy on the "
            "patch-only test images reached `learned` (null: never)",
            "first_step_test_learned": "first tracked step at which the accuracy on the clean "
            "test digits reached `learned` (null: never)",
            "train_loss_barrier": "max over alpha in [0, 1] of L((1 - alpha) theta_a + alpha "
            "theta_b) - max(L(theta_a), L(theta_b)), training loss, BatchNorm recomputed",
            "test_loss_barrier": "the same on the clean test digits",
            "min_test_accuracy": "lowest clean test accuracy on the path for alpha in [0, 1]",
            **{f"tracked_{k}": v for k, v in trackings["small"].definition.items()},
        },
        "policies": {
            "batchnorm": BN_POLICY,
            "data": f"scikit-learn's 8x8 digits: 1,347 training images, patch-augmented "
            f"({cfg.patch_size}x{cfg.patch_size} Gaussian patch of std {cfg.patch_scale:g} per "
            f"class, top-left corner, seed {cfg.patch_seed}): "
            + ", ".join(f"{n} {g.replace('_', '-')}" for g, n in _counts(data).items())
            + "; 450 clean test digits; the same 450 labels as patch-only images",
            "curvature_data": f"the first {len(curv)} of the patch-augmented training images",
            "surface_data": f"the first {len(surf_data)} of the patch-augmented training images",
            "training": f"SGD (momentum {cfg.momentum:g}, weight decay {cfg.weight_decay:g}), "
            f"{cfg.steps} steps of {cfg.batch_size} images, the same initialization (seed "
            f"{cfg.init_seed}) and minibatch order (seed {cfg.data_seed}); small: lr "
            f"{cfg.small_lr:g}; large: lr {cfg.large_lr:g}; annealed: lr {cfg.large_lr:g}, "
            f"{cfg.small_lr:g} from step {cfg.anneal_step}",
            "precision": f"evaluations, paths and surfaces in {cfg.dtype} on {cfg.device}; "
            f"Hessians in float64; training in float32 on {cfg.device}",
            "directions": "two seeded Gaussian directions per surface, filter-normalized (each "
            "filter of a direction rescaled to the norm of the model's filter), bias and "
            "BatchNorm components zeroed; the same seed for the three solutions",
        },
        "anneal_step": cfg.anneal_step,
        "solutions": rows,
        "paths": paths_out,
        "tracking": {r: folders[r].name for r in RUNS},
        "findings": findings(cfg, rows, {r: trackings[r].dataset for r in RUNS}),
    }


def _counts(data: Data) -> dict[str, int]:
    return {g: int((data.group == i).sum()) for i, g in enumerate(GROUPS)}


def _acc(ds, var: str, step: int | None = None) -> float:
    v = 1 - np.asarray(ds[var].values, dtype=np.float64)
    if step is None:
        return float(v[-1])
    steps = np.asarray(ds["step"].values)
    return float(v[int(np.argmin(np.abs(steps - step)))])


def findings(cfg: LrWidthConfig, rows: dict[str, dict], tracks: dict[str, Any]) -> dict[str, Any]:
    """What the numbers say, as numbers and booleans (the report words them): which run
    learned which pattern and when, and which solution is flatter by each measure."""
    early = cfg.anneal_step - 1  # the last step before annealing: all runs untouched by it
    steps = np.asarray(tracks["small"]["step"].values)
    before = steps[steps <= early]
    out: dict[str, Any] = {"early_step": int(before[-1] if len(before) else steps[0])}
    for r in RUNS:
        ds = tracks[r]
        out[r] = {
            "test_accuracy": rows[r]["test_accuracy"],
            "patch_only_accuracy": rows[r]["patch_only_accuracy"],
            "early_test_accuracy": _acc(ds, "test_error", out["early_step"]),
            "early_patch_only_accuracy": _acc(ds, "patch_only_test_error", out["early_step"]),
            "early_train_patch_only_accuracy": _acc(ds, "train_patch_only_error", out["early_step"])
            if "train_patch_only_error" in ds
            else None,
            "learned_images": rows[r]["test_accuracy"] >= cfg.learned,
            "learned_patch": rows[r]["patch_only_accuracy"] >= cfg.learned,
            "final_weight_norm": float(ds["weight_norm"].values[-1]),
            "final_effective_lr": float(np.nanmean(ds["effective_lr"].values[-1]))
            if "effective_lr" in ds
            else None,
        }
    s, lg = rows["small"], rows["large"]
    out["large_flatter"] = {
        k: lg[k] < s[k] for k in ("sharpness_filter_normalized", "sharpness_adaptive", "lambda_max")
    }
    out["annealed_flatter_than_small"] = {
        k: rows["annealed"][k] < s[k]
        for k in ("sharpness_filter_normalized", "sharpness_adaptive", "lambda_max")
    }
    never = math.inf
    first = {r: rows[r]["first_step_patch_only_learned"] for r in RUNS}
    first = {r: never if v is None else v for r, v in first.items()}
    # the small-LR run reached `learned` on the patch-only images at an earlier tracked step
    # than the large-LR run (False when neither did)
    out["small_patch_earlier"] = bool(first["small"] < first["large"])
    out["annealed_learned_both"] = bool(
        out["annealed"]["learned_images"] and out["annealed"]["learned_patch"]
    )
    return out


def _report(run_dir: Path, results: dict[str, Any]) -> Path:
    from basinscope.experiments.lr_and_width_report import write_report

    return write_report(run_dir, results)


QUICK: dict[str, Any] = dict(steps=300, track_every=30, curvature_examples=128)
QUICK.update(hessian_max_iter=30, sharpness_directions=4, ascent_steps=5)
QUICK.update(path_points=13, grid=9, surface_examples=256)
SMOKE: dict[str, Any] = dict(steps=12, track_every=6, curvature_examples=16, hessian_max_iter=6)
SMOKE.update(sharpness_directions=2, ascent_steps=2, path_points=3, grid=3, surface_examples=32)
SMOKE.update(figure_formats=("png",))

STUDY = register(
    Study(
        name="lr-and-width",
        summary="Li, Wei & Ma 2019: small, large and annealed learning rates on patch-augmented "
        "digits; accuracy on clean and patch-only images over training, tracked weight norm, "
        "effective LR and sharpness, paths and filter-normalized surfaces of the solutions",
        config=LrWidthConfig,
        run=run,
        report=_report,
        quick=QUICK,
        smoke=SMOKE,
        about="Trains a small BatchNorm network on patch-augmented digits with a small, a large "
        "and an annealed learning rate, tracking weight norm, effective learning rate, "
        "lambda_max, sharpness and noise scale; compares the three solutions by lambda_max, "
        "scale-invariant sharpness, the paths between them and their loss surfaces.",
    )
)
