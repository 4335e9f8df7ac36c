"""``basinscope interpolate`` and ``basinscope surface``: 1D and 2D landscapes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from basinscope._checks import at_least, check_seed
from basinscope.cli.common import (
    WAIT_OPT,
    DataOptions,
    default_out,
    emit_json,
    hold_out_folder,
    info,
    load_model,
    model_spec,
    out_callback,
    parse_range,
    parse_splits,
    sanitize,
)
from basinscope.errors import BasinscopeError

MODEL_OPT = typer.Option(
    "basinscope.models:lenet",
    "--model",
    help="A built-in name (mlp, lenet, resnet) or module:factory. module:factory imports that "
    "Python module, which runs its code: name only code you trust.",
)
KWARGS_OPT = typer.Option(
    None, "--model-kwargs", help="JSON keyword arguments for the factory, e.g. '{\"width\": 2}'."
)
DATA_OPT = typer.Option(
    "digits",
    "--data",
    help="digits, mnist, a .npz file or module:attr (imports that Python module, which runs its "
    "code: name only code you trust).",
)
ROT_OPT = typer.Option(0.0, "--rotation", help="Rotate the images by this many degrees.")
BLOCK_OPT = typer.Option(None, "--block-shuffle", help="Shuffle k x k blocks of each image.")
NOISE_OPT = typer.Option(0.0, "--noise", help="Std of additive Gaussian input noise.")
SHIFT_SEED_OPT = typer.Option(
    0, "--shift-seed", help="Seed of the block permutation and the noise."
)
SPLITS_OPT = typer.Option(
    "train,test", "--splits", help="Comma-separated splits to evaluate on, in one run."
)
METRICS_OPT = typer.Option(
    "loss,accuracy", "--metrics", help="Comma-separated metrics: loss, accuracy, error."
)
BN_OPT = typer.Option(
    "stored",
    "--bn",
    help="BatchNorm statistics: stored (the model's) or recompute (re-estimated at every point).",
)
BN_BATCHES_OPT = typer.Option(
    10, "--bn-batches", help="Training batches (of 128) used to re-estimate BatchNorm statistics."
)
BATCH_OPT = typer.Option(1024, "--batch-size", help="Examples per forward pass.")
CHUNK_OPT = typer.Option(
    64, "--chunk-size", help="Points per chunk (the unit of work and of resume)."
)
STRATEGY_OPT = typer.Option("auto", "--strategy", help="auto (time both), vmap or loop.")
DTYPE_OPT = typer.Option("float32", "--dtype", help="float32 or float64.")
DEVICE_OPT = typer.Option("cpu", "--device", help="torch device, e.g. cpu or cuda.")
OUT_OPT = typer.Option(
    None,
    "--out",
    help="Run folder; the same command with the same --out resumes an interrupted run.",
    callback=out_callback,
)
JSON_OPT = typer.Option(False, "--json", help="Print one JSON object on stdout.")
PROGRESS_OPT = typer.Option(True, "--progress/--no-progress", help="Show a progress bar on stderr.")
PLOT_OPT = typer.Option(True, "--plot/--no-plot", help="Write figures into RUN/figures.")
LOG_OPT = typer.Option(False, "--log", help="Log-scale losses in the figures.")
NORM_OPT = typer.Option(
    "filter", "--normalization", help="Random directions: filter (Li et al.), layer, model or none."
)
BIAS_OPT = typer.Option(
    "zero",
    "--bias-policy",
    help="1-D parameters (biases, norm layers) of random directions: zero, include or as_weights.",
)
SEED_OPT = typer.Option(0, "--seed", help="Seed of the random directions.")


def _common(
    model: str,
    model_kwargs: str | None,
    weights: Path | None,
    data: DataOptions,
    splits: str,
    metrics: str,
    bn: str,
    bn_batches: int,
    batch_size: int,
    chunk_size: int,
    strategy: str,
    dtype: str,
    device: str,
    out: Path | None,
    kind: str,
    progress: bool,
    json_out: bool,
    wait: bool = False,
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    # checked before anything is written: a bad value must not leave a run folder behind
    # that the corrected command would then refuse as a different run
    at_least("--chunk-size", chunk_size, 1)
    at_least("--batch-size", batch_size, 1)
    at_least("--bn-batches", bn_batches, 1)
    if device != "cpu":
        import torch

        try:
            torch.empty(1, device=device)
        except Exception as e:
            raise BasinscopeError(
                f"--device {device!r} is not available here ({type(e).__name__}: {e}); use --device cpu"
            ) from None
    net = load_model(model, model_kwargs, weights)
    datasets = {s: data.load(s) for s in parse_splits(splits)}
    kwargs = dict(
        metrics=[m.strip() for m in metrics.split(",") if m.strip()],
        bn_policy=bn,
        bn_data=datasets.get("train") if "train" in datasets else data.load("train"),
        bn_batches=bn_batches,
        batch_size=batch_size,
        chunk_size=chunk_size,
        strategy=strategy,
        dtype=dtype,
        device=device,
        run_dir=hold_out_folder(out or default_out(kind), wait),
        progress=progress and not json_out,
        spec={
            **model_spec(model, model_kwargs, weights),
            **data.to_dict(),
            "splits": list(datasets),
        },
    )
    return net, datasets, kwargs


def _finish(
    land, json_out: bool, plot: bool, log: bool, extra: dict[str, Any] | None = None
) -> None:
    figures: list[str] = []
    if plot and land.run_dir is not None:
        from basinscope.plotting.run import render_run

        figures = [str(p) for p in render_run(land.run_dir, log=log)]
    summary = land.summary()
    summary["figures"] = figures
    summary.update(extra or {})
    ev = land.evaluation
    if json_out:
        emit_json(sanitize(summary))
        return
    info(
        f"{land.kind}: {ev.get('points')} points, strategy {ev.get('strategy')}, "
        f"{ev.get('points_per_second', float('nan')):.1f} points/s; run folder {land.run_dir}"
    )
    for name, count in (ev.get("nonfinite") or {}).items():
        info(f"note: {count} non-finite values of {name} recorded as they are (NaN/inf)")
    for name in land.dataset.data_vars:
        v = land.dataset[name].values
        info(f"  {name}: min {_fmt(v.min())}, max {_fmt(v.max())}")
    if figures:
        info(f"figures: {Path(figures[0]).parent}")


def _fmt(x) -> str:
    return f"{float(x):.4g}"


INTERP_HELP = """The 1D landscape between two models, or along a random normalized direction.

f(alpha) = L((1 - alpha) theta_A + alpha theta_B) with extrapolation outside [0, 1];
without --to, f(alpha) = L(theta + alpha d) for a filter-normalized random d.

Examples:

  basinscope interpolate --model basinscope.models:lenet --weights A.safetensors \\
      --to B.safetensors --xrange -1:2:31 --out runs/a-to-b

  basinscope interpolate --weights A.safetensors --xrange -1:1:41 --seed 3 --json
"""


def interpolate_cmd(
    model: str = MODEL_OPT,
    model_kwargs: str = KWARGS_OPT,
    weights: Path = typer.Option(
        None, "--weights", help="Weights of model A (the center of a random line)."
    ),
    to: Path = typer.Option(
        None, "--to", help="Weights of model B: evaluate the line from A to B."
    ),
    data: str = DATA_OPT,
    rotation: float = ROT_OPT,
    block_shuffle: int = BLOCK_OPT,
    noise: float = NOISE_OPT,
    shift_seed: int = SHIFT_SEED_OPT,
    xrange: str = typer.Option("-0.5:1.5:41", "--xrange", help="alpha grid START:STOP:NUM."),
    normalization: str = NORM_OPT,
    bias_policy: str = BIAS_OPT,
    seed: int = SEED_OPT,
    directions: Path = typer.Option(
        None, "--directions", help="Use the first direction in this .safetensors file."
    ),
    splits: str = SPLITS_OPT,
    metrics: str = METRICS_OPT,
    bn: str = BN_OPT,
    bn_batches: int = BN_BATCHES_OPT,
    batch_size: int = BATCH_OPT,
    chunk_size: int = CHUNK_OPT,
    strategy: str = STRATEGY_OPT,
    dtype: str = DTYPE_OPT,
    device: str = DEVICE_OPT,
    out: Path = OUT_OPT,
    wait: bool = WAIT_OPT,
    json_out: bool = JSON_OPT,
    progress: bool = PROGRESS_OPT,
    plot: bool = PLOT_OPT,
    log: bool = LOG_OPT,
) -> None:
    from basinscope.analyses import interpolate, random_line
    from basinscope.geometry import check_directions_fit, get_params, load_directions

    alphas = parse_range(xrange, "--xrange")
    check_seed("--seed", seed)
    opts = DataOptions(data, rotation, block_shuffle, noise, shift_seed)
    net, datasets, kw = _common(
        model,
        model_kwargs,
        weights,
        opts,
        splits,
        metrics,
        bn,
        bn_batches,
        batch_size,
        chunk_size,
        strategy,
        dtype,
        device,
        out,
        "interpolate",
        progress,
        json_out,
        wait,
    )
    if to is not None:
        other = load_model(model, model_kwargs, to)
        kw["spec"]["to"] = str(to)
        land = interpolate(net, other, datasets, alphas=alphas, **kw)
    else:
        direction = None
        if directions is not None:
            dirs, _ = load_directions(directions)
            check_directions_fit(dirs[:1], get_params(net), str(directions))
            direction = dirs[0]
            kw["spec"]["directions"] = str(directions)
        land = random_line(
            net,
            datasets,
            seed=seed,
            normalization=normalization,
            bias_policy=bias_policy,
            alphas=alphas,
            direction=direction,
            **kw,
        )
    _finish(land, json_out, plot, log)


SURFACE_HELP = """The 2D landscape f(alpha, beta) = L(theta* + alpha delta + beta eta).

The plane: two filter-normalized random directions (default), the top two PCA
directions of a training trajectory (--pca), the plane through three models
(--plane B --plane C), or directions from a file (--directions). Trajectories (--trajectory)
are projected onto the plane and drawn, with each point's distance from it.

Examples:

  basinscope surface --model basinscope.models:lenet --weights final.safetensors \\
      --xrange -1:1:21 --yrange -1:1:21 --out runs/surface

  basinscope surface --weights runs/lenet/model.safetensors \\
      --pca runs/lenet/trajectory.safetensors --out runs/pca

  basinscope surface --weights A.safetensors --plane B.safetensors --plane C.safetensors --bn recompute
"""


def surface_cmd(
    model: str = MODEL_OPT,
    model_kwargs: str = KWARGS_OPT,
    weights: Path = typer.Option(None, "--weights", help="Weights of the center model theta*."),
    data: str = DATA_OPT,
    rotation: float = ROT_OPT,
    block_shuffle: int = BLOCK_OPT,
    noise: float = NOISE_OPT,
    shift_seed: int = SHIFT_SEED_OPT,
    xrange: str = typer.Option(
        None,
        "--xrange",
        help="alpha grid START:STOP:NUM (default -1:1:21; for --pca/--plane: fitted to the models).",
    ),
    yrange: str = typer.Option(None, "--yrange", help="beta grid START:STOP:NUM."),
    normalization: str = NORM_OPT,
    bias_policy: str = BIAS_OPT,
    orthogonal: bool = typer.Option(
        False, "--orthogonal", help="Gram-Schmidt the second random direction against the first."
    ),
    seed: int = SEED_OPT,
    directions: Path = typer.Option(
        None,
        "--directions",
        help="Two directions from a .safetensors file (e.g. RUN/tensors/directions.safetensors).",
    ),
    pca: Path = typer.Option(
        None,
        "--pca",
        help="Trajectory (.safetensors from `basinscope train`) whose top-2 PCA directions span the plane.",
    ),
    plane: list[Path] = typer.Option(
        [],
        "--plane",
        help="Weights of model B, then of model C (give --plane twice): the plane through A (--weights), B and C.",
    ),
    trajectory: list[Path] = typer.Option(
        [], "--trajectory", help="Trajectory file to project onto the plane and draw (repeatable)."
    ),
    splits: str = SPLITS_OPT,
    metrics: str = METRICS_OPT,
    bn: str = BN_OPT,
    bn_batches: int = BN_BATCHES_OPT,
    batch_size: int = BATCH_OPT,
    chunk_size: int = CHUNK_OPT,
    strategy: str = STRATEGY_OPT,
    dtype: str = DTYPE_OPT,
    device: str = DEVICE_OPT,
    out: Path = OUT_OPT,
    wait: bool = WAIT_OPT,
    json_out: bool = JSON_OPT,
    progress: bool = PROGRESS_OPT,
    plot: bool = PLOT_OPT,
    log: bool = LOG_OPT,
) -> None:
    from basinscope.analyses import pca_surface, plane_surface, project_trajectory, random_surface
    from basinscope.geometry import (
        check_checkpoints_fit,
        check_directions_fit,
        get_params,
        load_directions,
    )
    from basinscope.training import load_trajectory

    alphas = parse_range(xrange, "--xrange") if xrange else None
    betas = parse_range(yrange, "--yrange") if yrange else None
    if plane and len(plane) != 2:
        raise BasinscopeError(
            f"--plane needs exactly two weight files (models B and C), got {len(plane)}: "
            "--plane B.safetensors --plane C.safetensors"
        )
    chosen = [
        n
        for n, v in (("--directions", directions), ("--pca", pca), ("--plane", plane or None))
        if v is not None
    ]
    if len(chosen) > 1:
        raise BasinscopeError(f"choose one way to make the plane, got {' and '.join(chosen)}")
    check_seed("--seed", seed)
    opts = DataOptions(data, rotation, block_shuffle, noise, shift_seed)
    net, datasets, kw = _common(
        model,
        model_kwargs,
        weights,
        opts,
        splits,
        metrics,
        bn,
        bn_batches,
        batch_size,
        chunk_size,
        strategy,
        dtype,
        device,
        out,
        "surface",
        progress,
        json_out,
        wait,
    )
    trajs = {str(p): load_trajectory(p) for p in trajectory}
    for path, ckpts in trajs.items():  # before the surface is computed, not after
        check_checkpoints_fit(ckpts, get_params(net), f"trajectory {path!r}")
    kw["spec"]["trajectories"] = list(trajs)
    projections = []
    if pca is not None:
        kw["spec"]["pca"] = str(pca)
        land, proj = pca_surface(
            net, load_trajectory(pca), datasets, alphas=alphas, betas=betas, **kw
        )
        projections.append({**proj.to_dict(), "label": Path(pca).parent.name or "trajectory"})
    elif plane:
        b = load_model(model, model_kwargs, plane[0])
        c = load_model(model, model_kwargs, plane[1])
        kw["spec"]["plane"] = [str(plane[0]), str(plane[1])]
        land, _ = plane_surface(net, b, c, datasets, alphas=alphas, betas=betas, **kw)
    else:
        given = None
        if directions is not None:
            given, _ = load_directions(directions)
            check_directions_fit(given, get_params(net), str(directions))
            kw["spec"]["directions"] = str(directions)
        land = random_surface(
            net,
            datasets,
            seed=seed,
            normalization=normalization,
            bias_policy=bias_policy,
            orthogonal=orthogonal,
            directions=given,
            alphas=alphas,
            betas=betas,
            **kw,
        )
    for path, ckpts in trajs.items():
        projections.append(
            project_trajectory(land, ckpts, Path(path).parent.name or Path(path).stem).to_dict()
        )
    if projections and land.run_dir is not None:
        from basinscope.store import atomic_write_json

        atomic_write_json(land.run_dir / "trajectories.json", sanitize(projections), "trajectories")
    _finish(land, json_out, plot, log, {"trajectories": projections})


interpolate_cmd.__doc__ = INTERP_HELP
surface_cmd.__doc__ = SURFACE_HELP
