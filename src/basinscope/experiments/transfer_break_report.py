"""The "breaks" section's part of the transfer-methods report: its tables and figures, drawn
from the section's results (nothing is computed again)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_section"]

COLORS = {"copies": "tab:blue", "pretrained": "tab:orange"}
LABELS = {
    "copies": "between copies (target digits)",
    "pretrained": "pre-trained → copy (source digits)",
}


def _ci(ci: list | None) -> str:
    return "—" if ci is None else f"[{ci[0]:.3g}, {ci[1]:.3g}]"


def _end(v: float | None, where: str) -> str:
    return f"{v:.3g}" if v is not None else where


def write_section(rep: Any, section: dict[str, Any], cfg: dict[str, Any], figs: Path) -> None:
    from basinscope.experiments.transfer_break import TITLE

    setup, fams, lam = section["setup"], section["families"], section["lambda_max"]
    level = cfg["ci_level"]
    rep.heading(TITLE)
    rep.text(
        "Three sweeps of shift strength away from the source digits (rotation, block "
        "shuffle, Gaussian noise). At every strength the pre-trained model is fine-tuned "
        f"(ft) with {setup['copies']} data orders: the copies. Basin test (Neyshabur et al. "
        f"2020, Definition 3.1): S = {setup['basin_set']}; the function tested is the "
        f"{setup['basin_loss']}; epsilon the smallest for which condition 1 holds, delta "
        f"{setup['delta']:g} (Euclidean over all parameters). Barriers: the "
        f"{setup['barrier_copies']}, and the {setup['barrier_pretrained']}. The basin breaks "
        f"where the mean barrier reaches {setup['threshold']:g}: "
        + section["definitions"]["breaking_point"]
        + ". Then lambda_max along pre-training and along one fine-tuning on the main target, "
        "against the stability threshold 2(1+momentum)/lr."
    )
    rows = []
    for fam, f in fams.items():
        for kind in ("copies", "pretrained"):
            b = f["breaking"][kind]
            rows.append(
                {
                    "shift": fam,
                    "barrier": LABELS[kind],
                    "status": b["status"],
                    "breaking point": b["point"],
                    "between strengths": "—"
                    if b["bracket"] is None
                    else f"{b['bracket'][0]:g} and {b['bracket'][1]:g}",
                    f"{level:.0%} interval": f"[{_end(b['ci'][0], b['ci_ends'][0])}, "
                    f"{_end(b['ci'][1], b['ci_ends'][1])}]",
                    "resamples breaking / never / always": "{breaks:.2f} / {never:.2f} / "
                    "{always:.2f}".format(**b["fractions"]),
                    "basin verdict flips": (
                        f"between {f['basin_flip']['between'][0]:g} and "
                        f"{f['basin_flip']['between'][1]:g}"
                        if f["basin_flip"]["status"] == "flips"
                        else f["basin_flip"]["status"]
                    ),
                    "axis": f["axis"],
                }
            )
    rep.table(
        rows,
        "Breaking points: the strength (on the axis named in the last column) at which the mean "
        f"barrier reaches {setup['threshold']:g}, interpolated between the sweep's strengths "
        "(between strengths: the two around it, the sweep's resolution; the interval is that "
        "of the interpolated crossing); "
        f"'never': no strength reaches it; 'always': the weakest already does. Interval: "
        f"{level:.0%} percentile bootstrap over the copies (or pairs of copies) and the test "
        "digits; an end outside the sweep is named so. Resample fractions: how many resamples "
        "cross inside the sweep, never, or at the weakest strength. Basin verdict: the first "
        "strength at which conv(copies) is not a Definition 3.1 basin, with the one before it.",
    )
    sens = []
    for fam, f in fams.items():
        for kind in ("copies", "pretrained"):
            b = f["breaking"][kind]
            for o in sorted([b, *b.get("other_thresholds", [])], key=lambda o: o["threshold"]):
                sens.append(
                    {
                        "shift": fam,
                        "barrier": LABELS[kind],
                        "threshold": o["threshold"],
                        "status": o["status"],
                        "breaking point": o["point"],
                        f"{level:.0%} interval": f"[{_end(o['ci'][0], o['ci_ends'][0])}, "
                        f"{_end(o['ci'][1], o['ci_ends'][1])}]",
                    }
                )
    rep.table(
        sens,
        "How much the breaking point depends on the threshold: the same estimate and "
        f"bootstrap at each threshold (the study's is {setup['threshold']:g}); the barriers "
        "are the same, only the level at which the basin is said to break changes.",
    )
    rep.figure(
        _sweep_figure(fams, setup, level),
        f"Each kind of shift: the mean {setup['barrier_copies']} (blue) and the mean "
        f"{setup['barrier_pretrained']} (orange) against the shift strength; bands: "
        f"{level:.0%} bootstrap intervals of the means (over the copies and the test digits). "
        f"Dashed line: the threshold {setup['threshold']:g}. Vertical line and shaded span: the "
        "breaking point of the copies' barrier and its interval (clipped to the sweep). "
        "Markers at the top: Definition 3.1 verdict on conv(copies) (circle: a basin; cross: "
        "not; filled when the intervals support the verdict, open when not).",
        save_as=figs / "break_sweep",
    )
    pts = []
    for fam, f in fams.items():
        for p in f["points"]:
            b = p["basin"]
            c2, c3 = b["conditions"][1], b["conditions"][2]
            pts.append(
                {
                    "shift": fam,
                    "strength": p["strength"],
                    "target accuracy": float(np.mean(p["target_accuracy"])),
                    "source accuracy": float(np.mean(p["source_accuracy"])),
                    "barrier copies": p["barrier_copies_mean"],
                    "barrier pre→copy": p["barrier_pretrained_mean"],
                    "epsilon": b["epsilon"],
                    "margin (2)": c2["margin"],
                    "margin (3)": c3["margin"],
                    "basin": b["holds"],
                    "supported": b["ci_supports"],
                    "distance copies": float(np.mean(p["distance_between_copies"])),
                    "distance to pre-trained": float(np.mean(p["distance_to_pretrained"])),
                }
            )
    rep.table(
        pts,
        "Every shift: test accuracies after fine-tuning (mean over the copies) on the shifted "
        "and on the source digits; mean barriers; the basin test of conv(copies): epsilon "
        "(the smallest for condition 1, the mean absolute deviation of the loss in the hull), "
        "the margins of conditions 2 (isotropic noise at the boundary) and 3 (outward step) "
        "over 2 epsilon, the verdict and whether its normal intervals support it; mean "
        "Euclidean distances between copies and from the pre-trained model.",
    )
    lrows = []
    for name, v in lam.items():
        e = v["break_even"]
        for s, x, ok in zip(v["steps"], v["lambda_max"], v["converged"], strict=True):
            lrows.append(
                {
                    "trajectory": name,
                    "step": s,
                    "lambda_max": x,
                    "lr · lambda_max / (2 (1 + beta))": x / v["threshold"],
                    "converged": ok,
                    "peak step": e["peak_step"],
                    "break-even step": e["step"],
                }
            )
    rep.table(
        lrows,
        "lambda_max: top Hessian eigenvalue of the training loss ("
        f"{lam['pretrain']['loss']} for pre-training, {lam['finetune']['loss']} for the "
        "fine-tuning), float64 Lanczos; ratio to the stability threshold 2(1+beta)/lr "
        f"({lam['pretrain']['threshold']:.3g} at the pre-training lr "
        f"{lam['pretrain']['lr']:g}, {lam['finetune']['threshold']:.3g} at the fine-tuning lr "
        f"{lam['finetune']['lr']:g}); break-even step: the first recorded step with ratio >= 1.",
    )
    rep.figure(
        _lambda_figure(lam),
        "lambda_max (top eigenvalue of the Hessian of the mean training cross-entropy, "
        "float64) against the step: left along pre-training on the source digits, right along "
        "one fine-tuning (seed 0) from the pre-trained model on the main target. Dashed: the "
        "heavy-ball stability threshold 2(1+beta)/lr; dotted: 2/lr (plain SGD). Open markers: "
        "Lanczos did not converge to the tolerance.",
        save_as=figs / "break_lambda_max",
    )


def _sweep_figure(fams: dict[str, Any], setup: dict[str, Any], level: float):
    from basinscope.plotting._common import new_figure

    n = len(fams)
    fig = new_figure((5.0 * n, 4.2))
    axes = np.atleast_1d(fig.subplots(1, n)).reshape(-1)
    for ax, (fam, f) in zip(axes, fams.items(), strict=True):
        xs = [p["x"] for p in f["points"]]
        for kind in ("copies", "pretrained"):
            b = f["breaking"][kind]
            ax.plot(xs, b["mean"], "o-", color=COLORS[kind], label=LABELS[kind])
            ax.fill_between(xs, b["band"][0], b["band"][1], color=COLORS[kind], alpha=0.2)
        ax.axhline(setup["threshold"], color="0.3", ls="--", lw=1, label="threshold")
        b = f["breaking"]["copies"]
        if b["point"] is not None:
            ax.axvline(b["point"], color=COLORS["copies"], lw=1.2)
            lo = b["ci"][0] if b["ci"][0] is not None else xs[0]
            hi = b["ci"][1] if b["ci"][1] is not None else xs[-1]
            ax.axvspan(lo, hi, color=COLORS["copies"], alpha=0.1)
        for p in f["points"]:
            holds, sup = p["basin"]["holds"], p["basin"]["ci_supports"]
            ax.plot(
                [p["x"]],
                [0.95],
                "o" if holds else "x",
                color="tab:green" if holds else "tab:red",
                mfc=("tab:green" if holds else "tab:red") if sup else "none",
                ms=7,
                transform=ax.get_xaxis_transform(),
            )
        ax.set_xlabel(f["axis"])
        ax.set_title(fam)
        ax.set_ylabel("barrier")
    axes[0].legend(fontsize=7, loc="center left")
    return fig


def _lambda_figure(lam: dict[str, Any]):
    from basinscope.plotting._common import new_figure

    fig = new_figure((10.0, 4.0))
    axes = fig.subplots(1, 2)
    for ax, (name, v) in zip(axes, lam.items(), strict=True):
        steps, vals = np.asarray(v["steps"]), np.asarray(v["lambda_max"])
        ok = np.asarray(v["converged"], dtype=bool)
        ax.plot(steps, vals, "-", color="tab:purple")
        ax.plot(steps[ok], vals[ok], "o", color="tab:purple", label="lambda_max")
        ax.plot(steps[~ok], vals[~ok], "o", color="tab:purple", mfc="none")
        ax.axhline(v["threshold"], color="0.2", ls="--", label="2(1+β)/lr")
        ax.axhline(v["threshold_no_momentum"], color="0.5", ls=":", label="2/lr")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("lambda_max")
        ax.set_title(f"{name} (lr {v['lr']:g}, momentum {v['momentum']:g})")
        ax.legend(fontsize=7)
    return fig
