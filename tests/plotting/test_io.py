"""save_figure: several formats, tight bounding boxes, no pyplot."""

from __future__ import annotations

from pathlib import Path

import pytest
from matplotlib.figure import Figure

from basinscope.errors import BasinscopeError
from basinscope.plotting import save_figure

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _small_figure() -> Figure:
    fig = Figure(figsize=(2.0, 1.5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [1, 0], label="a line")
    ax.set_xlabel(r"$\alpha$")
    return fig


def test_save_png_and_pdf(tmp_path: Path) -> None:
    paths = save_figure(_small_figure(), tmp_path / "sub" / "fig")
    assert paths == [tmp_path / "sub" / "fig.png", tmp_path / "sub" / "fig.pdf"]
    png, pdf = (p.read_bytes() for p in paths)
    assert png.startswith(PNG_MAGIC)
    assert pdf.startswith(b"%PDF")
    assert b"basinscope" in pdf  # Creator metadata


def test_png_uses_200_dpi(tmp_path: Path) -> None:
    (path,) = save_figure(_small_figure(), tmp_path / "fig", formats=("png",))
    width = int.from_bytes(path.read_bytes()[16:20], "big")
    # 2 inches at 200 dpi, give or take the tight bounding box.
    assert 250 < width < 500


def test_extension_in_stem_is_dropped(tmp_path: Path) -> None:
    paths = save_figure(_small_figure(), str(tmp_path / "fig.svg"), formats=["svg"])
    assert paths == [tmp_path / "fig.svg"]
    assert b"<svg" in paths[0].read_bytes()[:500]


def test_other_suffix_is_kept(tmp_path: Path) -> None:
    (path,) = save_figure(_small_figure(), tmp_path / "alpha_0.5", formats=(".PNG",))
    assert path.name == "alpha_0.5.png"


def test_bad_formats_raise(tmp_path: Path) -> None:
    with pytest.raises(BasinscopeError, match="cannot save figures as docx"):
        save_figure(_small_figure(), tmp_path / "fig", formats=("png", "docx"))
    with pytest.raises(BasinscopeError, match="at least one format"):
        save_figure(_small_figure(), tmp_path / "fig", formats=())
    assert not list(tmp_path.iterdir())


def _laid_out_figure() -> Figure:
    fig = Figure(figsize=(3.0, 2.0), layout="constrained")
    ax = fig.add_subplot()
    ax.plot([0, 1], [1, 0])
    ax.set_title("a title that constrained layout makes room for")
    fig.colorbar(ax.imshow([[0, 1], [1, 0]]), ax=ax)
    return fig


def test_formats_after_the_first_keep_its_layout_and_the_engine_is_restored(tmp_path):
    import numpy as np
    from matplotlib.image import imread
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    fig = _laid_out_figure()
    png, pdf = save_figure(fig, tmp_path / "both")
    assert isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine)
    assert pdf.read_bytes().startswith(b"%PDF")
    # the first format is drawn exactly as alone (constrained layout, tight box)
    (alone,) = save_figure(_laid_out_figure(), tmp_path / "alone", formats=("png",))
    np.testing.assert_array_equal(imread(png), imread(alone))
    # a later format keeps that layout and gets its own tight box, reproducibly
    pdf2 = save_figure(_laid_out_figure(), tmp_path / "again")[1]
    assert pdf2.read_bytes() == pdf.read_bytes()
