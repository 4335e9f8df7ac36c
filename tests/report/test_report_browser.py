"""basinscope.report.Report output opened in headless Chromium: it renders, offline.

Skipped when no Chromium is found (see ``browser.chromium_path``), except on CI
(``CI=true``), where ``.ci/run`` installs it and a missing browser is a failure.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import pytest
from matplotlib.figure import Figure

from basinscope.report import Report
from browser import check_report, chromium_path

if chromium_path() is None:
    if os.environ.get("CI") == "true":
        pytest.fail(
            "Chromium not found on CI: .ci/run should have installed the Debian `chromium` "
            "package (or set BASINSCOPE_CHROMIUM to a Chromium binary)",
            pytrace=False,
        )
    pytest.skip("Chromium not found (set BASINSCOPE_CHROMIUM)", allow_module_level=True)


def _mpl_figure() -> Figure:
    fig = Figure(figsize=(3.0, 2.0))
    ax = fig.add_subplot()
    ax.plot([0.0, 0.5, 1.0], [1.0, 0.2, 0.6])
    ax.set_xlabel("α")
    return fig


def _line() -> go.Figure:
    x = np.linspace(-1.0, 1.0, 21)
    return go.Figure(go.Scatter(x=x, y=x**2, mode="lines", name="loss"))


def _surface() -> go.Figure:
    a = np.linspace(-1.0, 1.0, 15)
    z = a[None, :] ** 2 + 2.0 * a[:, None] ** 2
    return go.Figure(go.Surface(x=a, y=a, z=z))


def _report() -> Report:
    rep = Report("Browser check", subtitle="static, 2D and 3D figures")
    rep.heading("Figures")
    rep.figure(_mpl_figure(), "A matplotlib line.")
    rep.plotly(_line(), "A plotly line.")
    rep.plotly(_surface(), "A plotly 3D surface (WebGL).")
    rep.table([{"name": "a", "value": 1.5}], caption="A table.")
    return rep


def _describe(result: dict[str, Any]) -> str:
    bad = [f for f in result["figures"] if not f["ok"]]
    return f"errors={result['console_errors']} failed figures={bad}"


@pytest.fixture(scope="module")
def good_result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = _report().write(tmp_path_factory.mktemp("report") / "report.html")
    return check_report(path)


def test_report_renders_without_errors(good_result: dict[str, Any]) -> None:
    assert good_result["console_errors"] == [], _describe(good_result)
    assert all(f["ok"] for f in good_result["figures"]), _describe(good_result)


def test_every_added_figure_is_found(good_result: dict[str, Any]) -> None:
    assert good_result["n_figures"] == 3
    kinds = [(f["id"], f["kind"]) for f in good_result["figures"]]
    assert kinds == [("fig1", "static"), ("fig2", "interactive"), ("fig3", "interactive")]
    surface = good_result["figures"][2]["detail"]
    assert surface["webgl"] and surface["trace_types"] == ["surface"]
    assert max(surface["canvas_painted"]) > 0  # WebGL actually drew the surface
    assert good_result["figures"][1]["detail"]["svg_traces"] >= 1


def test_broken_script_is_caught(tmp_path: Path) -> None:
    rep = Report("Broken script")
    rep.plotly(_line(), "A plotly line.")
    rep.parts.append('<script>throw new Error("boom")</script>')
    result = check_report(rep.write(tmp_path / "broken.html"))
    assert any("boom" in e for e in result["console_errors"]), result["console_errors"]
    assert result["n_figures"] == 1 and result["figures"][0]["ok"]  # the rest still works


def test_broken_image_is_caught(tmp_path: Path) -> None:
    rep = Report("Broken image")
    rep.figure(_mpl_figure(), "Good.")
    rep.figure(_mpl_figure(), "Corrupted below.")
    page = rep.render()
    starts = [m.end() for m in re.finditer(r"data:image/png;base64,", page)]
    assert len(starts) == 2
    page = page[: starts[1]] + "bm90IGEgcG5n" + page[page.index('"', starts[1]) :]
    path = tmp_path / "broken.html"
    path.write_text(page, encoding="utf-8")
    result = check_report(path)
    assert [(f["id"], f["ok"]) for f in result["figures"]] == [("fig1", True), ("fig2", False)]
    assert result["figures"][1]["detail"]["natural_size"] == [0, 0]


def test_network_resources_fail_offline(tmp_path: Path) -> None:
    # A figure that needs plotly.js from a CDN does not render: the check runs offline.
    div = _line().to_html(full_html=False, include_plotlyjs="cdn")
    path = tmp_path / "cdn.html"
    path.write_text(
        f'<!DOCTYPE html><html><head></head><body><figure id="fig1" class="interactive">'
        f"{div}</figure></body></html>",
        encoding="utf-8",
    )
    result = check_report(path)
    assert any("failed to load <script>" in e for e in result["console_errors"])
    assert result["figures"][0]["kind"] == "interactive" and not result["figures"][0]["ok"]
