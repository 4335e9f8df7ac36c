"""The ensembles-and-width study's report: figures (PNG/PDF) and one self-contained HTML file.

Everything is drawn from the results dict; nothing is computed again. Every sentence about
what the numbers show is computed from them (:func:`findings`, :func:`calibration_verdict`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

import basinscope
from basinscope.experiments.stages import stages_table
from basinscope.report import Report
from basinscope.store import paths
from basinscope.store.atomic import atomic_write_text

__all__ = ["FIGURES", "calibration_verdict", "findings", "write_report"]

FIGURES = (
    "nll_vs_n",
    "nll_vs_width",
    "error_disagreement",
    "reliability",
    "memory_split",
    "equal_budget",
)
KEYS = {"nll": "uncalibrated", "nll_cal": "calibrated"}


def _fmt(v: Any, spec: str = ".4g") -> str:
    return "—" if v is None or isinstance(v, str) else format(v, spec)


def _law(f: dict[str, Any]) -> str:
    """``a = 0.8 [0.7, 0.9]`` with the bootstrap interval when there is one."""
    ci = f.get("ci", {}).get("a")
    return f"a = {f['a']:.3g}" + (f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else "")


def write_report(run_dir: Path, results: dict[str, Any]) -> Path:
    run_dir = Path(run_dir)
    figs = run_dir / paths.FIGURES
    figs.mkdir(exist_ok=True)
    cfg, setup = results["config"], results["setup"]
    rows, fits = results["widths"], results["fits"]
    widths = [r["width"] for r in rows]
    level = f"{cfg['level']:.0%}"
    n_max = cfg["members"]

    rep = Report(
        "Ensembles, calibration and width: power laws on digits (Lobacheva et al. 2020)",
        f"basinscope {basinscope.__version__} · {time.strftime('%Y-%m-%d %H:%M')} · "
        f"{len(widths)} widths × {n_max} members · {results.get('seconds', '?')} s",
        formats=tuple(cfg.get("figure_formats", ("png", "pdf"))),
    )
    rep.text(
        "Lobacheva, Chirkova, Kodryan and Vetrov (2020) found that after temperature scaling the "
        "test NLL of a deep ensemble of n networks follows a power law c + b·n^(−a), that the "
        "NLL of one network follows one in its width, that calibration removes the "
        "non-monotonicity of the NLL in width, and that the laws predict the best split of a "
        "memory budget between width and ensemble size. This study repeats the measurements at "
        f"toy scale: {setup['model']} with widths w = {', '.join(map(str, widths))}, "
        f"{n_max} members per width, trained on {setup['train_examples']} of scikit-learn's "
        f"8x8 training digits. Training: {setup['training']}.\n\n"
        f"Calibration: {setup['calibration']} ({setup['val_examples']} validation digits held "
        f"out of the training split, {setup['test_examples']} test digits). Ensembles of n "
        f"members are built from up to {cfg['resamples']} subsets of the members for each n "
        "(every subset when there are fewer); their softmax outputs are averaged. Curves show "
        f"the mean over the subsets; bands the subsets' {level} percentile interval."
    )

    rep.heading("What the numbers show")
    rep.text(findings(results))

    rep.heading("NLL against ensemble size")
    rep.figure(
        _nll_vs_n(rows, fits),
        "Test NLL of ensembles of n members against n (log-log), uncalibrated (left) and after "
        "temperature scaling (right), one colour per width; points: mean over the member "
        f"subsets, bands: their {level} interval; lines: the fitted c + b·n^(−a), dotted: its "
        f"asymptote c. Legend: the exponent a with its {level} bootstrap interval "
        f"({cfg['bootstrap']} resamples of the points' means).",
        save_as=figs / "nll_vs_n",
    )
    rep.table(
        [
            {
                "width": w,
                "parameters": r["parameters"],
                **{
                    f"{label} {p}": _fmt(fits["n"][str(w)][k][p], ".3g")
                    for k, label in (("nll", "uncal."), ("nll_cal", "cal."))
                    for p in ("a", "b", "c")
                },
                "uncal. a interval": _ci(fits["n"][str(w)]["nll"]),
                "cal. a interval": _ci(fits["n"][str(w)]["nll_cal"]),
                "cal. rmse": _fmt(fits["n"][str(w)]["nll_cal"]["rmse"], ".2g"),
            }
            for w, r in zip(widths, rows, strict=True)
        ],
        f"Power laws NLL_w(n) = c + b·n^(−a) per width, fitted by robust least squares "
        f"({cfg['fit_loss']} loss) to the means over the subsets; intervals: {level} bootstrap "
        "percentiles (each resample draws one bootstrap replicate of every point's mean).",
    )

    rep.heading("NLL against width")
    rep.figure(
        _nll_vs_width(rows, fits, n_max),
        "Test NLL of single networks (n = 1, mean over the members, error bars: their "
        f"{level} interval) and of the {n_max}-member ensemble against width (log-log), "
        "uncalibrated (left) and calibrated (right); line: the fitted c + b·w^(−a) of the single "
        "networks, dotted: its asymptote.",
        save_as=figs / "nll_vs_width",
    )
    rep.table(_width_rows(results), _width_caption(results))
    rep.text(calibration_verdict(results))

    rep.heading("Error and disagreement")
    rep.figure(
        _error_disagreement(rows),
        "Left: test error of the ensembles against n (temperature scaling does not change the "
        "arg-max); right: the members' disagreement, the mean over member pairs of the "
        f"fraction of test digits whose predictions differ. Mean over subsets, {level} bands.",
        save_as=figs / "error_disagreement",
    )

    rep.heading("Reliability before and after temperature scaling")
    cw = cfg["compare_width"]
    rel = next(r for r in rows if r["width"] == cw)["reliability"]
    rep.figure(
        _reliability(rel, n_max),
        f"Reliability diagrams on the test digits at width {cw}: member 0 alone (top) and the "
        f"ensemble of all {n_max} members (bottom), before (left) and after (right) temperature "
        f"scaling ({cfg['bins']} {cfg['binning'].replace('_', '-')} bins of the top-1 "
        "confidence; bars: accuracy per bin, diagonal: perfect calibration; gap: confidence "
        "minus accuracy). τ, ECE and NLL in the titles.",
        save_as=figs / "reliability",
    )

    rep.heading("The memory split")
    split = results["memory_split"]["nll_cal"]
    rep.figure(
        _memory_split(results),
        "Calibrated test NLL of every measured ensemble (width w, n members) against its "
        "memory, n × parameters(w) (log-log; one colour per width, one point per n); black "
        "steps: the best measured ensemble within each budget (the lower envelope), dashed: the "
        "envelope's fitted power law.",
        save_as=figs / "memory_split",
    )
    rep.table(
        [
            {
                "budget (parameters)": r["budget"],
                "measured best (w, n)": f"({r['measured_width']}, {r['measured_n']})",
                "its NLL": _fmt(r["measured"]),
                "predicted best (w, n)": f"({r['predicted_width']}, {r['predicted_n']})",
                "predicted NLL": _fmt(r["predicted"]),
                "measured NLL of the prediction": _fmt(r["measured_at_predicted"]),
                "agree": "yes" if r["agree"] else "no",
                "laws' best over all n ≤ budget": f"({r['extrapolated_width']}, "
                f"{r['extrapolated_n']}): {_fmt(r['extrapolated'])}",
            }
            for r in split["rows"]
        ],
        "The budget table (calibrated NLL): for each memory budget B, every measured (w, n) "
        "with n × parameters(w) ≤ B is a candidate. Measured best: the lowest measured NLL; "
        "predicted best: the lowest NLL the per-width laws NLL_w(n) predict among the same "
        "candidates; the last column extrapolates each law to every n the budget allows. "
        "Parameters per network: "
        + ", ".join(f"w={w}: {p}" for w, p in results["params"].items())
        + ".",
    )

    rep.heading("FGE and SWA at the same training budget")
    rep.figure(
        _equal_budget(results),
        _budget_caption(results),
        save_as=figs / "equal_budget",
    )
    rep.table(_budget_rows(results), "The same numbers: test NLL and error at equal budget.")

    rep.heading("How these numbers were made")
    rep.text(
        "Each member is a training stage stored in its own folder (named by a hash of its "
        "settings); the ensembles of each width, FGE, SWA and the fits are stages whose "
        "settings name the folders they use, so running the study again reuses them and a "
        "changed setting recomputes only what depends on it. Each member's log-probabilities "
        "are computed once per split; every ensemble is built from those arrays. result.json "
        "next to this report holds every number shown, with its definition. Precision: "
        + setup["precision"]
        + "."
    )
    stages_table(rep, results)
    return atomic_write_text(run_dir / paths.REPORT, rep.render(), "report")


def _ci(f: dict[str, Any]) -> str:
    ci = f.get("ci", {}).get("a")
    return f"[{ci[0]:.3g}, {ci[1]:.3g}]" if ci else "—"


# -- computed sentences ----------------------------------------------------------------------


def _rises(m: dict[str, Any]) -> str:
    parts = []
    for r in m["rises"]:
        sig = "" if r["significant"] is None else (" (> 2 s.e.)" if r["significant"] else "")
        parts.append(f"{r['from']}→{r['to']}: +{r['rise']:.3g}{sig}")
    return ", ".join(parts)


def calibration_verdict(results: dict[str, Any]) -> str:
    """Whether calibration removes the non-monotonicity of the single networks' NLL in width,
    computed from ``results["monotonicity"]`` (never a fixed claim)."""
    mono = results["monotonicity"]
    u, c = mono["nll"], mono["nll_cal"]
    steps = len(results["widths"]) - 1

    def where(m: dict[str, Any]) -> str:
        if m["monotone"]:
            return f"decreases at every one of the {steps} steps in width"
        sig = m["significant_rises"]
        return (
            f"rises at {len(m['rises'])} of {steps} steps ({_rises(m)}; {sig} of them by more "
            "than two standard errors of the difference of the means)"
        )

    text = (
        f"Single networks (n = 1, mean over the members): the uncalibrated test NLL {where(u)}; "
        f"after temperature scaling it {where(c)}. "
    )
    if u["monotone"] and c["monotone"]:
        text += (
            "The uncalibrated NLL is already monotone in width here, so there is no "
            "non-monotonicity for calibration to remove."
        )
    elif u["monotone"]:
        text += "Calibration does not remove a non-monotonicity here: it introduces one."
    elif c["monotone"]:
        text += "Calibration removes the non-monotonicity of the NLL in width here."
    elif len(c["rises"]) < len(u["rises"]) or c["significant_rises"] < u["significant_rises"]:
        text += "Calibration reduces the non-monotonicity but does not remove it."
    else:
        text += "Calibration does not remove the non-monotonicity here."
    if not u["monotone"] and u["significant_rises"] == 0:
        text += (
            " (No rise of the uncalibrated NLL exceeds two standard errors: the "
            "non-monotonicity here is within the seed-to-seed noise.)"
        )
    ue, ce = mono["nll_ensemble"], mono["nll_cal_ensemble"]
    text += (
        f" For the {results['config']['members']}-member ensembles the uncalibrated NLL "
        + ("is monotone in width" if ue["monotone"] else f"rises at {_rises(ue)}")
        + " and the calibrated one "
        + ("is monotone." if ce["monotone"] else f"rises at {_rises(ce)}.")
    )
    return text


def findings(results: dict[str, Any]) -> str:
    """The study's observations, each computed from the numbers."""
    rows, fits = results["widths"], results["fits"]
    widths = [r["width"] for r in rows]
    n_max = results["config"]["members"]
    parts = []
    gains = []
    for r in rows:
        a, b = r["by_n"][0], r["by_n"][-1]
        gains.append(
            f"w={r['width']}: {a['nll_cal_mean']:.3g} → {b['nll_cal_mean']:.3g} "
            f"(uncalibrated {a['nll_mean']:.3g} → {b['nll_mean']:.3g})"
        )
    parts.append(
        f"Ensembling helps at every width: calibrated test NLL from n = 1 to n = {n_max}, "
        + "; ".join(gains)
        + "."
        if all(r["by_n"][-1]["nll_cal_mean"] < r["by_n"][0]["nll_cal_mean"] for r in rows)
        else f"Calibrated test NLL from n = 1 to n = {n_max}: " + "; ".join(gains) + "."
    )
    mono_n = [
        w
        for w, r in zip(widths, rows, strict=True)
        if all(
            q["nll_cal_mean"] <= p["nll_cal_mean"] + 1e-12
            for p, q in zip(r["by_n"], r["by_n"][1:], strict=False)
        )
    ]
    parts.append(
        f"The mean calibrated NLL decreases with every added member at {len(mono_n)} of "
        f"{len(widths)} widths"
        + ("" if len(mono_n) == len(widths) else f" (at {', '.join(map(str, mono_n)) or 'none'})")
        + ". Fitted exponents of NLL_w(n) after calibration: "
        + "; ".join(f"w={w}: {_law(fits['n'][str(w)]['nll_cal'])}" for w in widths)
        + "; before: "
        + "; ".join(f"w={w}: {_law(fits['n'][str(w)]['nll'])}" for w in widths)
        + ". A bootstrap interval that reaches the bounds of a (0 and 20) means the points "
        "do not pin the exponent down (too few n, or a curve too flat)."
    )
    fw = fits["width"]
    parts.append(
        "NLL of single networks against width: calibrated "
        + _law(fw["nll_cal"])
        + f", c = {fw['nll_cal']['c']:.3g}; uncalibrated "
        + _law(fw["nll"])
        + f", c = {fw['nll']['c']:.3g}"
        + (
            "."
            if not (fw["nll_cal"]["degenerate"] or fw["nll"]["degenerate"])
            else " (degenerate: a at a bound of [0, 20], b ≤ 0, or the asymptote c far from "
            "the data; the points do not follow a decreasing power law)."
        )
    )
    val_ok = all(
        x["val_nll_cal_mean"] <= x["val_nll_mean"] + 1e-12 for r in rows for x in r["by_n"]
    )
    test_better = sum(x["nll_cal_mean"] < x["nll_mean"] for r in rows for x in r["by_n"])
    total = sum(len(r["by_n"]) for r in rows)
    parts.append(
        "Temperature scaling lowers the validation NLL it is fitted on "
        + ("for every ensemble" if val_ok else "not for every ensemble (a fitting failure)")
        + f"; on the test digits it lowers the mean NLL for {test_better} of the {total} "
        "(width, n) pairs."
    )
    split = results["memory_split"]["nll_cal"]["rows"]
    agree = sum(r["agree"] for r in split)
    ens = sum(r["measured_n"] > 1 for r in split)
    parts.append(
        f"Memory split (calibrated): the laws predict the measured best split for {agree} of "
        f"{len(split)} budgets; the measured best uses an ensemble (n > 1) for {ens} of them."
    )
    bm = results["budget_methods"]
    last = bm["independent"][-1]
    fge = bm["fge"]["points"][-1]
    swa = bm["swa"]["swa"]
    best = min(
        (("independent", last["nll_cal_mean"]), ("FGE", fge["nll_cal"]), ("SWA", swa["nll_cal"])),
        key=lambda t: t[1],
    )
    parts.append(
        f"At width {bm['width']} and the budget of {n_max} member trainings "
        f"({n_max * bm['steps_per_member']} updates), the calibrated test NLL is "
        f"{last['nll_cal_mean']:.3g} for the independent ensemble, {fge['nll_cal']:.3g} for FGE "
        f"({fge['snapshots']} snapshots) and {swa['nll_cal']:.3g} for SWA; {best[0]} is lowest."
    )
    return "\n\n".join(parts)


def _width_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for r in results["widths"]:
        a, b = r["by_n"][0], r["by_n"][-1]
        out.append(
            {
                "width": r["width"],
                "parameters": r["parameters"],
                "NLL n=1": _fmt(a["nll_mean"]),
                "± s.d.": _fmt(a["nll_std"], ".2g"),
                "cal. NLL n=1": _fmt(a["nll_cal_mean"]),
                "± s.d. ": _fmt(a["nll_cal_std"], ".2g"),
                f"NLL n={b['n']}": _fmt(b["nll_mean"]),
                f"cal. NLL n={b['n']}": _fmt(b["nll_cal_mean"]),
                "error n=1": _fmt(a["error_mean"], ".3f"),
                f"error n={b['n']}": _fmt(b["error_mean"], ".3f"),
                "τ n=1": _fmt(a["temperature_mean"], ".3g"),
                f"τ n={b['n']}": _fmt(b["temperature_mean"], ".3g"),
            }
        )
    return out


def _width_caption(results: dict[str, Any]) -> str:
    return (
        "Test NLL and error against width: single networks (mean and standard deviation over "
        f"the {results['config']['members']} members) and the ensemble of all members, before "
        "and after temperature scaling; τ: the fitted temperature (mean over subsets; τ > 1 "
        "softens overconfident predictions)."
    )


def _budget_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    bm = results["budget_methods"]
    fge = {p["n"]: p for p in bm["fge"]["points"]}
    out = []
    for r in bm["independent"]:
        n, f = r["n"], fge[r["n"]]
        row = {
            "budget (updates)": r["budget"],
            "independent NLL": _fmt(r["nll_mean"]),
            "independent cal. NLL": _fmt(r["nll_cal_mean"]),
            "independent error": _fmt(r["error_mean"], ".3f"),
            "FGE snapshots": f["snapshots"] or "start",
            "FGE NLL": _fmt(f["nll"]),
            "FGE cal. NLL": _fmt(f["nll_cal"]),
            "FGE error": _fmt(f["error"], ".3f"),
            "SWA cal. NLL": "",
        }
        if n == results["config"]["members"]:
            s = bm["swa"]["swa"]
            row["SWA cal. NLL"] = (
                f"{s['nll_cal']:.4g} (uncal. {s['nll']:.4g}, error {s['error']:.3f})"
            )
        out.append(row)
    return out


def _budget_caption(results: dict[str, Any]) -> str:
    bm = results["budget_methods"]
    fge, swa = bm["fge"], bm["swa"]
    steps = bm["steps_per_member"]
    return (
        f"Test NLL (left) and error (right) against the training budget in member trainings "
        f"({steps} updates each) at width {bm['width']}: independent ensembles of n members "
        f"(mean over subsets, band: interval), FGE from member 0 ({fge['cycles']} cycles of "
        f"{fge['cycle_steps']} updates between lr {results['config']['fge_lr_max']:g} and "
        f"{results['config']['fge_lr_min']:g}; at budget n the snapshots collected within n "
        f"member trainings, at n = 1 the start itself) and SWA from member 0 ({swa['steps']} "
        f"updates at lr {results['config']['swa_lr']:g}, {swa['averaged']} weights averaged "
        "from half the run on). Solid: calibrated, dashed: uncalibrated."
    )


# -- figures ---------------------------------------------------------------------------------


def _log_axes(ax, x: bool = True, base: float = 10) -> None:
    """Log-log axes (x in ``base``) labelled with plain numbers, minor ticks too on a
    narrow range."""
    from matplotlib.ticker import LogFormatter

    class Plain(LogFormatter):
        def _num_to_string(self, x, vmin, vmax):  # "0.2", not "2e-01"
            return f"{x:g}"

        def _pprint_val(self, x, d):
            return f"{x:g}"

    axes = [(ax.yaxis, ax.set_yscale, 10)] + ([(ax.xaxis, ax.set_xscale, base)] if x else [])
    for axis, set_scale, b in axes:
        set_scale("log", base=b)
        for setter in (axis.set_major_formatter, axis.set_minor_formatter):
            setter(Plain(base=b, labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def _colors(k: int):
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(0.9 * i / max(k - 1, 1)) for i in range(k)]


def _nll_vs_n(rows, fits):
    from basinscope.plotting._common import new_figure

    fig = new_figure((11.5, 4.4))
    axes = fig.subplots(1, 2)
    colors = _colors(len(rows))
    for ax, (key, label) in zip(axes, KEYS.items(), strict=True):
        for r, color in zip(rows, colors, strict=True):
            ns = np.array([x["n"] for x in r["by_n"]], dtype=float)
            mean = np.array([x[f"{key}_mean"] for x in r["by_n"]])
            lo = np.array([x[f"{key}_lo"] for x in r["by_n"]])
            hi = np.array([x[f"{key}_hi"] for x in r["by_n"]])
            f = fits["n"][str(r["width"])][key]
            ax.fill_between(ns, lo, hi, color=color, alpha=0.15, lw=0)
            grid = np.geomspace(ns.min(), ns.max(), 100)
            ax.plot(ns, mean, "o", color=color, ms=4)
            ax.plot(
                grid,
                f["c"] + f["b"] * grid ** (-f["a"]),
                "-",
                color=color,
                lw=1.2,
                label=f"w={r['width']}: {_law(f)}",
            )
            if f["c"] > 0:
                ax.axhline(f["c"], color=color, ls=":", lw=0.8)
        _log_axes(ax)
        ax.set_xlabel("ensemble size n")
        ax.set_ylabel(f"test NLL ({label})")
        ax.set_title(label)
        ax.legend(fontsize=7)
    return fig


def _nll_vs_width(rows, fits, n_max):
    from basinscope.plotting._common import new_figure

    fig = new_figure((11.5, 4.2))
    axes = fig.subplots(1, 2)
    w = np.array([r["width"] for r in rows], dtype=float)
    for ax, (key, label) in zip(axes, KEYS.items(), strict=True):
        first = [r["by_n"][0] for r in rows]
        mean = np.array([x[f"{key}_mean"] for x in first])
        err = np.array([[m - x[f"{key}_lo"], x[f"{key}_hi"] - m] for m, x in zip(mean, first)]).T
        ax.errorbar(w, mean, yerr=err, fmt="o", color="#1f77b4", capsize=3, label="n = 1")
        f = fits["width"][key]
        grid = np.geomspace(w.min(), w.max(), 100)
        ax.plot(
            grid, f["c"] + f["b"] * grid ** (-f["a"]), "-", color="#1f77b4", label=f"fit: {_law(f)}"
        )
        if f["c"] > 0:
            ax.axhline(f["c"], color="#1f77b4", ls=":", lw=0.8)
        ens = [r["by_n"][-1][f"{key}_mean"] for r in rows]
        ax.plot(w, ens, "s--", color="#d62728", ms=4, label=f"n = {n_max}")
        _log_axes(ax, base=2)
        ax.set_xlabel("width (hidden units)")
        ax.set_ylabel(f"test NLL ({label})")
        ax.set_title(label)
        ax.legend(fontsize=8)
    return fig


def _error_disagreement(rows):
    from basinscope.plotting._common import new_figure

    fig = new_figure((11.5, 4.0))
    axes = fig.subplots(1, 2)
    for r, color in zip(rows, _colors(len(rows)), strict=True):
        for ax, key in zip(axes, ("error", "disagreement"), strict=True):
            pts = [x for x in r["by_n"] if x[f"{key}_mean"] is not None]
            ns = [x["n"] for x in pts]
            ax.fill_between(
                ns,
                [x[f"{key}_lo"] for x in pts],
                [x[f"{key}_hi"] for x in pts],
                color=color,
                alpha=0.15,
                lw=0,
            )
            ax.plot(
                ns,
                [x[f"{key}_mean"] for x in pts],
                "o-",
                color=color,
                ms=4,
                label=f"w={r['width']}",
            )
    axes[0].set_ylabel("test error")
    axes[1].set_ylabel("disagreement between members")
    for ax in axes:
        ax.set_xlabel("ensemble size n")
        ax.legend(fontsize=8)
    return fig


def _reliability(rel, n_max):
    from basinscope.plotting._common import new_figure

    fig = new_figure((9.0, 8.0))
    axes = fig.subplots(2, 2)
    for i, (name, what) in enumerate((("single", "member 0"), ("ensemble", f"{n_max} members"))):
        r = rel[name]
        for j, when in enumerate(("before", "after")):
            ax = axes[i, j]
            b = r[when]
            lo, hi = np.array(b["lower"], float), np.array(b["upper"], float)
            acc, conf = np.array(b["accuracy"], float), np.array(b["confidence"], float)
            ok = np.isfinite(acc) & np.isfinite(lo) & np.isfinite(hi)
            ax.bar(
                lo[ok],
                acc[ok],
                width=(hi - lo)[ok],
                align="edge",
                color="#1f77b4",
                edgecolor="white",
                label="accuracy",
            )
            ax.bar(
                lo[ok],
                (conf - acc)[ok],
                bottom=acc[ok],
                width=(hi - lo)[ok],
                align="edge",
                color="#d62728",
                alpha=0.35,
                label="gap",
            )
            ax.plot([0, 1], [0, 1], "k--", lw=0.8)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            tau = 1.0 if when == "before" else r["temperature"]
            ax.set_title(
                f"{what}, {when}: τ={tau:.3g}, ECE {r[f'ece_{when}']:.3f}, NLL "
                f"{r[f'nll_{when}']:.3f}",
                fontsize=9,
            )
            ax.set_xlabel("confidence")
            ax.set_ylabel("accuracy")
            ax.legend(fontsize=7, loc="upper left")
    return fig


def _memory_split(results):
    from basinscope.plotting._common import new_figure

    rows = results["widths"]
    split = results["memory_split"]["nll_cal"]
    fig = new_figure((7.5, 4.8))
    ax = fig.add_subplot()
    for r, color in zip(rows, _colors(len(rows)), strict=True):
        mem = [x["n"] * r["parameters"] for x in r["by_n"]]
        ax.plot(
            mem,
            [x["nll_cal_mean"] for x in r["by_n"]],
            "o-",
            color=color,
            ms=3,
            lw=0.8,
            label=f"w={r['width']}",
        )
    b = [x["budget"] for x in split["rows"]]
    best = [x["measured"] for x in split["rows"]]
    ax.step(b, best, where="post", color="k", lw=1.5, label="best within budget")
    env = split["envelope"]
    if env is not None:
        grid = np.geomspace(min(b), max(b), 100)
        ax.plot(
            grid,
            env["c"] + env["b"] * grid ** (-env["a"]),
            "k--",
            lw=1,
            label=f"envelope fit: {_law(env)}",
        )
    _log_axes(ax)
    ax.set_xlabel("memory: n × parameters(w)")
    ax.set_ylabel("calibrated test NLL")
    ax.legend(fontsize=7)
    return fig


def _equal_budget(results):
    from basinscope.plotting._common import new_figure

    bm = results["budget_methods"]
    ind, fge, swa = bm["independent"], bm["fge"]["points"], bm["swa"]["swa"]
    fig = new_figure((11.5, 4.2))
    axes = fig.subplots(1, 2)
    n = [r["n"] for r in ind]
    for ax, metric in zip(axes, ("nll", "error"), strict=True):
        if metric == "nll":
            for key, ls in (("nll_cal", "-"), ("nll", "--")):
                what = "calibrated" if key == "nll_cal" else "uncalibrated"
                ax.fill_between(
                    n,
                    [r[f"{key}_lo"] for r in ind],
                    [r[f"{key}_hi"] for r in ind],
                    color="#1f77b4",
                    alpha=0.12,
                    lw=0,
                )
                ax.plot(
                    n,
                    [r[f"{key}_mean"] for r in ind],
                    "o" + ls,
                    color="#1f77b4",
                    ms=4,
                    label=f"independent, {what}",
                )
                ax.plot(
                    [p["n"] for p in fge],
                    [p[key] for p in fge],
                    "s" + ls,
                    color="#ff7f0e",
                    ms=4,
                    label=f"FGE, {what}",
                )
                ax.plot(
                    [swa["n"]],
                    [swa[key]],
                    "D",
                    color="#2ca02c",
                    ms=7,
                    mfc="#2ca02c" if key == "nll_cal" else "white",
                    label=f"SWA, {what}",
                )
            ax.set_ylabel("test NLL")
        else:
            ax.plot(n, [r["error_mean"] for r in ind], "o-", color="#1f77b4", label="independent")
            ax.plot(
                [p["n"] for p in fge], [p["error"] for p in fge], "s-", color="#ff7f0e", label="FGE"
            )
            ax.plot([swa["n"]], [swa["error"]], "D", color="#2ca02c", ms=7, label="SWA")
            ax.set_ylabel("test error")
        ax.set_xlabel(f"training budget (member trainings of {bm['steps_per_member']} updates)")
        ax.legend(fontsize=7)
    return fig
