"""Interactive plotly figures and offline HTML export."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
import xarray as xr

from basinscope.plotting import Trajectory, line_figure, surface_figure, surface_html
from basinscope.plotting.interactive import to_plotly_text


def test_surface_figure_layout_and_transpose(ramp: xr.Dataset) -> None:
    fig = surface_figure(ramp, "train_loss", title="Ramp")
    assert isinstance(fig, go.Figure)
    (surf,) = fig.data
    assert isinstance(surf, go.Surface)
    values = ramp["train_loss"].values
    z = np.asarray(surf.z, dtype=float)
    assert z.shape == (7, 13)  # rows follow beta (y), columns alpha (x)
    np.testing.assert_array_equal(z, values.T)
    assert list(surf.x) == ramp["alpha"].values.tolist()
    assert fig.layout.title.text == "Ramp"
    assert fig.layout.scene.xaxis.title.text == "α"


def test_surface_figure_gaps_log_and_trajectories(bowl_nonfinite: xr.Dataset) -> None:
    ds = bowl_nonfinite.copy()
    ds["train_loss"].values[3, 4] = 0.0
    t = Trajectory("SGD", alpha=[0.5, 0.0, 5.0], beta=[0.5, 0.0, 0.0])
    fig = surface_figure(ds, "train_loss", log=True, trajectories=[t])
    z = fig.data[0].z
    assert z[0][0] is None and z[-1][-1] is None and z[4][3] is None  # transposed index
    assert z[10][10] == pytest.approx(np.log10(0.1))
    assert "3 non-finite grid values" in fig.layout.title.text
    assert "1 non-positive grid values" in fig.layout.title.text
    path = fig.data[1]
    assert isinstance(path, go.Scatter3d) and path.name == "SGD"
    # Height of the path is the (log) surface interpolated at each point; off-grid -> gap.
    assert path.z[1] == pytest.approx(np.log10(0.1)) and path.z[2] is None


def test_surface_html_is_self_contained(bowl_nonfinite: xr.Dataset, tmp_path: Path) -> None:
    out = surface_html(bowl_nonfinite, "train_loss", tmp_path / "html" / "surface.html")
    assert out == tmp_path / "html" / "surface.html"
    html = out.read_text(encoding="utf-8")
    assert "plotly" in html.lower() and "Plotly.newPlot" in html
    assert not re.search(r"<script[^>]*\bsrc=[\"']?https?://", html)
    assert len(html) > 1_000_000  # plotly.js is embedded
    assert "3.1" in html and "null" in html  # values and the non-finite gaps
    assert "Quadratic bowl" in html


def test_surface_html_cdn_option(bowl: xr.Dataset, tmp_path: Path) -> None:
    out = surface_html(bowl, "test_loss", tmp_path / "s.html", include_plotlyjs="cdn")
    assert out.stat().st_size < 200_000


def test_line_figure(line: xr.Dataset) -> None:
    fig = line_figure(line, log=True)
    assert isinstance(fig, go.Figure)
    names = [tr.name for tr in fig.data]
    assert names == ["train loss", "test loss", "train accuracy", "test accuracy"]
    assert [tr.line.dash for tr in fig.data] == ["solid", "dash", "solid", "dash"]
    assert fig.data[0].y[0] is None and fig.data[0].y[-1] is None
    assert fig.data[0].y[1] == pytest.approx(line["train_loss"].values[1])
    assert fig.data[2].yaxis == "y2" and fig.data[0].yaxis == "y"
    assert fig.layout.yaxis.type == "log"
    assert sorted(s.x0 for s in fig.layout.shapes) == [0, 1]
    assert {a.text for a in fig.layout.annotations} == {"θ<sub>A</sub>", "θ<sub>B</sub>"}
    assert "6 non-finite points" in fig.layout.title.text


def test_line_figure_single_metric(line: xr.Dataset) -> None:
    fig = line_figure(line.assign_attrs(kind="random_line"), metrics=("loss",), title="T")
    assert len(fig.data) == 2 and fig.layout.title.text.startswith("T")
    assert [s.x0 for s in fig.layout.shapes] == [0]


def test_to_plotly_text() -> None:
    assert to_plotly_text(r"$\theta_A$ and $\theta^*$") == "θ<sub>A</sub> and θ<sup>*</sup>"
    assert (
        to_plotly_text(r"step $\alpha$ ($\theta^* + \alpha\delta$)")
        == "step α (θ<sup>*</sup> + αδ)"
    )
    assert to_plotly_text("plain text_with_underscores") == "plain text_with_underscores"
