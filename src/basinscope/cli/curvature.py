"""``basinscope hessian`` and ``basinscope sharpness``, generated from their specs
(:class:`~basinscope.analyses.hessian.HessianSpec`,
:class:`~basinscope.analyses.sharpness_spec.SharpnessSpec`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from basinscope._checks import grid_range as parse_range
from basinscope.analyses.hessian import HessianSpec
from basinscope.analyses.sharpness_spec import SharpnessSpec
from basinscope.cli.generate import Command, Context, typer_command
from basinscope.inputs import DataOptions, ModelOptions, fingerprints
from basinscope.spec import Spec, group, option

# -- hessian ---------------------------------------------------------------------------------
HESSIAN_HELP = """Hessian spectrum of the mean training loss: both ends, trace, density, per layer.

Eigenpairs by Lanczos with full reorthogonalization, stopping when every wanted
Ritz pair has ||Hv - theta v|| <= tol |theta|; each eigenvalue is reported with its
true residual and a converged flag. "Top" means algebraically largest (not largest
|lambda|); --bottom gives the most negative eigenvalues. The trace comes with a 95%
confidence interval. Loss semantics (BatchNorm mode, weight decay, data size, HVP
method) are printed and stored. With --map, the |lambda_min/lambda_max| map over a
filter-normalized random plane instead (Li et al. 2018, Fig. 7), resumable like a surface.

figures/hessian shows the eigenvalues (hollow: not converged) with the trace, and beside
them the spectral density (--density) and the per-layer blocks (--per-layer).

JSON (--json): top and bottom (eigenvalues, residuals, relative_residuals, converged, tol,
num_matvecs, iterations, which, method, semantics, info), trace (estimate, std_error,
ci_halfwidth, confidence, num_matvecs, num_samples, converged, method, distribution),
density (nodes, weights, num_runs, lanczos_steps, ...), per_module (one object per
module), semantics, seconds, definition (what each number is: the operator, which
eigenvalues, the trace estimator, ...), ratio_min_max (with both ends) and spec. The
eigenvectors are kept in RUN/tensors. With --map: the map's summary, as for a surface.

Examples:

  basinscope hessian --model mlp --weights runs/mlp/model.safetensors --top 3 --bottom 1

  basinscope hessian --weights lenet.safetensors --density --per-layer --out runs/hess

  basinscope hessian --model mlp --weights w.safetensors --map --xrange -1:1:11 --yrange -1:1:11
"""


@dataclass(frozen=True)
class HessianCommand(Spec):
    model: ModelOptions = group(ModelOptions)
    data: DataOptions = group(DataOptions)
    hessian: HessianSpec = group(HessianSpec)
    curvature_map: bool = option(
        False, "The |lambda_min/lambda_max| map over a random plane.", flag="--map"
    )
    xrange: str = option("-1:1:11", "--map: alpha grid START:STOP:NUM.")
    yrange: str = option("-1:1:11", "--map: beta grid START:STOP:NUM.")

    def check(self) -> None:
        for name in ("xrange", "yrange"):
            parse_range(getattr(self, name), self.name_of(name))


def _data(data: DataOptions, spec: HessianSpec | SharpnessSpec) -> Any:
    """The spec's split, its first ``--subset`` examples (all of them when there are fewer)."""
    ds = data.load(spec.split)
    if spec.subset is not None:
        ds = ds.subset(list(range(min(spec.subset, len(ds)))))
    return ds


def run_hessian(cmd: HessianCommand, ctx: Context):
    from basinscope.analyses.hessian import hessian_analysis

    spec = cmd.hessian
    net, ds = cmd.model.load(), _data(cmd.data, spec)
    if cmd.curvature_map:
        return _curvature_map(cmd, net, ds, ctx)
    ctx.open(fingerprints([net], {spec.split: ds}))
    ctx.say(f"{spec.operator} spectrum of the {spec.split} loss over {len(ds)} examples ...")
    report = hessian_analysis(net, ds, spec=spec, progress=ctx.progress)
    return dataclasses.replace(report, spec=spec)  # with the split it was measured on


def _hessian_lines(report) -> list[str]:
    s = report.semantics
    lines = [
        f"{s['operator']} of the {s['loss']} over {s['num_examples']} examples; BatchNorm "
        f"{s['bn_mode']}; {s['dimension']} parameters; HVP {s['method']}; {s['num_matvecs']} "
        f"products, {report.seconds} s"
    ]
    for name, pairs in (("top", report.top), ("bottom", report.bottom)):
        if pairs is not None:
            for v, r, c in zip(pairs.eigenvalues, pairs.residuals, pairs.converged):
                lines.append(
                    f"  {name:6} {v: .6e}  residual {r:.1e}  {'converged' if c else 'NOT converged'}"
                )
    if report.trace is not None:
        t = report.trace
        lines.append(
            f"  trace  {t.estimate: .6e} ± {t.ci_halfwidth:.1e} ({t.method}, "
            f"{int(100 * t.confidence)}% CI)"
        )
    for m in report.per_module:
        trace = m.trace.estimate if m.trace else float("nan")
        lines.append(f"  {m.module:20} top {m.top_eigenvalue:.4e}  trace {trace:.4e}")
    return lines


def _curvature_map(cmd: HessianCommand, net: Any, ds: Any, ctx: Context):
    """``--map``: the |lambda_min/lambda_max| map, a landscape stored (and resumed) in the
    run folder by the engine."""
    from basinscope.analyses.hessian_map import curvature_map

    spec, m = cmd.hessian, cmd.model
    ctx.say(f"|lambda_min/lambda_max| map of the {spec.split} loss over {len(ds)} examples ...")
    return curvature_map(
        net,
        ds,
        seed=spec.seed,
        operator=spec.operator,
        tol=max(spec.tol, 1e-8),
        max_iter=spec.max_iter or 100,
        alphas=parse_range(cmd.xrange, "--xrange"),
        betas=parse_range(cmd.yrange, "--yrange"),
        hvp_method=spec.method,
        run_dir=ctx.out,
        spec={
            "model": m.to_dict(),
            "data": cmd.data.to_dict(),
            "split": spec.split,
            "subset": spec.subset,
        },
        progress=ctx.progress,
    )


def _hessian_or_map_lines(result) -> list[str]:
    from basinscope.cli.landscape import _summary

    return _summary(result) if result.kind == "landscape" else _hessian_lines(result)


def _hessian_or_map_figures(result, cmd: HessianCommand, out: Path) -> list[Path]:
    from basinscope.plotting import plot
    from basinscope.plotting.io import save_figure
    from basinscope.plotting.run import render_landscape
    from basinscope.store import paths

    if result.kind == "landscape":  # the map: every landscape figure, as for a surface
        return render_landscape(result, out / paths.FIGURES)
    return save_figure(plot(result)[0], out / paths.FIGURES / result.kind)


HESSIAN = Command(
    "hessian",
    HessianCommand,
    run_hessian,
    text=HESSIAN_HELP,
    summary=_hessian_or_map_lines,
    figures=_hessian_or_map_figures,
)
hessian_cmd = typer_command(HESSIAN)


# -- sharpness -------------------------------------------------------------------------------
SHARPNESS_HELP = """Sharpness of a minimum, by named measures, each with its definition recorded.

Measures: worst_case (max loss increase in an L2 or Linf ball of radius rho, by
projected gradient ascent with restarts; --relative for Keskar et al.'s form),
average (mean increase under Gaussian noise of std sigma), adaptive (perturbations
scaled by |w|: ASAM / Andriushchenko et al. 2023; invariant to rescaling symmetries),
filter_normalized (Li et al.'s random filter-normalized directions at step alpha),
m_sharpness (worst case per batch of m examples, averaged), or all.

One --measure: figures/sharpness shows the increase of each restart, noise sample,
direction or batch and the value. Several (or all): figures/sharpness_measures, one bar
per measure.

JSON (--json) for one measure: measure, value, base_loss, perturbed_loss, definition,
params (the settings it ran with), std_error, num_evaluations, semantics, values and
spec; for several: measures (one such object per measure), definition (measure ->
formula) and spec.

Examples:

  basinscope sharpness --model mlp --weights w.safetensors --measure all --json

  basinscope sharpness --weights lenet.safetensors --measure worst_case --rho 0.1 --norm linf
"""


@dataclass(frozen=True)
class SharpnessCommand(Spec):
    model: ModelOptions = group(ModelOptions)
    data: DataOptions = group(DataOptions)
    sharpness: SharpnessSpec = group(SharpnessSpec)


def run_sharpness(cmd: SharpnessCommand, ctx: Context):
    from basinscope.analyses.sharpness_measures import sharpness_measures

    spec = cmd.sharpness
    net, ds = cmd.model.load(), _data(cmd.data, spec)
    ctx.open(fingerprints([net], {spec.split: ds}))
    res = sharpness_measures(net, ds, spec, say=ctx.say)
    return res.measures[0] if len(res.measures) == 1 else res


def _sharpness_lines(result) -> list[str]:
    lines = []
    for r in getattr(result, "measures", (result,)):
        se = f" ± {r.std_error:.2e}" if r.std_error is not None else ""
        lines.append(
            f"{r.measure:18} {r.value: .5e}{se}   (base loss {r.base_loss:.4f}; {r.definition})"
        )
    return lines


SHARPNESS = Command(
    "sharpness", SharpnessCommand, run_sharpness, text=SHARPNESS_HELP, summary=_sharpness_lines
)
sharpness_cmd = typer_command(SHARPNESS)
