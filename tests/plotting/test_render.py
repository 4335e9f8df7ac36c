"""render_landscape: every figure file of a landscape, the landscape's own figure copied
from the identical contour (or line) figure instead of drawn twice."""

from __future__ import annotations

import pytest

from basinscope.analyses.landscape import Landscape
from basinscope.plotting import save_figure
from basinscope.plotting.dispatch import plot
from basinscope.plotting.run import render_landscape


@pytest.mark.parametrize("shape", ["bowl", "line"])
def test_the_landscapes_own_figure_is_the_drawn_one(tmp_path, request, shape):
    land = Landscape(request.getfixturevalue(shape), [], {})
    written = render_landscape(land, tmp_path / "figures")
    assert written[:2] == [tmp_path / "figures" / f"landscape.{f}" for f in ("png", "pdf")]
    assert len(set(written)) == len(written) and all(p.exists() for p in written)
    drawn = save_figure(plot(land)[0], tmp_path / "drawn")
    for copied, fresh in zip(written[:2], drawn):
        assert copied.read_bytes() == fresh.read_bytes()


@pytest.mark.parametrize("shape", ["bowl", "line"])
def test_log_figures_go_beside_the_linear_ones_with_a_log_suffix(tmp_path, request, shape):
    land = Landscape(request.getfixturevalue(shape), [], {})
    linear = render_landscape(land, tmp_path)
    before = {p: p.read_bytes() for p in linear}
    logged = render_landscape(land, tmp_path, log=True)
    assert logged and all(p.stem.endswith("-log") for p in logged)
    assert not set(logged) & set(linear)
    assert {p: p.read_bytes() for p in linear} == before  # the linear files are untouched
    if shape == "bowl":
        assert tmp_path / "train_loss_contour-log.png" in logged
        assert tmp_path / "train_loss_surface-log.html" in logged
        assert tmp_path / "train_loss-log.vtp" in logged
    else:
        assert {p.name for p in logged} == {"line-log.png", "line-log.pdf", "line-log.html"}
