"""The figures of calibration and scaling-law results, drawn through plot(result) from the
library's results on synthetic data (and from their stored dicts, as `basinscope plot` does)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from matplotlib.figure import Figure

from basinscope.analyses.calibration import apply_temperature, calibrate_log_probs
from basinscope.analyses.scaling import PowerLawFit, fit_power_law, memory_split
from basinscope.plotting import plot


def _stored(result):
    return type(result).from_dict(result.to_dict())


def _legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def _log_probs(n, seed, members=1):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 5, n)
    z = rng.normal(size=(members, n, 5)) * 3.0
    z[:, np.arange(n), y] += 2.0  # better than chance, overconfident
    return np.stack([apply_temperature(m, 1.0) for m in z]), y


@pytest.fixture(scope="module")
def ensemble():
    (zv, yv), (zt, yt) = _log_probs(300, 0, 3), _log_probs(400, 1, 3)
    return calibrate_log_probs(zv, yv, zt, yt, bins=8)


def test_reliability_diagrams_before_and_after_with_counts_beneath(ensemble):
    r = _stored(ensemble)
    fig, ax = plot(r)
    assert isinstance(fig, Figure) and len(fig.axes) == 4 and ax is fig.axes[0]
    before, after = fig.axes[0], fig.axes[1]
    assert before.get_title() == "before (τ = 1)"
    assert after.get_title().startswith(f"after (τ = {r.temperature:.3g})")
    assert "members calibrated, then averaged: ECE" in after.get_title()
    assert f"accuracy (ECE {r.before['ece']:.3g})" in _legend(before)
    assert f"accuracy (ECE {r.after['ece']:.3g})" in _legend(after)
    assert "perfect calibration" in _legend(before)
    # one accuracy bar per non-empty bin, its height the bin's accuracy
    nonempty = [
        a for a, c in zip(r.reliability_before["accuracy"], r.reliability_before["count"]) if c
    ]
    heights = [p.get_height() for p in before.containers[0]]
    assert heights == pytest.approx(nonempty)
    shares = [p.get_height() for p in fig.axes[2].containers[0]]
    assert sum(shares) == pytest.approx(1.0)
    assert "8 equal-width bins" in fig.axes[2].get_xlabel()


def test_one_model_equal_mass_and_on_a_given_axes():
    (zv, yv), (zt, yt) = _log_probs(200, 2), _log_probs(200, 3)
    r = calibrate_log_probs(zv[0], yv, zt[0], yt, bins=6, binning="equal_mass")
    fig, _ = plot(r)
    assert "members calibrated" not in fig.axes[1].get_title()
    assert fig.axes[2].get_ylabel() == "density"  # equal shares: their density is drawn
    bars = fig.axes[0].containers[0]
    lefts = [p.get_x() for p in bars]
    assert lefts == sorted(lefts) and len(bars) == 6
    other = Figure()
    given = other.add_subplot()
    assert plot(r, ax=given) == (other, given) and len(other.axes) == 1
    labels = _legend(given)
    assert f"before: accuracy (ECE {r.before['ece']:.3g})" in labels
    assert f"accuracy (ECE {r.after['ece']:.3g})" in labels


@pytest.fixture(scope="module")
def law():
    rng = np.random.default_rng(0)
    x = np.array([1, 2, 4, 8, 16, 32, 64.0])
    y = 0.4 + 1.5 * x**-0.7 + rng.normal(0, 0.005, len(x))
    return fit_power_law(x, y, bootstrap=100)


def test_power_law_on_log_log_axes_with_its_band_and_asymptote(law):
    r = _stored(law)
    fig, ax = plot(r)
    assert len(fig.axes) == 2 and ax is fig.axes[0]
    assert ax.get_xscale() == ax.get_yscale() == "log"
    assert ax.get_ylabel() == "y − c"
    labels = _legend(ax)
    assert labels[1].startswith(f"fit: a = {r.a:.3g} [{r.ci['a'][0]:.3g}")
    assert labels[2] == "pointwise 95% bootstrap band"
    # the points are y - c; the line is b x^-a, straight on these axes
    pts, line = ax.get_lines()[:2]
    assert pts.get_ydata() == pytest.approx(r.y - r.c)
    xs, ys = line.get_xdata(), line.get_ydata()
    assert ys == pytest.approx(r.b * xs ** (-r.a))
    band = ax.collections[0].get_paths()[0].vertices
    assert band[:, 1].min() > 0
    second = fig.axes[1]
    assert f"asymptote c = {r.c:.3g}" in _legend(second)
    assert second.get_lines()[2].get_ydata()[0] == pytest.approx(r.c)
    assert f"c = {r.c:.3g} [" in fig.get_suptitle()


def test_power_law_increasing_points_past_c_and_no_bootstrap():
    x = np.array([1, 2, 4, 8.0])
    y = 0.9 - 0.5 * x**-1.0
    y[-1] = 0.95  # past the asymptote: not on the log axis
    r = PowerLawFit(a=1.0, b=-0.5, c=0.9, x=x, y=y)  # a stored fit without intervals
    other = Figure()
    given = other.add_subplot()
    fig, ax = plot(r, ax=given)
    assert (fig, ax) == (other, given)
    assert r.b < 0 and ax.get_ylabel() == "c − y"
    assert not ax.collections  # no interval, no band
    shown = len(ax.get_lines()[0].get_xdata())
    assert shown == 3 and "(1 point at or past c not shown)" in ax.get_title()


@pytest.fixture(scope="module")
def split():
    rng = np.random.default_rng(1)
    widths, ns = [4, 8, 16], np.arange(1, 7)
    v = np.array([[0.3 + 2.0 / w**0.8 + 0.8 / w**0.5 * n**-0.9 for n in ns] for w in widths])
    v += rng.normal(0, 0.002, v.shape)
    v[0, -1] = np.nan  # not measured
    nll = xr.DataArray(v, dims=("width", "n"), coords={"width": widths, "n": ns})
    params = {w: 74 * w for w in widths}
    return memory_split(nll, params, [300, 600, 1200, 2400, 4800, 7200], bootstrap=50)


def test_memory_split_lines_per_width_envelope_and_the_best_splits(split):
    r = _stored(split)
    fig, ax = plot(r)
    assert len(fig.axes) == 1 and ax.get_xscale() == "log"
    labels = _legend(ax)
    assert [lb for lb in labels if lb.startswith("width")] == [
        "width 4 (296 params)",
        "width 8 (592 params)",
        "width 16 (1,184 params)",
    ]
    assert "lower envelope (best measured in budget)" in labels
    assert any(lb.startswith(f"envelope law: a = {r.envelope.a:.3g}") for lb in labels)
    assert "measured best split" in labels and "predicted best split (its measured NLL)" in labels
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    w4 = lines["width 4 (296 params)"]
    assert w4.get_xdata() == pytest.approx(np.arange(1, 6) * 296)  # n = 6 was not measured
    env = lines["lower envelope (best measured in budget)"]
    assert env.get_ydata() == pytest.approx(r.table.measured.values)
    agree = int(r.table.agree.sum())
    assert ax.get_title().endswith(f"at {agree} of 6 budgets")
    texts = [t.get_text() for t in ax.texts]
    first = r.table.isel(budget=0)
    assert texts[0] == f"{first.measured_width.item()}×{int(first.measured_n)}"
    other = Figure()
    given = other.add_subplot()
    assert plot(r, ax=given) == (other, given)
