"""Figures of calibration and of scaling laws (reliability diagrams, power laws, the memory
split between width and ensemble size), registered by kind with
:func:`basinscope.plotting.plots`. Each draws its result on ``ax`` (or a new figure) and
returns ``(fig, ax)``; :func:`basinscope.plotting.plot` dispatches to it. Without ``ax`` a
result with a second view draws it beside the first, and ``ax`` is the first panel."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from basinscope.plotting._common import (
    LABEL_SIZE,
    LEGEND_SIZE,
    TITLE_SIZE,
    new_figure,
    style_axes,
)
from basinscope.plotting.dispatch import plots

__all__ = ["plot_calibration", "plot_memory_split", "plot_power_law"]

BEFORE, AFTER, GAP = "#9aa5b1", "#4c72b0", "#c44e52"


def _floats(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(-1)


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(x) for x in np.linspace(0.0, 0.85, max(n, 1))]


def _g(v: float) -> str:
    return f"{v:.3g}" if math.isfinite(v) else str(v)


# -- calibration -------------------------------------------------------------------------
def _bars(rel: dict[str, Any], binning: str) -> tuple[np.ndarray, ...]:
    """``(left, width, accuracy, confidence, share)`` of the non-empty bins. Equal-width
    bins are their intervals; equal-mass bins span from halfway between their neighbours'
    confidences, so the bars tile the confidences they hold."""
    lo, hi = _floats(rel.get("lower", [])), _floats(rel.get("upper", []))
    count, acc = _floats(rel.get("count", [])), _floats(rel.get("accuracy", []))
    conf = _floats(rel.get("confidence", []))
    keep = count > 0
    lo, hi, count, acc, conf = lo[keep], hi[keep], count[keep], acc[keep], conf[keep]
    if binning == "equal_mass" and len(lo):
        inner = 0.5 * (hi[:-1] + lo[1:])
        lo, hi = np.concatenate([lo[:1], inner]), np.concatenate([inner, hi[-1:]])
    width = np.maximum(hi - lo, 0.008)
    left = np.where(hi - lo < 0.008, 0.5 * (lo + hi) - 0.004, lo)
    share = count / count.sum() if count.sum() else count
    return left, width, acc, conf, share


def _reliability(ax: Any, rel: dict[str, Any], ece: float, binning: str, color: str) -> None:
    left, width, acc, conf, _ = _bars(rel, binning)
    ax.plot([0, 1], [0, 1], "--", color="0.4", lw=1, label="perfect calibration", zorder=3)
    ax.bar(left, acc, width, align="edge", color=color, edgecolor="white", lw=0.6,
           label=f"accuracy (ECE {_g(ece)})", zorder=2)  # fmt: skip
    ax.bar(left, conf - acc, width, bottom=acc, align="edge", facecolor="none",
           edgecolor=GAP, hatch="///", lw=0.6, label="gap to mean confidence", zorder=2)  # fmt: skip
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy", fontsize=LABEL_SIZE)
    ax.legend(fontsize=LEGEND_SIZE, loc="upper left")
    style_axes(ax)


def _counts(ax: Any, rel: dict[str, Any], binning: str, bins: int, color: str) -> None:
    left, width, *_, share = _bars(rel, binning)
    mass = binning == "equal_mass"  # equal shares: their density says where examples are
    ax.bar(left, share / width if mass else share, width, align="edge", color=color,
           edgecolor="white", lw=0.6)  # fmt: skip
    ax.set_xlim(0, 1)
    ax.set_ylabel("density" if mass else "share", fontsize=LABEL_SIZE)
    ax.set_xlabel(f"top-1 confidence ({bins} {binning.replace('_', '-')} bins)",
                  fontsize=LABEL_SIZE)  # fmt: skip
    style_axes(ax)


def _what(r: Any) -> str:
    m = len(r.members)
    return f"ensemble of {m} (averaged probabilities)" if m > 1 else "model"


@plots("calibration")
def plot_calibration(r: Any, ax: Any = None) -> tuple[Any, Any]:
    """Reliability diagrams before and after temperature scaling: accuracy per bin of the
    top-1 confidence against the diagonal, the gap to the bin's mean confidence hatched, ECE
    in the legend, and the share of examples per bin beneath. On a given ``ax``: one
    diagram, after (filled) over before (outlined)."""
    tau = f"τ = {_g(r.temperature)}" + (" (at a bound)" if r.at_bound else "")
    if ax is not None:
        left, width, acc, *_ = _bars(r.reliability_before, r.binning)
        _reliability(ax, r.reliability_after, r.after["ece"], r.binning, AFTER)
        ax.bar(left, acc, width, align="edge", facecolor="none", edgecolor="0.2", lw=1,
               label=f"before: accuracy (ECE {_g(r.before['ece'])})", zorder=4)  # fmt: skip
        ax.legend(fontsize=LEGEND_SIZE, loc="upper left")
        ax.set_xlabel(f"top-1 confidence ({r.bins} {r.binning.replace('_', '-')} bins)",
                      fontsize=LABEL_SIZE)  # fmt: skip
        ax.set_title(f"reliability of the {_what(r)}, {tau}", fontsize=TITLE_SIZE)
        return ax.figure, ax
    fig = new_figure((9.0, 5.2))
    grid = fig.add_gridspec(2, 2, height_ratios=(3, 1))
    first = fig.add_subplot(grid[0, 0])
    tops = [first, fig.add_subplot(grid[0, 1], sharey=first)]
    lows = [fig.add_subplot(grid[1, i], sharex=tops[i]) for i in range(2)]
    views = (
        ("before (τ = 1)", r.reliability_before, r.before["ece"], BEFORE),
        (f"after ({tau})", r.reliability_after, r.after["ece"], AFTER),
    )
    for top, low, (title, rel, ece, color) in zip(tops, lows, views):
        _reliability(top, rel, ece, r.binning, color)
        _counts(low, rel, r.binning, r.bins, color)
        top.set_title(title, fontsize=TITLE_SIZE)
        top.tick_params(labelbottom=False)
    if r.members_calibrated:
        mc = r.members_calibrated["ece"]
        tops[1].set_title(f"after ({tau})\nmembers calibrated, then averaged: ECE {_g(mc)}",
                          fontsize=TITLE_SIZE)  # fmt: skip
    fig.suptitle(
        f"reliability of the {_what(r)} on {r.n_test} test examples; τ fitted on {r.n_val}",
        fontsize=TITLE_SIZE,
    )
    return fig, first


# -- power laws ------------------------------------------------------------------------------
def _interval(r: Any, name: str) -> str:
    ci = r.ci.get(name)
    return f" [{_g(ci[0])}, {_g(ci[1])}]" if ci else ""


def _loglog(ax: Any, r: Any, color: str = AFTER, label: str = "measured") -> str:
    """``±(y − c)`` against ``x`` on log-log axes with the law and its band; returns a note
    of the points it could not draw (at or beyond the asymptote)."""
    x, y = _floats(r.x), _floats(r.y)
    s = 1.0 if r.b >= 0 else -1.0
    d = s * (y - r.c)
    ok = d > 0
    ax.plot(x[ok], d[ok], "o", ms=5, color=color, label=label, zorder=3)
    lo, hi = float(x.min()), float(x.max())
    xs = np.geomspace(lo / 1.15, hi * 1.15, 200)
    ax.plot(xs, abs(r.b) * xs ** (-r.a), "-", color="0.15", lw=1.4,
            label=f"fit: a = {_g(r.a)}{_interval(r, 'a')}")  # fmt: skip
    if len(getattr(r, "draws", ())):
        blo, bhi = r.band(xs)
        ends = np.sort(np.stack([s * (blo - r.c), s * (bhi - r.c)]), axis=0)
        ax.fill_between(xs, np.clip(ends[0], 1e-300, None), np.clip(ends[1], 1e-300, None),
                        color="0.15", alpha=0.13, lw=0,
                        label=f"pointwise {r.level:.0%} bootstrap band")  # fmt: skip
    elif "a" in r.ci and "b" in r.ci:  # a result without its draws: a and b's box
        corners = np.array(
            [s * b * xs ** (-a) for a in r.ci["a"] for b in r.ci["b"]], dtype=np.float64
        )
        low = np.clip(corners.min(0), 1e-300, None)
        ax.fill_between(xs, low, corners.max(0), color="0.15", alpha=0.13, lw=0,
                        label=f"a, b within their {r.level:.0%} bootstrap intervals")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylabel("y − c" if s > 0 else "c − y", fontsize=LABEL_SIZE)
    ax.set_xlabel("x", fontsize=LABEL_SIZE)
    ax.legend(fontsize=LEGEND_SIZE)
    style_axes(ax)
    k = int((~ok).sum())
    return f"{k} point{'s' if k > 1 else ''} at or past c not shown" if k else ""


@plots("power_law")
def plot_power_law(r: Any, ax: Any = None) -> tuple[Any, Any]:
    """``y − c`` against ``x`` on log-log axes (a straight line of slope −a), the fitted law
    with its bootstrap band and the asymptote ``c`` in the title; without ``ax``, beside it
    ``y`` itself with the law and the asymptote."""
    law = f"y = c + b·x^(−a): c = {_g(r.c)}{_interval(r, 'c')}, b = {_g(r.b)}{_interval(r, 'b')}"
    if ax is not None:
        note = _loglog(ax, r)
        ax.set_title(law + (f"\n({note})" if note else ""), fontsize=LABEL_SIZE)
        return ax.figure, ax
    fig = new_figure((10.0, 4.2))
    first, second = fig.subplots(1, 2)
    note = _loglog(first, r)
    first.set_title("log-log: y − c against x" + (f"\n({note})" if note else ""),
                    fontsize=TITLE_SIZE)  # fmt: skip
    x, y = _floats(r.x), _floats(r.y)
    xs = np.geomspace(float(x.min()) / 1.15, float(x.max()) * 1.15, 200)
    second.plot(x, y, "o", ms=5, color=AFTER, label="measured", zorder=3)
    second.plot(xs, r.predict(xs), "-", color="0.15", lw=1.4, label="fit")
    if len(getattr(r, "draws", ())):
        blo, bhi = r.band(xs)
        second.fill_between(xs, blo, bhi, color="0.15", alpha=0.13, lw=0,
                            label=f"pointwise {r.level:.0%} bootstrap band")  # fmt: skip
    second.axhline(r.c, ls="--", color=GAP, lw=1.2, label=f"asymptote c = {_g(r.c)}")
    if "c" in r.ci:
        second.axhspan(*r.ci["c"], color=GAP, alpha=0.12, lw=0,
                       label=f"c's {r.level:.0%} bootstrap interval")  # fmt: skip
    second.set_xscale("log")
    second.set_xlabel("x", fontsize=LABEL_SIZE)
    second.set_ylabel("y", fontsize=LABEL_SIZE)
    second.set_title(f"y and its asymptote (rmse {_g(r.rmse)})", fontsize=TITLE_SIZE)
    second.legend(fontsize=LEGEND_SIZE)
    style_axes(second)
    fig.suptitle(law, fontsize=TITLE_SIZE)
    return fig, first


# -- the memory split ------------------------------------------------------------------------
@plots("memory_split")
def plot_memory_split(r: Any, ax: Any = None) -> tuple[Any, Any]:
    """Measured NLL against memory (``n · params(width)``), a line per width (its law
    dashed), the lower envelope over the budgets and its fitted law, and at each budget the
    measured best split (star) and the laws' predicted one (diamond, at its measured NLL)."""
    if ax is None:
        fig = new_figure((7.2, 4.8))
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    widths = list(r.params)
    color = dict(zip(widths, _colors(len(widths))))
    for w in widths:
        law = r.laws.get(w)
        if law is None:
            continue
        n, nll, p = _floats(law.x), _floats(law.y), r.params[w]
        order = np.argsort(n)
        ax.plot(n[order] * p, nll[order], "o-", ms=3.5, lw=1.3, color=color[w],
                label=f"width {w} ({p:,} params)")  # fmt: skip
        grid = np.arange(1, int(n.max()) + 1)
        ax.plot(grid * p, law.predict(grid), "--", lw=0.9, color=color[w], alpha=0.7)
    t = r.table
    budgets = _floats(t.budget.values)
    ax.plot(budgets, _floats(t.measured.values), "-", color="0.1", lw=2.2, alpha=0.8,
            label="lower envelope (best measured in budget)", zorder=4)  # fmt: skip
    env = r.envelope
    if env is not None:
        bs = np.geomspace(budgets.min(), budgets.max(), 200)
        ax.plot(bs, env.predict(bs), ":", color="0.1", lw=1.6, zorder=4,
                label=f"envelope law: a = {_g(env.a)}{_interval(env, 'a')}, c = {_g(env.c)}")  # fmt: skip
    mw, pw = [str(v) for v in t.measured_width.values], [str(v) for v in t.predicted_width.values]
    for i, b in enumerate(budgets):
        ax.plot(b, float(t.measured.values[i]), "*", ms=12, mec="0.1", mew=0.6,
                color=color.get(mw[i], "0.5"), zorder=5,
                label="measured best split" if i == 0 else None)  # fmt: skip
        ax.plot(b, float(t.measured_at_predicted.values[i]), "D", ms=8, mfc="none", mew=1.4,
                mec=color.get(pw[i], "0.5"), zorder=6,
                label="predicted best split (its measured NLL)" if i == 0 else None)  # fmt: skip
        ax.annotate(f"{mw[i]}×{int(t.measured_n.values[i])}", (b, float(t.measured.values[i])),
                    xytext=(-5, -13), textcoords="offset points", ha="right",
                    fontsize=LEGEND_SIZE - 1)  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("memory: n · params(width)  (budget for the envelope)", fontsize=LABEL_SIZE)
    ax.set_ylabel("NLL", fontsize=LABEL_SIZE)
    agree = int(np.sum(t.agree.values))
    ax.set_title(
        f"memory split: the laws predict the measured best split at {agree} of "
        f"{len(budgets)} budgets",
        fontsize=TITLE_SIZE,
    )
    ax.legend(fontsize=LEGEND_SIZE, loc="best")
    style_axes(ax)
    return fig, ax
