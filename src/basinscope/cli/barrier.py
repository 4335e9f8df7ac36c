"""Barriers and basins from the command line: ``basinscope barrier`` (the loss or error
barrier on the line between trained models) and ``basinscope basin`` (the
(epsilon, delta)-basin test of their convex hull).

Each command is its spec (option groups and the analysis's spec), a ``run`` function that
returns the analysis's result, and its help; :mod:`basinscope.cli.generate` does the rest
(the run folder, ``--json``, the figure).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from basinscope.analyses.barrier import BarrierSpec
from basinscope.analyses.basin import BasinSpec
from basinscope.cli.generate import Command, Context, typer_command
from basinscope.errors import BasinscopeError
from basinscope.inputs import DataOptions, ModelsOptions, fingerprints
from basinscope.spec import Spec, group, option


def fmt(x: Any) -> str:
    """A number in summary lines (4 significant digits; anything else as text)."""
    try:
        return f"{float(x):.4g}"
    except (TypeError, ValueError):
        return str(x)


def fmt_ci(ci: Any) -> str:
    return "" if ci is None else f" [{fmt(ci[0])}, {fmt(ci[1])}]"


def eval_data(data: DataOptions, split: str, bn_policy: str) -> tuple[Any, Any, dict[str, Any]]:
    """The split evaluated, the BatchNorm data (the train split, with ``recompute``) and
    every dataset read (for the run's fingerprints)."""
    ds = data.load(split)
    datasets = {split: ds}
    bn_data = None
    if bn_policy == "recompute":
        bn_data = ds if split == "train" else data.load("train")
        datasets.setdefault("train", bn_data)
    return ds, bn_data, datasets


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
    ds, bn_data, datasets = eval_data(cmd.data, spec.split, spec.eval.bn_policy)
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
        f"{r.models[0]} -- {r.models[1]}: {r.definition} {r.metric} barrier {fmt(r.value)}"
        f"{fmt_ci(r.ci)} at alpha {fmt(r.worst_alpha)} "
        f"(f(0) {fmt(r.f0)}, f(1) {fmt(r.f1)}, f(worst) {fmt(r.f_worst)})"
        for r in pairs
    ] + [f"definition: {result.definition_formula}"]


BARRIER = Command("barrier", BarrierCommand, run_barrier, text=BARRIER_HELP, summary=_barrier_lines)
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

JSON (--json): the basin result (kind "basin"): epsilon, epsilon_estimated, delta, holds,
ci_supports, mean_loss (with mean_loss_std_error, mean_loss_ci), condition1..condition3
(each: condition, name, statement, estimate, std_error, ci, threshold, margin,
margin_std_error, margin_ci, holds, ci_supports), epsilon_range, num_params,
affine_dimension, vertex_losses, the samples (inside_losses, noise_losses, step_losses,
...), definition, settings, labels and spec (the settings).

Examples:

  basinscope basin --model mlp --weights a.safetensors --weights b.safetensors \\
      --weights c.safetensors --delta 5

  basinscope basin --weights a.safetensors --weights b.safetensors --delta 2 --epsilon 0.05 \\
      --samples 128 --pairs 128 --json
"""


@dataclass(frozen=True)
class HullVertices(ModelsOptions):
    weights: tuple[Path, ...] = option((), "Weights of a solution; repeat (the hull's vertices).")


@dataclass(frozen=True)
class BasinCommand(Spec):
    models: HullVertices = group(HullVertices)
    data: DataOptions = group(DataOptions)
    split: str = option("train", "Split whose mean loss is l.")
    basin: BasinSpec = group(BasinSpec)

    def check(self) -> None:
        if not self.models.weights:
            flag = self.models.name_of("weights")
            raise BasinscopeError(
                "the basin test needs the solutions whose convex hull is tested: pass "
                f"{flag} once per solution, e.g. {flag} a.safetensors {flag} b.safetensors"
            )


def run_basin(cmd: BasinCommand, ctx: Context):
    from basinscope.analyses.basin import basin_test

    spec = cmd.basin
    nets = cmd.models.load(1, "the basin test")
    ds, bn_data, datasets = eval_data(cmd.data, cmd.split, spec.eval.bn_policy)
    ctx.open(fingerprints(nets, datasets))
    ctx.say(
        f"basin test of the hull of {len(nets)} solutions on {cmd.split} ({len(ds)} examples): "
        f"{spec.samples} inside points, {spec.pairs} pairs, delta {spec.delta:g} ..."
    )
    labels = tuple(cmd.models.labels())
    return basin_test(nets, ds, spec=spec, bn_data=bn_data, labels=labels)


def _basin_lines(res) -> list[str]:
    eps = f"{res.epsilon:.4g}" + (
        " (estimated: the smallest for condition 1)" if res.epsilon_estimated else ""
    )
    metric = res.settings.get("metric", "loss")
    lines = [f"epsilon {eps}, delta {res.delta:g}; mean {metric} in the hull {fmt(res.mean_loss)}"]
    for c in res.conditions:
        support = {None: "", True: ", supported by the interval"}.get(
            c.ci_supports, ", not supported by the interval"
        )
        lines.append(
            f"  ({c.condition}) {c.name}: estimate {fmt(c.estimate)}{fmt_ci(c.ci)} vs "
            f"threshold {fmt(c.threshold)}: {'holds' if c.holds else 'fails'}{support}"
        )
    supported = "supported" if res.ci_supports else "not supported"
    lines.append(
        f"(epsilon, delta)-basin: {'yes' if res.holds else 'no'} ({supported} by the intervals)"
    )
    return lines


BASIN = Command("basin", BasinCommand, run_basin, text=BASIN_HELP, summary=_basin_lines)
basin_cmd = typer_command(BASIN)
