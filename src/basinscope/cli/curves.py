"""Curves and alignment from the command line: ``basinscope curve`` (a trained low-loss
curve between two models) and ``basinscope align`` (permuting one model's hidden units
to match another's).

Each writes a run folder: see :mod:`basinscope.cli._connectivity_common`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer

from basinscope._checks import (
    MAX_POINTS,
    MAX_STEPS,
    at_least,
    check_seed,
    finite_float,
    safe_name,
)
from basinscope.cli._connectivity_common import (
    BN_POLICIES,
    DTYPES,
    EVAL_METRICS,
    OUT_OPT,
    STRATEGIES,
    _analysis,
    _choice,
    _finish,
    _fmt,
    _labels,
    _models,
    _open,
    _save,
    _say,
    _spec,
)
from basinscope.cli.common import WAIT_OPT, DataOptions, info, parse_json_kwargs
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

ALIGN_METHODS = ("weight", "activation")

MAX_BENDS = 64  # Bezier order / polychain bends
_COPIES = " (each control point is a full copy of the model's parameters)"


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
    wait: bool = WAIT_OPT,
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
    # each control point or bend is a full copy of the model's parameters
    at_least("--order", order, 1, high=MAX_BENDS, high_why=_COPIES)
    at_least("--bends", bends, 1, high=MAX_BENDS, high_why=_COPIES)
    at_least("--steps", steps, 1, high=MAX_STEPS)
    at_least("--batch-size", batch_size, 1)
    at_least("--eval-batch-size", eval_batch_size, 1)
    at_least("--bn-batches", bn_batches, 1)
    at_least("--points", points, 2, high=MAX_POINTS)
    check_seed("--seed", seed)
    check_seed("--data-seed", data_seed)
    finite_float("--momentum", momentum, low=0, high=1, high_open=True)
    finite_float("--weight-decay", weight_decay, low=0)
    from basinscope.training import check_schedule

    check_schedule(schedule, total_steps=steps, base_lr=lr)
    names = [s.strip() for s in splits.split(",") if s.strip()]
    if not names:
        raise BasinscopeError(f"--splits needs at least one split, e.g. train,test; got {splits!r}")
    for s in names:
        safe_name("split name", s)
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
    store = _open(out, "curve", spec, [net_a, net_b], {"train": train_data, **datasets}, wait=wait)
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
    wait: bool = WAIT_OPT,
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
    at_least("--num-points", num_points, 3, high=MAX_POINTS)
    at_least("--max-iter", max_iter, 1)
    at_least("--num-examples", num_examples, 1)
    at_least("--batch-size", batch_size, 1)
    at_least("--bn-batches", bn_batches, 1)
    check_seed("--seed", seed)
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
    store = _open(out, "align", spec, [net_a, net_b], datasets, wait=wait)
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


curve_cmd.__doc__ = CURVE_HELP
align_cmd.__doc__ = ALIGN_HELP
