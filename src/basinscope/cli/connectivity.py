"""Mode connectivity from the command line: barriers, instability, basins, curves,
alignment and ensembles (``basinscope barrier``, ``instability``, ``basin``, ``curve``,
``align`` and ``ensemble``).

Every command writes a run folder (``--out``) with ``manifest.json`` (the full spec and
the fingerprints of the models and data), ``results.json`` and ``figures/`` (PNG and PDF),
prints progress on stderr and, with ``--json``, one JSON object on stdout: the content of
``results.json`` plus ``run_dir`` and ``figures``.
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import typer

from basinscope.cli.common import (
    DataOptions,
    default_out,
    emit_json,
    info,
    load_model,
    parse_json_kwargs,
    sanitize,
)
from basinscope.cli.landscape import (
    BLOCK_OPT,
    BN_BATCHES_OPT,
    BN_OPT,
    DATA_OPT,
    JSON_OPT,
    KWARGS_OPT,
    MODEL_OPT,
    NOISE_OPT,
    PROGRESS_OPT,
    ROT_OPT,
    SHIFT_SEED_OPT,
)
from basinscope.errors import BasinscopeError

BARRIER_DEFINITIONS = ("linear", "mean", "midpoint")
BARRIER_METRICS = ("error", "loss")
EVAL_METRICS = ("loss", "error", "accuracy")
BN_POLICIES = ("stored", "recompute")
DTYPES = ("float32", "float64")
STRATEGIES = ("auto", "vmap", "loop")
ALIGN_METHODS = ("weight", "activation")
ENSEMBLE_METHODS = ("fge", "swa", "independent")
OPTIMIZERS = ("sgd", "adam", "adamw")

OUT_OPT = typer.Option(
    None, "--out", help="Run folder (default: basinscope-runs/<command>-<time>)."
)
DEFINITION_HELP = (
    "Barrier definition: linear (Entezari et al. 2022: max over alpha of the curve above the "
    "chord), mean (Frankle et al. 2020: max above the endpoints' mean) or midpoint "
    "(f(1/2) above the endpoints' mean)."
)


# -- helpers ---------------------------------------------------------------------------------
def _choice(flag: str, value: str, choices: Sequence[str], what: str) -> str:
    if value not in choices:
        raise BasinscopeError(
            f"unknown {what} {value!r} for {flag}: expected one of {', '.join(choices)}"
        )
    return value


def _at_least(flag: str, value: int | float | None, least: int | float) -> None:
    if value is not None and value < least:
        raise BasinscopeError(f"{flag} must be at least {least}, got {value}")


def _ints(text: str, flag: str, example: str) -> list[int]:
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise BasinscopeError(
            f"{flag} must be comma-separated integers, e.g. {flag} {example}; got {text!r}"
        ) from None
    if not values:
        raise BasinscopeError(f"{flag} needs at least one integer, e.g. {flag} {example}")
    return values


def _labels(paths: Sequence[Path]) -> list[str]:
    """Short names of weight files: the stem, or parent/stem, or the path when those repeat."""
    for make in (
        lambda p: p.stem,
        lambda p: f"{p.parent.name}/{p.stem}" if p.parent.name else p.stem,
        str,
    ):
        names = [make(Path(p)) for p in paths]
        if len(set(names)) == len(names):
            return names
    return [f"{i}:{p}" for i, p in enumerate(paths)]


def _models(model: str, model_kwargs: str | None, weights: Sequence[Path]) -> list:
    return [load_model(model, model_kwargs, w) for w in weights]


def _spec(model: str, model_kwargs: str | None, weights, data: DataOptions, **extra) -> dict:
    if isinstance(weights, (list, tuple)):
        w: Any = [str(p) for p in weights]
    else:
        w = str(weights) if weights is not None else None
    return {
        "model": model,
        "model_kwargs": parse_json_kwargs(model_kwargs),
        "weights": w,
        **data.to_dict(),
        **extra,
    }


def _open(out: Path | None, kind: str, spec: dict[str, Any], models: Sequence, datasets: dict):
    from basinscope.store import RunStore, fingerprint_tensors

    fps = {
        "models": [fingerprint_tensors(m.state_dict()) for m in models],
        "data": {name: d.fingerprint() for name, d in datasets.items()},
    }
    return RunStore.open(out or default_out(kind), kind, spec, fps)


@contextmanager
def _analysis(store, notes: list[str]) -> Iterator[None]:
    """Run an analysis in a fresh or resumed run folder.

    The analyses' warnings (BatchNorm, affinely dependent models) are printed as
    ``warning:`` lines and collected in ``notes``. A user error raised by the analysis in a
    folder this command created removes the folder again, so that the corrected command is
    not refused as a different run of the same folder.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        except BasinscopeError:
            if not store.resumed:
                shutil.rmtree(store.path, ignore_errors=True)
            raise
        finally:
            for w in caught:
                if not issubclass(w.category, (UserWarning, RuntimeWarning)):
                    continue
                msg = " ".join(str(w.message).split())
                if msg not in notes:
                    notes.append(msg)
                    info(f"warning: {msg}")


def _finish(
    store,
    result: dict[str, Any],
    figures: list[Path],
    json_out: bool,
    notes: list[str],
    summary: Callable[[], None],
) -> None:
    """Write results.json, mark the run complete, then print JSON or the summary."""
    result = sanitize(result)
    result["warnings"] = list(notes)
    (store.path / "results.json").write_text(json.dumps(result, indent=1))
    store.update_manifest(status="complete")
    out = {**result, "run_dir": str(store.path), "figures": [str(f) for f in figures]}
    if json_out:
        emit_json(out)
        return
    summary()
    info(f"run folder: {store.path}")


def _fmt(x: Any) -> str:
    try:
        return f"{float(x):.4g}"
    except (TypeError, ValueError):
        return str(x)


def _ci(ci: Any) -> str:
    if ci is None:
        return ""
    return f" [{_fmt(ci[0])}, {_fmt(ci[1])}]"


def _save(fig, store, name: str) -> list[Path]:
    from basinscope.plotting.io import save_figure

    return save_figure(fig, store.figures / name)


def _say(json_out: bool, progress: bool) -> Callable[[str], None]:
    quiet = json_out or not progress
    return lambda msg: info(msg, quiet)


def _train_config(**kw):
    from basinscope.training import TrainConfig

    return TrainConfig(**kw)


# -- barrier ---------------------------------------------------------------------------------
BARRIER_HELP = """The loss or error barrier on the straight line between trained models.

Along theta(alpha) = (1 - alpha) theta_A + alpha theta_B, alpha in [0, 1], f(alpha) is the
mean --metric on --split. The barrier is defined by --definition: linear (Entezari et al.
2022), max_alpha (f(alpha) - ((1 - alpha) f(0) + alpha f(1))); mean (Frankle et al. 2020),
max_alpha f(alpha) - (f(0) + f(1))/2; or midpoint, f(1/2) - (f(0) + f(1))/2. An even
grid of --num-points is refined around the worst alpha (unless --no-refine); --bootstrap N
resamples the examples N times for a percentile confidence interval.

Two --weights: one barrier, its curve plotted with the chord (linear) or the endpoints'
mean, and the worst alpha marked (figures/barrier). Three or more: the barrier of every
pair, as a matrix (figures/barrier_matrix).

JSON (--json) for two models: every field of the barrier (value, definition,
definition_formula, metric, split, worst_alpha, f0, f1, f_worst, alphas, values, ci,
ci_level, bootstrap_samples, bootstrap_se, refined, num_points, bn_policy, ...) plus
labels, weights and matrix; for three or more: definition, definition_formula, metric,
split, labels, weights, matrix, pairs (one barrier object per pair), mean_value,
max_value. Always warnings, run_dir and figures.

Examples:

  basinscope barrier --model mlp --weights a.safetensors --weights b.safetensors

  basinscope barrier --weights a.safetensors --weights b.safetensors --definition mean \\
      --metric loss --split test --bootstrap 200 --json

  basinscope barrier --model lenet --weights s1.safetensors --weights s2.safetensors \\
      --weights s3.safetensors --bn recompute --out runs/barriers
"""


def barrier_cmd(
    model: str = MODEL_OPT,
    model_kwargs: str = KWARGS_OPT,
    weights: list[Path] = typer.Option(
        [], "--weights", help="Weights of a model; repeat (two or more models)."
    ),
    data: str = DATA_OPT,
    rotation: float = ROT_OPT,
    block_shuffle: int = BLOCK_OPT,
    noise: float = NOISE_OPT,
    shift_seed: int = SHIFT_SEED_OPT,
    split: str = typer.Option("train", "--split", help="Split the barrier is measured on."),
    definition: str = typer.Option("linear", "--definition", help=DEFINITION_HELP),
    metric: str = typer.Option("error", "--metric", help="error (1 - accuracy) or loss."),
    num_points: int = typer.Option(
        25, "--num-points", help="Even grid of alpha in [0, 1] (at least 3)."
    ),
    refine: bool = typer.Option(
        True, "--refine/--no-refine", help="Add points around the worst alpha."
    ),
    refine_points: int = typer.Option(9, "--refine-points", help="Points per refinement round."),
    refine_rounds: int = typer.Option(2, "--refine-rounds", help="Refinement rounds."),
    bn: str = BN_OPT,
    bn_batches: int = BN_BATCHES_OPT,
    bootstrap: int = typer.Option(
        0, "--bootstrap", help="Bootstrap resamples of the examples for a CI (0: none)."
    ),
    ci_level: float = typer.Option(0.95, "--ci-level", help="Level of the bootstrap interval."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    batch_size: int = typer.Option(1024, "--batch-size", help="Examples per forward pass."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 or float64."),
    strategy: str = typer.Option("auto", "--strategy", help="auto (time both), vmap or loop."),
    out: Path = OUT_OPT,
    json_out: bool = JSON_OPT,
    progress: bool = PROGRESS_OPT,
) -> None:
    from basinscope.analyses.barrier import barrier, barrier_matrix

    _choice("--definition", definition, BARRIER_DEFINITIONS, "barrier definition")
    _choice("--metric", metric, BARRIER_METRICS, "barrier metric")
    _choice("--bn", bn, BN_POLICIES, "BatchNorm policy")
    _choice("--dtype", dtype, DTYPES, "dtype")
    _choice("--strategy", strategy, STRATEGIES, "strategy")
    if len(weights) < 2:
        raise BasinscopeError(
            f"a barrier needs at least 2 models, got {len(weights)}: pass --weights A.safetensors "
            "--weights B.safetensors (three or more give the pairwise matrix)"
        )
    _at_least("--num-points", num_points, 3)
    _at_least("--refine-points", refine_points, 1)
    _at_least("--refine-rounds", refine_rounds, 1)
    _at_least("--bootstrap", bootstrap, 0)
    _at_least("--batch-size", batch_size, 1)
    _at_least("--bn-batches", bn_batches, 1)
    if not 0 < ci_level < 1:
        raise BasinscopeError(f"--ci-level must lie strictly between 0 and 1, got {ci_level}")
    say = _say(json_out, progress)
    opts = DataOptions(data, rotation, block_shuffle, noise, shift_seed)
    nets = _models(model, model_kwargs, weights)
    ds = opts.load(split)
    datasets = {split: ds}
    bn_data = None
    if bn == "recompute":
        bn_data = ds if split == "train" else opts.load("train")
        datasets.setdefault("train", bn_data)
    labels = _labels(weights)
    settings = dict(
        definition=definition,
        metric=metric,
        split=split,
        num_points=num_points,
        refine=refine,
        refine_points=refine_points,
        refine_rounds=refine_rounds,
        bn_policy=bn,
        bn_batches=bn_batches,
        bootstrap=bootstrap,
        ci_level=ci_level,
        seed=seed,
        batch_size=batch_size,
        dtype=dtype,
        strategy=strategy,
    )
    spec = _spec(model, model_kwargs, weights, opts, labels=labels, **settings)
    store = _open(out, "barrier", spec, nets, datasets)
    kwargs = {k: v for k, v in settings.items() if k != "split"}
    notes: list[str] = []
    npairs = len(nets) * (len(nets) - 1) // 2
    say(
        f"{definition} barrier of the {metric} on {split} ({len(ds)} examples) between "
        f"{len(nets)} models: {npairs} pair{'s' if npairs > 1 else ''}"
    )
    with _analysis(store, notes):
        if len(nets) == 2:
            results = [
                barrier(
                    nets[0],
                    nets[1],
                    ds,
                    split=split,
                    bn_data=bn_data,
                    labels=(labels[0], labels[1]),
                    **kwargs,
                )
            ]
            matrix = np.array([[0.0, results[0].value], [results[0].value, 0.0]])
        else:
            matrix, results = barrier_matrix(
                nets, ds, labels=labels, split=split, bn_data=bn_data, **kwargs
            )
    from basinscope.analyses.barrier import BARRIER_DEFINITIONS as FORMULAS

    if len(nets) == 2:
        result = {**results[0].to_dict(), "labels": labels}
        figures = _save(_barrier_curve_figure(results[0]), store, "barrier")
    else:
        values = [r.value for r in results]
        result = {
            "definition": definition,
            "definition_formula": FORMULAS[definition],
            "metric": metric,
            "split": split,
            "labels": labels,
            "pairs": [r.to_dict() for r in results],
            "mean_value": float(np.mean(values)),
            "max_value": float(np.max(values)),
        }
        fig = _barrier_matrix_figure(matrix, labels, definition, metric)
        figures = _save(fig, store, "barrier_matrix")
    result["weights"] = [str(w) for w in weights]
    result["matrix"] = matrix

    def summary() -> None:
        for r in results:
            info(
                f"{r.models[0]} -- {r.models[1]}: {definition} {metric} barrier {_fmt(r.value)}"
                f"{_ci(r.ci)} at alpha {_fmt(r.worst_alpha)} "
                f"(f(0) {_fmt(r.f0)}, f(1) {_fmt(r.f1)}, f(worst) {_fmt(r.f_worst)})"
            )
        info(f"definition: {FORMULAS[definition]}")

    _finish(store, result, figures, json_out, notes, summary)


def _barrier_curve_figure(r):
    from basinscope.plotting._common import LABEL_SIZE, LEGEND_SIZE, new_figure, style_axes

    fig = new_figure((5.2, 3.5))
    ax = fig.add_subplot()
    a = np.asarray(r.alphas, dtype=np.float64)
    v = np.asarray(r.values, dtype=np.float64)
    ax.plot(a, v, "o-", ms=3, lw=1.4, color="#4c72b0", label=f"{r.metric} on the line")
    f0, f1, w = r.f0, r.f1, r.worst_alpha
    if r.definition == "linear":
        ax.plot([0.0, 1.0], [f0, f1], "--", color="0.45", lw=1, label="chord")
        base = f0 + w * (f1 - f0)
    else:
        base = 0.5 * (f0 + f1)
        ax.axhline(base, ls="--", color="0.45", lw=1, label="mean of the endpoints")
    ax.vlines(w, base, r.f_worst, color="tab:red", lw=1.6)
    ax.plot([w], [r.f_worst], "v", color="tab:red", ms=7, label=f"worst alpha {w:.3f}")
    ax.set_xlabel(f"alpha  ({r.models[0]} -> {r.models[1]})", fontsize=LABEL_SIZE)
    ax.set_ylabel(f"{r.split} {r.metric}", fontsize=LABEL_SIZE)
    ci = f", {int(100 * r.ci_level)}% CI [{r.ci[0]:.3g}, {r.ci[1]:.3g}]" if r.ci else ""
    ax.set_title(f"{r.definition} barrier {r.value:.4g}{ci}", fontsize=LABEL_SIZE)
    ax.legend(fontsize=LEGEND_SIZE)
    style_axes(ax)
    return fig


def _barrier_matrix_figure(matrix: np.ndarray, labels: list[str], definition: str, metric: str):
    from basinscope.plotting._common import LABEL_SIZE, TICK_SIZE, new_figure

    m = len(labels)
    size = max(3.6, 0.6 * m + 2.4)
    fig = new_figure((size + 0.8, size))
    ax = fig.add_subplot()
    im = ax.imshow(matrix, cmap="viridis")
    ax.set_xticks(range(m), labels, rotation=45, ha="right", fontsize=TICK_SIZE)
    ax.set_yticks(range(m), labels, fontsize=TICK_SIZE)
    top = float(np.nanmax(matrix)) if matrix.size else 0.0
    for i in range(m):
        for j in range(m):
            ax.text(
                j,
                i,
                f"{matrix[i, j]:.3g}",
                ha="center",
                va="center",
                fontsize=TICK_SIZE,
                color="white" if matrix[i, j] < 0.5 * top else "black",
            )
    fig.colorbar(im, ax=ax, label=f"{definition} barrier ({metric})")
    ax.set_title(f"pairwise {definition} barriers of the {metric}", fontsize=LABEL_SIZE)
    return fig


# -- instability -----------------------------------------------------------------------------
INSTABILITY_HELP = """Instability analysis (Frankle et al. 2020): are children of one parent linearly connected?

A parent is trained for k updates from the initial weights (--weights, or a fresh
initialization with --init-seed); --children copies then finish training to --total-steps
updates with different data orders (--child-seeds), starting from the parent's optimizer
state unless --reset-optimizer. The instability at k is the barrier (--definition, default
Frankle's mean; --metric, default error) between the children on --split, averaged over
pairs (the largest pair is reported too). Every k in --k is a separate parent: the sweep is
plotted as barrier vs k (figures/instability) next to the children's curves
(figures/instability_curves). --child-schedule continue makes parent + child follow one
run's learning rate (constant, step, cyclic at a cycle boundary); restart runs the
schedule anew in each child.

With --transfer --pretrained W (Neyshabur et al. 2020): two children fine-tuned for
--total-steps from the pre-trained weights against two trained from a random
initialization (--weights, or W re-initialized with --init-seed).

JSON (--json): mode ("sweep" or "transfer"); a sweep has ks, values (mean barrier per k),
max_values, definition, metric and results (per k: value, max_value, barriers, pairs,
child_values, child_seeds, details with every barrier's curve, settings); transfer has
pretrained_barrier, scratch_barrier, definition, metric, pretrained and scratch (each such
a per-k result). Always config (the training settings), warnings, run_dir, figures.

Examples:

  basinscope instability --model mlp --k 0,10,50 --total-steps 200 --lr 0.05

  basinscope instability --model lenet --weights init.safetensors --k 0,100,500 \\
      --total-steps 2000 --children 3 --child-seeds 1,2,3 --json

  basinscope instability --model lenet --transfer --pretrained runs/lenet/model.safetensors \\
      --data digits --rotation 35 --total-steps 200
"""


def instability_cmd(
    model: str = MODEL_OPT,
    model_kwargs: str = KWARGS_OPT,
    weights: Path = typer.Option(
        None,
        "--weights",
        help="Initial weights theta_0 (with --transfer: the random initialization).",
    ),
    init_seed: int = typer.Option(
        0, "--init-seed", help="Seed of the initialization when --weights is not given."
    ),
    data: str = DATA_OPT,
    rotation: float = ROT_OPT,
    block_shuffle: int = BLOCK_OPT,
    noise: float = NOISE_OPT,
    shift_seed: int = SHIFT_SEED_OPT,
    split: str = typer.Option(
        "test", "--split", help="Split the barriers are measured on (training uses train)."
    ),
    k: str = typer.Option(
        None,
        "--k",
        help="Comma-separated spawning steps (default: those of 0,10,50 within --total-steps); not with --transfer.",
    ),
    total_steps: int = typer.Option(100, "--total-steps", help="Updates of parent + child."),
    children: int = typer.Option(2, "--children", help="Children per parent (at least 2)."),
    child_seeds: str = typer.Option(
        None, "--child-seeds", help="Data-order seed of each child (default 1,2,...)."
    ),
    child_schedule: str = typer.Option(
        "continue", "--child-schedule", help="continue or restart (see above)."
    ),
    reset_optimizer: bool = typer.Option(
        False, "--reset-optimizer", help="Children start with a fresh optimizer (no momentum)."
    ),
    lr: float = typer.Option(0.05, "--lr", help="Learning rate."),
    batch_size: int = typer.Option(64, "--batch-size", help="Minibatch size."),
    optimizer: str = typer.Option("sgd", "--optimizer", help="sgd, adam or adamw."),
    momentum: float = typer.Option(0.9, "--momentum"),
    weight_decay: float = typer.Option(0.0, "--weight-decay"),
    schedule: str = typer.Option(
        "constant", "--schedule", help="constant, step, cosine, linear or cyclic."
    ),
    warmup_steps: int = typer.Option(0, "--warmup-steps"),
    milestones: str = typer.Option("", "--milestones", help="step schedule: e.g. 50,80."),
    gamma: float = typer.Option(0.1, "--gamma", help="step schedule: factor per milestone."),
    min_lr: float = typer.Option(0.0, "--min-lr", help="cosine/linear/cyclic: lowest rate."),
    cycle_steps: int = typer.Option(None, "--cycle-steps", help="cyclic: updates per cycle."),
    data_seed: int = typer.Option(0, "--data-seed", help="Data-order seed of the parent."),
    definition: str = typer.Option("mean", "--definition", help=DEFINITION_HELP),
    metric: str = typer.Option("error", "--metric", help="error or loss."),
    num_points: int = typer.Option(25, "--num-points", help="alpha grid of each barrier."),
    bn: str = BN_OPT,
    transfer: bool = typer.Option(
        False, "--transfer", help="Pre-trained start vs random init (needs --pretrained)."
    ),
    pretrained: Path = typer.Option(
        None, "--pretrained", help="With --transfer: the pre-trained weights."
    ),
    out: Path = OUT_OPT,
    json_out: bool = JSON_OPT,
    progress: bool = PROGRESS_OPT,
) -> None:
    from basinscope.analyses.instability import (
        instability_sweep,
        plot_instability,
        transfer_instability,
    )

    _choice("--definition", definition, BARRIER_DEFINITIONS, "barrier definition")
    _choice("--metric", metric, BARRIER_METRICS, "barrier metric")
    _choice("--bn", bn, BN_POLICIES, "BatchNorm policy")
    _choice("--child-schedule", child_schedule, ("continue", "restart"), "child schedule")
    _at_least("--total-steps", total_steps, 1)
    _at_least("--num-points", num_points, 3)
    if children < 2:
        raise BasinscopeError(
            f"--children must be at least 2 (a barrier needs two children), got {children}"
        )
    if transfer and pretrained is None:
        raise BasinscopeError(
            "--transfer needs --pretrained W: the pre-trained weights whose fine-tuned copies "
            "are compared with copies trained from a random initialization"
        )
    if pretrained is not None and not transfer:
        raise BasinscopeError(
            "--pretrained is only used with --transfer; add --transfer (or pass the initial "
            "weights with --weights for a sweep over k)"
        )
    if transfer and k is not None:
        raise BasinscopeError(
            "--transfer spawns the children at k=0 and trains them for --total-steps: drop --k"
        )
    if transfer:
        ks = [0]
    elif k is None:
        ks = [s for s in (0, 10, 50) if s <= total_steps]
    else:
        ks = _ints(k, "--k", "0,10,50")
    bad = [s for s in ks if not 0 <= s <= total_steps]
    if bad:
        raise BasinscopeError(
            f"every --k must lie in [0, --total-steps] = [0, {total_steps}], got {bad}"
        )
    seeds = (
        _ints(child_seeds, "--child-seeds", "1,2")
        if child_seeds is not None
        else list(range(1, children + 1))
    )
    if len(seeds) != children:
        raise BasinscopeError(
            f"--child-seeds has {len(seeds)} seeds for --children {children}: pass one "
            f"data-order seed per child, e.g. --child-seeds {','.join(map(str, range(1, children + 1)))}"
        )
    config = _train_config(
        steps=total_steps,
        batch_size=batch_size,
        optimizer=_choice("--optimizer", optimizer, OPTIMIZERS, "optimizer"),
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        schedule=schedule,
        warmup_steps=warmup_steps,
        milestones=tuple(_ints(milestones, "--milestones", "50,80")) if milestones else (),
        gamma=gamma,
        min_lr=min_lr,
        cycle_steps=cycle_steps,
        data_seed=data_seed,
    )
    say = _say(json_out, progress)
    opts = DataOptions(data, rotation, block_shuffle, noise, shift_seed)
    net = load_model(model, model_kwargs, weights, init_seed)
    train_data = opts.load("train")
    eval_data = train_data if split == "train" else opts.load(split)
    nets = [net]
    if transfer:
        nets.insert(0, load_model(model, model_kwargs, pretrained))
    spec = _spec(
        model,
        model_kwargs,
        weights,
        opts,
        init_seed=init_seed if weights is None else None,
        split=split,
        mode="transfer" if transfer else "sweep",
        pretrained=str(pretrained) if pretrained is not None else None,
        ks=None if transfer else ks,
        total_steps=total_steps,
        children=children,
        child_seeds=seeds,
        child_schedule=child_schedule,
        reset_optimizer=reset_optimizer,
        config=config.to_dict(),
        definition=definition,
        metric=metric,
        num_points=num_points,
        bn_policy=bn,
    )
    store = _open(out, "instability", spec, nets, {"train": train_data, split: eval_data})
    common = dict(
        config=config,
        child_seeds=tuple(seeds),
        definition=definition,
        metric=metric,
        eval_data=eval_data,
        num_points=num_points,
        child_schedule=child_schedule,
        bn_policy=bn,
        bn_data=train_data if bn == "recompute" else None,
    )
    notes: list[str] = []
    if transfer:
        say(
            f"transfer instability: {children} children fine-tuned from {pretrained} and "
            f"{children} from a random initialization, {total_steps} updates each ..."
        )
        with _analysis(store, notes):
            res = transfer_instability(
                nets[0],
                train_data,
                steps=total_steps,
                random_init=net if weights is not None else None,
                init_seed=init_seed,
                copy_optimizer_state=not reset_optimizer,
                **common,
            )
        result = {"mode": "transfer", **res.to_dict(), "config": config.to_dict()}
        figures = _save(_transfer_figure(res), store, "transfer_instability")

        def summary() -> None:
            info(
                f"{definition} barrier of the {metric} on {split}: pre-trained start "
                f"{_fmt(res.pretrained_barrier)}, random init {_fmt(res.scratch_barrier)}"
            )

    else:
        say(
            f"instability at k = {', '.join(map(str, sorted(ks)))}: a parent per k, "
            f"{children} children each, {total_steps} updates in all ..."
        )
        with _analysis(store, notes):
            sweep = instability_sweep(
                net,
                train_data,
                ks,
                total_steps=total_steps,
                children=children,
                copy_optimizer_state=not reset_optimizer,
                **common,
            )
        result = {"mode": "sweep", **sweep.to_dict(), "config": config.to_dict()}
        fig, ax = plot_instability(sweep)
        ax.set_title(f"instability on {split} ({children} children)", fontsize=10)
        figures = _save(fig, store, "instability")
        figures += _save(_instability_curves_figure(sweep), store, "instability_curves")

        def summary() -> None:
            for r in sweep.results:
                info(
                    f"k={r.k:<6} {definition} barrier of the {metric} on {split}: "
                    f"{_fmt(r.value)} (max over pairs {_fmt(r.max_value)}; children "
                    + ", ".join(_fmt(v) for v in r.child_values)
                    + ")"
                )

    _finish(store, result, figures, json_out, notes, summary)


def _instability_curves_figure(sweep):
    from basinscope.plotting._common import LABEL_SIZE, LEGEND_SIZE, new_figure, style_axes

    fig = new_figure((5.0, 3.4))
    ax = fig.add_subplot()
    colors = _colors(len(sweep.results))
    for r, c in zip(sweep.results, colors):
        for n, d in enumerate(r.details):
            ax.plot(
                d["alphas"],
                d["values"],
                "-",
                color=c,
                lw=1.2,
                alpha=1.0 if n == 0 else 0.5,
                label=f"k={r.k}" if n == 0 else None,
            )
    ax.set_xlabel("alpha (child i -> child j)", fontsize=LABEL_SIZE)
    ax.set_ylabel(sweep.metric, fontsize=LABEL_SIZE)
    ax.set_title("the line between the children", fontsize=LABEL_SIZE)
    ax.legend(fontsize=LEGEND_SIZE)
    style_axes(ax)
    return fig


def _transfer_figure(res):
    from basinscope.plotting._common import LABEL_SIZE, LEGEND_SIZE, new_figure, style_axes

    fig = new_figure((8.0, 3.3))
    ax, bx = fig.subplots(1, 2)
    for name, r, c in (
        ("pre-trained", res.pretrained, "tab:blue"),
        ("random init", res.scratch, "tab:orange"),
    ):
        for n, d in enumerate(r.details):
            ax.plot(
                d["alphas"],
                d["values"],
                color=c,
                lw=1.3,
                alpha=1.0 if n == 0 else 0.5,
                label=name if n == 0 else None,
            )
    ax.set_xlabel("alpha (child i -> child j)", fontsize=LABEL_SIZE)
    ax.set_ylabel(res.metric, fontsize=LABEL_SIZE)
    ax.legend(fontsize=LEGEND_SIZE)
    style_axes(ax)
    bx.bar(
        ["pre-trained", "random init"],
        [res.pretrained_barrier, res.scratch_barrier],
        color=["tab:blue", "tab:orange"],
    )
    bx.set_ylabel(f"{res.definition} barrier ({res.metric})", fontsize=LABEL_SIZE)
    style_axes(bx)
    fig.suptitle("children from a pre-trained start vs a random initialization", fontsize=10)
    return fig


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(x) for x in np.linspace(0.0, 0.85, max(n, 1))]


# -- basin -----------------------------------------------------------------------------------
BASIN_HELP = """Is the convex hull of the solutions an (epsilon, delta)-basin? (Monte Carlo test)

Neyshabur, Sedghi & Zhang 2020, Definition 3.1, for S = conv(--weights): (1) the loss is
flat inside, E_{w~U_S}|l(w) - mu| <= epsilon; (2) isotropic noise of total scale delta at
the point where a random ray leaves S raises the loss by 2 epsilon on average; (3) a step
of length |nu|, nu ~ N(0, delta^2), outward along the ray does too. Points of S are drawn
with Dirichlet(1,...,1) barycentric weights (--samples for mu and condition 1, --pairs
for conditions 2 and 3); each condition's estimate gets a normal --confidence interval
and a verdict, with whether the interval supports it. Without --epsilon the smallest
epsilon for which (1) holds is used (is S a basin for some epsilon?). The solutions should
be affinely independent (a warning says when they are not). figures/basin shows the losses
inside, at the noisy boundary points and after the outward steps, and each condition's
margin with its interval.

JSON (--json): epsilon, epsilon_estimated, delta, holds, ci_supports, mean_loss (with
mean_loss_std_error, mean_loss_ci), condition1..condition3 (each: condition, name,
statement, estimate, std_error, ci, threshold, margin, margin_std_error, margin_ci,
holds, ci_supports), epsilon_range, num_params, affine_dimension, vertex_losses, the
samples (inside_losses, noise_losses, step_losses, ...), definition, settings, labels,
weights, split, warnings, run_dir, figures.

Examples:

  basinscope basin --model mlp --weights a.safetensors --weights b.safetensors \\
      --weights c.safetensors --delta 5

  basinscope basin --weights a.safetensors --weights b.safetensors --delta 2 --epsilon 0.05 \\
      --samples 128 --pairs 128 --json
"""


def basin_cmd(
    model: str = MODEL_OPT,
    model_kwargs: str = KWARGS_OPT,
    weights: list[Path] = typer.Option(
        [], "--weights", help="Weights of a solution; repeat (the hull's vertices)."
    ),
    data: str = DATA_OPT,
    rotation: float = ROT_OPT,
    block_shuffle: int = BLOCK_OPT,
    noise: float = NOISE_OPT,
    shift_seed: int = SHIFT_SEED_OPT,
    split: str = typer.Option("train", "--split", help="Split whose mean loss is l."),
    delta: float = typer.Option(
        None, "--delta", help="delta > 0: Euclidean scale of the noise and of the outward step."
    ),
    epsilon: float = typer.Option(
        None, "--epsilon", help="epsilon to test (default: the smallest for condition 1)."
    ),
    samples: int = typer.Option(64, "--samples", help="Uniform points of the hull (>= 2)."),
    pairs: int = typer.Option(64, "--pairs", help="Uniform pairs for conditions 2 and 3 (>= 2)."),
    seed: int = typer.Option(0, "--seed", help="Seed of every random draw."),
    confidence: float = typer.Option(0.95, "--confidence", help="Level of every interval."),
    metric: str = typer.Option("loss", "--metric", help="The loss l: loss, error or accuracy."),
    bn: str = BN_OPT,
    bn_batches: int = BN_BATCHES_OPT,
    batch_size: int = typer.Option(1024, "--batch-size", help="Examples per forward pass."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 or float64."),
    out: Path = OUT_OPT,
    json_out: bool = JSON_OPT,
    progress: bool = PROGRESS_OPT,
) -> None:
    from basinscope.analyses.basin import basin_test

    if not weights:
        raise BasinscopeError(
            "the basin test needs the solutions whose convex hull is tested: pass --weights "
            "once per solution, e.g. --weights a.safetensors --weights b.safetensors"
        )
    if delta is None:
        raise BasinscopeError(
            "--delta is required: the Euclidean scale of the noise (condition 2) and of the "
            "outward step (condition 3), e.g. --delta 1"
        )
    if not (math.isfinite(delta) and delta > 0):
        raise BasinscopeError(f"--delta must be a finite number > 0, got {delta}")
    if epsilon is not None and not (math.isfinite(epsilon) and epsilon >= 0):
        raise BasinscopeError(f"--epsilon must be a finite number >= 0, got {epsilon}")
    _at_least("--samples", samples, 2)
    _at_least("--pairs", pairs, 2)
    _at_least("--seed", seed, 0)
    _at_least("--batch-size", batch_size, 1)
    if not 0 < confidence < 1:
        raise BasinscopeError(f"--confidence must lie strictly between 0 and 1, got {confidence}")
    _choice("--metric", metric, EVAL_METRICS, "metric")
    _choice("--bn", bn, BN_POLICIES, "BatchNorm policy")
    _choice("--dtype", dtype, DTYPES, "dtype")
    say = _say(json_out, progress)
    opts = DataOptions(data, rotation, block_shuffle, noise, shift_seed)
    nets = _models(model, model_kwargs, weights)
    ds = opts.load(split)
    datasets = {split: ds}
    bn_data = None
    if bn == "recompute":
        bn_data = ds if split == "train" else opts.load("train")
        datasets.setdefault("train", bn_data)
    labels = _labels(weights)
    settings = dict(
        epsilon=epsilon,
        delta=delta,
        samples=samples,
        pairs=pairs,
        seed=seed,
        confidence=confidence,
        metric=metric,
        bn_policy=bn,
        bn_batches=bn_batches,
        batch_size=batch_size,
        dtype=dtype,
    )
    spec = _spec(model, model_kwargs, weights, opts, split=split, labels=labels, **settings)
    store = _open(out, "basin", spec, nets, datasets)
    say(
        f"basin test of the hull of {len(nets)} solutions on {split} ({len(ds)} examples): "
        f"{samples} inside points, {pairs} pairs, delta {delta:g} ..."
    )
    notes: list[str] = []
    with _analysis(store, notes):
        res = basin_test(nets, ds, bn_data=bn_data, **settings)
    result = {
        **res.to_dict(),
        "labels": labels,
        "weights": [str(w) for w in weights],
        "split": split,
    }
    figures = _save(_basin_figure(res), store, "basin")

    def summary() -> None:
        eps = f"{res.epsilon:.4g}" + (
            " (estimated: the smallest for condition 1)" if res.epsilon_estimated else ""
        )
        info(f"epsilon {eps}, delta {res.delta:g}; mean {metric} in the hull {_fmt(res.mean_loss)}")
        for c in res.conditions:
            verdict = "holds" if c.holds else "fails"
            support = (
                ""
                if c.ci_supports is None
                else (
                    ", supported by the interval"
                    if c.ci_supports
                    else ", not supported by the interval"
                )
            )
            info(
                f"  ({c.condition}) {c.name}: estimate {_fmt(c.estimate)}{_ci(c.ci)} vs "
                f"threshold {_fmt(c.threshold)}: {verdict}{support}"
            )
        info(
            f"(epsilon, delta)-basin: {'yes' if res.holds else 'no'}"
            f"{' (supported by the intervals)' if res.ci_supports else ' (not supported by the intervals)'}"
        )

    _finish(store, result, figures, json_out, notes, summary)


def _basin_figure(res):
    from basinscope.plotting._common import LABEL_SIZE, LEGEND_SIZE, new_figure, style_axes

    fig = new_figure((8.4, 3.4))
    ax, bx = fig.subplots(1, 2)
    groups = (
        ("inside S", res.inside_losses, "tab:blue"),
        ("(2) noise at the boundary", res.noise_losses, "tab:orange"),
        ("(3) outward step", res.step_losses, "tab:red"),
    )
    finite = [v for _, vals, _ in groups for v in vals if math.isfinite(v)]
    bins = np.linspace(min(finite), max(finite), 25) if finite and max(finite) > min(finite) else 10
    for name, vals, c in groups:
        v = np.asarray(vals, dtype=np.float64)
        ax.hist(v[np.isfinite(v)], bins=bins, alpha=0.55, color=c, label=name)
    ax.axvline(res.mean_loss, color="k", lw=1, label="mu")
    ax.axvline(res.mean_loss + 2 * res.epsilon, color="k", ls="--", lw=1, label="mu + 2 eps")
    ax.set_xlabel(res.settings.get("metric", "loss"), fontsize=LABEL_SIZE)
    ax.set_ylabel("count", fontsize=LABEL_SIZE)
    ax.legend(fontsize=LEGEND_SIZE)
    style_axes(ax)
    conds = res.conditions
    ys = np.arange(len(conds))[::-1]
    for y, c in zip(ys, conds):
        lo, hi = c.margin_ci
        color = "tab:green" if c.holds else "tab:red"
        bx.errorbar(
            [c.margin],
            [y],
            xerr=[[c.margin - lo], [hi - c.margin]],
            fmt="o",
            color=color,
            capsize=4,
        )
    bx.axvline(0.0, color="0.5", lw=1)
    bx.set_yticks(ys, [f"({c.condition}) {c.name}" for c in conds], fontsize=8)
    bx.set_xlabel("margin (>= 0: the condition holds)", fontsize=LABEL_SIZE)
    style_axes(bx)
    verdict = "a basin" if res.holds else "not a basin"
    fig.suptitle(f"(eps={res.epsilon:.3g}, delta={res.delta:.3g}): {verdict}", fontsize=LABEL_SIZE)
    return fig


# -- curve -----------------------------------------------------------------------------------
CURVE_HELP = """Train a low-loss curve between two models (Garipov et al. 2018) and compare it with the line.

A Bezier curve of --order (quadratic by default: one control point) or a polychain with
--bends bends joins the two --weights; its interior points are trained for --steps
minibatch updates on E_{t~U(0,1)} L(phi(t)) (one t per minibatch) with the endpoints fixed.
The curve is saved as curve.safetensors in the run folder (basinscope.analyses.load_curve
reads it), then loss and error are evaluated at --points values of t on the curve and on
the straight line (BatchNorm statistics re-estimated at every t by default for models with
BatchNorm) and plotted (figures/curve) with the curve's length relative to the line's.

JSON (--json): curve (t and <split>_loss, <split>_error), line (alpha and the same),
max_curve, max_line (the maxima over t), length, distance, length_ratio, settings,
evaluation, training (the training configuration), history (step, t, loss, lr per
update), curve_file, labels, weights, warnings, run_dir, figures.

Examples:

  basinscope curve --model mlp --weights a.safetensors --weights b.safetensors --steps 500

  basinscope curve --model lenet --weights a.safetensors --weights b.safetensors \\
      --kind polychain --bends 1 --steps 1000 --lr 0.02 --splits train,test --json
"""


def curve_cmd(
    model: str = MODEL_OPT,
    model_kwargs: str = KWARGS_OPT,
    weights: list[Path] = typer.Option(
        [], "--weights", help="Weights of an endpoint; give it twice (theta_A, theta_B)."
    ),
    data: str = DATA_OPT,
    rotation: float = ROT_OPT,
    block_shuffle: int = BLOCK_OPT,
    noise: float = NOISE_OPT,
    shift_seed: int = SHIFT_SEED_OPT,
    splits: str = typer.Option(
        "train,test", "--splits", help="Comma-separated splits to evaluate on (training: train)."
    ),
    kind: str = typer.Option("bezier", "--kind", help="bezier or polychain."),
    order: int = typer.Option(2, "--order", help="Bezier order (2: one control point)."),
    bends: int = typer.Option(1, "--bends", help="Polychain bends."),
    init: str = typer.Option(
        "linear", "--init", help="Control points start on the line (linear) or near it (noise)."
    ),
    steps: int = typer.Option(200, "--steps", help="Training updates of the control points."),
    lr: float = typer.Option(0.05, "--lr", help="Learning rate."),
    momentum: float = typer.Option(0.9, "--momentum", help="SGD momentum."),
    weight_decay: float = typer.Option(0.0, "--weight-decay"),
    optimizer: str = typer.Option("sgd", "--optimizer", help="sgd or adam."),
    schedule: str = typer.Option(
        "constant", "--schedule", help="constant, cosine or linear learning rate."
    ),
    batch_size: int = typer.Option(128, "--batch-size", help="Minibatch size."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sampled t (and of --init noise)."),
    data_seed: int = typer.Option(0, "--data-seed", help="Seed of the minibatch order."),
    bn_mode: str = typer.Option(
        "train",
        "--bn-mode",
        help="Training: BatchNorm on batch statistics (train) or stored (eval).",
    ),
    points: int = typer.Option(21, "--points", help="Values of t evaluated (at least 2)."),
    bn: str = typer.Option(
        "auto",
        "--bn",
        help="Evaluation: auto (recompute for BatchNorm models), stored or recompute.",
    ),
    bn_batches: int = BN_BATCHES_OPT,
    eval_batch_size: int = typer.Option(
        1024, "--eval-batch-size", help="Examples per forward pass in the evaluation."
    ),
    dtype: str = typer.Option("float32", "--dtype", help="float32 or float64 (evaluation)."),
    strategy: str = typer.Option("auto", "--strategy", help="auto (time both), vmap or loop."),
    out: Path = OUT_OPT,
    json_out: bool = JSON_OPT,
    progress: bool = PROGRESS_OPT,
) -> None:
    from basinscope.analyses.curves import evaluate_curve, save_curve, train_curve

    if len(weights) != 2:
        raise BasinscopeError(
            f"a curve joins exactly two models, got {len(weights)} --weights: pass --weights "
            "A.safetensors --weights B.safetensors"
        )
    _choice("--kind", kind, ("bezier", "polychain"), "curve kind")
    _choice("--init", init, ("linear", "noise"), "curve init")
    _choice("--optimizer", optimizer, ("sgd", "adam"), "optimizer")
    _choice("--bn-mode", bn_mode, ("train", "eval"), "BatchNorm training mode")
    _choice("--bn", bn, ("auto", *BN_POLICIES), "BatchNorm policy")
    _choice("--dtype", dtype, DTYPES, "dtype")
    _choice("--strategy", strategy, STRATEGIES, "strategy")
    if kind == "bezier" and order < 2:
        raise BasinscopeError(
            f"--order must be at least 2 for a Bezier curve, got {order} (order 1 is the "
            "straight line, with no control point to train)"
        )
    _at_least("--bends", bends, 1)
    _at_least("--steps", steps, 1)
    _at_least("--batch-size", batch_size, 1)
    _at_least("--eval-batch-size", eval_batch_size, 1)
    _at_least("--bn-batches", bn_batches, 1)
    _at_least("--points", points, 2)
    from basinscope.training import check_schedule

    check_schedule(schedule, total_steps=steps, base_lr=lr)
    names = [s.strip() for s in splits.split(",") if s.strip()]
    if not names:
        raise BasinscopeError(f"--splits needs at least one split, e.g. train,test; got {splits!r}")
    say = _say(json_out, progress)
    opts = DataOptions(data, rotation, block_shuffle, noise, shift_seed)
    net_a, net_b = _models(model, model_kwargs, weights)
    train_data = opts.load("train")
    datasets = {s: (train_data if s == "train" else opts.load(s)) for s in names}
    labels = _labels(weights)
    training = dict(
        kind=kind,
        order=order,
        bends=bends,
        init=init,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        optimizer=optimizer,
        schedule=schedule,
        seed=seed,
        data_seed=data_seed,
        bn_mode=bn_mode,
    )
    evaluation = dict(
        points=points,
        bn_policy=bn,
        bn_batches=bn_batches,
        batch_size=eval_batch_size,
        dtype=dtype,
        strategy=strategy,
    )
    spec = _spec(
        model,
        model_kwargs,
        weights,
        opts,
        labels=labels,
        splits=names,
        training=training,
        evaluation=evaluation,
    )
    store = _open(out, "curve", spec, [net_a, net_b], {"train": train_data, **datasets})
    degree = f"order {order}" if kind == "bezier" else f"{bends} bend{'s' if bends > 1 else ''}"
    say(f"training a {kind} curve ({degree}) between {labels[0]} and {labels[1]}: {steps} updates")
    notes: list[str] = []
    quiet = json_out or not progress
    with _analysis(store, notes):
        trained = train_curve(net_a, net_b, train_data, progress=not quiet, **training)
        curve_file = save_curve(
            store.path / "curve.safetensors",
            trained.curve,
            metadata={"model": model, "model_kwargs": json.dumps(parse_json_kwargs(model_kwargs))},
        )
        say(f"evaluating {points} points on the curve and on the line ...")
        ev = evaluate_curve(
            net_a,
            trained.curve,
            datasets,
            ts=np.linspace(0.0, 1.0, points),
            bn_policy=None if bn == "auto" else bn,
            bn_data=train_data,
            bn_batches=bn_batches,
            metrics=("loss", "error"),
            batch_size=eval_batch_size,
            dtype=dtype,
            strategy=strategy,
            progress=not quiet,
        )
    result = {
        **ev.to_dict(),
        "training": trained.config,
        "history": trained.history,
        "curve_file": str(curve_file),
        "labels": labels,
        "weights": [str(w) for w in weights],
    }
    figures = _save(_curve_figure(ev, names, labels), store, "curve")

    def summary() -> None:
        info(
            f"{kind} curve: length {_fmt(ev.length)} = {_fmt(ev.length_ratio)} x the line's "
            f"{_fmt(ev.distance)}; saved to {curve_file}"
        )
        for var in ev.max_curve:
            info(f"  max {var}: curve {_fmt(ev.max_curve[var])}, line {_fmt(ev.max_line.get(var))}")

    _finish(store, result, figures, json_out, notes, summary)


def _curve_figure(ev, splits: list[str], labels: list[str]):
    from basinscope.plotting._common import LABEL_SIZE, LEGEND_SIZE, new_figure, style_axes

    metrics = [m for m in ("loss", "error") if any(f"{s}_{m}" in ev.curve for s in splits)]
    fig = new_figure((4.2 * len(metrics), 3.4))
    axes = np.atleast_1d(fig.subplots(1, len(metrics)))
    colors = dict(zip(splits, ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown")))
    t = ev.curve["t"].values
    for ax, m in zip(axes, metrics):
        for s in splits:
            var = f"{s}_{m}"
            if var not in ev.curve:
                continue
            c = colors.get(s, "0.3")
            ax.plot(t, ev.curve[var].values, "-", color=c, lw=1.6, label=f"{s}, curve")
            if ev.line is not None and var in ev.line:
                ax.plot(
                    ev.line["alpha"].values,
                    ev.line[var].values,
                    "--",
                    color=c,
                    lw=1.2,
                    label=f"{s}, line",
                )
        ax.set_xlabel(f"t  ({labels[0]} -> {labels[1]})", fontsize=LABEL_SIZE)
        ax.set_ylabel(m, fontsize=LABEL_SIZE)
        ax.legend(fontsize=LEGEND_SIZE)
        style_axes(ax)
    kind = ev.settings.get("kind", "curve")
    fig.suptitle(
        f"{kind} curve vs straight line: length ratio {ev.length_ratio:.3f}", fontsize=LABEL_SIZE
    )
    return fig


# -- align -----------------------------------------------------------------------------------
ALIGN_HELP = """Permute the hidden units of model B to align it with model A, and the barrier it removes.

--method weight: weight matching (Git Re-Basin, Ainsworth et al. 2023, Algorithm 1),
coordinate ascent on the inner product of the weights, groups visited in a --seed order,
at most --max-iter sweeps. --method activation: activation matching, the assignment that
maximizes the correlation of matched units' activations over --num-examples inputs of
--split. The permutations are symmetries of the network: the aligned model's outputs are
checked against B's (max_output_diff). The linear barrier (Entezari et al. 2022) of
--metric on --split is measured on the line A -> B and on the line A -> aligned B at
--num-points alphas (figures/alignment). The aligned weights are saved as
model.safetensors in the run folder and, with --save, at that path too.

JSON (--json): method, permutations (per group: the unit of B that becomes unit i),
iterations, objective, max_output_diff, group_sizes, spec_origin, barrier_before,
barrier_after, barrier (before, after, metric, split, alphas, curve_before,
curve_after, definition), aligned_weights (the files written), labels, weights,
warnings, run_dir, figures.

Examples:

  basinscope align --model mlp --weights a.safetensors --weights b.safetensors

  basinscope align --model lenet --weights a.safetensors --weights b.safetensors \\
      --method activation --metric error --save b-aligned.safetensors --json
"""


def align_cmd(
    model: str = MODEL_OPT,
    model_kwargs: str = KWARGS_OPT,
    weights: list[Path] = typer.Option(
        [], "--weights", help="Weights of model A, then of model B (give it twice)."
    ),
    data: str = DATA_OPT,
    rotation: float = ROT_OPT,
    block_shuffle: int = BLOCK_OPT,
    noise: float = NOISE_OPT,
    shift_seed: int = SHIFT_SEED_OPT,
    split: str = typer.Option(
        "train", "--split", help="Split for the barriers (and the activations)."
    ),
    method: str = typer.Option("weight", "--method", help="weight or activation matching."),
    max_iter: int = typer.Option(100, "--max-iter", help="weight: at most this many sweeps."),
    seed: int = typer.Option(0, "--seed", help="weight: seed of the order of the groups."),
    num_examples: int = typer.Option(
        1024, "--num-examples", help="activation: inputs whose activations are matched."
    ),
    num_points: int = typer.Option(11, "--num-points", help="alphas on each line (at least 3)."),
    metric: str = typer.Option("loss", "--metric", help="loss, error or accuracy."),
    bn: str = BN_OPT,
    bn_batches: int = BN_BATCHES_OPT,
    batch_size: int = typer.Option(1024, "--batch-size", help="Examples per forward pass."),
    strategy: str = typer.Option("auto", "--strategy", help="auto (time both), vmap or loop."),
    save: Path = typer.Option(
        None, "--save", help="Also write the aligned weights here (.safetensors or .pt)."
    ),
    out: Path = OUT_OPT,
    json_out: bool = JSON_OPT,
    progress: bool = PROGRESS_OPT,
) -> None:
    from basinscope.analyses.alignment import (
        activation_matching,
        barrier_before_after,
        weight_matching,
    )
    from basinscope.models import save_weights

    if len(weights) != 2:
        raise BasinscopeError(
            f"align needs exactly two models, got {len(weights)} --weights: pass --weights "
            "A.safetensors --weights B.safetensors (B is permuted to match A)"
        )
    _choice("--method", method, ALIGN_METHODS, "alignment method")
    _choice("--metric", metric, EVAL_METRICS, "metric")
    _choice("--bn", bn, BN_POLICIES, "BatchNorm policy")
    _choice("--strategy", strategy, STRATEGIES, "strategy")
    _at_least("--num-points", num_points, 3)
    _at_least("--max-iter", max_iter, 1)
    _at_least("--num-examples", num_examples, 1)
    _at_least("--batch-size", batch_size, 1)
    if save is not None and save.suffix.lower() not in (".safetensors", ".pt", ".pth"):
        raise BasinscopeError(
            f"--save {str(save)!r}: the aligned weights are written as .safetensors or .pt, "
            "e.g. --save aligned.safetensors"
        )
    say = _say(json_out, progress)
    opts = DataOptions(data, rotation, block_shuffle, noise, shift_seed)
    net_a, net_b = _models(model, model_kwargs, weights)
    ds = opts.load(split)
    datasets = {split: ds}
    bn_data = None
    if bn == "recompute":
        bn_data = ds if split == "train" else opts.load("train")
        datasets.setdefault("train", bn_data)
    labels = _labels(weights)
    spec = _spec(
        model,
        model_kwargs,
        weights,
        opts,
        labels=labels,
        split=split,
        method=method,
        max_iter=max_iter if method == "weight" else None,
        seed=seed if method == "weight" else None,
        num_examples=num_examples if method == "activation" else None,
        num_points=num_points,
        metric=metric,
        bn_policy=bn,
        bn_batches=bn_batches,
        batch_size=batch_size,
        strategy=strategy,
    )
    store = _open(out, "align", spec, [net_a, net_b], datasets)
    notes: list[str] = []
    say(f"{method} matching of {labels[1]} to {labels[0]} ...")
    with _analysis(store, notes):
        if method == "weight":
            aligned = weight_matching(
                net_a, net_b, example_input=ds.x[: min(64, len(ds))], max_iter=max_iter, seed=seed
            )
        else:
            aligned = activation_matching(net_a, net_b, ds, num_examples=num_examples)
        say(f"barriers on the lines to B and to aligned B ({num_points} points each) ...")
        comparison = barrier_before_after(
            net_a,
            net_b,
            aligned,
            {split: ds},
            num_points=num_points,
            metric=metric,
            bn_policy=bn,
            bn_data=bn_data,
            bn_batches=bn_batches,
            batch_size=batch_size,
            strategy=strategy,
        )
    written = [save_weights(aligned.model, store.path / "model.safetensors")]
    if save is not None:
        written.append(save_weights(aligned.model, save))
    result = {
        **aligned.to_dict(),
        "barrier_before": comparison.before,
        "barrier_after": comparison.after,
        "barrier": comparison.to_dict(),
        "aligned_weights": [str(p) for p in written],
        "labels": labels,
        "weights": [str(w) for w in weights],
    }
    figures = _save(_align_figure(comparison, labels, method), store, "alignment")

    def summary() -> None:
        moved = sum(
            int(np.sum(np.asarray(p) != np.arange(len(p)))) for p in aligned.permutations.values()
        )
        info(
            f"{method} matching: {moved} units moved in {len(aligned.permutations)} groups, "
            f"{aligned.iterations} iteration(s); outputs unchanged up to {aligned.max_output_diff:.2e}"
        )
        info(
            f"linear barrier of the {metric} on {split}: before {_fmt(comparison.before)}, "
            f"after {_fmt(comparison.after)}"
        )
        info("aligned weights: " + ", ".join(str(p) for p in written))

    _finish(store, result, figures, json_out, notes, summary)


def _align_figure(cmp, labels: list[str], method: str):
    from basinscope.plotting._common import LABEL_SIZE, LEGEND_SIZE, new_figure, style_axes

    fig = new_figure((5.2, 3.5))
    ax = fig.add_subplot()
    ax.plot(cmp.alphas, cmp.curve_before, "o-", ms=3, color="tab:red", label="A -> B")
    ax.plot(cmp.alphas, cmp.curve_after, "o-", ms=3, color="tab:green", label="A -> B aligned")
    ax.set_xlabel(f"alpha  ({labels[0]} -> {labels[1]})", fontsize=LABEL_SIZE)
    ax.set_ylabel(f"{cmp.split} {cmp.metric}", fontsize=LABEL_SIZE)
    ax.set_title(
        f"{method} matching: linear barrier {cmp.before:.3g} -> {cmp.after:.3g}",
        fontsize=LABEL_SIZE,
    )
    ax.legend(fontsize=LEGEND_SIZE)
    style_axes(ax)
    return fig


# -- ensemble --------------------------------------------------------------------------------
ENSEMBLE_HELP = """Ensembles from one run (FGE, SWA) or independent ensembles, with their budget.

--method fge (fast geometric ensembling, Garipov et al. 2018): from the trained model
(--weights), --cycles cycles of --cycle-steps updates with a cyclic learning rate between
--lr-max and --lr-min; one snapshot per cycle at the lowest rate; the ensemble averages
the snapshots' softmax. --method swa (stochastic weight averaging, Izmailov et al. 2018):
from the trained model, --steps updates at the constant rate --lr, the weights averaged
after update --swa-start every --swa-every updates (BatchNorm statistics re-estimated).
--method independent: --members models from fresh initializations (seeds 0, 1, ...),
--steps updates each, or --budget updates in all (the baseline at the same budget).
The budget counts gradient steps, plus --pretrain-steps for the trained starting model.
Accuracy, diversity (mean pairwise disagreement) and the barriers between consecutive
members are measured on --split; figures/ensemble plots them. The members are saved in
models/ in the run folder.

JSON (--json): method, budget, members, ensemble_accuracy, member_accuracies, diversity,
barriers, barrier_definition, barrier_metric, metrics (ensemble_nll, member_nll,
pairwise_disagreement, barrier_details, ...), settings, member_names, member_files, warnings, run_dir,
figures.

Examples:

  basinscope ensemble --model mlp --weights runs/mlp/model.safetensors --method fge \\
      --cycles 4 --cycle-steps 50 --pretrain-steps 500

  basinscope ensemble --model mlp --weights runs/mlp/model.safetensors --method swa \\
      --steps 200 --lr 0.02

  basinscope ensemble --model mlp --method independent --members 4 --budget 700 --json
"""


def ensemble_cmd(
    model: str = MODEL_OPT,
    model_kwargs: str = KWARGS_OPT,
    weights: Path = typer.Option(
        None, "--weights", help="fge/swa: the trained model to start from."
    ),
    data: str = DATA_OPT,
    rotation: float = ROT_OPT,
    block_shuffle: int = BLOCK_OPT,
    noise: float = NOISE_OPT,
    shift_seed: int = SHIFT_SEED_OPT,
    split: str = typer.Option(
        "test", "--split", help="Split the ensemble is evaluated on (training uses train)."
    ),
    method: str = typer.Option("fge", "--method", help="fge, swa or independent."),
    cycles: int = typer.Option(4, "--cycles", help="fge: number of cycles (= snapshots)."),
    cycle_steps: int = typer.Option(20, "--cycle-steps", help="fge: updates per cycle (>= 2)."),
    lr_max: float = typer.Option(0.05, "--lr-max", help="fge: highest learning rate."),
    lr_min: float = typer.Option(0.0005, "--lr-min", help="fge: lowest learning rate."),
    steps: int = typer.Option(
        None, "--steps", help="swa: updates; independent: updates per member (default 100)."
    ),
    lr: float = typer.Option(0.05, "--lr", help="swa, independent: the learning rate."),
    swa_start: int = typer.Option(
        None, "--swa-start", help="swa: average after this update (default --steps / 2)."
    ),
    swa_every: int = typer.Option(1, "--swa-every", help="swa: average every this many updates."),
    members: int = typer.Option(3, "--members", help="independent: number of models."),
    budget: int = typer.Option(
        None, "--budget", help="independent: total updates, split evenly among the members."
    ),
    pretrain_steps: int = typer.Option(
        0, "--pretrain-steps", help="fge/swa: updates that trained --weights (for the budget)."
    ),
    batch_size: int = typer.Option(64, "--batch-size", help="Training minibatch size."),
    optimizer: str = typer.Option("sgd", "--optimizer", help="sgd, adam or adamw."),
    momentum: float = typer.Option(0.9, "--momentum"),
    weight_decay: float = typer.Option(0.0, "--weight-decay"),
    data_seed: int = typer.Option(0, "--data-seed", help="fge/swa: data-order seed."),
    barriers: bool = typer.Option(
        True, "--barriers/--no-barriers", help="Barriers between consecutive members."
    ),
    definition: str = typer.Option("linear", "--definition", help=DEFINITION_HELP),
    metric: str = typer.Option("error", "--metric", help="Barrier metric: error or loss."),
    num_points: int = typer.Option(11, "--num-points", help="alpha grid of each barrier."),
    bn: str = BN_OPT,
    out: Path = OUT_OPT,
    json_out: bool = JSON_OPT,
    progress: bool = PROGRESS_OPT,
) -> None:
    from basinscope.analyses.ensembles import fge, independent_ensemble, swa
    from basinscope.models import save_weights

    _choice("--method", method, ENSEMBLE_METHODS, "ensemble method")
    _choice("--definition", definition, BARRIER_DEFINITIONS, "barrier definition")
    _choice("--metric", metric, BARRIER_METRICS, "barrier metric")
    _choice("--bn", bn, BN_POLICIES, "BatchNorm policy")
    _choice("--optimizer", optimizer, OPTIMIZERS, "optimizer")
    _at_least("--num-points", num_points, 3)
    _at_least("--pretrain-steps", pretrain_steps, 0)
    if method in ("fge", "swa") and weights is None:
        raise BasinscopeError(
            f"--method {method} starts from a trained model: pass its weights with --weights "
            "(e.g. RUN/model.safetensors from `basinscope train`); --method independent trains "
            "from scratch"
        )
    if method == "independent" and weights is not None:
        raise BasinscopeError(
            "--method independent trains every member from a fresh initialization: drop "
            "--weights (use --method fge or swa to start from a trained model)"
        )
    if budget is not None and method != "independent":
        raise BasinscopeError(
            f"--budget is for --method independent (the budget of fge/swa is set by "
            f"--cycles/--cycle-steps or --steps), got --method {method}"
        )
    if method == "independent":
        _at_least("--members", members, 1)
        if budget is not None:
            if steps is not None:
                raise BasinscopeError("give --steps (per member) or --budget (in all), not both")
            if budget < members:
                raise BasinscopeError(
                    f"--budget {budget} is less than one update per member (--members {members})"
                )
            steps = budget // members
    if method == "fge":
        _at_least("--cycles", cycles, 1)
        if cycle_steps < 2:
            raise BasinscopeError(f"--cycle-steps must be at least 2, got {cycle_steps}")
    steps = 100 if steps is None else steps
    _at_least("--steps", steps, 1)
    if method == "swa":
        swa_start = steps // 2 if swa_start is None else swa_start
        if not 0 <= swa_start <= steps:
            raise BasinscopeError(
                f"--swa-start must be an update in [0, --steps] = [0, {steps}], got {swa_start}"
            )
        _at_least("--swa-every", swa_every, 1)
    base = dict(
        batch_size=batch_size,
        optimizer=optimizer,
        momentum=momentum,
        weight_decay=weight_decay,
        data_seed=data_seed,
    )
    if method == "fge":
        config = _train_config(steps=cycles * cycle_steps, lr=lr_max, **base)
        run = dict(cycles=cycles, cycle_steps=cycle_steps, lr_max=lr_max, lr_min=lr_min)
    elif method == "swa":
        config = _train_config(steps=steps, lr=lr, **base)
        run = dict(steps=steps, start=swa_start, lr=lr, every=swa_every)
    else:
        config = _train_config(steps=steps, lr=lr, **base)
        run = dict(n=members, steps=steps)
    say = _say(json_out, progress)
    opts = DataOptions(data, rotation, block_shuffle, noise, shift_seed)
    kwargs = parse_json_kwargs(model_kwargs)
    net = load_model(model, model_kwargs, weights) if weights is not None else None
    train_data = opts.load("train")
    eval_data = train_data if split == "train" else opts.load(split)
    metric_kwargs = dict(
        barriers=barriers,
        barrier_definition=definition,
        barrier_metric=metric,
        num_points=num_points,
        bn_policy=bn,
        bn_data=train_data if bn == "recompute" else None,
    )
    spec = _spec(
        model,
        model_kwargs,
        weights,
        opts,
        split=split,
        method=method,
        run=run,
        config=config.to_dict(),
        pretrain_steps=pretrain_steps if method != "independent" else 0,
        **{k: v for k, v in metric_kwargs.items() if k != "bn_data"},
    )
    store = _open(
        out,
        "ensemble",
        spec,
        [net] if net is not None else [],
        {"train": train_data, split: eval_data},
    )
    notes: list[str] = []
    with _analysis(store, notes):
        if method == "fge":
            say(f"fge: {cycles} cycles of {cycle_steps} updates from {weights} ...")
            res = fge(
                net,
                train_data,
                config=config,
                eval_data=eval_data,
                pretrain_steps=pretrain_steps,
                **run,
                **metric_kwargs,
            )
        elif method == "swa":
            say(
                f"swa: {steps} updates at lr {lr:g} from {weights}, averaging after {swa_start} ..."
            )
            res = swa(
                net,
                train_data,
                config=config,
                eval_data=eval_data,
                bn_data=train_data,
                pretrain_steps=pretrain_steps,
                **run,
                # swa's bn_data serves both the average's statistics and the barriers
                **{k: v for k, v in metric_kwargs.items() if k != "bn_data"},
            )
        else:
            say(f"independent ensemble: {members} models, {steps} updates each ...")

            def factory(seed: int):
                from basinscope.models import build_model as build

                return build(model, kwargs, init_seed=seed)

            res = independent_ensemble(
                factory, train_data, config=config, eval_data=eval_data, **run, **metric_kwargs
            )
    names = (
        ["sgd_final", "swa"]
        if method == "swa"
        else [f"{'snapshot' if method == 'fge' else 'member'}_{i}" for i in range(len(res.models))]
    )
    member_files = [
        save_weights(m, store.path / "models" / f"{n}.safetensors")
        for n, m in zip(names, res.models)
    ]
    result = {
        **res.to_dict(),
        "member_names": names,
        "member_files": [str(p) for p in member_files],
    }
    figures = _save(_ensemble_figure(res, names, split), store, "ensemble")

    def summary() -> None:
        what = "SWA model" if method == "swa" else f"ensemble of {res.members}"
        info(
            f"{method}: {what} accuracy {_fmt(res.ensemble_accuracy)} on {split} "
            f"(budget {res.budget} updates)"
        )
        info(
            "  members: "
            + ", ".join(f"{n} {_fmt(a)}" for n, a in zip(names, res.member_accuracies))
        )
        info(f"  diversity (mean disagreement) {_fmt(res.diversity)}")
        if res.barriers:
            info(
                f"  {definition} barriers of the {metric} between consecutive members: "
                + ", ".join(_fmt(b) for b in res.barriers)
            )

    _finish(store, result, figures, json_out, notes, summary)


def _ensemble_figure(res, names: list[str], split: str):
    from basinscope.plotting._common import LABEL_SIZE, LEGEND_SIZE, new_figure, style_axes

    panels = 2 if res.barriers else 1
    fig = new_figure((4.4 * panels, 3.4))
    axes = np.atleast_1d(fig.subplots(1, panels))
    ax = axes[0]
    x = np.arange(len(names))
    ax.bar(x, res.member_accuracies, color="#4c72b0", label="members")
    ax.axhline(
        res.ensemble_accuracy,
        color="tab:red",
        lw=1.5,
        label="SWA model" if res.method == "swa" else "ensemble",
    )
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    lo = min([*res.member_accuracies, res.ensemble_accuracy])
    ax.set_ylim(max(0.0, lo - 0.1), 1.0)
    ax.set_ylabel(f"{split} accuracy", fontsize=LABEL_SIZE)
    ax.set_title(
        f"{res.method}: budget {res.budget}, diversity {res.diversity:.3g}", fontsize=LABEL_SIZE
    )
    ax.legend(fontsize=LEGEND_SIZE)
    style_axes(ax)
    if res.barriers:
        bx = axes[1]
        pairs = np.arange(len(res.barriers))
        bx.bar(pairs, res.barriers, color="tab:purple")
        bx.set_xticks(pairs, [f"{i}-{i + 1}" for i in pairs], fontsize=8)
        bx.set_xlabel("consecutive members (i - i+1)", fontsize=LABEL_SIZE)
        bx.set_ylabel(
            f"{res.barrier_definition} barrier ({res.barrier_metric})", fontsize=LABEL_SIZE
        )
        bx.axhline(0.0, color="0.6", lw=0.8)
        style_axes(bx)
    return fig


barrier_cmd.__doc__ = BARRIER_HELP
instability_cmd.__doc__ = INSTABILITY_HELP
basin_cmd.__doc__ = BASIN_HELP
curve_cmd.__doc__ = CURVE_HELP
align_cmd.__doc__ = ALIGN_HELP
ensemble_cmd.__doc__ = ENSEMBLE_HELP
