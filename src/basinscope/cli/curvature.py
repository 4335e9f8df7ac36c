"""``basinscope hessian`` and ``basinscope sharpness``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from basinscope._checks import MAX_STEPS, at_least, check_seed, finite_float, positive_float
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
    sanitize,
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

DTYPES = {"float32", "float64"}

_MAX_EIGENPAIRS = 1000
_EIGENPAIRS_WHY = " (Lanczos keeps a full basis; use --density for the whole spectrum)"


def _open_run(out: Path | None, kind: str, spec: dict[str, Any], model, data, wait: bool):
    from basinscope.store import RunStore, fingerprint_tensors

    fps = {"model": fingerprint_tensors(model.state_dict()), "data": data.fingerprint()}
    return RunStore.open(hold_out_folder(out or default_out(kind), wait), kind, spec, fps)


HESSIAN_HELP = """Hessian spectrum of the mean training loss: both ends, trace, density, per layer.

Eigenpairs by Lanczos with full reorthogonalization, stopping when every wanted
Ritz pair has ||Hv - theta v|| <= tol |theta|; each eigenvalue is reported with its
true residual and a converged flag. "Top" means algebraically largest (not largest
|lambda|); --bottom gives the most negative eigenvalues. The trace comes with a 95%
confidence interval. Loss semantics (BatchNorm mode, weight decay, data size, HVP
method) are printed and stored. With --map, the |lambda_min/lambda_max| map over a
filter-normalized random plane instead (Li et al. 2018, Fig. 7), resumable like a surface.

Examples:

  basinscope hessian --model mlp --weights runs/mlp/model.safetensors --top 3 --bottom 1

  basinscope hessian --weights lenet.safetensors --density --per-layer --out runs/hess

  basinscope hessian --model mlp --weights w.safetensors --map --xrange -1:1:11 --yrange -1:1:11
"""


def hessian_cmd(
    model: str = MODEL_OPT,
    model_kwargs: str = KWARGS_OPT,
    weights: Path = typer.Option(
        None, "--weights", help="Weights of the model (.pt or .safetensors)."
    ),
    data: str = DATA_OPT,
    rotation: float = ROT_OPT,
    block_shuffle: int = BLOCK_OPT,
    noise: float = NOISE_OPT,
    shift_seed: int = SHIFT_SEED_OPT,
    split: str = typer.Option("train", "--split", help="Which split's loss (train or test)."),
    subset: int = typer.Option(None, "--subset", help="Use only the first N examples."),
    operator: str = typer.Option(
        "hessian", "--operator", help="hessian, ggn (Gauss-Newton) or ef (empirical Fisher)."
    ),
    top: int = typer.Option(3, "--top", help="Number of largest eigenvalues."),
    bottom: int = typer.Option(
        1, "--bottom", help="Number of smallest (most negative) eigenvalues."
    ),
    tol: float = typer.Option(
        1e-6, "--tol", help="Ritz residual tolerance relative to |eigenvalue|."
    ),
    max_iter: int = typer.Option(
        None, "--max-iter", help="Maximum Lanczos steps (default min(n, 300))."
    ),
    trace: str = typer.Option("hutch++", "--trace", help="hutch++, hutchinson, exact or none."),
    trace_rtol: float = typer.Option(
        1e-2, "--trace-rtol", help="Stop when the 95% CI half-width is below this fraction."
    ),
    density: bool = typer.Option(
        False, "--density", help="Also the spectral density (stochastic Lanczos quadrature)."
    ),
    per_layer: bool = typer.Option(
        False, "--per-layer", help="Also the top eigenvalue and trace of each module's block."
    ),
    weight_decay: float = typer.Option(
        0.0, "--weight-decay", help="Include weight_decay/2 ||theta||^2 in the loss."
    ),
    bn_mode: str = typer.Option(
        "eval", "--bn-mode", help="BatchNorm: eval (stored statistics) or train (batch statistics)."
    ),
    hvp: str = typer.Option("auto", "--hvp", help="auto, forward-over-reverse or double-backward."),
    dtype: str = typer.Option("float64", "--dtype", help="float64 (default) or float32."),
    seed: int = typer.Option(0, "--seed"),
    curvature_map: bool = typer.Option(
        False, "--map", help="The |lambda_min/lambda_max| map over a random plane."
    ),
    xrange: str = typer.Option("-1:1:11", "--xrange", help="--map: alpha grid START:STOP:NUM."),
    yrange: str = typer.Option("-1:1:11", "--yrange", help="--map: beta grid START:STOP:NUM."),
    out: Path = typer.Option(None, "--out", help="Run folder.", callback=out_callback),
    wait: bool = WAIT_OPT,
    json_out: bool = JSON_OPT,
    progress: bool = PROGRESS_OPT,
) -> None:
    import torch

    if dtype not in DTYPES:
        raise BasinscopeError(f"unknown dtype {dtype!r}: expected float32 or float64")
    if subset is not None:
        at_least("--subset", subset, 1)
    at_least("--top", top, 0, high=_MAX_EIGENPAIRS, high_why=_EIGENPAIRS_WHY)
    at_least("--bottom", bottom, 0, high=_MAX_EIGENPAIRS, high_why=_EIGENPAIRS_WHY)
    if max_iter is not None:
        at_least("--max-iter", max_iter, 1)
    positive_float("--tol", tol, fix="e.g. --tol 1e-6 (relative Ritz residual)")
    positive_float("--trace-rtol", trace_rtol, fix="e.g. --trace-rtol 0.01")
    finite_float("--weight-decay", weight_decay, low=0)
    check_seed("--seed", seed)
    grid = (parse_range(xrange, "--xrange"), parse_range(yrange, "--yrange"))
    opts = DataOptions(data, rotation, block_shuffle, noise, shift_seed)
    net = load_model(model, model_kwargs, weights)
    ds = opts.load(split)
    if subset is not None:
        ds = ds.subset(list(range(min(subset, len(ds)))))
    spec = {
        **model_spec(model, model_kwargs, weights),
        **opts.to_dict(),
        "split": split,
        "subset": subset,
    }
    if curvature_map:
        from basinscope.analyses.hessian_map import curvature_map as make_map
        from basinscope.cli.landscape import _finish

        land = make_map(
            net,
            ds,
            seed=seed,
            operator=operator,
            tol=max(tol, 1e-8),
            max_iter=max_iter or 100,
            alphas=grid[0],
            betas=grid[1],
            hvp_method=hvp,
            run_dir=hold_out_folder(out or default_out("curvature-map"), wait),
            spec=spec,
            progress=progress and not json_out,
        )
        _finish(land, json_out, True, False)
        return
    from basinscope.analyses.hessian import hessian_analysis

    store = _open_run(
        out,
        "hessian",
        {
            **spec,
            "operator": operator,
            "top": top,
            "bottom": bottom,
            "tol": tol,
            "max_iter": max_iter,
            "trace": trace,
            "trace_rtol": trace_rtol,
            "density": density,
            "per_layer": per_layer,
            "weight_decay": weight_decay,
            "bn_mode": bn_mode,
            "hvp": hvp,
            "dtype": dtype,
            "seed": seed,
        },
        net,
        ds,
        wait,
    )
    report = hessian_analysis(
        net,
        ds,
        operator=operator,
        k_top=top,
        k_bottom=bottom,
        tol=tol,
        max_iter=max_iter,
        trace=trace,
        trace_rtol=trace_rtol,
        density=density,
        per_module=per_layer,
        seed=seed,
        weight_decay=weight_decay,
        bn_mode=bn_mode,
        method=hvp,
        dtype=getattr(torch, dtype),
        progress=progress and not json_out,
    )
    result = sanitize(report.to_dict())
    from basinscope.store import atomic_write_json

    atomic_write_json(store.path / "results.json", result, "results")
    figures = _hessian_figures(store, report)
    store.update_manifest(status="complete")
    result.update({"run_dir": str(store.path), "figures": [str(f) for f in figures]})
    if json_out:
        emit_json(result)
        return
    s = report.semantics
    info(
        f"{s['operator']} of the {s['loss']} over {s['num_examples']} examples; BatchNorm {s['bn_mode']}; "
        f"{s['dimension']} parameters; HVP {s['method']}; {s['num_matvecs']} products, {report.seconds} s"
    )
    for name, pairs in (("top", report.top), ("bottom", report.bottom)):
        if pairs is not None:
            for v, r, c in zip(pairs.eigenvalues, pairs.residuals, pairs.converged):
                info(
                    f"  {name:6} {v: .6e}  residual {r:.1e}  {'converged' if c else 'NOT converged'}"
                )
    if report.trace is not None:
        t = report.trace
        info(
            f"  trace  {t.estimate: .6e} ± {t.ci_halfwidth:.1e} ({t.method}, {int(100 * t.confidence)}% CI)"
        )
    for m in report.per_module:
        info(
            f"  {m.module:20} top {m.top_eigenvalue:.4e}  trace {m.trace.estimate if m.trace else float('nan'):.4e}"
        )
    info(f"run folder: {store.path}")


def _hessian_figures(store, report) -> list[Path]:
    from basinscope.plotting.io import save_figure

    written: list[Path] = []
    if report.density is not None:
        from basinscope.plotting.spectrum import plot_spectral_density

        fig, _ = plot_spectral_density(report.density)
        written += save_figure(fig, store.figures / "spectral_density")
    if report.per_module:
        from basinscope.plotting.spectrum import plot_per_module

        fig, _ = plot_per_module(report.per_module)
        written += save_figure(fig, store.figures / "per_layer")
    return written


SHARPNESS_HELP = """Sharpness of a minimum, by named measures, each with its definition recorded.

Measures: worst_case (max loss increase in an L2 or Linf ball of radius rho, by
projected gradient ascent with restarts; --relative for Keskar et al.'s form),
average (mean increase under Gaussian noise of std sigma), adaptive (perturbations
scaled by |w|: ASAM / Andriushchenko et al. 2023; invariant to rescaling symmetries),
filter_normalized (Li et al.'s random filter-normalized directions at step alpha),
m_sharpness (worst case per batch of m examples, averaged), or all.

Examples:

  basinscope sharpness --model mlp --weights w.safetensors --measure all --json

  basinscope sharpness --weights lenet.safetensors --measure worst_case --rho 0.1 --norm linf
"""


def sharpness_cmd(
    model: str = MODEL_OPT,
    model_kwargs: str = KWARGS_OPT,
    weights: Path = typer.Option(
        None, "--weights", help="Weights of the model (.pt or .safetensors)."
    ),
    data: str = DATA_OPT,
    rotation: float = ROT_OPT,
    block_shuffle: int = BLOCK_OPT,
    noise: float = NOISE_OPT,
    shift_seed: int = SHIFT_SEED_OPT,
    split: str = typer.Option("train", "--split", help="Which split's loss."),
    subset: int = typer.Option(None, "--subset", help="Use only the first N examples."),
    measure: list[str] = typer.Option(
        ["all"],
        "--measure",
        help="worst_case, average, adaptive, filter_normalized, m_sharpness or all (repeatable).",
    ),
    rho: float = typer.Option(
        0.05, "--rho", help="Radius of the perturbation ball (worst_case, adaptive, m_sharpness)."
    ),
    norm: str = typer.Option("l2", "--norm", help="l2 or linf."),
    sigma: float = typer.Option(0.01, "--sigma", help="Noise std (average)."),
    samples: int = typer.Option(20, "--samples", help="Noise samples (average)."),
    alpha: float = typer.Option(0.1, "--alpha", help="Step along filter-normalized directions."),
    directions: int = typer.Option(
        10, "--directions", help="Number of filter-normalized directions."
    ),
    m: int = typer.Option(32, "--m", help="Batch size of m-sharpness."),
    steps: int = typer.Option(10, "--steps", help="Ascent steps (worst_case, adaptive)."),
    restarts: int = typer.Option(3, "--restarts", help="Random restarts of the ascent."),
    relative: bool = typer.Option(
        False, "--relative", help="worst_case: Keskar et al. 2017's relative box and percentage."
    ),
    seed: int = typer.Option(0, "--seed"),
    out: Path = typer.Option(None, "--out", help="Run folder.", callback=out_callback),
    wait: bool = WAIT_OPT,
    json_out: bool = JSON_OPT,
    progress: bool = PROGRESS_OPT,
) -> None:
    from basinscope.analyses.sharpness import SHARPNESS_MEASURES, sharpness

    names = list(SHARPNESS_MEASURES) if "all" in measure else measure
    unknown = [n for n in names if n not in SHARPNESS_MEASURES]
    if unknown:
        raise BasinscopeError(
            f"unknown sharpness measure(s) {unknown}: expected {', '.join(SHARPNESS_MEASURES)} or all"
        )
    # every measure's options are checked before the first one runs
    if subset is not None:
        at_least("--subset", subset, 1)
    positive_float("--rho", rho, fix="e.g. --rho 0.05")
    positive_float("--sigma", sigma, fix="e.g. --sigma 0.01")
    finite_float("--alpha", alpha, fix="e.g. --alpha 0.1")
    at_least("--samples", samples, 2, why=" (a standard error needs at least two samples)")
    at_least("--directions", directions, 1)
    at_least("--m", m, 1)
    at_least("--steps", steps, 1, high=MAX_STEPS)
    at_least("--restarts", restarts, 1)
    check_seed("--seed", seed)
    opts = DataOptions(data, rotation, block_shuffle, noise, shift_seed)
    net = load_model(model, model_kwargs, weights)
    ds = opts.load(split)
    if subset is not None:
        ds = ds.subset(list(range(min(subset, len(ds)))))
    options = {
        "worst_case": dict(
            rho=rho, norm=norm, steps=steps, restarts=restarts, relative=relative, seed=seed
        ),
        "average": dict(sigma=sigma, samples=samples, seed=seed),
        "adaptive": dict(rho=rho, norm=norm, steps=steps, restarts=restarts, seed=seed),
        "filter_normalized": dict(alpha=alpha, num_directions=directions, seed=seed),
        "m_sharpness": dict(m=m, rho=rho, norm=norm, seed=seed),
    }
    spec = {
        **model_spec(model, model_kwargs, weights),
        **opts.to_dict(),
        "split": split,
        "subset": subset,
        "measures": {n: options[n] for n in names},
    }
    store = _open_run(out, "sharpness", spec, net, ds, wait)
    results = []
    for n in names:
        info(f"{n} ...", json_out or not progress)
        results.append(sharpness(net, ds, n, **options[n]))
    payload = sanitize({"measures": [r.to_dict() for r in results]})
    from basinscope.store import atomic_write_json

    atomic_write_json(store.path / "results.json", payload, "results")
    figures = _sharpness_figure(store, results)
    store.update_manifest(status="complete")
    payload.update({"run_dir": str(store.path), "figures": [str(f) for f in figures]})
    if json_out:
        emit_json(payload)
        return
    for r in results:
        se = f" ± {r.std_error:.2e}" if r.std_error is not None else ""
        info(f"{r.measure:18} {r.value: .5e}{se}   (base loss {r.base_loss:.4f}; {r.definition})")
    info(f"run folder: {store.path}")


def _sharpness_figure(store, results) -> list[Path]:
    from basinscope.plotting._common import new_figure
    from basinscope.plotting.io import save_figure

    fig = new_figure((6.5, 3.6))
    ax = fig.add_subplot()
    names = [r.measure for r in results]
    vals = [r.value for r in results]
    errs = [r.std_error or 0.0 for r in results]
    ax.bar(names, vals, yerr=errs, color="#4c72b0", capsize=4)
    ax.set_ylabel("sharpness (loss increase)")
    ax.set_title(f"sharpness at base loss {results[0].base_loss:.4f}" if results else "sharpness")
    ax.tick_params(axis="x", rotation=20)
    return save_figure(fig, store.figures / "sharpness")


hessian_cmd.__doc__ = HESSIAN_HELP
sharpness_cmd.__doc__ = SHARPNESS_HELP
