"""Barriers and basins from the command line: ``basinscope barrier`` (the loss or error
barrier on the line between trained models) and ``basinscope basin`` (the
(epsilon, delta)-basin test of their convex hull).

Each writes a run folder: see :mod:`basinscope.cli._connectivity_common`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import typer

from basinscope._checks import at_least, check_seed
from basinscope.analyses.barrier import BarrierSpec
from basinscope.cli._connectivity_common import (
    BN_POLICIES,
    DTYPES,
    EVAL_METRICS,
    OUT_OPT,
    _analysis,
    _choice,
    _ci,
    _finish,
    _fmt,
    _labels,
    _models,
    _open,
    _save,
    _say,
    _spec,
)
from basinscope.cli.common import WAIT_OPT, info
from basinscope.cli.generate import Command, Context, typer_command
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
from basinscope.cli.options import DataOptions, ModelsOptions, fingerprints
from basinscope.errors import BasinscopeError
from basinscope.spec import Spec, group

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


@dataclass(frozen=True)
class BarrierCommand(Spec):
    models: ModelsOptions = group(ModelsOptions)
    data: DataOptions = group(DataOptions)
    barrier: BarrierSpec = group(BarrierSpec)


def run_barrier(cmd: BarrierCommand, ctx: Context):
    from basinscope.analyses.barrier import BarrierMatrix, barrier, barrier_matrix

    spec = cmd.barrier
    nets = cmd.models.load(2, "a barrier")
    ds = cmd.data.load(spec.split)
    datasets = {spec.split: ds}
    bn_data = None
    if spec.eval.bn_policy == "recompute":
        bn_data = ds if spec.split == "train" else cmd.data.load("train")
        datasets.setdefault("train", bn_data)
    ctx.open(fingerprints(nets, datasets))
    labels = cmd.models.labels()
    npairs = len(nets) * (len(nets) - 1) // 2
    ctx.say(
        f"{spec.definition} barrier of the {spec.metric} on {spec.split} ({len(ds)} examples) "
        f"between {len(nets)} models: {npairs} pair{'s' if npairs > 1 else ''}"
    )
    if len(nets) == 2:
        return barrier(nets[0], nets[1], ds, spec=spec, bn_data=bn_data, labels=tuple(labels))
    matrix, pairs = barrier_matrix(nets, ds, labels=labels, spec=spec, bn_data=bn_data)
    return BarrierMatrix.of(labels, matrix, pairs)


def _barrier_lines(result) -> list[str]:
    pairs = getattr(result, "pairs", (result,))
    return [
        f"{r.models[0]} -- {r.models[1]}: {r.definition} {r.metric} barrier {_fmt(r.value)}"
        f"{_ci(r.ci)} at alpha {_fmt(r.worst_alpha)} "
        f"(f(0) {_fmt(r.f0)}, f(1) {_fmt(r.f1)}, f(worst) {_fmt(r.f_worst)})"
        for r in pairs
    ] + [f"definition: {result.definition_formula}"]


BARRIER = Command("barrier", BarrierCommand, run_barrier, BARRIER_HELP, _barrier_lines)
barrier_cmd = typer_command(BARRIER)


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
    wait: bool = WAIT_OPT,
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
    at_least("--samples", samples, 2)
    at_least("--pairs", pairs, 2)
    check_seed("--seed", seed)
    at_least("--batch-size", batch_size, 1)
    at_least("--bn-batches", bn_batches, 1)
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
    store = _open(out, "basin", spec, nets, datasets, wait=wait)
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


barrier_cmd.__doc__ = BARRIER_HELP
basin_cmd.__doc__ = BASIN_HELP
