"""The minefield study: does SGD walk past bad minima close to its path without landing in one?

Huang et al. (2019), "Understanding generalization through visualizations", Fig. 1: around
the path of SGD lie many "bad" minima, with near-perfect training accuracy and poor test
accuracy, yet SGD never lands in one. This study repeats the experiment on built-in data:

1. a ReLU MLP (no BatchNorm) is trained with SGD on part of scikit-learn's 8x8 training
   digits, its parameters recorded at evenly spaced steps (the SGD path);
2. the rest of the training digits, the *poison set* (stratified, disjoint from the digits
   SGD trains on and from the 450 test digits), gets wrong labels: each label shifted by a
   seeded random offset in 1..9 (mod 10), so every poison label is wrong;
3. from several SGD iterates (``starts``: fractions of the path), a *bad minimum* is found by
   training on the training digits with their labels plus the poison set with its wrong
   labels, the poison examples weighted by ``poison_weight`` (the objective is
   :math:`\\frac{1}{|B|}\\sum_{i \\in B} w_i\\,\\mathrm{CE}(f(x_i), \\tilde y_i)` over
   minibatches :math:`B` of the union, :math:`w_i = 1` on a training digit and
   ``poison_weight`` on a poison digit): a term that rewards errors on digits like the test
   digits, so the minimum fits the training set and generalizes badly;
4. measured at SGD's solution and at every bad minimum: accuracy and loss on the training,
   test and poison digits, a scale-invariant sharpness (adaptive worst case, Kwon et al. 2021
   with :math:`\\eta = 0`), the filter-normalized sharpness (Li et al. 2018), the top Hessian
   eigenvalue of the training loss (Lanczos, float64); each bad minimum's parameter distance to
   the SGD path (the minimum over the recorded iterates, also relative to the path's length);
   a PCA map (the plane of the top two principal directions of the SGD iterates, every point
   projected) and a t-SNE map (scikit-learn, seeded) of the iterates and the bad minima; and
   the loss along the line from SGD's solution to each bad minimum.

The report's conclusions (are the bad minima sharper? how close are they to the path? does an
SGD iterate ever fit the training set as badly as a bad minimum generalizes?) are computed
from these numbers (:func:`verdict`).

Every stage stores its result in a folder named by a hash of its settings (which include the
folders of the stages it depends on): see :mod:`basinscope.experiments.registry`. The
poisoned runs, the measurements and the lines are handed to ``ctx.run_stages`` together, so
they run in parallel under ``--executor ray``.
"""

from __future__ import annotations

import copy
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
    cached_stage,
    landscape_stage,
    placement,
    stage_dir,
    train_stage,
)

__all__ = [
    "DEFINITIONS",
    "STUDY",
    "MinefieldConfig",
    "PoisonedCrossEntropy",
    "make_splits",
    "run",
    "verdict",
]

NAME = "minefield"
DIGITS_TRAIN = 1347  # examples in basinscope.data.load_digits("train")
CLASSES = 10
STUDY_MAX_STEPS = 1_000_000  # far more than any study needs: a larger value is a typo
OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class MinefieldConfig:
    """Settings of the minefield study (SGD steps use momentum; poisoned runs use
    ``poison_optimizer``)."""

    hidden: tuple[int, ...] = (256, 256)  # hidden widths of the ReLU MLP (64 inputs, 10 outputs)
    init_seed: int = 0  # the initial weights of SGD's run
    # held out of the 1,347 training digits (stratified, split_seed), given wrong labels
    poison_examples: int = 600
    split_seed: int = 0  # the stratified train/poison split
    poison_seed: int = 0  # the wrong labels: y + a seeded offset in 1..9, mod 10
    steps: int = 1000  # SGD steps of the path
    lr: float = 0.05  # SGD learning rate (constant)
    momentum: float = 0.9
    batch_size: int = 32
    data_seed: int = 0  # SGD's minibatch order
    checkpoints: int = 20  # SGD iterates recorded, evenly spaced (plus step 0 and the starts)
    # where the poisoned runs start: fractions of SGD's steps (0: the initial weights)
    starts: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 1.0)
    repeats: int = 2  # poisoned runs per start, minibatch orders data_seed + 1, + 2, ...
    poison_weight: float = 1.0  # w of a poison digit in the objective (a training digit: 1)
    poison_steps: int = 3000  # steps of each poisoned run (cosine decay to 0)
    poison_optimizer: str = "sgd"  # "sgd" (with momentum) or "adam"
    poison_lr: float = 0.05  # peak learning rate of each poisoned run
    poison_batch_size: int = 64  # minibatch of the union of training and poison digits
    fit_threshold: float = 0.99  # "near-perfect" training accuracy (fits the training set)
    adaptive_rho: float = 0.5  # radius of the adaptive l2 ball ||delta / |theta| ||_2 <= rho
    ascent_steps: int = 10  # projected gradient-ascent steps of the adaptive sharpness
    ascent_restarts: int = 1  # restarts of the ascent (the first from delta = 0)
    fn_alpha: float = 0.25  # step along each filter-normalized direction
    fn_directions: int = 10  # random filter-normalized directions averaged
    sharpness_seed: int = 0  # seed of the sharpness directions and of Lanczos
    hessian_examples: int = 0  # first N training digits for lambda_max (0: all)
    lanczos_tol: float = 1e-3  # relative Ritz residual at which Lanczos stops
    lanczos_max_iter: int = 100  # at most this many Lanczos steps
    line_points: int = 21  # points of each line from SGD's solution to a bad minimum
    line_range: tuple[float, ...] = (-0.25, 1.25)  # alpha range of the lines
    tsne_perplexity: float = 5.0  # t-SNE perplexity (capped at (points - 1) / 3)
    tsne_seed: int = 0  # t-SNE's random_state
    eval_strategy: str = "vmap"  # engine: "vmap" (fast for an MLP) or "loop"; never timed
    hvp_method: str = (
        "double-backward"  # or "forward-over-reverse", "reverse-over-forward"; never timed
    )
    # where training, the evaluations, sharpness, Hessians and lines compute (cpu, cuda, cuda:N,
    # mps); the maps (distances, PCA, t-SNE) are computed on the CPU
    device: str = DEFAULT_DEVICE
    # precision of the evaluations (accuracies, lines, sharpness): float32 or float64; Hessians
    # and the maps are float64, training is float32
    dtype: str = DEFAULT_DTYPE
    figure_formats: tuple[str, ...] = ("png", "pdf")  # files of each report figure

    def check(self) -> None:
        if not self.hidden:
            raise BasinscopeError("hidden is empty: give the MLP's hidden widths, e.g. [256, 256]")
        for h in self.hidden:
            at_least("hidden", h, 1, high=4096, high_why=" units per layer")
        at_least(
            "poison_examples",
            self.poison_examples,
            10,
            high=DIGITS_TRAIN - 100,
            high_why=f" (the rest of the {DIGITS_TRAIN} training digits, at least 100, train SGD)",
        )
        at_least("steps", self.steps, 2, high=STUDY_MAX_STEPS)
        at_least("poison_steps", self.poison_steps, 1, high=STUDY_MAX_STEPS)
        at_least("checkpoints", self.checkpoints, 2, high=self.steps, high_why=" (one per step)")
        at_least("repeats", self.repeats, 1, high=100)
        for key in ("batch_size", "poison_batch_size", "ascent_steps", "ascent_restarts"):
            at_least(key, getattr(self, key), 1)
        at_least("fn_directions", self.fn_directions, 2, high=10_000)
        at_least("hessian_examples", self.hessian_examples, 0)
        at_least("lanczos_max_iter", self.lanczos_max_iter, 2, high=10_000)
        at_least("line_points", self.line_points, 3, high=10_001)
        if not self.starts:
            raise BasinscopeError("starts is empty: give fractions of SGD's path, e.g. [0.5, 1.0]")
        for f in self.starts:
            finite_float("starts", f, low=0, high=1, fix="fractions of SGD's steps, e.g. [0.5, 1]")
        if len(set(self.starts)) != len(self.starts):
            raise BasinscopeError(f"starts {list(self.starts)}: each fraction may appear once")
        if self.poison_optimizer not in OPTIMIZERS:
            raise BasinscopeError(
                f"poison_optimizer must be one of {', '.join(OPTIMIZERS)}, got "
                f"{self.poison_optimizer!r}"
            )
        for key in ("lr", "poison_lr", "poison_weight", "adaptive_rho", "fn_alpha"):
            positive_float(key, getattr(self, key))
        positive_float("tsne_perplexity", self.tsne_perplexity, fix="e.g. tsne_perplexity=5")
        finite_float("momentum", self.momentum, low=0, high=1, high_open=True)
        finite_float("fit_threshold", self.fit_threshold, low=0, high=1, low_open=True)
        finite_float("lanczos_tol", self.lanczos_tol, low=0, high=1, low_open=True, high_open=True)
        if len(self.line_range) != 2 or not self.line_range[0] < self.line_range[1]:
            raise BasinscopeError(
                f"line_range must be two increasing numbers, e.g. [-0.25, 1.25], got "
                f"{list(self.line_range)}"
            )
        for x in self.line_range:
            finite_float("line_range", x, fix="e.g. line_range=[-0.25, 1.25]")
        for key in ("init_seed", "split_seed", "poison_seed", "data_seed", "sharpness_seed"):
            check_seed(key, getattr(self, key))
        check_seed("tsne_seed", self.tsne_seed)
        if self.tsne_seed >= 2**32:
            raise BasinscopeError(f"tsne_seed must be < 2**32 (numpy's), got {self.tsne_seed}")


# The reduced version (--quick): under a minute on 2 cores.
QUICK: dict[str, Any] = dict(steps=600, checkpoints=12, starts=(0.25, 0.5, 1.0), repeats=1)
QUICK.update(poison_steps=1500, fn_directions=4, ascent_steps=5, hessian_examples=256)
QUICK.update(lanczos_max_iter=40, line_points=13)
# The smoke version (tests, pipeline checks): every stage and figure, in seconds.
SMOKE: dict[str, Any] = dict(hidden=(32,), poison_examples=200, steps=40, checkpoints=4)
SMOKE.update(starts=(0.5, 1.0), poison_steps=40, fn_directions=2, ascent_steps=2)
SMOKE.update(hessian_examples=64, lanczos_max_iter=10, line_points=5, figure_formats=("png",))


# -- data -------------------------------------------------------------------------------------


class PoisonedCrossEntropy:
    """The poisoned objective's per-example loss: cross-entropy, times ``weight`` on a poison
    example. Poison examples are marked by their labels: ``label + classes`` (the wrong label
    shifted past the real classes), so one tensor of labels carries both."""

    def __init__(self, weight: float, classes: int = CLASSES) -> None:
        self.weight = float(weight)
        self.classes = int(classes)

    def __call__(self, pred, y):
        import torch
        import torch.nn.functional as F

        poison = y >= self.classes
        w = torch.where(poison, self.weight, 1.0).to(pred.dtype)
        return F.cross_entropy(pred, y.remainder(self.classes), reduction="none") * w


def make_splits(cfg: MinefieldConfig) -> dict[str, Any]:
    """The study's data: ``train`` (the training digits SGD sees), ``poison`` (the held-out
    training digits with their wrong labels), ``test`` (the 450 test digits), ``mixed`` (the
    poisoned objective's data: train, then poison with labels + 10) and ``indices`` (the
    train and poison positions among the 1,347 training digits)."""
    import torch

    from basinscope.data import TensorData, load_digits
    from basinscope.data.digits import stratified_split

    full = load_digits("train")
    keep, held = stratified_split(full.y.numpy(), cfg.poison_examples, cfg.split_seed)
    tag = f"{cfg.poison_examples}-seed{cfg.split_seed}"
    train = full.subset(keep.tolist(), f"digits-train-minus-poison{tag}")
    poison_true = full.subset(held.tolist(), f"digits-poison{tag}")
    gen = torch.Generator().manual_seed(cfg.poison_seed)
    offset = torch.randint(1, CLASSES, (len(poison_true),), generator=gen)
    wrong = (poison_true.y + offset) % CLASSES
    poison = TensorData(poison_true.x, wrong, f"digits-poison{tag}-wrong{cfg.poison_seed}")
    mixed = TensorData(
        torch.cat([train.x, poison.x]),
        torch.cat([train.y, wrong + CLASSES]),
        f"digits-minefield-{tag}-wrong{cfg.poison_seed}",
    )
    return {
        "train": train,
        "poison": poison,
        "poison_true": poison_true,
        "test": load_digits("test"),
        "mixed": mixed,
        "indices": {"train": keep.tolist(), "poison": held.tolist()},
    }


# -- stages -----------------------------------------------------------------------------------


def _kwargs(cfg: MinefieldConfig) -> dict[str, Any]:
    return {"hidden": list(cfg.hidden)}


def _describe(cfg: MinefieldConfig) -> str:
    return "ReLU MLP " + "→".join(str(w) for w in (64, *cfg.hidden, CLASSES))


def _start_steps(cfg: MinefieldConfig) -> list[int]:
    return [round(f * cfg.steps) for f in cfg.starts]


def _checkpoint_steps(cfg: MinefieldConfig) -> tuple[int, ...]:
    even = np.linspace(0, cfg.steps, cfg.checkpoints + 1).round().astype(int).tolist()
    return tuple(sorted({*even, *_start_steps(cfg)}))


def _with_params(template, params):
    model = copy.deepcopy(template)
    model.load_state_dict({**model.state_dict(), **params})
    return model


def _measure(model, splits, cfg: MinefieldConfig) -> dict[str, Any]:
    """Accuracies, sharpness and lambda_max of one minimum (a stage's value)."""
    import torch

    from basinscope.analyses import adaptive_sharpness, filter_normalized_sharpness
    from basinscope.analyses.hessian import hessian_analysis
    from basinscope.engine import evaluate_model
    from basinscope.geometry import get_params, norm

    where = placement(cfg)
    train = splits["train"]
    ev = evaluate_model(
        model, {k: splits[k] for k in ("train", "test", "poison")}, **where
    )  # poison: accuracy on the wrong labels (how far it is memorized)
    ada = adaptive_sharpness(
        model,
        train,
        rho=cfg.adaptive_rho,
        norm="l2",
        eta=0.0,
        kind="worst",
        steps=cfg.ascent_steps,
        restarts=cfg.ascent_restarts,
        seed=cfg.sharpness_seed,
        strategy=cfg.eval_strategy,
        **where,
    )
    fn = filter_normalized_sharpness(
        model,
        train,
        alpha=cfg.fn_alpha,
        num_directions=cfg.fn_directions,
        seed=cfg.sharpness_seed,
        strategy=cfg.eval_strategy,
        **where,
    )
    rep = hessian_analysis(
        model,
        train,
        k_top=1,
        k_bottom=0,
        tol=cfg.lanczos_tol,
        max_iter=cfg.lanczos_max_iter,
        trace="none",
        seed=cfg.sharpness_seed,
        subset=cfg.hessian_examples or None,
        method=cfg.hvp_method,
        dtype=torch.float64,  # whatever cfg.dtype (the evaluations' precision) says
        device=cfg.device,
    )
    return {
        **{k: float(v) for k, v in ev.items()},
        "sharpness_adaptive": ada.value,
        "sharpness_filter_normalized": fn.value,
        "sharpness_filter_normalized_se": fn.std_error,
        "lambda_max": float(rep.top.eigenvalues[0]),
        "hessian_converged": int(bool(rep.top.converged[0])),
        "param_norm": float(norm(get_params(model))),
        "details": {
            "adaptive": ada.to_dict(),
            "filter_normalized": fn.to_dict(),
            "lanczos": rep.top.to_dict(),
            "hessian_semantics": rep.semantics,
        },
    }


def _evaluate_path(template, checkpoints, splits, cfg: MinefieldConfig) -> dict[str, Any]:
    """Accuracy and loss of every recorded SGD iterate on train, test and poison."""
    from basinscope.engine import evaluate_model

    rows = []
    for step in sorted(checkpoints):
        model = _with_params(template, checkpoints[step])
        ev = evaluate_model(
            model, {k: splits[k] for k in ("train", "test", "poison")}, **placement(cfg)
        )
        rows.append({"step": int(step), **{k: float(v) for k, v in ev.items()}})
    return {"iterates": rows}


def _maps(checkpoints, minima: list[dict], cfg: MinefieldConfig) -> dict[str, Any]:
    """Distances of each bad minimum to the SGD path, the PCA map and the t-SNE map."""
    import torch

    from basinscope.analyses.distance import parameter_distance
    from basinscope.geometry import flatten, pca_directions, project_onto_plane

    steps = sorted(checkpoints)
    path = [checkpoints[s] for s in steps]

    def dist(a, b) -> float:
        return float(parameter_distance(a, b).overall["l2"])

    segments = [dist(path[i], path[i + 1]) for i in range(len(path) - 1)]
    length = float(sum(segments))
    span = dist(path[0], path[-1])
    table = [[dist(m, p) for p in path] for m in minima]
    pca = pca_directions(path, n_components=2)  # centred at SGD's solution (the last iterate)
    points = [*path, *minima]
    proj = project_onto_plane(points, pca.center, *pca.directions)

    keys = list(path[0])
    x = torch.stack([flatten(p, keys).double() for p in points]).numpy()
    perplexity = float(min(cfg.tsne_perplexity, max((len(x) - 1) / 3.0, 1.0)))
    from sklearn.manifold import TSNE

    emb = TSNE(
        n_components=2,
        perplexity=perplexity,
        init="pca",
        random_state=cfg.tsne_seed,
        learning_rate="auto",
        method="exact",  # a few dozen points: exact gradients, no approximation
    ).fit_transform(x)
    return {
        "steps": steps,
        "path_length": length,
        "segments": segments,
        "init_to_solution": span,
        "distances": table,  # [bad minimum][iterate]
        "pca": {
            "explained_variance_ratio": [float(v) for v in pca.explained_variance_ratio],
            "alpha": proj.alpha.tolist(),
            "beta": proj.beta.tolist(),
            "off_plane": proj.distance.tolist(),
        },
        "tsne": {"x": emb[:, 0].tolist(), "y": emb[:, 1].tolist(), "perplexity": perplexity},
    }


# -- the study --------------------------------------------------------------------------------

MEASURE_SETTINGS = (
    *("adaptive_rho", "ascent_steps", "ascent_restarts", "fn_alpha", "fn_directions"),
    *("sharpness_seed", "hessian_examples", "lanczos_tol", "lanczos_max_iter"),
    *("eval_strategy", "hvp_method"),
)


def run(cfg: MinefieldConfig, ctx: StudyContext) -> dict[str, Any]:
    from basinscope.analyses import interpolate
    from basinscope.engine import Task
    from basinscope.models import build_model
    from basinscope.training import TrainConfig

    root, progress = ctx.stages_root, ctx.progress
    splits = make_splits(cfg)
    train, mixed = splits["train"], splits["mixed"]
    evals = {k: splits[k] for k in ("train", "test", "poison")}
    init = build_model("mlp", _kwargs(cfg), init_seed=cfg.init_seed)
    on = placement(cfg, dtype=False)  # training and Hessians: the device only
    spec = {"model": "mlp", "model_kwargs": _kwargs(cfg), "init_seed": cfg.init_seed}

    # -- 1. SGD's path ------------------------------------------------------------------------
    tc = TrainConfig(
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        momentum=cfg.momentum,
        data_seed=cfg.data_seed,
        checkpoint_steps=_checkpoint_steps(cfg),
    )
    sgd_spec = {**spec, "data": train.name}
    sgd_dir = stage_dir(root, "sgd", {**sgd_spec, **tc.to_dict(), **on})

    def sgd_call(lg):
        return train_stage(
            sgd_dir, init, train, tc, sgd_spec, progress=progress, log=lg, device=cfg.device
        )

    (sgd,) = ctx.run_stages(
        [StageCall(sgd_dir, sgd_call)],
        what=f"[1/3] SGD on {len(train)} training digits ({cfg.steps} steps)",
    )
    ckpts = sgd.checkpoints

    # -- 2. bad minima from SGD iterates; the path's accuracies; SGD's solution measured ------
    poisoned_task = Task(loss=PoisonedCrossEntropy(cfg.poison_weight))
    runs = [(s, r) for s in _start_steps(cfg) for r in range(cfg.repeats)]
    calls = []
    for start, rep in runs:
        pc = TrainConfig(
            steps=cfg.poison_steps,
            batch_size=cfg.poison_batch_size,
            optimizer=cfg.poison_optimizer,
            lr=cfg.poison_lr,
            momentum=cfg.momentum,
            schedule="cosine",
            data_seed=cfg.data_seed + 1 + rep,
            checkpoint_steps=(0, cfg.poison_steps),
        )
        pspec = {**spec, "sgd": sgd_dir.name, "start_step": start, "data": mixed.name}
        pspec["poison_weight"] = cfg.poison_weight
        folder = stage_dir(root, "poisoned", {**pspec, **pc.to_dict(), **on})
        start_model = _with_params(init, ckpts[start])

        def poison_call(lg, folder=folder, m=start_model, pc=pc, pspec=pspec):
            return train_stage(
                folder,
                m,
                mixed,
                pc,
                pspec,
                progress=progress,
                log=lg,
                device=cfg.device,
                task=poisoned_task,
            )

        calls.append(StageCall(folder, poison_call))
    path_settings = {"sgd": sgd_dir.name, "data": [e.name for e in evals.values()]}
    path_settings |= placement(cfg)

    def path_call(lg):
        return cached_stage(
            root,
            "path",
            path_settings,
            lambda d: _evaluate_path(init, ckpts, splits, cfg),
            log=lg,
        )

    calls.append(StageCall(stage_dir(root, "path", path_settings), path_call))
    calls.append(_measure_call(cfg, root, sgd_dir.name, sgd.model, splits))
    done = ctx.run_stages(
        calls,
        what=f"[2/3] {len(runs)} poisoned runs ({cfg.poison_steps} steps each) from SGD "
        f"iterates at steps {', '.join(map(str, _start_steps(cfg)))}; SGD's path evaluated",
    )
    bad = done[: len(runs)]
    (path, path_dir), (sgd_measured, sgd_measure_dir) = done[len(runs)], done[len(runs) + 1]

    # -- 3. each bad minimum measured; lines from SGD's solution; the maps --------------------
    alphas = np.linspace(*cfg.line_range, cfg.line_points)
    calls = [_measure_call(cfg, root, b.run_dir.name, b.model, splits) for b in bad]
    for b in bad:
        settings = {"a": sgd_dir.name, "b": b.run_dir.name, "alphas": alphas.tolist()}
        settings |= {"data": [e.name for e in evals.values()], "strategy": cfg.eval_strategy}
        settings |= placement(cfg)

        def line_call(lg, m=b.model, settings=settings):
            return landscape_stage(
                root,
                "line",
                settings,
                lambda d: interpolate(
                    sgd.model,
                    m,
                    evals,
                    alphas=alphas,
                    run_dir=d,
                    attrs={"label_a": "SGD's solution", "label_b": "bad minimum"},
                    strategy=cfg.eval_strategy,
                    **placement(cfg),
                ),
                log=lg,
            )

        calls.append(StageCall(stage_dir(root, "line", settings), line_call))
    from basinscope.geometry import get_params

    minima = [get_params(b.model) for b in bad]
    map_settings = {"sgd": sgd_dir.name, "minima": [b.run_dir.name for b in bad]}
    map_settings |= {"tsne_perplexity": cfg.tsne_perplexity, "tsne_seed": cfg.tsne_seed}

    def map_call(lg):
        return cached_stage(root, "maps", map_settings, lambda d: _maps(ckpts, minima, cfg), log=lg)

    calls.append(StageCall(stage_dir(root, "maps", map_settings), map_call))
    done = ctx.run_stages(
        calls,
        what=f"[3/3] sharpness and lambda_max of {len(bad)} bad minima, the line from SGD's "
        f"solution to each ({cfg.line_points} points), distances, PCA and t-SNE maps",
    )
    measured, lines = done[: len(bad)], done[len(bad) : 2 * len(bad)]
    maps, maps_dir = done[-1]

    # -- the numbers --------------------------------------------------------------------------
    steps = maps["steps"]
    solution = {
        "label": "SGD's solution",
        "kind": "sgd",
        "start_step": None,
        "repeat": None,
        **_numbers(sgd_measured),
        "stages": {"train": sgd_dir.name, "measure": sgd_measure_dir.name},
    }
    rows = []
    for i, ((start, rep), b, (m, m_dir), line) in enumerate(
        zip(runs, bad, measured, lines, strict=True)
    ):
        dists = maps["distances"][i]
        k = int(np.argmin(dists))
        ds = line.dataset
        rows.append(
            {
                "label": f"bad minimum {i + 1} (from step {start}"
                + (f", run {rep + 1})" if cfg.repeats > 1 else ")"),
                "kind": "bad",
                "start_step": start,
                "repeat": rep,
                **_numbers(m),
                "distance_to_path": dists[k],
                "nearest_step": steps[k],
                "relative_distance_to_path": dists[k] / maps["path_length"],
                "distance_to_start": dists[steps.index(start)],
                "distance_to_solution": dists[-1],
                "line_barrier": _barrier(ds["alpha"].values, ds["train_loss"].values),
                "stages": {
                    "train": b.run_dir.name,
                    "measure": m_dir.name,
                    "line": line.run_dir.name,
                },
            }
        )
    line_data = [
        {
            "stage": line.run_dir.name,
            "alpha": line.dataset["alpha"].values.tolist(),
            **{v: line.dataset[v].values.tolist() for v in line.dataset.data_vars},
        }
        for line in lines
    ]
    n = {k: len(splits[k]) for k in ("train", "poison", "test")}
    return {
        "setup": {
            "model": _describe(cfg),
            "parameters": sum(p.numel() for p in init.parameters()),
            "examples": n,
            "checkpoint_steps": steps,
            "start_steps": _start_steps(cfg),
            "data": {k: splits[k].name for k in ("train", "poison", "test", "mixed")},
        },
        "definitions": DEFINITIONS,
        "policies": _policies(cfg, n),
        "solution": solution,
        "minima": rows,
        "path": path["iterates"],
        "maps": {k: v for k, v in maps.items() if k != "distances"},
        "distances": maps["distances"],
        "lines": line_data,
        "verdict": verdict(solution, rows, path["iterates"], cfg.fit_threshold, maps),
        "stage_folders": {"sgd": sgd_dir.name, "path": path_dir.name, "maps": maps_dir.name},
    }


def _measure_call(cfg: MinefieldConfig, root: Path, up: str, model, splits) -> StageCall:
    settings = {"minimum": up, **{k: getattr(cfg, k) for k in MEASURE_SETTINGS}}
    settings |= {"data": [splits[k].name for k in ("train", "test", "poison")], **placement(cfg)}

    def call(lg):
        return cached_stage(
            root, "measure", settings, lambda d: _measure(model, splits, cfg), log=lg
        )

    return StageCall(stage_dir(root, "measure", settings), call)


def _numbers(m: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in m.items() if k != "details"}


def _barrier(alpha: np.ndarray, loss: np.ndarray) -> float:
    """max over alpha in [0, 1] of the loss above the chord between the two ends."""
    alpha, loss = np.asarray(alpha, float), np.asarray(loss, float)
    i0, i1 = int(np.argmin(np.abs(alpha))), int(np.argmin(np.abs(alpha - 1)))
    inside = (alpha >= alpha[i0]) & (alpha <= alpha[i1])
    chord = loss[i0] + (alpha - alpha[i0]) / (alpha[i1] - alpha[i0]) * (loss[i1] - loss[i0])
    return float(np.max((loss - chord)[inside]))


def verdict(
    solution: dict[str, Any],
    minima: list[dict[str, Any]],
    path: list[dict[str, Any]],
    fit_threshold: float,
    maps: dict[str, Any],
) -> dict[str, Any]:
    """The study's conclusions, from the numbers: the bad minima's accuracies next to SGD's,
    how many are sharper than SGD's solution by each measure, how far they are from the path,
    and whether an SGD iterate ever fits the training set while testing as badly as a bad
    minimum does."""
    sgd_test = solution["test_accuracy"]
    bad_train = [m["train_accuracy"] for m in minima]
    bad_test = [m["test_accuracy"] for m in minima]
    sharper = {}
    for key in ("sharpness_adaptive", "sharpness_filter_normalized", "lambda_max"):
        ratios = [m[key] / solution[key] for m in minima if solution[key] > 0]
        sharper[key] = {
            "sgd": solution[key],
            "bad_median": float(np.median([m[key] for m in minima])),
            "sharper": sum(m[key] > solution[key] for m in minima),
            "of": len(minima),
            "median_ratio": float(np.median(ratios)) if ratios else None,
        }
    fitted = [p for p in path if p["train_accuracy"] >= fit_threshold]
    worst_bad = max(bad_test)  # the best test accuracy among bad minima
    landed = [p["step"] for p in fitted if p["test_accuracy"] <= worst_bad]
    rel = [m["relative_distance_to_path"] for m in minima]
    return {
        "fit_threshold": fit_threshold,
        "sgd_train_accuracy": solution["train_accuracy"],
        "sgd_test_accuracy": sgd_test,
        "bad_train_accuracy_min": min(bad_train),
        "bad_test_accuracy_max": worst_bad,
        "bad_test_accuracy_median": float(np.median(bad_test)),
        "bad_fit": sum(a >= fit_threshold for a in bad_train),
        "bad_below_sgd": sum(a < sgd_test for a in bad_test),
        "bad_count": len(minima),
        "test_gap_median": float(sgd_test - np.median(bad_test)),
        "sharper": sharper,
        "relative_distance_median": float(np.median(rel)),
        "relative_distance_max": float(np.max(rel)),
        "within_one_path_length": sum(r < 1 for r in rel),
        "distance_to_path_median": float(np.median([m["distance_to_path"] for m in minima])),
        "init_to_solution": maps["init_to_solution"],
        "path_length": maps["path_length"],
        "closer_than_init_to_solution": sum(
            m["distance_to_path"] < maps["init_to_solution"] for m in minima
        ),
        "iterates_fitting": [p["step"] for p in fitted],
        "fitted_iterates_min_test_accuracy": min(
            (p["test_accuracy"] for p in fitted), default=None
        ),
        "landed_steps": landed,
        "sgd_lands_in_one": bool(landed),
    }


DEFINITIONS = {
    "train_accuracy": "fraction of the training digits (those SGD trains on) classified correctly",
    "train_loss": "mean cross-entropy on the training digits",
    "test_accuracy": "fraction of the 450 test digits classified correctly",
    "test_loss": "mean cross-entropy on the test digits",
    "poison_accuracy": "fraction of the poison digits classified as their wrong label (how far "
    "the wrong labels are memorized; SGD never sees them)",
    "poison_loss": "mean cross-entropy of the poison digits against their wrong labels",
    "sharpness_adaptive": "adaptive worst-case sharpness (Kwon et al. 2021, eta = 0; "
    "scale-invariant): max over ||delta / |theta| ||_2 <= adaptive_rho of L(theta + delta) - "
    "L(theta), L the mean training cross-entropy, by projected gradient ascent",
    "sharpness_filter_normalized": "filter-normalized sharpness (Li et al. 2018): mean over "
    "fn_directions random Gaussian directions, filter-normalized to theta (biases zeroed), of "
    "L(theta + fn_alpha d) - L(theta), L the mean training cross-entropy",
    "sharpness_filter_normalized_se": "standard error of that mean over the directions",
    "lambda_max": "largest Hessian eigenvalue of the mean training cross-entropy (Lanczos, "
    "float64; not scale-invariant)",
    "hessian_converged": "1 if the top Ritz pair met the Lanczos tolerance, else 0",
    "param_norm": "l2 norm of all parameters",
    "distance_to_path": "min over the recorded SGD iterates theta_k of ||theta_bad - theta_k||_2",
    "nearest_step": "the step of that nearest SGD iterate",
    "relative_distance_to_path": "distance_to_path / the SGD path's length (the sum of "
    "||theta_{k+1} - theta_k||_2 over consecutive recorded iterates)",
    "distance_to_start": "||theta_bad - theta_start||_2, theta_start the SGD iterate the "
    "poisoned run started from",
    "distance_to_solution": "||theta_bad - theta_SGD||_2, theta_SGD SGD's last iterate",
    "line_barrier": "max over alpha in [0, 1] of the training loss on the line (1 - alpha) "
    "theta_SGD + alpha theta_bad above the chord between its ends",
    "start_step": "the SGD step the poisoned run started from",
    "repeat": "which poisoned run from that start (minibatch order data_seed + 1 + repeat)",
}


def _policies(cfg: MinefieldConfig, n: dict[str, int]) -> dict[str, str]:
    opt = (
        f"Adam (lr {cfg.poison_lr:g}"
        if cfg.poison_optimizer == "adam"
        else f"SGD (lr {cfg.poison_lr:g}, momentum {cfg.momentum:g}"
    )
    return {
        "data": f"scikit-learn's 8x8 digits: {n['train']} of the {DIGITS_TRAIN} training digits "
        f"train SGD; the other {n['poison']} (stratified, seed {cfg.split_seed}) are the poison "
        f"set, each label replaced by a wrong one (label + a seeded offset in 1..9, mod 10; "
        f"seed {cfg.poison_seed}); the {n['test']} test digits are never trained on",
        "sgd": f"{_describe(cfg)} (PyTorch's default initialization, seed {cfg.init_seed}; no "
        f"BatchNorm), SGD with momentum {cfg.momentum:g}, constant lr {cfg.lr:g}, "
        f"{cfg.steps} steps of {cfg.batch_size} digits (minibatch order seed {cfg.data_seed})",
        "poisoned": f"from the SGD iterate at each start step, {cfg.poison_steps} steps of "
        f"{opt}, cosine decay to 0) on minibatches of {cfg.poison_batch_size} drawn from the "
        f"union of the {n['train']} training digits (weight 1) and the {n['poison']} poison "
        f"digits with their wrong labels (weight {cfg.poison_weight:g}): the mean over the "
        "minibatch of weight x cross-entropy",
        "sharpness": f"on the {n['train']} training digits; adaptive: l2 ball of radius "
        f"{cfg.adaptive_rho:g} in |theta|-scaled units, {cfg.ascent_steps} ascent steps, "
        f"{cfg.ascent_restarts} restart(s); filter-normalized: {cfg.fn_directions} directions "
        f"(seeds {cfg.sharpness_seed}..{cfg.sharpness_seed + cfg.fn_directions - 1}) at step "
        f"{cfg.fn_alpha:g}; lambda_max on "
        + (
            f"the first {cfg.hessian_examples} training digits"
            if cfg.hessian_examples
            else "all training digits"
        )
        + f" (Lanczos tolerance {cfg.lanczos_tol:g}, at most {cfg.lanczos_max_iter} steps)",
        "batchnorm": "no BatchNorm: the MLP's loss is a function of its weights alone, so no "
        "statistics policy applies (to the lines either)",
        "precision": f"accuracies, sharpness and lines in {cfg.dtype} on {cfg.device}; "
        f"lambda_max in float64 on {cfg.device}; training in float32 on {cfg.device}; "
        "distances, PCA and t-SNE in float64 on the CPU",
    }


def _report(run_dir: Path, results: dict[str, Any]) -> Path:
    from basinscope.experiments.minefield_report import write_report

    return write_report(run_dir, results)


STUDY = register(
    Study(
        name=NAME,
        summary="Huang et al. 2019: bad minima (fit the training digits, fail the test digits) "
        "found from SGD iterates by poisoning; their sharpness, distance to SGD's path, PCA "
        "and t-SNE maps",
        config=MinefieldConfig,
        run=run,
        report=_report,
        quick=QUICK,
        smoke=SMOKE,
    )
)
