"""Training dynamics from the command line: ``basinscope instability`` (are children of
one parent linearly connected?) and ``basinscope ensemble`` (FGE, SWA and independent
ensembles).

Each writes a run folder: see :mod:`basinscope.cli._connectivity_common`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from basinscope._checks import MAX_POINTS, MAX_STEPS, at_least, check_seed
from basinscope.cli._connectivity_common import (
    BARRIER_DEFINITIONS,
    BARRIER_METRICS,
    BN_POLICIES,
    DEFINITION_HELP,
    OUT_OPT,
    _analysis,
    _choice,
    _finish,
    _fmt,
    _ints,
    _open,
    _save,
    _say,
    _spec,
    _train_config,
)
from basinscope.cli.common import WAIT_OPT, DataOptions, info, load_model, parse_json_kwargs
from basinscope.cli.landscape import (
    BLOCK_OPT,
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

ENSEMBLE_METHODS = ("fge", "swa", "independent")
OPTIMIZERS = ("sgd", "adam", "adamw")


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
    wait: bool = WAIT_OPT,
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
    at_least("--total-steps", total_steps, 1, high=MAX_STEPS)
    at_least("--num-points", num_points, 3, high=MAX_POINTS)
    at_least("--children", children, 2, high=1000, why=" (a barrier needs two children)")
    check_seed("--init-seed", init_seed)
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
        [check_seed("--child-seeds", s) for s in _ints(child_seeds, "--child-seeds", "1,2")]
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
    store = _open(
        out, "instability", spec, nets, {"train": train_data, split: eval_data}, wait=wait
    )
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
    wait: bool = WAIT_OPT,
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
    at_least("--num-points", num_points, 3, high=MAX_POINTS)
    at_least("--pretrain-steps", pretrain_steps, 0, high=MAX_STEPS)
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
        at_least("--members", members, 1, high=1000)
        if budget is not None:
            if steps is not None:
                raise BasinscopeError("give --steps (per member) or --budget (in all), not both")
            if budget < members:
                raise BasinscopeError(
                    f"--budget {budget} is less than one update per member (--members {members})"
                )
            steps = budget // members
    if method == "fge":
        at_least("--cycles", cycles, 1, high=1000)
        at_least(
            "--cycle-steps",
            cycle_steps,
            2,
            high=MAX_STEPS // cycles,
            high_why=" (--cycles x --cycle-steps is at most 10**8 updates)",
        )
    steps = 100 if steps is None else steps
    at_least("--steps", steps, 1, high=MAX_STEPS)
    if method == "swa":
        swa_start = steps // 2 if swa_start is None else swa_start
        if not 0 <= swa_start <= steps:
            raise BasinscopeError(
                f"--swa-start must be an update in [0, --steps] = [0, {steps}], got {swa_start}"
            )
        at_least("--swa-every", swa_every, 1)
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
        wait=wait,
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


instability_cmd.__doc__ = INSTABILITY_HELP
ensemble_cmd.__doc__ = ENSEMBLE_HELP
