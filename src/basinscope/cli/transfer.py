"""Comparing trained models and adapting them to a shift, from the command line:
``basinscope similarity`` (CKA between layers), ``distance`` (parameter distances and
shared mistakes), ``rewind`` (one module rewound to its initialisation at a time),
``criticality`` (module criticality and the network criticality) and ``finetune``
(fine-tuning strategies under a distribution shift, with forgetting and adaptation).

Each writes a run folder: see :mod:`basinscope.cli._connectivity_common`.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import typer

from basinscope._checks import MAX_STEPS, at_least, check_seed
from basinscope.cli._connectivity_common import (
    OUT_OPT,
    STRATEGIES,
    _analysis,
    _choice,
    _finish,
    _labels,
    _open,
    _save,
    _say,
    _spec,
    _train_config,
)
from basinscope.cli._connectivity_common import _fmt as _fmt_any
from basinscope.cli.common import (
    WAIT_OPT,
    DataOptions,
    info,
    load_model,
    model_spec,
    parse_range,
)
from basinscope.cli.landscape import (
    BLOCK_OPT,
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

CKA_METHODS = ("minibatch", "linear", "debiased", "rbf")
NOISE_VARIANTS = ("absolute", "frobenius")
FT_STRATEGIES = ("ft", "lp", "lp-ft", "surgical", "dfr", "guided")
GUIDED_SIGNALS = ("gradient_norm", "relative_gradient_norm", "curvature")
MODULES_OPT = typer.Option(
    [],
    "--modules",
    help="Module (named_modules() name, '(root)' for the root); repeat. Default: every "
    "module that owns parameters.",
)
ENGINE_STRATEGY_OPT = typer.Option(
    "auto", "--strategy", help="Evaluation engine: auto (time both), vmap or loop."
)


def _fmt(x: Any) -> str:
    """Like the shared formatter, without a signed zero ("-0")."""
    if isinstance(x, float) and x == 0.0:
        x = 0.0
    return _fmt_any(x)


def _two_weights(weights: list[Path], first: str, second: str) -> None:
    if len(weights) != 2:
        raise BasinscopeError(
            f"pass exactly two --weights ({first}, then {second}), got {len(weights)}: e.g. "
            "--weights a.safetensors --weights b.safetensors"
        )


def _need(flag: str, value: Path | None, what: str) -> Path:
    if value is None:
        raise BasinscopeError(f"{flag} is required: {what}")
    return value


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "root"


def _bar_figure(names: list[str], series: dict[str, list[float]], ylabel: str, title: str):
    from basinscope.plotting._common import LABEL_SIZE, LEGEND_SIZE, new_figure, style_axes

    fig = new_figure((max(4.5, 0.8 * len(names) * max(1, len(series)) + 2.0), 3.4))
    ax = fig.add_subplot()
    x = np.arange(len(names))
    width = 0.8 / max(1, len(series))
    for i, (label, vals) in enumerate(series.items()):
        v = [float(a) if a is not None else np.nan for a in vals]
        ax.bar(x + (i - (len(series) - 1) / 2) * width, v, width, label=label)
    ax.axhline(0.0, color="0.5", lw=0.8)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel(ylabel, fontsize=LABEL_SIZE)
    ax.set_title(title, fontsize=LABEL_SIZE)
    if len(series) > 1:
        ax.legend(fontsize=LEGEND_SIZE)
    style_axes(ax)
    return fig


# -- similarity ------------------------------------------------------------------------------
SIMILARITY_HELP = """CKA similarity between the layers of two models.

matrix[i, j] is the centered kernel alignment between the outputs of layer i of model A
(the first --weights) and layer j of model B (the second), on --split: minibatch (unbiased
HSIC averaged over batches, Nguyen et al. 2021; batches of at least 4), linear (exact
full-data linear CKA, streamed), debiased (Kornblith et al. 2019 with the unbiased HSIC
estimator) or rbf (Gaussian kernel). Layers are named as in named_modules() (--layers-a,
--layers-b, repeatable); default: every leaf module with parameters. Model B can be a
different architecture (--model-b, --model-kwargs-b). figures/cka is the heatmap.

JSON (--json): matrix, layers_a, layers_b, method, num_examples, batch_size,
sigma_factor, diagonal (CKA of same-named layers; null when the models share no layer
names), labels, weights, split, warnings, run_dir, figures.

Examples:

  basinscope similarity --model mlp --weights a.safetensors --weights b.safetensors

  basinscope similarity --weights a.safetensors --weights b.safetensors --method linear \\
      --layers-a conv1 --layers-a fc1 --layers-b conv1 --layers-b fc1 --json

  basinscope similarity --model lenet --weights lenet.safetensors --weights mlp.safetensors \\
      --model-b mlp --max-examples 500
"""


def similarity_cmd(
    model: str = MODEL_OPT,
    model_kwargs: str = KWARGS_OPT,
    model_b: str = typer.Option(
        None,
        "--model-b",
        help="Model B's factory (default: --model); module:factory runs that module's code.",
    ),
    model_kwargs_b: str = typer.Option(
        None, "--model-kwargs-b", help="Model B's JSON kwargs (default: --model-kwargs)."
    ),
    weights: list[Path] = typer.Option(
        [], "--weights", help="Weights of model A, then of model B (exactly two)."
    ),
    layers_a: list[str] = typer.Option([], "--layers-a", help="Layer of model A; repeat."),
    layers_b: list[str] = typer.Option([], "--layers-b", help="Layer of model B; repeat."),
    method: str = typer.Option("minibatch", "--method", help="minibatch, linear, debiased or rbf."),
    data: str = DATA_OPT,
    rotation: float = ROT_OPT,
    block_shuffle: int = BLOCK_OPT,
    noise: float = NOISE_OPT,
    shift_seed: int = SHIFT_SEED_OPT,
    split: str = typer.Option("test", "--split", help="Split whose activations are compared."),
    batch_size: int = typer.Option(256, "--batch-size", help="Examples per forward pass."),
    max_examples: int = typer.Option(
        None, "--max-examples", help="Use at most this many examples (default: all)."
    ),
    out: Path = OUT_OPT,
    wait: bool = WAIT_OPT,
    json_out: bool = JSON_OPT,
    progress: bool = PROGRESS_OPT,
) -> None:
    from basinscope.analyses.similarity import cka_matrix

    _choice("--method", method, CKA_METHODS, "CKA method")
    _two_weights(weights, "model A", "model B")
    at_least("--batch-size", batch_size, 4 if method == "minibatch" else 1)
    if max_examples is not None:
        at_least("--max-examples", max_examples, 1)
    if model_b is None:
        model_b = model
        if model_kwargs_b is None:
            model_kwargs_b = model_kwargs
    say = _say(json_out, progress)
    opts = DataOptions(data, rotation, block_shuffle, noise, shift_seed)
    net_a = load_model(model, model_kwargs, weights[0])
    net_b = load_model(model_b, model_kwargs_b, weights[1], kwargs_flag="--model-kwargs-b")
    ds = opts.load(split)
    labels = _labels(weights)
    settings = dict(
        layers_a=list(layers_a) or None,
        layers_b=list(layers_b) or None,
        method=method,
        batch_size=batch_size,
        max_examples=max_examples,
    )
    spec = _spec(
        model,
        model_kwargs,
        weights,
        opts,
        model_b=model_spec(model_b, model_kwargs_b, weights[1]),
        split=split,
        labels=labels,
        **settings,
    )
    store = _open(out, "similarity", spec, [net_a, net_b], {split: ds}, wait=wait)
    say(f"{method} CKA between {labels[0]} and {labels[1]} on {split} ({len(ds)} examples) ...")
    notes: list[str] = []
    with _analysis(store, notes):
        res = cka_matrix(net_a, net_b, ds, **settings)
    try:
        diagonal: dict[str, float] | None = res.diagonal()
    except BasinscopeError:
        diagonal = None
    result = {
        **res.to_dict(),
        "diagonal": diagonal,
        "labels": labels,
        "weights": [str(w) for w in weights],
        "split": split,
    }
    fig, _ = res.plot()
    fig.tight_layout()
    figures = _save(fig, store, "cka")

    def summary() -> None:
        info(
            f"{method} CKA on {res.num_examples} examples: {len(res.layers_a)} x "
            f"{len(res.layers_b)} layers"
        )
        if diagonal is not None:
            info(f"{'layer':<24} CKA")
            for name, v in diagonal.items():
                info(f"{name:<24} {_fmt(v)}")
        else:
            info("the models share no layer names: see the matrix in results.json")

    _finish(store, result, figures, json_out, notes, summary)


# -- distance --------------------------------------------------------------------------------
DISTANCE_HELP = """Parameter distance between two models, per module; optionally their shared mistakes.

For the parameter vectors a (the first --weights) and b (the second), overall and per
module: l2 = ||a - b||, relative = ||a - b|| / ||a||, angle_deg = arccos(<a, b> / (||a|| ||b||))
in degrees (plus the norms). --modules picks modules (a parent collects its children's
parameters); default: every module that owns parameters. figures/distance is the bar
plot of the relative distance per module. --mistakes also counts, on --split, the examples
both models get right, both wrong (with the same or a different label) or only one wrong,
and their agreement (figures/mistakes).

JSON (--json): overall, per_module, definition, table (one row per module, then
"(all)"), mistakes (n, both_right, both_wrong, both_wrong_same, both_wrong_different,
only_a_wrong, only_b_wrong, agreement, accuracy_a, accuracy_b; null without --mistakes),
labels, weights, warnings, run_dir, figures.

Examples:

  basinscope distance --model mlp --weights init.safetensors --weights final.safetensors

  basinscope distance --weights a.safetensors --weights b.safetensors --modules fc1 \\
      --modules fc2 --mistakes --split test --json
"""


def distance_cmd(
    model: str = MODEL_OPT,
    model_kwargs: str = KWARGS_OPT,
    weights: list[Path] = typer.Option(
        [], "--weights", help="Weights of model A (the reference), then of model B."
    ),
    modules: list[str] = MODULES_OPT,
    mistakes: bool = typer.Option(
        False, "--mistakes/--no-mistakes", help="Also compare the models' mistakes on --split."
    ),
    data: str = DATA_OPT,
    rotation: float = ROT_OPT,
    block_shuffle: int = BLOCK_OPT,
    noise: float = NOISE_OPT,
    shift_seed: int = SHIFT_SEED_OPT,
    split: str = typer.Option("test", "--split", help="Split of the mistake analysis."),
    batch_size: int = typer.Option(1024, "--batch-size", help="Examples per forward pass."),
    out: Path = OUT_OPT,
    wait: bool = WAIT_OPT,
    json_out: bool = JSON_OPT,
    progress: bool = PROGRESS_OPT,
) -> None:
    from basinscope.analyses.distance import mistake_analysis, parameter_distance

    _two_weights(weights, "model A", "model B")
    at_least("--batch-size", batch_size, 1)
    say = _say(json_out, progress)
    opts = DataOptions(data, rotation, block_shuffle, noise, shift_seed)
    nets = [load_model(model, model_kwargs, w) for w in weights]
    datasets = {split: opts.load(split)} if mistakes else {}
    labels = _labels(weights)
    # validate the modules before the run folder is created
    dist = parameter_distance(nets[0], nets[1], modules=list(modules) or None)
    spec = _spec(
        model,
        model_kwargs,
        weights,
        opts,
        labels=labels,
        modules=list(modules) or None,
        mistakes=mistakes,
        split=split if mistakes else None,
        batch_size=batch_size,
    )
    store = _open(out, "distance", spec, nets, datasets, wait=wait)
    notes: list[str] = []
    mres = None
    with _analysis(store, notes):
        if mistakes:
            say(f"mistakes of {labels[0]} and {labels[1]} on {split} ...")
            mres = mistake_analysis(nets[0], nets[1], datasets[split], batch_size=batch_size)
    result: dict[str, Any] = {
        **dist.to_dict(),
        "table": dist.table(),
        "mistakes": mres.to_dict() if mres is not None else None,
        "labels": labels,
        "weights": [str(w) for w in weights],
    }
    fig, _ = dist.plot(metric="relative")
    fig.tight_layout()
    figures = _save(fig, store, "distance")
    if mres is not None:
        names = ["both right", "both wrong (same)", "both wrong (diff.)", "only A", "only B"]
        counts = [
            mres.both_right,
            mres.both_wrong_same,
            mres.both_wrong_different,
            mres.only_a_wrong,
            mres.only_b_wrong,
        ]
        mfig = _bar_figure(
            names,
            {"examples": counts},
            "examples",
            f"{labels[0]} vs {labels[1]} on {split}: agreement {mres.agreement:.3f}",
        )
        figures += _save(mfig, store, "mistakes")

    def summary() -> None:
        info(f"{'module':<20} {'l2':>10} {'relative':>10} {'angle (deg)':>11}")
        for row in dist.table():
            info(
                f"{row['module']:<20} {_fmt(row['l2']):>10} {_fmt(row['relative']):>10}  "
                f"{_fmt(row['angle_deg']):>10}"
            )
        if mres is not None:
            info(
                f"mistakes on {split} ({mres.n} examples): both right {mres.both_right}, both "
                f"wrong {mres.both_wrong} ({mres.both_wrong_same} with the same label), only "
                f"{labels[0]} wrong {mres.only_a_wrong}, only {labels[1]} wrong "
                f"{mres.only_b_wrong}; agreement {_fmt(mres.agreement)}"
            )

    _finish(store, result, figures, json_out, notes, summary)


# -- rewind ----------------------------------------------------------------------------------
REWIND_HELP = """Rewind one module at a time to its initial value and measure the damage.

For every module M (--modules; default every module that owns parameters), the model
with M's parameters set back to --init and the rest left at --weights is evaluated on
--split; change = metric(M rewound) - metric(final), for the loss and the accuracy (Zhang,
Bengio & Singer 2019, "Are all layers created equal?"). Buffers stay final.
figures/rewind shows the accuracy drop (final minus rewound) per module.

JSON (--json): baseline, rewound, change, split, definition, table (one row per module:
module, loss, accuracy, loss_change, accuracy_drop), weights, init, warnings, run_dir,
figures.

Examples:

  basinscope rewind --model mlp --weights final.safetensors --init init.safetensors

  basinscope rewind --weights final.safetensors --init init.safetensors --modules fc1 \\
      --split train --json
"""


def rewind_cmd(
    model: str = MODEL_OPT,
    model_kwargs: str = KWARGS_OPT,
    weights: Path = typer.Option(None, "--weights", help="Weights of the trained model."),
    init: Path = typer.Option(None, "--init", help="Weights of the same model at initialisation."),
    modules: list[str] = MODULES_OPT,
    data: str = DATA_OPT,
    rotation: float = ROT_OPT,
    block_shuffle: int = BLOCK_OPT,
    noise: float = NOISE_OPT,
    shift_seed: int = SHIFT_SEED_OPT,
    split: str = typer.Option("test", "--split", help="Split the models are evaluated on."),
    batch_size: int = typer.Option(1024, "--batch-size", help="Examples per forward pass."),
    strategy: str = ENGINE_STRATEGY_OPT,
    out: Path = OUT_OPT,
    wait: bool = WAIT_OPT,
    json_out: bool = JSON_OPT,
    progress: bool = PROGRESS_OPT,
) -> None:
    from basinscope.analyses.criticality import rewind
    from basinscope.analyses.distance import group_by_module
    from basinscope.geometry.params import get_params

    weights = _need("--weights", weights, "the trained model, e.g. --weights final.safetensors")
    init = _need("--init", init, "the same model at initialisation, e.g. --init init.safetensors")
    at_least("--batch-size", batch_size, 1)
    _choice("--strategy", strategy, STRATEGIES, "strategy")
    say = _say(json_out, progress)
    opts = DataOptions(data, rotation, block_shuffle, noise, shift_seed)
    final = load_model(model, model_kwargs, weights)
    start = load_model(model, model_kwargs, init)
    group_by_module(list(get_params(final)), list(modules) or None)  # validate early
    ds = opts.load(split)
    spec = _spec(
        model,
        model_kwargs,
        weights,
        opts,
        init=str(init),
        modules=list(modules) or None,
        split=split,
        batch_size=batch_size,
        strategy=strategy,
    )
    store = _open(out, "rewind", spec, [final, start], {split: ds}, wait=wait)
    say(f"rewinding each module on {split} ({len(ds)} examples) ...")
    notes: list[str] = []
    with _analysis(store, notes):
        res = rewind(
            final,
            start,
            {split: ds},
            modules=list(modules) or None,
            split=split,
            batch_size=batch_size,
            strategy=strategy,
        )
    table = [
        {
            "module": m,
            "loss": v["loss"],
            "accuracy": v["accuracy"],
            "loss_change": res.change[m]["loss"],
            "accuracy_drop": -res.change[m]["accuracy"],
        }
        for m, v in res.rewound.items()
    ]
    result = {
        **res.to_dict(),
        "table": table,
        "weights": str(weights),
        "init": str(init),
    }
    fig = _bar_figure(
        [r["module"] for r in table],
        {"accuracy drop": [r["accuracy_drop"] for r in table]},
        f"{split} accuracy drop",
        f"rewinding one module to init (final accuracy {res.baseline['accuracy']:.3f})",
    )
    figures = _save(fig, store, "rewind")

    def summary() -> None:
        info(
            f"final model on {split}: loss {_fmt(res.baseline['loss'])}, accuracy "
            f"{_fmt(res.baseline['accuracy'])}"
        )
        info(f"{'module rewound':<20} {'loss':>10} {'accuracy':>10} {'acc. drop':>10}")
        for r in table:
            info(
                f"{r['module']:<20} {_fmt(r['loss']):>10} {_fmt(r['accuracy']):>10} "
                f"{_fmt(r['accuracy_drop']):>10}"
            )

    _finish(store, result, figures, json_out, notes, summary)


# -- criticality -----------------------------------------------------------------------------
CRITICALITY_HELP = """Module criticality and network criticality (Chatterji, Neyshabur & Sedghi 2020).

For module i, theta_i^alpha = (1 - alpha) theta_i^0 + alpha theta_i^F interpolates
between its initial value (--init, alpha = 0) and its final value (--weights, alpha = 1)
with the rest final; mu_i(epsilon) is the minimum over the
grid of --alphas x --sigmas of alpha^2 ||theta_i^F - theta_i^0||^2 / sigma_eff^2 subject
to E_u L(theta_i^alpha + u) <= epsilon, u ~ N(0, sigma_eff^2 I) (--samples antithetic
draws, an even number). --noise absolute: sigma_eff = sigma; frobenius: sigma_eff =
sigma ||theta_i^F|| / sqrt(n_i). --epsilon defaults to the final model's loss + 0.1.
The network criticality is the sum of mu_i. figures/valley_<module> is each module's
mean loss over the grid, with the loss = epsilon boundary and the minimiser.

JSON (--json): definition, epsilon, baseline_loss, network_criticality, alphas, sigmas,
settings, modules (per module: mu, alpha_star, sigma_star, delta_sq_norm, weight_norm,
numel, noise_scale, noise_sq_norm, loss, feasible), mu (module -> mu), weights, init,
warnings, run_dir, figures. An infeasible module has mu "inf".

Examples:

  basinscope criticality --model mlp --weights final.safetensors --init init.safetensors

  basinscope criticality --weights final.safetensors --init init.safetensors \\
      --alphas 0:1:6 --sigmas 0.05:0.5:4 --samples 2 --noise frobenius --json
"""


def criticality_cmd(
    model: str = MODEL_OPT,
    model_kwargs: str = KWARGS_OPT,
    weights: Path = typer.Option(None, "--weights", help="Weights of the trained model."),
    init: Path = typer.Option(None, "--init", help="Weights of the same model at initialisation."),
    modules: list[str] = MODULES_OPT,
    data: str = DATA_OPT,
    rotation: float = ROT_OPT,
    block_shuffle: int = BLOCK_OPT,
    noise: float = NOISE_OPT,
    shift_seed: int = SHIFT_SEED_OPT,
    split: str = typer.Option("train", "--split", help="Split whose loss L is thresholded."),
    epsilon: float = typer.Option(
        None, "--epsilon", help="Loss threshold (default: the final model's loss + 0.1)."
    ),
    alphas: str = typer.Option("0:1:11", "--alphas", help="START:STOP:NUM grid of alpha."),
    sigmas: str = typer.Option("0.05:1:10", "--sigmas", help="START:STOP:NUM grid of sigma > 0."),
    samples: int = typer.Option(4, "--samples", help="Noise draws per grid point (even)."),
    noise_variant: str = typer.Option(
        "absolute", "--noise-variant", help="Noise scale: absolute or frobenius (per module)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the noise draws."),
    batch_size: int = typer.Option(1024, "--batch-size", help="Examples per forward pass."),
    strategy: str = ENGINE_STRATEGY_OPT,
    out: Path = OUT_OPT,
    wait: bool = WAIT_OPT,
    json_out: bool = JSON_OPT,
    progress: bool = PROGRESS_OPT,
) -> None:
    from basinscope.analyses.criticality import module_criticality, plot_valley
    from basinscope.analyses.distance import group_by_module
    from basinscope.geometry.params import get_params

    weights = _need("--weights", weights, "the trained model, e.g. --weights final.safetensors")
    init = _need("--init", init, "the same model at initialisation, e.g. --init init.safetensors")
    alpha_grid = parse_range(alphas, "--alphas")
    sigma_grid = parse_range(sigmas, "--sigmas")
    for flag, grid, text in (("--alphas", alpha_grid, alphas), ("--sigmas", sigma_grid, sigmas)):
        if len(grid) < 2:
            raise BasinscopeError(
                f"{flag} {text} gives {len(grid)} value; the valley plot needs a grid of at "
                f"least 2, e.g. {flag} {'0:1:11' if flag == '--alphas' else '0.05:1:10'}"
            )
    if (sigma_grid <= 0).any():
        raise BasinscopeError(
            f"every sigma must be > 0 (mu divides by sigma^2): --sigmas {sigmas} starts at "
            f"{sigma_grid.min():g}"
        )
    if samples < 2 or samples % 2:
        raise BasinscopeError(
            f"--samples must be an even number >= 2 (antithetic pairs), got {samples}"
        )
    at_least("--samples", samples, 2)
    check_seed("--seed", seed)
    if epsilon is not None and not math.isfinite(epsilon):
        raise BasinscopeError(f"--epsilon must be a finite number, got {epsilon}")
    _choice("--noise-variant", noise_variant, NOISE_VARIANTS, "noise variant")
    _choice("--strategy", strategy, STRATEGIES, "strategy")
    at_least("--batch-size", batch_size, 1)
    say = _say(json_out, progress)
    opts = DataOptions(data, rotation, block_shuffle, noise, shift_seed)
    final = load_model(model, model_kwargs, weights)
    start = load_model(model, model_kwargs, init)
    groups = group_by_module(list(get_params(final)), list(modules) or None)
    ds = opts.load(split)
    settings = dict(
        modules=list(modules) or None,
        epsilon=epsilon,
        alphas=alpha_grid,
        sigmas=sigma_grid,
        samples=samples,
        noise=noise_variant,
        seed=seed,
        split=split,
        batch_size=batch_size,
        strategy=strategy,
    )
    spec = _spec(
        model,
        model_kwargs,
        weights,
        opts,
        init=str(init),
        **{k: v for k, v in settings.items() if k not in ("alphas", "sigmas", "noise")},
        alphas=alphas,
        sigmas=sigmas,
        noise_variant=noise_variant,
    )
    store = _open(out, "criticality", spec, [final, start], {split: ds}, wait=wait)
    say(
        f"criticality of {len(groups)} modules on {split} ({len(ds)} examples): "
        f"{len(alpha_grid)} x {len(sigma_grid)} grid, {samples} draws per point ..."
    )
    notes: list[str] = []
    with _analysis(store, notes):
        res = module_criticality(final, start, {split: ds}, **settings)
    result = {
        **res.to_dict(),
        "mu": res.mu,
        "weights": str(weights),
        "init": str(init),
    }
    figures: list[Path] = []
    for name in res.modules:
        fig, _ = plot_valley(res, name)
        fig.tight_layout()
        figures += _save(fig, store, f"valley_{_file_name(name)}")

    def summary() -> None:
        info(
            f"epsilon {_fmt(res.epsilon)} (final {split} loss {_fmt(res.baseline_loss)}); "
            f"noise {noise_variant}"
        )
        info(f"{'module':<20} {'mu':>10} {'alpha*':>8} {'sigma*':>8}")
        for name, m in res.modules.items():
            info(f"{name:<20} {_fmt(m.mu):>10} {_fmt(m.alpha_star):>8} {_fmt(m.sigma_star):>8}")
        info(f"network criticality: {_fmt(res.network_criticality)}")

    _finish(store, result, figures, json_out, notes, summary)


# -- finetune --------------------------------------------------------------------------------
FINETUNE_HELP = """Fine-tune a pretrained model on a shifted target; forgetting and adaptation.

The data options (--data, --rotation, --block-shuffle, --noise) describe the target
distribution; the source is the same --data with --source-rotation and no other shift.
Each --strategy (repeat to compare several in one run) trains a copy of the model on the
target's train split: ft (all parameters), lp (the head only, BatchNorm frozen), lp-ft
(--lp-steps of LP, then FT; Kumar et al. 2022), surgical (the modules matching --blocks,
fnmatch patterns; Lee et al. 2022), dfr (the re-initialised head on the first
--dfr-examples of the target's train split; Kirichenko et al. 2022) or guided (the top
--guided-top-k modules by --guided-signal on the target). Source and target accuracy are
measured on --eval-split before and after: forgetting = source accuracy before - after,
adaptation = target accuracy after - before. Each strategy's weights are saved as
RUN/weights/<strategy>.safetensors; figures/finetune shows forgetting and adaptation.

JSON (--json): strategies (one object per strategy: strategy, trainable, ranking, signal,
before, after, forgetting, adaptation, config, history, weights_file), table (one row per
strategy: trainable_params, modules, source/target accuracy before/after, forgetting,
adaptation), weights, target, source, eval_split, warnings, run_dir, figures.

Examples:

  basinscope finetune --model mlp --weights pretrained.safetensors --data digits \\
      --rotation 35 --strategy ft --strategy lp --strategy lp-ft

  basinscope finetune --model lenet --weights lenet.safetensors --rotation 35 \\
      --strategy surgical --blocks 'conv*' --steps 200 --lr 0.01 --json
"""


def finetune_cmd(
    model: str = MODEL_OPT,
    model_kwargs: str = KWARGS_OPT,
    weights: Path = typer.Option(None, "--weights", help="Weights of the pretrained model."),
    strategy: list[str] = typer.Option(
        [], "--strategy", help="ft, lp, lp-ft, surgical, dfr or guided; repeat (default: ft)."
    ),
    blocks: list[str] = typer.Option(
        [], "--blocks", help="fnmatch pattern of modules for surgical; repeat."
    ),
    head: str = typer.Option(None, "--head", help="Head module (default: the last Linear)."),
    lp_steps: int = typer.Option(100, "--lp-steps", help="Linear-probing steps of lp-ft."),
    guided_signal: str = typer.Option(
        "gradient_norm",
        "--guided-signal",
        help="guided: gradient_norm, relative_gradient_norm or curvature.",
    ),
    guided_top_k: int = typer.Option(1, "--guided-top-k", help="guided: modules tuned."),
    dfr_examples: int = typer.Option(
        200, "--dfr-examples", help="dfr: held-out target examples the head is retrained on."
    ),
    data: str = DATA_OPT,
    rotation: float = ROT_OPT,
    block_shuffle: int = BLOCK_OPT,
    noise: float = NOISE_OPT,
    shift_seed: int = SHIFT_SEED_OPT,
    source_rotation: float = typer.Option(
        0.0, "--source-rotation", help="Rotation of the source distribution (degrees)."
    ),
    eval_split: str = typer.Option(
        "test", "--eval-split", help="Split of the before/after evaluation."
    ),
    steps: int = typer.Option(200, "--steps", help="Training steps (the FT phase for lp-ft)."),
    lr: float = typer.Option(0.01, "--lr", help="Learning rate."),
    batch_size: int = typer.Option(64, "--batch-size", help="Examples per training step."),
    optimizer: str = typer.Option("sgd", "--optimizer", help="sgd, adam or adamw."),
    momentum: float = typer.Option(0.9, "--momentum", help="SGD momentum."),
    weight_decay: float = typer.Option(0.0, "--weight-decay", help="Weight decay."),
    seed: int = typer.Option(0, "--seed", help="Seed of the batch order (and dfr's head init)."),
    out: Path = OUT_OPT,
    wait: bool = WAIT_OPT,
    json_out: bool = JSON_OPT,
    progress: bool = PROGRESS_OPT,
) -> None:
    from basinscope.models import save_weights
    from basinscope.training.finetune import _surgical_params, finetune, head_parameters
    from basinscope.training.finetune import table as ft_table

    weights = _need("--weights", weights, "the pretrained model, e.g. --weights model.safetensors")
    strategies = list(strategy) or ["ft"]
    for s in strategies:
        _choice("--strategy", s, FT_STRATEGIES, "fine-tuning strategy")
    if len(set(strategies)) != len(strategies):
        raise BasinscopeError(f"each --strategy may be given once, got {strategies}")
    _choice("--guided-signal", guided_signal, GUIDED_SIGNALS, "guided signal")
    at_least("--steps", steps, 1, high=MAX_STEPS)
    at_least("--batch-size", batch_size, 1)
    at_least("--lp-steps", lp_steps, 1, high=MAX_STEPS)
    at_least("--guided-top-k", guided_top_k, 1)
    at_least("--dfr-examples", dfr_examples, 1)
    if not (math.isfinite(lr) and lr > 0):
        raise BasinscopeError(f"--lr must be a finite number > 0, got {lr}")
    if blocks and "surgical" not in strategies:
        raise BasinscopeError(
            "--blocks is only used by --strategy surgical; add it or drop --blocks"
        )
    config = _train_config(
        steps=steps,
        batch_size=batch_size,
        optimizer=optimizer,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        data_seed=seed,
    )
    say = _say(json_out, progress)
    net = load_model(model, model_kwargs, weights)
    if "surgical" in strategies:
        _surgical_params(net, list(blocks))  # validate the patterns before the run folder
    if head is not None or {"lp", "lp-ft", "dfr"} & set(strategies):
        head_parameters(net, head)
    target = DataOptions(data, rotation, block_shuffle, noise, shift_seed)
    source = DataOptions(data, source_rotation)
    target_train = target.load("train")
    target_eval = target.load(eval_split)
    source_eval = source.load(eval_split)
    dfr_data = None
    if "dfr" in strategies:
        n = min(dfr_examples, len(target_train))
        dfr_data = target_train.subset(list(range(len(target_train) - n, len(target_train))))
    datasets = {
        "target_train": target_train,
        f"target_{eval_split}": target_eval,
        f"source_{eval_split}": source_eval,
    }
    settings = dict(
        strategies=strategies,
        blocks=list(blocks),
        head=head,
        lp_steps=lp_steps,
        guided_signal=guided_signal,
        guided_top_k=guided_top_k,
        dfr_examples=dfr_examples,
        config=config.to_dict(),
    )
    spec = {
        **model_spec(model, model_kwargs, weights),
        "target": target.to_dict(),
        "source": source.to_dict(),
        "eval_split": eval_split,
        **settings,
    }
    store = _open(out, "finetune", spec, [net], datasets, wait=wait)
    notes: list[str] = []
    results = []
    files: dict[str, str] = {}
    with _analysis(store, notes):
        for s in strategies:
            n_train = len(dfr_data) if s == "dfr" else len(target_train)
            say(f"fine-tuning with {s} for {steps} steps on {n_train} target examples")
            r = finetune(
                net,
                target_train,
                strategy=s,
                config=config,
                head=head,
                blocks=list(blocks),
                lp_steps=lp_steps,
                dfr_data=dfr_data,
                guided_signal=guided_signal,
                guided_top_k=guided_top_k,
                source_data=source_eval,
                eval_target=target_eval,
            )
            results.append(r)
            path = save_weights(r.model, store.path / "weights" / f"{s}.safetensors")
            files[s] = str(path)
    rows = ft_table(results)
    result = {
        "strategies": [{**r.to_dict(), "weights_file": files[r.strategy]} for r in results],
        "table": rows,
        "weights": str(weights),
        "target": target.to_dict(),
        "source": source.to_dict(),
        "eval_split": eval_split,
    }
    fig = _bar_figure(
        strategies,
        {
            "forgetting": [r["forgetting"] for r in rows],
            "adaptation": [r["adaptation"] for r in rows],
        },
        f"accuracy change ({eval_split})",
        f"source rotation {source_rotation:g} -> target rotation {rotation:g}",
    )
    figures = _save(fig, store, "finetune")

    def summary() -> None:
        info(
            f"{'strategy':<10} {'params':>8} {'src before':>10} {'src after':>10} "
            f"{'tgt before':>10} {'tgt after':>10} {'forgetting':>10} {'adaptation':>10}"
        )
        for r in rows:
            info(
                f"{r['strategy']:<10} {r['trainable_params']:>8} "
                f"{_fmt(r['source_accuracy_before']):>10} {_fmt(r['source_accuracy_after']):>10} "
                f"{_fmt(r['target_accuracy_before']):>10} {_fmt(r['target_accuracy_after']):>10} "
                f"{_fmt(r['forgetting']):>10} {_fmt(r['adaptation']):>10}"
            )
        info(f"fine-tuned weights: {store.path / 'weights'}")

    _finish(store, result, figures, json_out, notes, summary)


similarity_cmd.__doc__ = SIMILARITY_HELP
distance_cmd.__doc__ = DISTANCE_HELP
rewind_cmd.__doc__ = REWIND_HELP
criticality_cmd.__doc__ = CRITICALITY_HELP
finetune_cmd.__doc__ = FINETUNE_HELP

__all__ = [
    "criticality_cmd",
    "distance_cmd",
    "finetune_cmd",
    "rewind_cmd",
    "similarity_cmd",
]
