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


def test_with_log_the_own_figure_is_drawn(tmp_path, bowl):
    land = Landscape(bowl, [], {})
    written = render_landscape(land, tmp_path, log=True)
    own, contour = tmp_path / "landscape.png", tmp_path / "train_loss_contour.png"
    assert own in written and contour in written
    assert own.read_bytes() != contour.read_bytes()  # log-scaled contour: another figure
