"""Every user-controlled string that reaches HTML is escaped (issue 11).

Labels, settings, layer and variable names, paths and study configuration values reach
the HTML report through :class:`basinscope.report.Report` and the plotly figures of
:mod:`basinscope.plotting.interactive` (which plotly.js renders as HTML). Each path gets a
``<script>`` and an attribute-breaking ``"><img onerror=...>`` and must show them only
escaped. (The study report builders, which only use these two, are checked end to end
in ``tests/cli/test_report_inputs.py``.)
"""

from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go
import pytest
import xarray as xr
from matplotlib.figure import Figure

from basinscope.plotting import line_figure, surface_figure
from basinscope.plotting.trajectory import Trajectory
from basinscope.report import Report

SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(2)>'
PAYLOADS = (SCRIPT, IMG)


def _no_markup(text: str) -> None:
    """No payload survives as markup: no raw ``<script``/``<img``, escaped forms present."""
    for raw in ("<script>alert", "<img src=x", "\\u003cscript", "\\u003cimg"):
        assert raw not in text, f"{raw!r} unescaped in {text[:200]!r}..."


# -- the Report --------------------------------------------------------------------------


@pytest.mark.parametrize("payload", PAYLOADS)
def test_every_report_field_is_escaped(tmp_path, payload):
    fig = Figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1], [1, 0])
    rep = Report(f"title {payload}", subtitle=f"run folder /runs/{payload}")
    rep.heading(f"layer {payload}")
    rep.text(f"setting = {payload}\n\nsecond paragraph {payload}")
    rep.table([{f"col {payload}": f"value {payload}", "n": 1.5}], caption=f"cap {payload}")
    rep.figure(fig, f"{payload} caption of a static figure")  # also its alt="..." attribute
    rep.plotly(go.Figure(go.Scatter(x=[0, 1], y=[1, 0])), f"interactive {payload}")
    text = rep.write(tmp_path / "report.html").read_text()
    _no_markup(text.replace(rep.parts[-1], ""))  # the plotly div is checked below
    assert text.count(html.escape(payload)) >= 9, text.count(html.escape(payload))
    assert f'alt="{html.escape(payload)} caption' in text


# -- the interactive figures -------------------------------------------------------------


def _surface(var: str, title: str) -> xr.Dataset:
    a = np.linspace(-1, 1, 5)
    z = 1.0 + a[:, None] ** 2 + a[None, :] ** 2
    return xr.Dataset(
        {var: (("alpha", "beta"), z)},
        coords={"alpha": a, "beta": a},
        attrs={"title": title},
    )


def _strings(fig: go.Figure) -> list[str]:
    """Every text of a plotly figure that plotly.js renders as HTML."""
    layout = fig.layout
    out = [layout.title.text or ""]
    out += [t.name or "" for t in fig.data]
    out += [a.text or "" for a in (layout.annotations or ())]
    out += [layout.xaxis.title.text or "", layout.yaxis.title.text or ""]
    for t in fig.data:
        bar = getattr(t, "colorbar", None)
        if bar is not None and bar.title is not None:
            out.append(bar.title.text or "")
        out.append(getattr(t, "hovertemplate", None) or "")
    if "scene" in layout and layout.scene.zaxis.title.text:
        out.append(layout.scene.zaxis.title.text)
    return out


@pytest.mark.parametrize("payload", PAYLOADS)
def test_surface_figure_escapes_names_titles_and_trajectory_labels(payload):
    var = f"train_loss {payload}"
    traj = Trajectory(f"run {payload}", np.array([0.0, 0.5]), np.array([0.0, 0.2]))
    for title in (None, f"title {payload}"):
        ds = _surface(var, f"attrs title {payload}")
        fig = surface_figure(ds, var, title=title, trajectories=[traj])
        strings = _strings(fig)
        for s in strings:
            _no_markup(s)
        joined = " ".join(strings)
        assert html.escape(payload, quote=False) in joined
        assert "<sub>" not in fig.layout.title.text or "log" in fig.layout.title.text
        _no_markup(fig.to_html(include_plotlyjs=False))
    logged = surface_figure(ds, var, log=True)
    assert logged.data[0].colorbar.title.text.startswith("log<sub>10</sub> ")  # markup kept


@pytest.mark.parametrize("payload", PAYLOADS)
def test_line_figure_escapes_labels_from_the_attributes(payload):
    a = np.linspace(-0.5, 1.5, 5)
    ds = xr.Dataset(
        {"train_loss": ("alpha", 1 + a**2), "train_accuracy": ("alpha", 0.5 + 0 * a)},
        coords={"alpha": a},
        attrs={
            "kind": "interpolation",
            "label_a": f"model {payload}",
            "label_b": r"$\theta_B$",
            "title": f"line {payload}",
        },
    )
    ds["train_loss"].attrs["long_name"] = f"loss of {payload}"
    fig = line_figure(ds, splits=("train",))
    strings = _strings(fig)
    for s in strings:
        _no_markup(s)
    assert any(html.escape(payload, quote=False) in s for s in strings)
    assert any("θ<sub>B</sub>" in s for s in strings)  # basinscope's own markup still works
    _no_markup(fig.to_html(include_plotlyjs=False))
