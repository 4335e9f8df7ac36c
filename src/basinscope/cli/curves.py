"""Curves and alignment from the command line: ``basinscope curve`` (a trained low-loss
curve between two models) and ``basinscope align`` (permuting one model's hidden units
to match another's).

Each command is its spec (option groups and the analysis's spec), a ``run`` function that
returns the analysis's result, and its help; :mod:`basinscope.cli.generate` does the rest
(the run folder, ``--json``, the figure).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from basinscope._checks import MAX_STEPS, safe_name
from basinscope.analyses.alignment import AlignSpec
from basinscope.analyses.curves import CurveEvalSpec, CurveSpec
from basinscope.cli.barrier import eval_data, fmt
from basinscope.cli.generate import Command, Context, typer_command
from basinscope.errors import BasinscopeError
from basinscope.inputs import DataOptions, ModelsOptions, fingerprints
from basinscope.spec import Spec, group, option
from basinscope.store import paths


def _two(cmd: Spec, what: str, fix: str) -> None:
    """Exactly two --weights (checked when the command line is read)."""
    n = len(cmd.models.weights)
    if n != 2:
        flag = cmd.models.name_of("weights")
        raise BasinscopeError(
            f"{what}, got {n} {flag}: pass {flag} A.safetensors {flag} B.safetensors{fix}"
        )


# -- curve -----------------------------------------------------------------------------------
CURVE_HELP = """Train a low-loss curve between two models (Garipov et al. 2018) and compare it with the line.

A Bezier curve of --order (quadratic by default: one control point) or a polychain with
--bends bends joins the two --weights; its interior points are trained for --steps
minibatch updates on E_{t~U(0,1)} L(phi(t)) (one t per minibatch) with the endpoints fixed.
The curve is saved as curve.safetensors in the run folder (basinscope.analyses.load_curve
reads it), then loss and error are evaluated at --points values of t on the curve and on
the straight line (BatchNorm statistics re-estimated at every t by default for models with
BatchNorm) and plotted (figures/curve) with the curve's length relative to the line's.

JSON (--json): the curve result (kind "curve"): history (step, t, loss, lr per update),
config (the training configuration), definition (the objective), labels, curve_file, spec
(the training settings) and metrics, the evaluation (kind "curve_evaluation"): curve (t
and <split>_loss, <split>_error, as an xarray dataset), line (alpha and the same), max_curve,
max_line (the maxima over t), length, distance, length_ratio, settings, evaluation, spec.
The curve's points are in the run folder's tensors/ (basinscope.load(RUN).curve).

Examples:

  basinscope curve --model mlp --weights a.safetensors --weights b.safetensors --steps 500

  basinscope curve --model lenet --weights a.safetensors --weights b.safetensors \\
      --kind polychain --bends 1 --steps 1000 --lr 0.02 --splits train,test --json
"""


def _splits(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    if not names:
        raise BasinscopeError(f"--splits needs at least one split, e.g. train,test; got {text!r}")
    return tuple(safe_name("split name", s) for s in names)


@dataclass(frozen=True)
class Endpoints(ModelsOptions):
    weights: tuple[Path, ...] = option(
        (), "Weights of an endpoint; give it twice (theta_A, theta_B)."
    )


@dataclass(frozen=True)
class CurveTraining(CurveSpec):
    steps: int = option(200, "Training updates of the control points.", low=1, high=MAX_STEPS)


@dataclass(frozen=True)
class CurveEvaluationOptions(CurveEvalSpec):
    metrics: tuple[str, ...] = option(("loss", "error"), "Metrics evaluated.", cli=False)


@dataclass(frozen=True)
class CurveCommand(Spec):
    models: Endpoints = group(Endpoints)
    data: DataOptions = group(DataOptions)
    splits: tuple[str, ...] = option(
        ("train", "test"),
        "Comma-separated splits to evaluate on (training: train; default: train,test).",
        parse=_splits,
        metavar="SPLIT,SPLIT",
    )
    curve: CurveTraining = group(CurveTraining)
    evaluation: CurveEvaluationOptions = group(CurveEvaluationOptions)

    def check(self) -> None:
        _two(self, "a curve joins exactly two models", "")
        for s in self.splits:
            safe_name("split name", s)


def run_curve(cmd: CurveCommand, ctx: Context):
    from basinscope.analyses.curves import evaluate_curve, save_curve, train_curve

    net_a, net_b = cmd.models.load(2, "a curve")
    train_data = cmd.data.load("train")
    datasets = {s: (train_data if s == "train" else cmd.data.load(s)) for s in cmd.splits}
    ctx.open(fingerprints([net_a, net_b], {"train": train_data, **datasets}))
    spec, labels = cmd.curve, tuple(cmd.models.labels())
    degree = f"order {spec.order}" if spec.kind == "bezier" else f"{spec.bends} bends"
    ctx.say(
        f"training a {spec.kind} curve ({degree}) between {labels[0]} and {labels[1]}: "
        f"{spec.steps} updates"
    )
    trained = train_curve(net_a, net_b, train_data, spec=spec, labels=labels, progress=ctx.progress)
    curve_file = save_curve(
        ctx.out / paths.CURVE,
        trained.curve,
        metadata={"model": cmd.models.model, "model_kwargs": cmd.models.model_kwargs},
    )
    ev_spec = cmd.evaluation
    ctx.say(f"evaluating {ev_spec.points} points on the curve and on the line ...")
    ev = evaluate_curve(
        net_a, trained.curve, datasets, spec=ev_spec, bn_data=train_data, progress=ctx.progress
    )
    return dataclasses.replace(trained, metrics=ev, curve_file=str(curve_file))


def _curve_lines(r) -> list[str]:
    ev = r.metrics
    lines = [
        f"{r.curve_kind} curve: length {fmt(ev.length)} = {fmt(ev.length_ratio)} x the line's "
        f"{fmt(ev.distance)}; saved to {r.curve_file}"
    ]
    for var in ev.max_curve:
        lines.append(
            f"  max {var}: curve {fmt(ev.max_curve[var])}, line {fmt(ev.max_line.get(var))}"
        )
    return lines


CURVE = Command("curve", CurveCommand, run_curve, text=CURVE_HELP, summary=_curve_lines)
curve_cmd = typer_command(CURVE)


# -- align -----------------------------------------------------------------------------------
ALIGN_HELP = """Permute the hidden units of model B to align it with model A, and the barrier it removes.

--method weight: weight matching (Git Re-Basin, Ainsworth et al. 2023, Algorithm 1),
coordinate ascent on the inner product of the weights, groups visited in a --seed order,
at most --max-iter sweeps. --method activation: activation matching, the assignment that
maximizes the correlation of matched units' activations over --num-examples inputs of
--split. The permutations are symmetries of the network: the aligned model's outputs are
checked against B's (max_output_diff). The barrier (--definition, default the linear one
of Entezari et al. 2022) of --metric on --split is measured on the line A -> B and on the
line A -> aligned B at --num-points alphas (figures/alignment). The aligned weights are
saved as model.safetensors in the run folder and, with --save, at that path too.

JSON (--json): the alignment result (kind "alignment"): method, permutations (per group:
the unit of B that becomes unit i), iterations, objective, max_output_diff,
permutation_spec (the groups, their sizes, origin), definition (the matching's), barrier
(kind "barrier_comparison": before, after, metric, split, alphas, curve_before,
curve_after, definition, definition_formula), labels, aligned_weights (the files
written) and spec (the settings).

Examples:

  basinscope align --model mlp --weights a.safetensors --weights b.safetensors

  basinscope align --model lenet --weights a.safetensors --weights b.safetensors \\
      --method activation --metric error --save b-aligned.safetensors --json
"""


@dataclass(frozen=True)
class AlignModels(ModelsOptions):
    weights: tuple[Path, ...] = option((), "Weights of model A, then of model B (give it twice).")


@dataclass(frozen=True)
class AlignCommand(Spec):
    models: AlignModels = group(AlignModels)
    data: DataOptions = group(DataOptions)
    align: AlignSpec = group(AlignSpec)
    save: Path | None = option(None, "Also write the aligned weights here (.safetensors or .pt).")

    def check(self) -> None:
        _two(self, "align needs exactly two models", " (B is permuted to match A)")
        if self.save is not None and self.save.suffix.lower() not in (
            ".safetensors",
            ".pt",
            ".pth",
        ):
            raise BasinscopeError(
                f"{self.name_of('save')} {str(self.save)!r}: the aligned weights are written "
                f"as .safetensors or .pt, e.g. {self.name_of('save')} aligned.safetensors"
            )


def run_align(cmd: AlignCommand, ctx: Context):
    from basinscope.analyses.alignment import align
    from basinscope.models import save_weights

    spec = cmd.align
    net_a, net_b = cmd.models.load(2, "align")
    ds, bn_data, datasets = eval_data(cmd.data, spec.split, spec.eval.bn_policy)
    ctx.open(fingerprints([net_a, net_b], datasets))
    labels = tuple(cmd.models.labels())
    ctx.say(
        f"{spec.method} matching of {labels[1]} to {labels[0]}, then the barriers on the "
        f"lines to B and to aligned B ({spec.num_points} points each) ..."
    )
    res = align(net_a, net_b, ds, spec=spec, bn_data=bn_data, labels=labels)
    written = [save_weights(res.model, ctx.out / paths.WEIGHTS)]
    if cmd.save is not None:
        written.append(save_weights(res.model, cmd.save))
    return dataclasses.replace(res, aligned_weights=tuple(str(p) for p in written))


def _align_lines(r) -> list[str]:
    moved = sum(int(np.sum(np.asarray(p) != np.arange(len(p)))) for p in r.permutations.values())
    b = r.barrier
    return [
        f"{r.method}: {moved} units moved in {len(r.permutations)} groups, "
        f"{r.iterations} iteration(s); outputs unchanged up to {r.max_output_diff:.2e}",
        f"{b.definition} barrier of the {b.metric} on {b.split}: before {fmt(b.before)}, "
        f"after {fmt(b.after)}",
        "aligned weights: " + ", ".join(r.aligned_weights),
    ]


ALIGN = Command("align", AlignCommand, run_align, text=ALIGN_HELP, summary=_align_lines)
align_cmd = typer_command(ALIGN)
